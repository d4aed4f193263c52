"""The work queue's client-go guarantees: dedupe, exclusive processing, requeue on done, shutdown, delays, rate limits."""

from __future__ import annotations

import asyncio
import random

import pytest

from controlplane.client import (
    BucketRateLimiter,
    DelayingQueue,
    FakeClock,
    ItemExponentialFailureRateLimiter,
    ItemFastSlowRateLimiter,
    RateLimitingQueue,
    WorkQueue,
    default_controller_rate_limiter,
)


async def get_now(q: WorkQueue[str], timeout: float = 1.0) -> str | None:
    return await asyncio.wait_for(q.get(), timeout)


async def test_add_dedupes_while_queued() -> None:
    q: WorkQueue[str] = WorkQueue()
    for key in ["a", "b", "a", "a", "b", "c"]:
        q.add(key)
    assert len(q) == 3
    assert [await get_now(q) for _ in range(3)] == ["a", "b", "c"]


async def test_add_while_processing_requeues_at_done() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert await get_now(q) == "a"
    q.add("a")
    q.add("a")
    assert len(q) == 0, "a key being processed must not be handed out again"
    q.done("a")
    assert len(q) == 1
    assert await get_now(q) == "a"
    q.done("a")
    assert len(q) == 0


async def test_done_without_readd_does_not_requeue() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    await get_now(q)
    q.done("a")
    assert len(q) == 0


async def test_key_never_processed_by_two_workers_and_latest_add_always_processed() -> None:
    q: WorkQueue[str] = WorkQueue()
    keys = [f"k{i}" for i in range(8)]
    version = {k: 0 for k in keys}  # bumped on every add: the "state" a level-based worker must catch up with
    processed = {k: -1 for k in keys}
    in_flight: set[str] = set()
    overlaps: list[str] = []
    rng = random.Random(7)
    producing = True  # adds after shutdown are dropped by design, so workers re-add only while producing

    def add(key: str) -> None:
        version[key] += 1
        q.add(key)

    async def worker() -> None:
        while (key := await q.get()) is not None:
            if key in in_flight:
                overlaps.append(key)
            in_flight.add(key)
            seen = version[key]
            # Yield a few times so other workers and the producer run while this key is in flight.
            for _ in range(rng.randint(1, 4)):
                await asyncio.sleep(0)
                if producing and rng.random() < 0.3:
                    add(key)  # changed while processing: must be processed again after done()
            processed[key] = max(processed[key], seen)
            in_flight.discard(key)
            q.done(key)

    workers = [asyncio.create_task(worker()) for _ in range(5)]
    for _ in range(300):
        add(rng.choice(keys))
        if rng.random() < 0.5:
            await asyncio.sleep(0)
    producing = False
    await asyncio.wait_for(q.shutdown_with_drain(), 5)
    await asyncio.wait_for(asyncio.gather(*workers), 5)

    assert overlaps == []
    assert processed == version, "every key's latest add must have been seen by a worker"


