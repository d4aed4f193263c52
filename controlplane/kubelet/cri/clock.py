"""Time for the runtimes: a clock that tests can drive, and one timer heap per runtime.

The simulated runtime must carry tens of thousands of containers with scheduled transitions (exit after N s, slow
starts, graceful stops) without a task or a loop timer per container, so each runtime keeps its own heap of
deadlines and arms at most one callback on the clock, for the earliest. A ``FakeClock`` makes those deadlines
deterministic: tests ``advance()`` it and the due transitions run at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch, and a way to be called back at such a time."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable: ...


class SystemClock:
    """The real clock; callbacks go on the running event loop."""

    def now(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        return asyncio.get_running_loop().call_later(max(0.0, when - time.time()), callback)


class _FakeHandle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that moves only when told to. ``advance`` runs due callbacks synchronously, in time order, with
    ``now()`` set to each callback's deadline while it runs, so chained deadlines fire within one advance."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _FakeHandle, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        handle = _FakeHandle()
        heapq.heappush(self._heap, (when, next(self._seq), handle, callback))
        return handle

    def advance(self, seconds: float) -> None:
        target = self._now + seconds
        while self._heap and self._heap[0][0] <= target:
            when, _, handle, callback = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            self._now = max(self._now, when)
            callback()
        self._now = target


class TimerEntry:
    """One scheduled callback in a TimerHeap. Cancelling is lazy: the entry stays in the heap and is skipped."""

    __slots__ = ("_owner", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object], owner: TimerHeap) -> None:
        self.when = when
        self.callback: Callable[[], object] | None = callback
        self.cancelled = False
        self._owner: TimerHeap | None = owner

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.callback = None  # drop references early; the heap may keep the entry for a while
        if self._owner is not None:
            self._owner._cancelled += 1


class TimerHeap:
    """Every deadline of one runtime in one heap, with a single callback armed on the clock for the earliest."""

    # A loop timer can fire a hair before the wall clock reaches its deadline; count those as due.
    _SLACK = 1e-3

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, TimerEntry]] = []
        self._seq = itertools.count()
        self._armed: Cancellable | None = None
        self._armed_when = float("inf")
        self._cancelled = 0  # cancelled entries still in the heap

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerEntry:
        if self._cancelled > 1024 and self._cancelled * 2 > len(self._heap):
            self._compact()
        entry = TimerEntry(when, callback, self)
        heapq.heappush(self._heap, (when, next(self._seq), entry))
        if when < self._armed_when:
            self._arm(when)
        return entry

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerEntry:
        return self.call_at(self.clock.now() + delay, callback)

    async def sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds of this heap's clock, costing one heap entry and no loop timer."""
        if delay <= 0:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        entry = self.call_later(delay, wake)
        try:
            await future
        finally:
            entry.cancel()

    def close(self) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed, self._armed_when = None, float("inf")
        for _, _, entry in self._heap:
            entry._owner = None
        self._heap.clear()
        self._cancelled = 0

    def _compact(self) -> None:
        self._heap = [item for item in self._heap if not item[2].cancelled]
        heapq.heapify(self._heap)
        self._cancelled = 0

    def _arm(self, when: float) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed_when = when
        self._armed = self.clock.call_at(when, self._fire)

    def _fire(self) -> None:
        self._armed, self._armed_when = None, float("inf")
        now = self.clock.now() + self._SLACK
        while self._heap and self._heap[0][0] <= now:
            _, _, entry = heapq.heappop(self._heap)
            callback = entry.callback
            if entry.cancelled or callback is None:
                self._cancelled -= 1
                continue
            entry._owner = None  # spent: a later cancel() must not count it as a cancelled heap entry
            entry.cancelled = True
            entry.callback = None
            callback()
        # Cancelled entries at the head would otherwise arm useless wake-ups.
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
            self._cancelled -= 1
        # A callback may have armed a later deadline than what is now at the head.
        if self._heap and self._heap[0][0] < self._armed_when:
            self._arm(self._heap[0][0])
