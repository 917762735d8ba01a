"""Method handlers whose request deserializers answer a malformed request INVALID_ARGUMENT.

gRPC deserializes a request before any of our code runs, and an exception from the
deserializer (protobuf's DecodeError for undecodable or truncated bytes or invalid UTF-8 in a
string field) reaches the client as UNKNOWN with the exception's class name, after gRPC logged
a traceback, for every such call. So each method of a service is registered here with a
deserializer that catches the failure and returns a :class:`MalformedRequest` instead; the
call boundary (Recommender) or a thin wrapper (health) answers it INVALID_ARGUMENT, and a
rate-limited WARNING says what came in.

The deserializer adds one Python call around protobuf's parser to each request; the check for
a malformed request is one type comparison in the call boundary.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # generic only in grpc-stubs
    MethodHandler = grpc.RpcMethodHandler[Any, Any]


class MalformedRequest:
    """Stands for a request whose bytes could not be decoded; ``reason`` is the short reason
    the caller is given."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    @property
    def message(self) -> str:
        return f"request: {self.reason}"


class WarningLimiter:
    """Logs at most one WARNING per ``interval`` seconds for each kind; the next one that is
    logged says how many of its kind were left out meanwhile."""

    def __init__(self, interval: float, logger: logging.Logger = log) -> None:
        self.interval = interval
        self.logger = logger
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def warn(self, kind: str, detail: str) -> bool:
        """Log ``kind: detail`` unless one of ``kind`` was logged less than ``interval``
        seconds ago; whether it was logged."""
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return False
        self._last[kind] = now
        left_out = self._left_out.pop(kind, 0)
        self.logger.warning(
            "%s: %s (%d more left out of the log before this)", kind, detail, left_out
        )
        return True


def _reason(error: Exception) -> str:
    """A short reason for the caller: protobuf's messages name internal types."""
    text = str(error).lower()
    if "utf-8" in text or "utf8" in text or isinstance(error, UnicodeError):
        return "invalid UTF-8 in a string field"
    return "not a decodable protobuf message of the method's request type"


def safe_deserializer(
    parse: Callable[[bytes], Any], method: str, warnings: WarningLimiter
) -> Callable[[bytes], Any]:
    """``parse``, returning a :class:`MalformedRequest` where it raises (logged, rate-limited,
    once per call at most)."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, or whatever else hostile bytes provoke
            reason = _reason(exc)
            warnings.warn(f"malformed request to {method}: {reason}", f"{len(data)} bytes")
            return MalformedRequest(reason)

    return deserialize


def _answering_malformed(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a unary-request behaviour that is not behind the call boundary (e.g. health)."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if type(request) is MalformedRequest:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            async for item in behavior(request, context):
                yield item

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if type(request) is MalformedRequest:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return unary


def _answering_malformed_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a stream-request behaviour: a malformed message in the stream ends the call."""

    async def checked(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for request in requests:
            if type(request) is MalformedRequest:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            yield request

    if inspect.isasyncgenfunction(behavior):

        async def stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async for item in behavior(checked(requests, context), context):
                yield item

        return stream

    async def unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await behavior(checked(requests, context), context)

    return unary


# Methods whose servicer may answer with the response's bytes: a large one is serialized in
# parts on a worker thread, which would otherwise hold the event loop in one piece.
PRESERIALIZED_RESPONSES = frozenset({"RecommendBatch"})


def passing_bytes_through(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """``serialize``, except that a response already serialized (bytes, made off the event
    loop by the servicer) goes out as it is."""

    def serialized(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return serialized


def guard_handlers(
    service: str,
    handlers: Mapping[str, MethodHandler],
    warnings: WarningLimiter,
    behind_boundary: bool,
) -> dict[str, MethodHandler]:
    """``handlers`` with safe deserializers; ``behind_boundary``: their behaviours pass the
    call boundary, which answers a MalformedRequest itself (no extra wrapper on the hot path)."""
    guarded: dict[str, MethodHandler] = {}
    for name, handler in handlers.items():
        if handler.request_deserializer is None:
            guarded[name] = handler
            continue
        changes: dict[str, Any] = {
            "request_deserializer": safe_deserializer(
                handler.request_deserializer, f"{service}/{name}", warnings
            )
        }
        if name in PRESERIALIZED_RESPONSES and handler.response_serializer is not None:
            changes["response_serializer"] = passing_bytes_through(handler.response_serializer)
        if not behind_boundary:
            if handler.unary_unary is not None:
                changes["unary_unary"] = _answering_malformed(handler.unary_unary)
            elif handler.unary_stream is not None:
                changes["unary_stream"] = _answering_malformed(handler.unary_stream)
            elif handler.stream_unary is not None:
                changes["stream_unary"] = _answering_malformed_stream(handler.stream_unary)
            elif handler.stream_stream is not None:
                changes["stream_stream"] = _answering_malformed_stream(handler.stream_stream)
        guarded[name] = handler._replace(**changes)  # type: ignore[attr-defined]
    return guarded


class _Registrations:
    """Stands in for the server while a generated ``add_*Servicer_to_server`` runs, keeping
    the method handlers it registers."""

    def __init__(self) -> None:
        self.services: list[tuple[str, dict[str, MethodHandler]]] = []

    def add_generic_rpc_handlers(
        self, handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        pass  # the same handlers arrive by add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, MethodHandler]
    ) -> None:
        self.services.append((service, handlers))


def add_guarded(
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    server: grpc.aio.Server,
    warnings: WarningLimiter,
    behind_boundary: bool = False,
) -> None:
    """Register ``servicer`` as ``add_to_server`` (a generated ``add_*Servicer_to_server``)
    would, with safe deserializers (see :func:`guard_handlers`)."""
    registrations = _Registrations()
    add_to_server(servicer, registrations)
    if not registrations.services:
        raise RuntimeError(f"{add_to_server.__name__} registered no method handlers")
    for service, handlers in registrations.services:
        guarded = guard_handlers(service, handlers, warnings, behind_boundary)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        # Newer than grpc-stubs; registered handlers skip the generic lookup per call.
        server.add_registered_method_handlers(service, guarded)  # type: ignore[attr-defined]