async def test_shutdown_unblocks_getters() -> None:
    q: WorkQueue[str] = WorkQueue()
    getters = [asyncio.create_task(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    q.shutdown()
    assert await asyncio.wait_for(asyncio.gather(*getters), 1) == [None, None, None]
    q.add("late")
    assert len(q) == 0, "adds after shutdown are ignored"


async def test_shutdown_still_hands_out_queued_keys() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.shutdown()
    assert await get_now(q) == "a"
    assert await get_now(q) is None


async def test_shutdown_with_drain_waits_for_in_flight_keys() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert await get_now(q) == "a"
    drain = asyncio.create_task(q.shutdown_with_drain())
    await asyncio.sleep(0)
    assert not drain.done()
    q.done("a")
    await asyncio.wait_for(drain, 1)


async def test_cancelled_getter_does_not_swallow_a_wakeup() -> None:
    q: WorkQueue[str] = WorkQueue()
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.add("a")  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs: `second` must get the key
    assert await asyncio.wait_for(second, 1) == "a"


async def test_async_iteration_ends_at_shutdown() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("b")
    seen = []
    async for key in q:
        seen.append(key)
        q.done(key)
        if len(seen) == 2:
            q.shutdown()
    assert seen == ["a", "b"]


async def test_add_after_orders_by_ready_time() -> None:
    clock = FakeClock()
    q: DelayingQueue[str] = DelayingQueue(clock=clock)
    q.add_after("c", 3)
    q.add_after("a", 1)
    q.add_after("b", 2)
    q.add_after("now", 0)
    assert await get_now(q) == "now"
    assert len(q) == 0 and q.waiting == 3
    for expected in ["a", "b", "c"]:
        clock.step(1)
        assert await get_now(q) == expected
        assert len(q) == 0
    assert q.waiting == 0
    q.shutdown()


async def test_add_after_keeps_the_earlier_ready_time(eventually) -> None:
    clock = FakeClock()
    q: DelayingQueue[str] = DelayingQueue(clock=clock)
    q.add_after("x", 10)
    q.add_after("x", 1)  # earlier: replaces
    q.add_after("x", 5)  # later: ignored
    assert q.waiting == 1
    clock.step(1)
    assert await get_now(q) == "x"
    q.done("x")
    clock.step(10)
    await eventually(lambda: clock.sleepers == 0 or len(q) > 0, 1)
    assert len(q) == 0, "the superseded entries must not fire"
    q.shutdown()


async def test_add_after_an_earlier_key_while_the_timer_sleeps() -> None:
    clock = FakeClock()
    q: DelayingQueue[str] = DelayingQueue(clock=clock)
    q.add_after("late", 100)
    await asyncio.sleep(0)  # let the timer go to sleep until t=100
    q.add_after("early", 1)
    clock.step(1)
    assert await get_now(q) == "early"
    q.shutdown()


def test_item_exponential_limiter_sequence_and_forget() -> None:
    rl = ItemExponentialFailureRateLimiter(0.005, 1000.0)
    assert [rl.when("a") for _ in range(5)] == pytest.approx([0.005, 0.01, 0.02, 0.04, 0.08])
    assert rl.num_requeues("a") == 5
    assert rl.when("b") == pytest.approx(0.005), "keys back off independently"
    for _ in range(30):
        last = rl.when("a")
    assert last == 1000.0
    for _ in range(2000):  # far past float range of 2**n: must stay capped, not overflow
        rl.when("a")
    assert rl.when("a") == 1000.0
    rl.forget("a")
    assert rl.num_requeues("a") == 0
    assert rl.when("a") == pytest.approx(0.005)


def test_fast_slow_limiter() -> None:
    rl = ItemFastSlowRateLimiter(0.1, 5.0, 2)
    assert [rl.when("a") for _ in range(4)] == [0.1, 0.1, 5.0, 5.0]
    rl.forget("a")
    assert rl.when("a") == 0.1


def test_bucket_limiter_burst_then_qps() -> None:
    clock = FakeClock()
    rl = BucketRateLimiter(qps=10, burst=100, clock=clock)
    assert all(rl.when(i) == 0 for i in range(100))
    assert rl.when("x") == pytest.approx(0.1)
    assert rl.when("y") == pytest.approx(0.2)
    clock.step(0.2)  # refills the two reserved tokens
    assert rl.when("z") == pytest.approx(0.1)
    clock.step(1000)
    assert all(rl.when(i) == 0 for i in range(100)), "refill is capped at burst"
    assert rl.when("w") > 0


def test_default_controller_rate_limiter_is_the_max_of_both() -> None:
    clock = FakeClock()
    rl = default_controller_rate_limiter(clock)
    assert rl.when("a") == pytest.approx(0.005)
    for i in range(99):
        rl.when(f"other-{i}")
    # The bucket is empty now, so the overall limit (0.1 s) beats the per-item 0.01 s.
    assert rl.when("a") == pytest.approx(0.1)
    assert rl.num_requeues("a") == 2
    rl.forget("a")
    assert rl.num_requeues("a") == 0


async def test_rate_limiting_queue_requeues_after_backoff() -> None:
    clock = FakeClock()
    q: RateLimitingQueue[str] = RateLimitingQueue(ItemExponentialFailureRateLimiter(1.0, 60.0), clock=clock)
    q.add("a")
    assert await get_now(q) == "a"
    q.add_rate_limited("a")  # failed: retry in 1 s
    q.done("a")
    assert len(q) == 0
    clock.step(1)
    assert await get_now(q) == "a"
    q.add_rate_limited("a")  # failed again: 2 s
    q.done("a")
    assert q.num_requeues("a") == 2
    clock.step(1)
    assert len(q) == 0
    clock.step(1)
    assert await get_now(q) == "a"
    q.forget("a")
    q.done("a")
    assert q.num_requeues("a") == 0
    q.shutdown()
