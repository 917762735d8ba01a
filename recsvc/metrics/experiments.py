"""Experiment serving's counters per namespace: impressions logged, dropped and lost, arm
models held, and arms served the current model because theirs did not load."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recsvc.core.service import RecommendationService

# Metric names dashboards read, defined once (counters get Prometheus's ``_total`` suffix).
IMPRESSIONS = "recsvc_impressions"
ARM_MODEL_FALLBACKS = "recsvc_arm_model_fallbacks"


class ExperimentsCollector(Collector):
    """``services``: each namespace's service; ``load_failures``: arm models that failed to
    load so far (the experiments file's count)."""

    def __init__(
        self, services: Mapping[str, RecommendationService], load_failures: Callable[[], int]
    ) -> None:
        self.services = dict(services)
        self.load_failures = load_failures

    def collect(self) -> Iterator[Metric]:
        impressions = CounterMetricFamily(
            IMPRESSIONS,
            "Impressions of users in experiments: logged to the event log, dropped (queue "
            "full) or failed (the event log refused their batch).",
            labels=["namespace", "result"],
        )
        queued = GaugeMetricFamily(
            "recsvc_impressions_queued",
            "Impressions waiting for the event log.",
            labels=["namespace"],
        )
        models = GaugeMetricFamily(
            "recsvc_arm_models", "Models loaded for experiment arms.", labels=["namespace"]
        )
        memory = GaugeMetricFamily(
            "recsvc_arm_model_bytes", "Memory the arm models hold.", labels=["namespace"]
        )
        fallbacks = CounterMetricFamily(
            ARM_MODEL_FALLBACKS,
            "Calls of an experiment arm answered by the current model because the arm's model "
            "is not loaded.",
            labels=["namespace"],
        )
        for namespace, service in self.services.items():
            if service.impressions is not None:
                stats = service.impressions.stats
                impressions.add_metric([namespace, "logged"], stats.logged)
                impressions.add_metric([namespace, "dropped"], stats.dropped)
                impressions.add_metric([namespace, "failed"], stats.failed)
                queued.add_metric([namespace], service.impressions.pending)
            if service.arms is not None:
                count, size = service.arms.models.memory()
                models.add_metric([namespace], count)
                memory.add_metric([namespace], size)
                fallbacks.add_metric([namespace], service.arms.models.fallbacks)
        yield from (impressions, queued, models, memory, fallbacks)
        yield CounterMetricFamily(
            "recsvc_arm_model_load_failures",
            "Arm model versions that failed to load (their arms are served the current model).",
            value=self.load_failures(),
        )
