"""The timer heap that carries every scheduled transition of a runtime: order, cancellation, one armed timer."""

from __future__ import annotations

import asyncio
import functools

from controlplane.kubelet.cri.clock import FakeClock, SystemClock, TimerHeap


def test_fires_in_time_order_within_one_advance() -> None:
    clock = FakeClock()
    heap = TimerHeap(clock)
    fired: list[tuple[str, float]] = []
    start = clock.now()

    def record(name: str) -> None:
        fired.append((name, clock.now() - start))

    for name, delay in (("c", 3.0), ("a", 1.0), ("b", 2.0)):
        heap.call_later(delay, functools.partial(record, name))
    clock.advance(2.5)
    assert fired == [("a", 1.0), ("b", 2.0)]
    clock.advance(1)
    assert [n for n, _ in fired] == ["a", "b", "c"]
    assert len(heap) == 0


def test_cancelled_entries_do_not_fire_and_are_compacted() -> None:
    clock = FakeClock()
    heap = TimerHeap(clock)
    fired: list[int] = []
    entries = [heap.call_later(1 + i, functools.partial(fired.append, i)) for i in range(3000)]
    for entry in entries[:2500]:
        entry.cancel()
    assert len(heap) == 500
    heap.call_later(0.5, lambda: fired.append(-1))  # enough cancelled entries: this call compacts the heap
    assert len(heap._heap) == 501
    clock.advance(10_000)
    assert fired == [-1, *range(2500, 3000)]


def test_callbacks_may_schedule_more() -> None:
    clock = FakeClock()
    heap = TimerHeap(clock)
    fired: list[str] = []
    heap.call_later(1, lambda: heap.call_later(1, lambda: fired.append("second")))
    heap.call_later(5, lambda: fired.append("later"))
    clock.advance(2)
    assert fired == ["second"]
    clock.advance(3)
    assert fired == ["second", "later"]


async def test_sleep_on_the_system_clock() -> None:
    heap = TimerHeap(SystemClock())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(asyncio.gather(heap.sleep(0.05), heap.sleep(0.1)), 5)
    assert loop.time() - started >= 0.09
    assert len(heap) == 0
