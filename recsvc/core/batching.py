"""Micro-batching: requests that arrive while a batch is being answered form the next batch.

At low load each request is a batch of one, answered at once (no timer, no added wait); under
load, the requests that queue up during one batch's round trip to the store share the next
one: one store round trip and one index search for all of them, which is what lets one
process answer several times more requests per second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


class MicroBatcher(Generic[Request, Result]):
    """Feeds submitted requests to ``handle`` in batches of at most ``max_batch``, in order,
    waiting up to ``gather_turns`` turns of the event loop for more while more keep coming.

    ``handle`` gets the requests of one batch and returns one outcome per request (a result or
    an exception for that request alone); if it raises, every request of the batch gets it.
    """

    def __init__(
        self,
        handle: Callable[[list[Request]], Awaitable[list[Result | BaseException]]],
        max_batch: int = 32,
        gather_turns: int = 0,
    ) -> None:
        self._handle = handle
        self.max_batch = max_batch
        self.gather_turns = gather_turns
        self._pending: list[tuple[Request, asyncio.Future[Result]]] = []
        self._draining: asyncio.Task[None] | None = None
        self.batches = 0
        self.requests = 0

    @property
    def waiting(self) -> int:
        """Requests queued for the next batch."""
        return len(self._pending)

    async def submit(self, request: Request) -> Result:
        """The outcome of ``request``, answered within the next batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((request, future))
        if self._draining is None or self._draining.done():
            self._draining = loop.create_task(self._drain())
        return await future

    async def _gather(self) -> None:
        """Let the calls the event loop is delivering join the batch: yield a turn of the
        loop while the last turn brought more (``gather_turns`` at most). A lone call on a
        quiet server waits one turn; under load, batches grow, and each saves a store round
        trip (two system calls) and an index call per call it adds."""
        for _ in range(self.gather_turns):
            before = len(self._pending)
            if before >= self.max_batch:
                return
            await asyncio.sleep(0)
            if len(self._pending) == before:
                return

    async def _drain(self) -> None:
        while self._pending:
            await self._gather()
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            live = [(request, future) for request, future in batch if not future.done()]
            if not live:  # every caller gave up (cancelled) while waiting
                continue
            self.batches += 1
            self.requests += len(live)
            try:
                outcomes = await self._handle([request for request, _ in live])
            except Exception as exc:  # handed to each caller, not swallowed
                outcomes = [exc] * len(live)
            for (_, future), outcome in zip(live, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
