"""The call boundary: what every RPC passes through on its way in and out, in one decorator.

In order: the request id (the caller's ``x-request-id``, echoed in the trailing metadata, or a new
one for the logs), the shutdown gate (recsvc.api.gate: calls arriving at the end of a
shutdown are held, then answered UNAVAILABLE), a request that could not be decoded
(recsvc.api.handlers) answered INVALID_ARGUMENT, the handler, the mapping of errors to status codes
(recsvc.api.status; nothing escapes as UNKNOWN: a RecsvcError gets its code and message,
anything else is logged with its traceback and answered INTERNAL), and the call's duration and
code for the metrics.

One decorator rather than a chain of grpc.aio server interceptors: each interceptor adds a
coroutine and a handler lookup to every call, and this is the serving hot path.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from recsvc.api.gate import CallGate
from recsvc.api.handlers import MalformedRequest
from recsvc.api.status import SHUTTING_DOWN, status_for
from recsvc.errors import InvalidArgument, RecsvcError
from recsvc.logs import request_id

log = logging.getLogger(__name__)


Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext[Request, Response]], Awaitable[Response]]


def call_boundary(method: Handler[Request, Response]) -> Handler[Request, Response]:
    """Wrap an async servicer method in the call boundary (see the module's docstring)."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Request, context: grpc.aio.ServicerContext[Request, Response]
    ) -> Response:
        started = time.perf_counter()
        observe = getattr(getattr(self, "metrics", None), "observe_rpc", None)
        request_id.set(_request_id(context, self.echo_generated_ids))
        gate: CallGate = self.gate
        gate.arrived()
        if gate.holding:
            await gate.wait_for_release(context.time_remaining())
            if observe:
                observe(method.__name__, "UNAVAILABLE", time.perf_counter() - started)
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        gate.active += 1
        try:
            try:
                if isinstance(request, MalformedRequest):  # undecodable bytes (api.handlers)
                    raise InvalidArgument("request", request.reason)
                response = await method(self, request, context)
            except RecsvcError as exc:
                code, message = status_for(exc), str(exc)
            except Exception:
                log.exception("%s failed", method.__name__)
                code = grpc.StatusCode.INTERNAL
                message = "internal error; the server log has details"
            else:
                if observe:
                    observe(method.__name__, "OK", time.perf_counter() - started)
                return response
            if observe:
                observe(method.__name__, code.name, time.perf_counter() - started)
            await context.abort(code, message)
            raise AssertionError("context.abort returned")  # abort always raises
        finally:
            gate.active -= 1

    return wrapper


# Request ids made here: a random prefix per process and a counter (a uuid4 per call costs a
# getrandom system call, which showed in profiles under load).
_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count()


def _request_id(context: grpc.aio.ServicerContext[Any, Any], echo_generated: bool) -> str:
    """The caller's x-request-id, echoed back in the trailing metadata, or a new one (sent
    back only when ``echo_generated``: a trailer is a sizeable share of a call's cost)."""
    for key, given in context.invocation_metadata() or ():
        if key == "x-request-id" and given:
            value = str(given)[:64]
            context.set_trailing_metadata((("x-request-id", value),))
            return value
    value = f"{_ID_PREFIX}{next(_ID_COUNTER) % 2**32:08x}"
    if echo_generated:
        context.set_trailing_metadata((("x-request-id", value),))
    return value
