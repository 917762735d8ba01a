"""The conventional gRPC server metrics, derived at scrape time from ``recsvc_rpc_seconds``.

Dashboards and alerts written for go-grpc-prometheus / py-grpc-prometheus read
``grpc_server_started_total``, ``grpc_server_handled_total`` and
``grpc_server_handling_seconds``. Observing them per call would triple the metrics work on the
serving hot path, so each scrape re-labels the one histogram the call boundary observes
(recsvc.api.boundary): a call's count is its ``handled``, the buckets are its ``handling_seconds``
(summed over codes, as those libraries label it). Codes are grpc.StatusCode names (``OK``,
``UNAVAILABLE``), as py-grpc-prometheus writes them.

Started calls: the boundary counts calls in flight (recsvc.api.gate) but not by method, and a
per-method count would cost every call a dict update, so a call counts as started once it is
handled; ``recsvc_rpcs_in_flight`` gives the calls in progress. Only the Recommender service
passes the boundary: health checks, reflection, and calls that gRPC itself refuses (over
``max_concurrent_rpcs``, a bad token) are not counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Every method of the Recommender service is unary-unary.
GRPC_TYPE = "unary"


class GrpcServerCollector(Collector):
    """``grpc_server_*`` of one gRPC service, from the RPC histogram (method, code labels)."""

    def __init__(
        self,
        rpc_seconds: Histogram,
        service: str,
        methods: Sequence[str],
        in_flight: Callable[[], int],
    ) -> None:
        self.rpc_seconds = rpc_seconds
        self.service = service
        self.methods = tuple(methods)
        self.in_flight = in_flight

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are not checked against the registry's others

    def collect(self) -> Iterator[Metric]:
        handled: dict[tuple[str, str], float] = {}
        started: dict[str, float] = dict.fromkeys(self.methods, 0.0)
        # method -> le -> cumulative count, and method -> sum of seconds, over all codes
        buckets: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        seconds: dict[str, float] = defaultdict(float)
        for family in self.rpc_seconds.collect():
            for sample in family.samples:
                method = sample.labels.get("method", "")
                if sample.name.endswith("_count"):
                    handled[method, sample.labels["code"]] = sample.value
                    started[method] = started.get(method, 0.0) + sample.value
                elif sample.name.endswith("_bucket"):
                    buckets[method][sample.labels["le"]] += sample.value
                elif sample.name.endswith("_sum"):
                    seconds[method] += sample.value

        started_family = CounterMetricFamily(
            "grpc_server_started",
            "RPCs started on the server (counted when handled; see recsvc_rpcs_in_flight).",
            labels=["grpc_type", "grpc_service", "grpc_method"],
        )
        for method, count in started.items():
            started_family.add_metric([GRPC_TYPE, self.service, method], count)
        yield started_family

        handled_family = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            labels=["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )
        for (method, code), count in handled.items():
            handled_family.add_metric([GRPC_TYPE, self.service, method, code], count)
        yield handled_family

        handling = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server (seconds).",
            labels=["grpc_type", "grpc_service", "grpc_method"],
        )
        for method, by_bound in buckets.items():
            handling.add_metric(
                [GRPC_TYPE, self.service, method], list(by_bound.items()), seconds[method]
            )
        yield handling

        yield GaugeMetricFamily(
            "recsvc_rpcs_in_flight", "RPCs being answered now.", value=self.in_flight()
        )
