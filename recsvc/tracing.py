"""Optional OpenTelemetry tracing of the gRPC server (``server.tracing``, off by default).

On, every call gets a server span from opentelemetry-instrumentation-grpc's aio server
interceptor (given to this server alone rather than patching ``grpc.aio.server`` for the whole
process); a caller's ``traceparent`` makes it a child of the caller's span. The exporter
follows the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``, the default, ``console``
or ``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME`` (default ``recsvc``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``. Off, nothing of OpenTelemetry is
imported and calls pay nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from recsvc.errors import ConfigError

log = logging.getLogger(__name__)

EXPORTERS = ("otlp", "console", "none")
INSTALL_HINT = "pip install 'recsvc[otel]'"


@dataclass
class Tracing:
    interceptor: grpc.aio.ServerInterceptor[Any, Any]
    shutdown: Callable[[], None]  # flushes the spans not yet exported


def server_tracing() -> Tracing:
    """The tracer provider and exporter the OTEL_* variables describe, and the interceptor that
    traces calls with it."""
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporter_name not in EXPORTERS:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: {exporter_name!r} is not supported by recsvc; "
            f"use one of {', '.join(EXPORTERS)}"
        )
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError as exc:
        raise ConfigError(
            f"server.tracing: OpenTelemetry is not installed ({exc.name}); {INSTALL_HINT}"
        ) from exc

    resource = Resource.create()  # from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "unknown_service")).startswith("unknown_"):
        resource = resource.merge(Resource({SERVICE_NAME: "recsvc"}))
    provider = TracerProvider(resource=resource)
    processor: SpanProcessor | None = None
    if exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ConfigError(
                f"server.tracing: the OTLP exporter is not installed ({exc.name}); {INSTALL_HINT}"
            ) from exc
        processor = BatchSpanProcessor(OTLPSpanExporter())
    elif exporter_name == "console":
        processor = SimpleSpanProcessor(ConsoleSpanExporter())
    if processor is not None:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    log.info("tracing on: spans exported by %s", exporter_name)
    interceptor = aio_server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return Tracing(interceptor, provider.shutdown)
