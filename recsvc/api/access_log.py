"""The access log (``server.access_log``): one INFO line per call on logger ``recsvc.access``.

Chosen when the server is built: with the setting on, each Recommender method of the servicer
instance is wrapped once more, outside the call boundary; off, nothing is wrapped and calls
pay nothing, not even a check.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from recsvc.logs import request_id

log = logging.getLogger("recsvc.access")

Method = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def log_calls(servicer: object, methods: Iterable[str]) -> None:
    """Wrap ``servicer``'s ``methods`` (bound, on the instance) so that each call is logged."""
    for name in methods:
        setattr(servicer, name, _logged(name, getattr(servicer, name)))


def _logged(name: str, method: Method) -> Method:
    @functools.wraps(method)
    async def logged(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        code = "OK"
        try:
            return await method(request, context)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except BaseException:
            # The call boundary answered with context.abort, which raised; the code is set.
            status = context.code()
            code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
            raise
        finally:
            log.info(
                "%s %s %.2fms peer=%s request_id=%s",
                name,
                code,
                (time.perf_counter() - started) * 1000,
                context.peer(),
                request_id.get(),
            )

    return logged
