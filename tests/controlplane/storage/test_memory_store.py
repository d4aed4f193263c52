"""MemoryStore behaviour the contract leaves to the backend: bounded history, slow watchers, the watcher prefix
index, and reads at revisions the store cannot serve. (SqliteStore shares all of it.)"""

from __future__ import annotations

import asyncio

import pytest

from controlplane.storage import ExpiredError, UnavailableError
from controlplane.storage.memory import FIRST_REVISION, MemoryStore

TIMEOUT = 5.0


async def test_revisions_start_after_the_empty_store_revision() -> None:
    store = MemoryStore()
    assert await store.current_revision() == FIRST_REVISION
    assert (await store.create("/registry/a", b"x")).revision == FIRST_REVISION + 1


async def test_history_limit_expires_old_watch_positions() -> None:
    store = MemoryStore(history_limit=3)
    first = await store.create("/registry/pods/default/p0", b"x")
    for i in range(1, 5):
        await store.create(f"/registry/pods/default/p{i}", b"x")
    with pytest.raises(ExpiredError):
        await asyncio.wait_for(anext(store.watch("/registry/", revision=first.revision)), TIMEOUT)
    # The last three changes are still there.
    oldest_kept = await store.current_revision() - 3
    watch = store.watch("/registry/", revision=oldest_kept)
    assert (await asyncio.wait_for(anext(watch), TIMEOUT)).revision == oldest_kept + 1
    await watch.aclose()


async def test_watcher_too_far_behind_is_expired_without_blocking_writers() -> None:
    store = MemoryStore(watch_backlog=3)
    slow = store.watch("/registry/")
    fast = store.watch("/registry/")
    first = await store.create("/registry/pods/default/first", b"x")
    for watch in (slow, fast):  # both are live, past their replay
        assert (await asyncio.wait_for(anext(watch), TIMEOUT)).revision == first.revision
    for i in range(5):
        kv = await store.create(f"/registry/pods/default/p{i}", b"x")
        assert (await asyncio.wait_for(anext(fast), TIMEOUT)).revision == kv.revision
    with pytest.raises(ExpiredError):
        await asyncio.wait_for(anext(slow), TIMEOUT)
    assert len(store._watchers["/registry/"]) == 1  # the expired watcher has left the index
    await fast.aclose()


async def test_watch_prefixes_of_any_length_match_like_startswith() -> None:
    store = MemoryStore()
    prefixes = ["", "/", "/registry/", "/registry/po", "/registry/pods/", "/registry/pods/ns1/",
                "/registry/pods/ns1/a", "/registry/pods/ns2/", "/x/"]
    watches = {prefix: store.watch(prefix) for prefix in prefixes}
    written = [
        "/registry/pods/ns1/a",
        "/registry/pods/ns1/ab",
        "/registry/pods/ns2/a",
        "/registry/podsx/ns1/a",
        "/registry/services/ns1/a",
        "/registry/pods/ns1",
        "/x/y",
    ]
    # Then one marker per watcher: reading a watcher up to its own marker shows everything it received before it.
    written += [prefix + "~marker" for prefix in prefixes]
    for key in written:
        await store.create(key, b"x")

    for prefix, watch in watches.items():
        marker = prefix + "~marker"
        expected = [key for key in written[: written.index(marker) + 1] if key.startswith(prefix)]
        seen = [(await asyncio.wait_for(anext(watch), TIMEOUT)).key for _ in expected]
        assert seen == expected, prefix
        await watch.aclose()


async def test_list_at_future_revision_is_unavailable() -> None:
    store = MemoryStore()
    await store.create("/registry/a", b"x")
    with pytest.raises(UnavailableError):
        await store.list("/registry/", revision=await store.current_revision() + 1)


async def test_operations_after_close_are_unavailable() -> None:
    store = MemoryStore()
    await store.close()
    with pytest.raises(UnavailableError):
        await store.create("/registry/a", b"x")
    with pytest.raises(UnavailableError):
        await anext(store.watch("/registry/"))
    await store.close()  # closing twice is harmless
