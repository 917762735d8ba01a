"""Prometheus metrics, in a registry per server (no process-wide globals).

RPC latency is observed by the call boundary (recsvc.api.boundary); counters that the domain
keeps (store hits, fold-ins, swaps) are read at scrape time by a collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recsvc.core.service import RecommendationService

# Metric names other programs read (dashboards, bench/serve.py), defined once. Counters are
# exposed with Prometheus's ``_total`` suffix.
RECOMMEND_BATCHES = "recsvc_recommend_batches"
RECOMMEND_BATCHED_CALLS = "recsvc_recommend_batched_calls"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class Metrics:
    """The metrics of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc_seconds = Histogram(
            "recsvc_rpc_seconds",
            "Latency of each RPC, by method and status code.",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_seconds.labels(method, code).observe(seconds)

    def watch(self, service: RecommendationService, swaps: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_ServiceCollector(service, swaps))

    def serve(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)


class _ServiceCollector(Collector):
    def __init__(
        self, service: RecommendationService, swaps: Callable[[], tuple[int, int]]
    ) -> None:
        self.service = service
        self.swaps = swaps

    def collect(self) -> Iterator[Metric]:
        stats = self.service.stats
        lookups = CounterMetricFamily(
            "recsvc_user_vector_lookups", "User vector lookups in the store.", labels=["result"]
        )
        lookups.add_metric(["hit"], stats.vector_hits)
        lookups.add_metric(["miss"], stats.vector_misses)
        lookups.add_metric(["error"], stats.store_errors)
        yield lookups
        yield CounterMetricFamily(
            "recsvc_fold_ins", "User vectors recomputed by fold-in.", value=stats.fold_ins
        )
        if stats.fold_in_seconds:
            p99 = float(np.percentile(stats.fold_in_seconds, 99))
            yield GaugeMetricFamily("recsvc_fold_in_p99_seconds", "p99 of recent fold-ins.", p99)
        batches, batched = self.service.recommend_batching()
        yield CounterMetricFamily(
            RECOMMEND_BATCHES, "Batches that answered Recommend calls.", value=batches
        )
        yield CounterMetricFamily(
            RECOMMEND_BATCHED_CALLS,
            "Recommend calls answered in batches (divided by the batches: mean batch size).",
            value=batched,
        )
        swaps, failures = self.swaps()
        yield CounterMetricFamily("recsvc_model_swaps", "Model versions swapped in.", value=swaps)
        yield CounterMetricFamily(
            "recsvc_model_rejections", "Model versions that failed to load.", value=failures
        )
        if self.service.holder.loaded:
            model = self.service.holder.current().model
            info = GaugeMetricFamily(
                "recsvc_model_info", "The model being served.", labels=["version", "algorithm"]
            )
            info.add_metric([model.version, model.info.algorithm], 1)
            yield info
            yield GaugeMetricFamily(
                "recsvc_index_items", "Items in the index.", value=model.info.num_items
            )
            yield GaugeMetricFamily(
                "recsvc_index_recall_at_10",
                "Index recall@10 at build.",
                value=model.info.index_recall_at_10,
            )
