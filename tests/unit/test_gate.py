"""The shutdown gate: held calls wait for the release or their deadline; settling."""

from __future__ import annotations

import asyncio
import time

from recsvc.api.gate import CallGate


def test_held_call_waits_for_release() -> None:
    async def scenario() -> tuple[bool, float]:
        gate = CallGate()
        gate.hold()
        waiter = asyncio.create_task(gate.wait_for_release(time_left=10.0))
        await asyncio.sleep(0.1)
        still_held = not waiter.done()
        released_at = time.monotonic()
        gate.release()
        await waiter
        return still_held, time.monotonic() - released_at

    still_held, after_release = asyncio.run(scenario())
    assert still_held
    assert after_release < 0.5


def test_held_call_is_answered_before_its_deadline() -> None:
    async def scenario() -> float:
        gate = CallGate()
        gate.hold()
        started = time.monotonic()
        await gate.wait_for_release(time_left=0.3)
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    assert 0.15 <= waited < 0.3


def test_settled_waits_for_quiet_and_for_active_calls() -> None:
    async def scenario() -> tuple[bool, bool]:
        gate = CallGate()
        gate.active = 1
        gate.arrived()
        busy = await gate.settled(quiet_seconds=0.02, limit_seconds=0.1)
        gate.active = 0
        quiet = await gate.settled(quiet_seconds=0.02, limit_seconds=1.0)
        return busy, quiet

    busy, quiet = asyncio.run(scenario())
    assert not busy
    assert quiet
