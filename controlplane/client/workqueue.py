"""client-go's work queue, for asyncio: what makes level-based controllers safe to run with several workers.

A key is queued at most once however often it is added (dirty set), is never handed to two workers at once
(processing set), and if it was added again while being processed it comes back after ``done`` — so the latest
state is always reconciled, once. ``DelayingQueue`` adds ``add_after`` (one heap, one timer task) and
``RateLimitingQueue`` adds per-key exponential retry with an overall token bucket, as client-go's defaults.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Hashable
from typing import Generic, Protocol, TypeVar

from .clock import Clock, RealClock

T = TypeVar("T", bound=Hashable)


class WorkQueue(Generic[T]):
    """FIFO of keys with client-go's dedupe and exclusive-processing rules.

    Worker loop::

        while (key := await queue.get()) is not None:
            try:
                await reconcile(key)
            finally:
                queue.done(key)

    ``get`` returns None once the queue is shut down and empty (after ``shutdown`` queued keys are still handed
    out, as in client-go, so a draining shutdown can finish them).
    """

    def __init__(self) -> None:
        self._queue: deque[T] = deque()
        self._dirty: set[T] = set()  # keys waiting to be processed (queued, or re-added while processing)
        self._processing: set[T] = set()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._shutting_down = False
        self._drained: asyncio.Event | None = None

    def add(self, item: T) -> None:
        if self._shutting_down or item in self._dirty:
            return
        self._dirty.add(item)
        if item in self._processing:
            return  # handed out again by done(), never to a second worker now
        self._queue.append(item)
        self._wake_getter()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    async def get(self) -> T | None:
        """The next key, waiting for one; None when the queue is shut down and has nothing left."""
        while not self._queue:
            if self._shutting_down:
                return None
            getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                try:
                    self._getters.remove(getter)
                except ValueError:
                    pass
                # We may have been woken and cancelled in the same turn: pass the wake-up on, or a key would sit
                # in the queue while another worker sleeps.
                if self._queue and not getter.cancelled():
                    self._wake_getter()
                raise
        item = self._queue.popleft()
        self._processing.add(item)
        self._dirty.discard(item)
        return item

    def done(self, item: T) -> None:
        """Mark a key handed out by ``get`` as finished; if it was added meanwhile it is queued again now."""
        self._processing.discard(item)
        if item in self._dirty:
            self._queue.append(item)
            self._wake_getter()
        self._check_drained()

    def shutdown(self) -> None:
        """Stop accepting keys and wake every waiting ``get`` (they return None once the queue is empty)."""
        self._shutting_down = True
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)

    async def shutdown_with_drain(self) -> None:
        """Shut down, then wait until every queued and in-flight key has been processed and marked done.

        client-go waits only for the in-flight keys; waiting for the queued ones too closes the window where a woken
        worker has not yet taken its key. Like client-go's, this waits forever if no worker is left.
        """
        self._drained = asyncio.Event()
        self.shutdown()
        self._check_drained()
        await self._drained.wait()

    def _check_drained(self) -> None:
        if self._drained is not None and not self._processing and not self._queue:
            self._drained.set()

    def _wake_getter(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    async def __aiter__(self) -> AsyncIterator[T]:
        """``async for key in queue`` until shutdown; the loop body must still call ``done(key)``."""
        while (item := await self.get()) is not None:
            yield item


class DelayingQueue(WorkQueue[T]):
    """A WorkQueue whose keys can be added after a delay.

    Waiting keys sit in one heap, served by one timer task (started on the first ``add_after``), not a task per key.
    Adding a key that is already waiting keeps the earlier of the two ready times, as client-go does.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__()
        self._clock: Clock = clock or RealClock()
        self._heap: list[tuple[float, int, T]] = []
        self._waiting: dict[T, tuple[float, int]] = {}  # the live heap entry per key; others are stale
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None

    def add_after(self, item: T, delay: float) -> None:
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(item)
            return
        ready_at = self._clock.now() + delay
        current = self._waiting.get(item)
        if current is not None and current[0] <= ready_at:
            return
        entry = (ready_at, next(self._seq))
        self._waiting[item] = entry
        heapq.heappush(self._heap, (*entry, item))
        if self._heap[0][1] == entry[1]:
            self._wakeup.set()  # the timer sleeps until the old head; it must re-aim at this earlier key
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._run_timer(), name="delaying-queue-timer")

    @property
    def waiting(self) -> int:
        """How many keys wait for their delay to pass."""
        return len(self._waiting)

    def shutdown(self) -> None:
        super().shutdown()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pop_ready(self, now: float) -> None:
        heap = self._heap
        while heap and (heap[0][0] <= now or self._waiting.get(heap[0][2]) != heap[0][:2]):
            ready_at, seq, item = heapq.heappop(heap)
            if self._waiting.get(item) == (ready_at, seq):
                del self._waiting[item]
                self.add(item)

    async def _run_timer(self) -> None:
        while not self._shutting_down:
            self._pop_ready(self._clock.now())
            self._wakeup.clear()
            if not self._heap:
                await self._wakeup.wait()
                continue
            sleeper = asyncio.ensure_future(self._clock.sleep(self._heap[0][0] - self._clock.now()))
            waker = asyncio.ensure_future(self._wakeup.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()


class RateLimiter(Protocol):
    """Decides how long a key waits before its next retry."""

    def when(self, item: Hashable) -> float:
        """The delay in seconds before ``item`` is retried; records the attempt."""
        ...

    def forget(self, item: Hashable) -> None:
        """Stop tracking ``item`` (it succeeded); its next failure starts from the shortest delay."""
        ...

    def num_requeues(self, item: Hashable) -> int:
        ...


class ItemExponentialFailureRateLimiter:
    """base_delay * 2**failures per key, capped at max_delay."""

    def __init__(self, base_delay: float = 0.005, max_delay: float = 1000.0) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._failures: dict[Hashable, int] = {}

    def when(self, item: Hashable) -> float:
        exp = self._failures.get(item, 0)
        self._failures[item] = exp + 1
        if exp >= 64:  # 2**1024 overflows a float; far past any cap anyway
            return self.max_delay
        return min(self.base_delay * 2.0**exp, self.max_delay)

    def forget(self, item: Hashable) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        return self._failures.get(item, 0)


class ItemFastSlowRateLimiter:
    """fast_delay for the first max_fast_attempts retries of a key, slow_delay after."""

    def __init__(self, fast_delay: float, slow_delay: float, max_fast_attempts: int) -> None:
        self.fast_delay = fast_delay
        self.slow_delay = slow_delay
        self.max_fast_attempts = max_fast_attempts
        self._failures: dict[Hashable, int] = {}

    def when(self, item: Hashable) -> float:
        self._failures[item] = self._failures.get(item, 0) + 1
        return self.fast_delay if self._failures[item] <= self.max_fast_attempts else self.slow_delay

    def forget(self, item: Hashable) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        return self._failures.get(item, 0)


class BucketRateLimiter:
    """An overall token bucket (golang.org/x/time/rate semantics): ``burst`` retries at once, then ``qps``.

    Each ``when`` reserves a token; a deficit becomes a delay, so retries queue up behind each other in time.
    """

    def __init__(self, qps: float = 10.0, burst: int = 100, *, clock: Clock | None = None) -> None:
        self.qps = qps
        self.burst = burst
        self._clock: Clock = clock or RealClock()
        self._tokens = float(burst)
        self._last = self._clock.now()

    def when(self, item: Hashable) -> float:
        now = self._clock.now()
        elapsed = max(0.0, now - self._last)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.qps) - 1.0
        self._last = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def forget(self, item: Hashable) -> None:
        pass

    def num_requeues(self, item: Hashable) -> int:
        return 0


