"""The supervisor's merge of its workers' metrics pages, and tracing's cost when off."""

from __future__ import annotations

import subprocess
import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from recsvc.metrics.workers import merge


def worker_page(calls: int, seconds: float, memory: float) -> str:
    registry = CollectorRegistry()
    counter = Counter("calls", "Calls.", ["method"], registry=registry)
    counter.labels("Recommend").inc(calls)
    histogram = Histogram("latency_seconds", "Latency.", buckets=(0.1, 1.0), registry=registry)
    for _ in range(calls):
        histogram.observe(seconds)
    Gauge("memory_bytes", "Memory.", registry=registry).set(memory)
    return generate_latest(registry).decode()


def test_counters_and_histograms_add_up_and_gauges_stay_per_worker() -> None:
    registry = CollectorRegistry()
    families = merge([("0", worker_page(3, 0.05, 100.0)), ("1", worker_page(2, 0.5, 200.0))])
    registry.register(_Fixed(families))
    page = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }
    assert samples["calls_total", (("method", "Recommend"),)] == 5
    assert samples["latency_seconds_bucket", (("le", "0.1"),)] == 3
    assert samples["latency_seconds_bucket", (("le", "1.0"),)] == 5
    assert samples["latency_seconds_count", ()] == 5
    assert samples["latency_seconds_sum", ()] == 3 * 0.05 + 2 * 0.5
    assert samples["memory_bytes", (("worker", "0"),)] == 100
    assert samples["memory_bytes", (("worker", "1"),)] == 200
    # One earliest creation time per series, not one per worker.
    assert [name for name, labels in samples if name == "calls_created"] == ["calls_created"]


class _Fixed:
    def __init__(self, families: list[object]) -> None:
        self.families = families

    def describe(self) -> list[object]:
        return []

    def collect(self) -> list[object]:
        return self.families


def test_the_server_imports_no_opentelemetry_while_tracing_is_off() -> None:
    # (redis-py imports opentelemetry's API and metrics SDK itself when they are installed.)
    ours = ("opentelemetry.instrumentation", "opentelemetry.sdk.trace", "opentelemetry.exporter")
    code = (
        "import sys, recsvc.server, recsvc.supervisor\n"
        f"loaded = [m for m in sys.modules if m.startswith({ours!r})]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
