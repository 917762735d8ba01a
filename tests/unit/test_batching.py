"""MicroBatcher: concurrent requests share batches; each caller gets its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from recsvc.core.batching import MicroBatcher


async def test_requests_arriving_together_share_a_batch_and_get_their_own_results() -> None:
    seen: list[list[int]] = []

    async def handle(requests: list[int]) -> list[int | BaseException]:
        seen.append(requests)
        await asyncio.sleep(0.01)  # a store round trip: the next requests queue up meanwhile
        return [ValueError(f"odd {r}") if r % 7 == 3 else r * 10 for r in requests]

    batcher = MicroBatcher(handle, max_batch=8)
    outcomes = await asyncio.gather(*(batcher.submit(n) for n in range(20)), return_exceptions=True)
    assert [s for batch in seen for s in batch] == list(range(20))  # each once, in order
    assert [len(batch) for batch in seen] == [8, 8, 4]  # at most max_batch at a time
    for n, outcome in enumerate(outcomes):
        if n % 7 == 3:
            assert isinstance(outcome, ValueError) and str(outcome) == f"odd {n}"
        else:
            assert outcome == n * 10


async def test_a_failing_batch_fails_its_callers_and_the_next_batch_still_runs() -> None:
    async def handle(requests: list[str]) -> list[str | BaseException]:
        await asyncio.sleep(0)
        if "boom" in requests:
            raise RuntimeError("store exploded")
        return [r.upper() for r in requests]

    batcher = MicroBatcher(handle)
    with pytest.raises(RuntimeError, match="store exploded"):
        await batcher.submit("boom")
    assert await batcher.submit("fine") == "FINE"


async def test_a_caller_that_gives_up_is_skipped_without_harming_the_others() -> None:
    handled: list[list[int]] = []

    async def handle(requests: list[int]) -> list[int | BaseException]:
        handled.append(requests)
        await asyncio.sleep(0.02)
        return requests

    batcher = MicroBatcher(handle)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.005)  # 1 is being handled; 2 and 3 wait for the next batch
    second = asyncio.ensure_future(batcher.submit(2))
    third = asyncio.ensure_future(batcher.submit(3))
    await asyncio.sleep(0)
    second.cancel()  # e.g. its deadline passed
    assert await first == 1 and await third == 3
    with pytest.raises(asyncio.CancelledError):
        await second
    assert handled == [[1], [3]]


@pytest.mark.parametrize(("gather_turns", "batches"), [(0, 4), (4, 1)])
async def test_calls_delivered_over_the_next_turns_join_the_batch(
    gather_turns: int, batches: int
) -> None:
    """Calls that reach the batcher one turn of the event loop after another (as gRPC delivers
    them under load) join the waiting batch when it gathers; without gathering the first
    goes alone."""
    seen: list[list[int]] = []

    async def handle(requests: list[int]) -> list[int | BaseException]:
        seen.append(requests)
        await asyncio.sleep(0)
        return list(requests)

    batcher = MicroBatcher(handle, gather_turns=gather_turns)

    async def later(n: int) -> int:
        for _ in range(n):
            await asyncio.sleep(0)  # delivered n turns after the first
        return await batcher.submit(n)

    assert await asyncio.gather(*(later(n) for n in range(4))) == [0, 1, 2, 3]
    assert len(seen) == batches


async def test_a_lone_call_waits_one_turn_at_most() -> None:
    turns = 0
    stop = False

    async def count_turns() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    async def handle(requests: list[int]) -> list[int | BaseException]:
        return list(requests)

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    before = turns
    assert await MicroBatcher(handle, gather_turns=16).submit(5) == 5
    stop = True
    await counter
    assert turns - before <= 3  # start, one turn of gathering, the answer
