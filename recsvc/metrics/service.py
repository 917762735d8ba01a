"""The domain's counters (store lookups, fold-ins, batches, model swaps), read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recsvc.core.service import RecommendationService

# Metric names other programs read (dashboards, bench/serve.py), defined once. Counters are
# exposed with Prometheus's ``_total`` suffix.
RECOMMEND_BATCHES = "recsvc_recommend_batches"
RECOMMEND_BATCHED_CALLS = "recsvc_recommend_batched_calls"


class ServiceCollector(Collector):
    def __init__(
        self, service: RecommendationService, swaps: Callable[[], tuple[int, int, int]]
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
        swaps, failures, full_collections = self.swaps()
        yield CounterMetricFamily("recsvc_model_swaps", "Model versions swapped in.", value=swaps)
        yield CounterMetricFamily(
            "recsvc_model_rejections", "Model versions that failed to load.", value=failures
        )
        yield CounterMetricFamily(
            "recsvc_model_swap_full_collections",
            "Model swaps, in any namespace, that found an earlier model still in memory and so "
            "collected the whole heap, holding every call meanwhile (a rising count: something "
            "keeps old models alive).",
            value=full_collections,
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
