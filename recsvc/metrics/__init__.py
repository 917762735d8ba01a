"""Prometheus metrics, in a registry per server (no process-wide globals).

The call boundary (recsvc.api.boundary) observes one histogram per call,
``recsvc_rpc_seconds{method,code}``; everything else is read at scrape time by collectors: the
conventional ``grpc_server_*`` families re-labelled from that histogram (.grpc_server), the
domain's counters (.service), and the process and Python GC metrics of prometheus_client. With
several worker processes the supervisor serves one endpoint for all of them (.workers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from recsvc.core.service import RecommendationService
from recsvc.errors import ConfigError
from recsvc.metrics.experiments import ExperimentsCollector
from recsvc.metrics.grpc_server import GrpcServerCollector
from recsvc.metrics.service import RECOMMEND_BATCHED_CALLS, RECOMMEND_BATCHES, ServiceCollector

__all__ = ["LATENCY_BUCKETS", "RECOMMEND_BATCHED_CALLS", "RECOMMEND_BATCHES", "Metrics", "serve"]

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
        self._rpc_children: dict[tuple[str, str], Any] = {}
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        # The labelled child per (method, code), kept: labels() costs a lock and a lookup.
        child = self._rpc_children.get((method, code))
        if child is None:
            child = self._rpc_children[method, code] = self.rpc_seconds.labels(method, code)
        child.observe(seconds)

    def watch(
        self, service: RecommendationService, swaps: Callable[[], tuple[int, int, int]]
    ) -> None:
        """Export ``service``'s counters; ``swaps``: model swaps, rejections and full
        collections at a swap."""
        self.registry.register(ServiceCollector(service, swaps))

    def watch_experiments(
        self, services: Mapping[str, RecommendationService], load_failures: Callable[[], int]
    ) -> None:
        """Export impressions and arm models of every namespace's service."""
        self.registry.register(ExperimentsCollector(services, load_failures))

    def watch_calls(
        self, grpc_service: str, methods: Sequence[str], in_flight: Callable[[], int]
    ) -> None:
        """Export ``grpc_server_*`` for ``grpc_service`` (whose calls ``observe_rpc`` sees)."""
        self.registry.register(
            GrpcServerCollector(self.rpc_seconds, grpc_service, methods, in_flight)
        )

    def serve(self, port: int, host: str) -> None:
        serve(self.registry, port, host)


def serve(registry: CollectorRegistry, port: int, host: str) -> None:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread."""
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"server.metrics_port: cannot listen on {host}:{port} ({exc.strerror or exc})"
        ) from exc