class MaxOfRateLimiter:
    """The longest delay any of its limiters asks for."""

    def __init__(self, *limiters: RateLimiter) -> None:
        self.limiters = limiters

    def when(self, item: Hashable) -> float:
        # Every limiter must record the attempt, so no short-circuit.
        return max(limiter.when(item) for limiter in self.limiters)

    def forget(self, item: Hashable) -> None:
        for limiter in self.limiters:
            limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return max(limiter.num_requeues(item) for limiter in self.limiters)


def default_controller_rate_limiter(clock: Clock | None = None) -> MaxOfRateLimiter:
    """client-go's DefaultControllerRateLimiter: per key 5 ms doubling to 1000 s, overall 10 qps with burst 100."""
    return MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(0.005, 1000.0),
        BucketRateLimiter(qps=10.0, burst=100, clock=clock),
    )


class RateLimitingQueue(DelayingQueue[T]):
    """The queue controllers use: ``add_rate_limited`` on failure, ``forget`` on success."""

    def __init__(self, rate_limiter: RateLimiter | None = None, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self.rate_limiter: RateLimiter = rate_limiter or default_controller_rate_limiter(clock)

    def add_rate_limited(self, item: T) -> None:
        self.add_after(item, self.rate_limiter.when(item))

    def forget(self, item: T) -> None:
        self.rate_limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        return self.rate_limiter.num_requeues(item)
