"""The Store contract, run against every backend in STORE_FACTORIES: one test per promise the API server relies on
(compare-and-swap, global revisions, consistent paginated lists, watch replay and expiry)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from controlplane.storage import (
    ConflictError,
    ExpiredError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    Store,
    WatchEvent,
    guaranteed_update,
)

TIMEOUT = 5.0  # generous: a passing test never waits for it


async def next_event(watch: AsyncIterator[WatchEvent]) -> WatchEvent:
    return await asyncio.wait_for(anext(watch), TIMEOUT)


async def take(watch: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    return [await next_event(watch) for _ in range(n)]


async def read_all_pages(store: Store, prefix: str, limit: int, revision: int = 0) -> list[KeyValue]:
    items: list[KeyValue] = []
    start_after: str | None = None
    while True:
        page = await store.list(prefix, limit=limit, start_after=start_after, revision=revision)
        items += page.items
        if page.continue_key is None:
            return items
        start_after = page.continue_key


# -- single keys ------------------------------------------------------------------------------------------------


async def test_create_then_get(store: Store) -> None:
    created = await store.create("/registry/pods/default/a", b"one")
    assert created.key == "/registry/pods/default/a"
    assert created.value == b"one"
    assert created.create_revision == created.revision
    assert await store.get("/registry/pods/default/a") == created


async def test_create_existing_key_raises_key_exists(store: Store) -> None:
    await store.create("/registry/pods/default/a", b"one")
    with pytest.raises(KeyExistsError):
        await store.create("/registry/pods/default/a", b"two")
    assert (await store.get("/registry/pods/default/a")).value == b"one"


async def test_get_missing_raises_key_not_found(store: Store) -> None:
    with pytest.raises(KeyNotFoundError):
        await store.get("/registry/pods/default/missing")


async def test_update_at_current_revision_succeeds(store: Store) -> None:
    created = await store.create("/registry/pods/default/a", b"one")
    updated = await store.update("/registry/pods/default/a", b"two", created.revision)
    assert updated.value == b"two"
    assert updated.revision > created.revision
    assert updated.create_revision == created.create_revision
    assert await store.get("/registry/pods/default/a") == updated


async def test_update_at_stale_revision_conflicts(store: Store) -> None:
    created = await store.create("/registry/pods/default/a", b"one")
    updated = await store.update("/registry/pods/default/a", b"two", created.revision)
    with pytest.raises(ConflictError) as conflict:
        await store.update("/registry/pods/default/a", b"three", created.revision)
    assert (conflict.value.expected, conflict.value.actual) == (created.revision, updated.revision)
    assert await store.get("/registry/pods/default/a") == updated


async def test_update_of_deleted_key_raises_key_not_found(store: Store) -> None:
    created = await store.create("/registry/pods/default/a", b"one")
    await store.delete("/registry/pods/default/a")
    with pytest.raises(KeyNotFoundError):
        await store.update("/registry/pods/default/a", b"two", created.revision)


async def test_delete_returns_last_value_at_delete_revision(store: Store) -> None:
    created = await store.create("/registry/pods/default/a", b"one")
    deleted = await store.delete("/registry/pods/default/a")
    assert deleted.value == b"one"
    assert deleted.revision > created.revision
    assert deleted.revision == await store.current_revision()
    assert deleted.create_revision == created.create_revision
    with pytest.raises(KeyNotFoundError):
        await store.get("/registry/pods/default/a")
    with pytest.raises(KeyNotFoundError):
        await store.delete("/registry/pods/default/a")


async def test_delete_with_expected_revision_is_compare_and_swap(store: Store) -> None:
    created = await store.create("/registry/pods/default/a", b"one")
    updated = await store.update("/registry/pods/default/a", b"two", created.revision)
    with pytest.raises(ConflictError):
        await store.delete("/registry/pods/default/a", expected_revision=created.revision)
    assert await store.get("/registry/pods/default/a") == updated
    deleted = await store.delete("/registry/pods/default/a", expected_revision=updated.revision)
    assert deleted.value == b"two"


async def test_revisions_increase_globally_across_keys(store: Store) -> None:
    last = await store.current_revision()
    a = await store.create("/registry/pods/default/a", b"1")
    b = await store.create("/registry/services/default/b", b"1")
    a2 = await store.update("/registry/pods/default/a", b"2", a.revision)
    b2 = await store.delete("/registry/services/default/b")
    c = await store.create("/registry/services/default/b", b"again")
    revisions = [a.revision, b.revision, a2.revision, b2.revision, c.revision]
    assert revisions == sorted(set(revisions))
    assert revisions[0] > last
    assert await store.current_revision() == c.revision


# -- lists ------------------------------------------------------------------------------------------------------


async def test_list_returns_prefix_in_key_order_at_current_revision(store: Store) -> None:
    names = ["c", "a", "e", "b", "d"]
    for name in names:
        await store.create(f"/registry/pods/default/{name}", name.encode())
    await store.create("/registry/services/default/a", b"other")
    listed = await store.list("/registry/pods/")
    assert [kv.key for kv in listed.items] == [f"/registry/pods/default/{n}" for n in sorted(names)]
    assert [kv.value for kv in listed.items] == [n.encode() for n in sorted(names)]
    assert listed.revision == await store.current_revision()
    assert listed.continue_key is None


async def test_list_pages_cover_every_item_once(store: Store) -> None:
    keys = [f"/registry/pods/ns{i % 3}/p{i:02d}" for i in range(25)]
    for key in random.Random(7).sample(keys, len(keys)):
        await store.create(key, b"x")
    revision = await store.current_revision()

    first = await store.list("/registry/pods/", limit=7)
    assert len(first.items) == 7 and first.remaining == 18
    assert first.continue_key == first.items[-1].key
    second = await store.list("/registry/pods/", limit=7, start_after=first.continue_key)
    assert len(second.items) == 7 and second.remaining == 11
    assert second.revision == revision

    pages = await read_all_pages(store, "/registry/pods/", limit=7)
    assert [kv.key for kv in pages] == sorted(keys)
    last = await store.list("/registry/pods/", limit=7, start_after=sorted(keys)[-5])
    assert len(last.items) == 4 and last.continue_key is None


async def test_list_prefix_does_not_match_longer_resource_names(store: Store) -> None:
    await store.create("/registry/pods/default/a", b"pod")
    await store.create("/registry/podsx/default/a", b"not a pod")
    await store.create("/registry/pod/default/a", b"not a pod either")
    listed = await store.list("/registry/pods/")
    assert [kv.key for kv in listed.items] == ["/registry/pods/default/a"]
    assert await store.count("/registry/pods/") == 1


async def test_count(store: Store) -> None:
    for i in range(5):
        await store.create(f"/registry/pods/default/p{i}", b"x")
    for i in range(3):
        await store.create(f"/registry/pods/kube-system/p{i}", b"x")
    await store.delete("/registry/pods/default/p0")
    assert await store.count("/registry/pods/") == 7
    assert await store.count("/registry/pods/default/") == 4
    assert await store.count("/registry/nodes/") == 0


async def test_list_at_older_revision_reads_that_snapshot(store: Store) -> None:
    a = await store.create("/registry/pods/default/a", b"a1")
    b = await store.create("/registry/pods/default/b", b"b1")
    then = await store.current_revision()
    await store.update("/registry/pods/default/a", b"a2", a.revision)
    await store.delete("/registry/pods/default/b")
    await store.create("/registry/pods/default/c", b"c1")
    await store.create("/registry/pods/default/0", b"zero")

    old = await store.list("/registry/pods/", revision=then)
    assert old.revision == then
    assert old.items == [a, b]
    first = await store.list("/registry/pods/", revision=then, limit=1)
    assert first.items == [a] and first.remaining == 1 and first.continue_key == a.key
    assert await read_all_pages(store, "/registry/pods/", limit=1, revision=then) == [a, b]
    now = await store.list("/registry/pods/")
    assert [kv.value for kv in now.items] == [b"zero", b"a2", b"c1"]


async def test_list_at_compacted_revision_raises_expired(store: Store) -> None:
    a = await store.create("/registry/pods/default/a", b"1")
    b = await store.update("/registry/pods/default/a", b"2", a.revision)
    await store.update("/registry/pods/default/a", b"3", b.revision)
    await store.compact(b.revision)
    with pytest.raises(ExpiredError):
        await store.list("/registry/pods/", revision=a.revision)


# -- guaranteed_update ------------------------------------------------------------------------------------------


async def test_guaranteed_update_retries_until_every_concurrent_writer_lands(store: Store) -> None:
    key = "/registry/counters/default/c"
    await store.create(key, b"0")

    async def increment(current: KeyValue) -> bytes:
        await asyncio.sleep(0)  # let the other writers read the same revision, so that they really conflict
        return str(int(current.value) + 1).encode()

    results = await asyncio.wait_for(
        asyncio.gather(*(guaranteed_update(store, key, increment) for _ in range(20))), TIMEOUT
    )
    assert sorted(int(kv.value) for kv in results) == list(range(1, 21))
    assert (await store.get(key)).value == b"20"


async def test_guaranteed_update_returning_none_changes_nothing(store: Store) -> None:
    created = await store.create("/registry/pods/default/a", b"one")
    result = await guaranteed_update(store, "/registry/pods/default/a", lambda current: None)
    assert result == created
    assert await store.current_revision() == created.revision


# -- watch ------------------------------------------------------------------------------------------------------


async def test_watch_from_now_sees_only_later_writes(store: Store) -> None:
    await store.create("/registry/pods/default/before", b"x")
    watch = store.watch("/registry/pods/")
    pending = asyncio.ensure_future(next_event(watch))
    after = await store.create("/registry/pods/default/after", b"y")
    event = await pending
    assert (event.type, event.key, event.value, event.revision) == ("ADDED", after.key, b"y", after.revision)
    assert event.prev_value is None
    await watch.aclose()


async def test_watch_from_old_revision_replays_in_order_then_continues(store: Store) -> None:
    a = await store.create("/registry/pods/default/a", b"a1")
    b = await store.create("/registry/pods/default/b", b"b1")
    a2 = await store.update("/registry/pods/default/a", b"a2", a.revision)
    watch = store.watch("/registry/pods/", revision=a.revision)
    replayed = await take(watch, 2)
    assert [(e.type, e.key, e.revision) for e in replayed] == [
        ("ADDED", b.key, b.revision),
        ("MODIFIED", a.key, a2.revision),
    ]
    assert replayed[1].prev_value == b"a1" and replayed[1].value == b"a2"
    c = await store.create("/registry/pods/default/c", b"c1")
    live = await next_event(watch)
    assert (live.type, live.key, live.revision) == ("ADDED", c.key, c.revision)
    await watch.aclose()


async def test_watch_with_prefix_sees_only_that_prefix(store: Store) -> None:
    watch = store.watch("/registry/pods/kube-system/")
    pending = asyncio.ensure_future(next_event(watch))
    await store.create("/registry/pods/default/a", b"x")
    await store.create("/registry/podsx/kube-system/a", b"x")
    await store.create("/registry/pods/kube-systemx/a", b"x")
    wanted = await store.create("/registry/pods/kube-system/a", b"x")
    event = await pending
    assert (event.key, event.revision) == (wanted.key, wanted.revision)
    await watch.aclose()


async def test_deleted_event_carries_last_value(store: Store) -> None:
    created = await store.create("/registry/pods/default/a", b"one")
    updated = await store.update("/registry/pods/default/a", b"two", created.revision)
    watch = store.watch("/registry/pods/", revision=updated.revision)
    pending = asyncio.ensure_future(next_event(watch))
    deleted = await store.delete("/registry/pods/default/a")
    event = await pending
    assert (event.type, event.key, event.revision) == ("DELETED", created.key, deleted.revision)
    assert event.value == b"two" and event.prev_value == b"two"
    await watch.aclose()


async def test_watch_from_compacted_revision_raises_expired(store: Store) -> None:
    a = await store.create("/registry/pods/default/a", b"1")
    b = await store.update("/registry/pods/default/a", b"2", a.revision)
    c = await store.update("/registry/pods/default/a", b"3", b.revision)
    await store.compact(b.revision)

    expired = store.watch("/registry/pods/", revision=a.revision)
    with pytest.raises(ExpiredError):
        await next_event(expired)

    # Everything after the compacted revision is still there.
    watch = store.watch("/registry/pods/", revision=b.revision)
    event = await next_event(watch)
    assert (event.revision, event.value) == (c.revision, b"3")
    await watch.aclose()


@pytest.mark.parametrize("start", ["from-revision", "from-now"])
async def test_watch_started_during_writes_sees_each_event_exactly_once(store: Store, start: str) -> None:
    prefix = "/registry/race/default/"
    writers, per_writer = 4, 50
    halfway = asyncio.Event()
    written = 0

    async def write(w: int) -> None:
        nonlocal written
        for i in range(per_writer):
            await store.create(f"{prefix}w{w}-{i:03d}", b"x")
            written += 1
            if written == writers * per_writer // 2:
                halfway.set()
            await asyncio.sleep(0)  # interleave the writers with each other and with the watch starting

    writing = asyncio.gather(*(write(w) for w in range(writers)))
    await asyncio.wait_for(halfway.wait(), TIMEOUT)
    # Start the watch while the writers are still going (some of their writes are in flight).
    after = await store.current_revision() if start == "from-revision" else 0
    watch = store.watch(prefix, revision=after)

    async def collect() -> list[WatchEvent]:
        seen = []
        async for event in watch:
            seen.append(event)
            if event.key == prefix + "zz-end":
                return seen
        raise AssertionError("the watch ended early")

    collecting = asyncio.ensure_future(collect())
    await asyncio.wait_for(writing, TIMEOUT)
    end = await store.create(prefix + "zz-end", b"x")
    seen = await asyncio.wait_for(collecting, TIMEOUT)

    revisions = [event.revision for event in seen]
    # Every write here is under the prefix, so the revisions it got are consecutive: a gap is a missed event.
    first = after + 1 if after else revisions[0]
    assert revisions == list(range(first, end.revision + 1))
    assert len({event.key for event in seen}) == len(seen)
    await watch.aclose()


async def test_close_ends_watches(store: Store) -> None:
    watch = store.watch("/registry/pods/")
    pending = asyncio.ensure_future(next_event(watch))
    await store.create("/registry/pods/default/a", b"x")
    await pending  # the watch is running

    async def drain() -> list[WatchEvent]:
        return [event async for event in watch]

    draining = asyncio.ensure_future(drain())
    await store.close()
    assert await asyncio.wait_for(draining, TIMEOUT) == []
