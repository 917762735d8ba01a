"""The shutdown gate in front of every Recommender call.

gRPC core ends calls that reached the server but were not yet taken up by the application when
shutdown begins with CANCELLED, not UNAVAILABLE (grpc/grpc#41785, open), and calls that arrive
between shutdown and the client reading the server's GOAWAY end the same way. A client that
still calls after readiness flipped would then see CANCELLED, which it must not retry. So at the
end of the drain the gate *holds* new calls instead of answering them: a client waiting on an
answer sends nothing new, the stream of arrivals dries up, the server shuts down (GOAWAY goes
out first on every connection), and only then are the held calls answered UNAVAILABLE, which
clients retry elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

# Quiet must also last this many turns of the event loop: calls that reached gRPC core but not
# yet the application are delivered by the loop's callbacks, so on a starved loop (a busy
# host) elapsed time alone would call it quiet with calls still queued below (CI saw those
# end CANCELLED).
_QUIET_LOOP_TURNS = 10

# A held call is answered this long before its deadline at the latest, so that it ends with
# UNAVAILABLE rather than DEADLINE_EXCEEDED.
_DEADLINE_MARGIN_SECONDS = 0.05


class CallGate:
    """Counts the calls being answered and, once :meth:`hold` is called, holds new ones until
    :meth:`release`."""

    def __init__(self) -> None:
        self.active = 0
        self.arrivals = 0
        self.last_arrival = 0.0
        self.holding = False
        self._released = asyncio.Event()

    def arrived(self) -> None:
        self.arrivals += 1
        self.last_arrival = time.monotonic()

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self._released.set()

    async def wait_for_release(self, time_left: float | None) -> None:
        """Return when released, or just before the call's deadline."""
        timeout = None if time_left is None else max(0.0, time_left - _DEADLINE_MARGIN_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout)

    async def settled(self, quiet_seconds: float, limit_seconds: float) -> bool:
        """Wait (at most ``limit_seconds``) until no admitted call is being answered and none
        arrived for ``quiet_seconds`` and ``_QUIET_LOOP_TURNS`` turns of the event loop;
        whether that moment came."""
        give_up = time.monotonic() + limit_seconds
        seen, quiet_turns = self.arrivals, 0
        while time.monotonic() < give_up:
            quiet_turns = quiet_turns + 1 if self.arrivals == seen else 0
            seen = self.arrivals
            if (
                not self.active
                and quiet_turns >= _QUIET_LOOP_TURNS
                and time.monotonic() - self.last_arrival > quiet_seconds
            ):
                return True
            await asyncio.sleep(0.002)
        return False
