"""The shutdown gate: held calls wait for the release or their deadline; settling."""

from __future__ import annotations

import asyncio
import time

from recsvc.api.gate import CallGate


async def test_held_call_waits_for_release() -> None:
    gate = CallGate()
    gate.hold()
    waiter = asyncio.create_task(gate.wait_for_release(time_left=10.0))
    await asyncio.sleep(0.1)
    still_held = not waiter.done()
    released_at = time.monotonic()
    gate.release()
    await waiter
    after_release = time.monotonic() - released_at
    assert still_held
    assert after_release < 0.5


async def test_held_call_is_answered_before_its_deadline() -> None:
    gate = CallGate()
    gate.hold()
    started = time.monotonic()
    await gate.wait_for_release(time_left=0.3)
    waited = time.monotonic() - started
    assert 0.15 <= waited < 0.3


async def test_settled_waits_for_quiet_and_for_active_calls() -> None:
    gate = CallGate()
    gate.active = 1
    gate.arrived()
    busy = await gate.settled(quiet_seconds=0.02, limit_seconds=0.1)
    gate.active = 0
    quiet = await gate.settled(quiet_seconds=0.02, limit_seconds=1.0)
    assert not busy
    assert quiet


async def test_settled_needs_quiet_loop_turns_not_only_quiet_time() -> None:
    """Calls still trickling in (every few ms) keep it unsettled even when the quiet time
    asked for is nil, as on a starved event loop where time passes between turns."""
    gate = CallGate()

    async def trickle() -> None:
        for _ in range(40):
            gate.arrived()
            await asyncio.sleep(0.003)

    calls = asyncio.create_task(trickle())
    during = await gate.settled(quiet_seconds=0.0, limit_seconds=0.08)
    await calls
    after = await gate.settled(quiet_seconds=0.0, limit_seconds=1.0)
    assert not during
    assert after
