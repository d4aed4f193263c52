"""Watch writes under load carry several events (ServerOptions.watch_linger), without delaying a lone event.

The watcher's batching, on its own: an event after a quiet spell is answered at once, whatever the linger; events
that follow within the linger are held until it has passed since the last answer, and go out together.
"""

from __future__ import annotations

import asyncio

from controlplane.apiserver.cacher import Watcher
from controlplane.apiserver.selectors import FieldSelector, LabelSelector


def _watcher() -> Watcher:
    return Watcher("/registry/pods/", LabelSelector.parse(None), FieldSelector.parse(None, {}, "pods"), {}, 0, None,
                   lambda value, revision: {}, max_pending=100)


async def test_a_lone_event_is_not_held_and_a_burst_goes_out_together() -> None:
    watcher = _watcher()
    loop = asyncio.get_running_loop()
    linger = 0.5

    watcher.push_raw(b"first")
    started = loop.time()
    assert await watcher.next_batch(5.0, linger) == [b"first"]
    assert loop.time() - started < linger / 2, "an event after a quiet spell waits for nothing"

    # Within the linger of that answer: the next batch waits for the rest of it, gathering what comes meanwhile.
    loop.call_later(0.05, watcher.push_raw, b"second")
    loop.call_later(0.15, watcher.push_raw, b"third")
    assert await watcher.next_batch(5.0, linger) == [b"second", b"third"]
    assert loop.time() - started >= linger * 0.9

    # Quiet for longer than the linger: at once again.
    await asyncio.sleep(linger)
    watcher.push_raw(b"fourth")
    started = loop.time()
    assert await watcher.next_batch(5.0, linger) == [b"fourth"]
    assert loop.time() - started < linger / 2


async def test_a_closed_watcher_is_answered_at_once() -> None:
    watcher = _watcher()
    watcher.push_raw(b"one")
    await watcher.next_batch(5.0, 10.0)
    watcher.push_raw(b"two")
    watcher.close()
    async with asyncio.timeout(2.0):  # not the 10 s linger: the stream is ending
        assert await watcher.next_batch(5.0, 10.0) == [b"two"]
