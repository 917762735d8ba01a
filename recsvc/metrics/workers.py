"""One metrics endpoint for several worker processes: the supervisor scrapes each worker's
loopback endpoint when it is scraped itself, and merges the pages.

Counters, histograms and summaries are summed over the workers (``_created`` takes the
earliest), so a pod exposes the same series whatever its worker count; gauges (memory, model
info, p99s) keep one series per worker under a ``worker`` label. A worker that does not answer
in time is left out of that scrape and shows as ``recsvc_worker_metrics_up{worker} 0``.

Chosen over prometheus_client's multiprocess mode, which would move every observation on the
serving path onto a lock and a write to a memory-mapped file, and which supports neither
scrape-time collectors (grpc_server_*, the domain's counters) nor the process collector.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# What can be added up across processes; everything else is labelled by worker.
SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
WORKER_LABEL = "worker"


@dataclass
class _Series:
    labels: dict[str, str]
    value: float


def merge(pages: Sequence[tuple[str, str]]) -> list[Metric]:
    """Merge ``(worker, exposition text)`` pages into one list of metric families."""
    families: dict[str, Metric] = {}
    # family name -> (sample name, sorted labels) -> (labels, value)
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], _Series]] = {}
    for worker, page in pages:
        for family in text_string_to_metric_families(page):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            # A counter's or histogram's ``_created`` comes as a gauge family of its own.
            summed = family.type in SUMMED_TYPES or family.name.endswith("_created")
            series = values[family.name]
            for sample in family.samples:
                labels = dict(sample.labels)
                if not summed:
                    labels[WORKER_LABEL] = worker
                key = (sample.name, tuple(sorted(labels.items())))
                known = series.get(key)
                if known is None:
                    series[key] = _Series(labels, sample.value)
                elif sample.name.endswith("_created"):
                    known.value = min(known.value, sample.value)
                else:
                    known.value += sample.value
    for name, merged in families.items():
        for (sample_name, _), found in values[name].items():
            merged.add_sample(sample_name, found.labels, found.value)
    return list(families.values())


class WorkersCollector(Collector):
    """Collects from the workers' endpoints at ``http://127.0.0.1:PORT/metrics``."""

    def __init__(self, ports: Sequence[int], timeout_seconds: float = 5.0) -> None:
        self.ports = tuple(ports)
        self.timeout_seconds = timeout_seconds
        self._pool = ThreadPoolExecutor(max(1, len(self.ports)), "metrics-scrape")

    def describe(self) -> Iterator[Metric]:
        return iter(())  # never scrape the workers at registration

    def collect(self) -> Iterable[Metric]:
        pages = list(self._pool.map(self._scrape, self.ports))
        up = GaugeMetricFamily(
            "recsvc_worker_metrics_up",
            "Whether the worker's metrics were in this scrape.",
            labels=[WORKER_LABEL],
        )
        for index, page in enumerate(pages):
            up.add_metric([str(index)], 0 if page is None else 1)
        merged = merge([(str(i), page) for i, page in enumerate(pages) if page is not None])
        return [*merged, up]

    def _scrape(self, port: int) -> str | None:
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_seconds) as response:
                return bytes(response.read()).decode()
        except OSError as exc:
            log.warning("worker metrics at %s: %s", url, exc)
            return None
