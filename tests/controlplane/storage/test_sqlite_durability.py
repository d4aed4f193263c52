"""What the SQLite backend promises beyond the contract: every acknowledged write survives a restart or a SIGKILL,
revisions never go back, the log stays small, and a failing log fails writes instead of hanging them."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import threading
from contextlib import closing
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.storage import ExpiredError, KeyExistsError, KeyNotFoundError, UnavailableError, WatchEvent
from controlplane.storage.sqlite import SqliteStore

TIMEOUT = 5.0
REPO_ROOT = Path(__file__).resolve().parents[3]

# The child creates keys from 8 concurrent tasks (so the kill lands among group commits) and prints each key only
# after its create has returned.
CHILD = """
import asyncio, sys
from controlplane.storage.sqlite import SqliteStore

async def main(path):
    store = await SqliteStore.open(path)

    async def create_forever(writer):
        i = 0
        while True:
            key = f"/registry/things/w{writer}/k{i:06d}"
            await store.create(key, key.encode())
            print(key, flush=True)
            i += 1

    await asyncio.gather(*(create_forever(w) for w in range(8)))

asyncio.run(main(sys.argv[1]))
"""


async def collect(watch: AsyncIterator[WatchEvent]) -> list[WatchEvent]:
    return [event async for event in watch]


def log_rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT COUNT(*) FROM log").fetchone()[0]


async def test_restart_sees_every_write(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = await SqliteStore.open(db)
    kept = await store.create("/registry/pods/default/kept", b"1")
    changed = await store.create("/registry/pods/default/changed", b"1")
    changed = await store.update(changed.key, b"2", changed.revision)
    gone = await store.create("/registry/pods/default/gone", b"1")
    await store.delete(gone.key)
    await asyncio.gather(*(store.create(f"/registry/nodes/n{i:03d}", b"node") for i in range(100)))
    before = await store.list("/registry/")
    await store.close()

    store = await SqliteStore.open(db)
    try:
        after = await store.list("/registry/")
        assert after.items == before.items
        assert after.revision == before.revision
        assert await store.get(kept.key) == kept
        assert await store.get(changed.key) == changed
        with pytest.raises(KeyNotFoundError):
            await store.get(gone.key)
    finally:
        await store.close()


async def test_revisions_continue_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = await SqliteStore.open(db)
    created = await store.create("/registry/pods/default/a", b"1")
    # The newest write is a delete, then compaction: the counter must survive even though no key is left.
    deleted = await store.delete(created.key)
    await store.compact(deleted.revision)
    await store.close()

    store = await SqliteStore.open(db)
    try:
        assert await store.current_revision() == deleted.revision
        again = await store.create("/registry/pods/default/a", b"2")
        assert again.revision == deleted.revision + 1
        # History does not survive a restart: watching from before it expires; from it, works.
        with pytest.raises(ExpiredError):
            await asyncio.wait_for(anext(store.watch("/registry/", revision=created.revision)), TIMEOUT)
        watch = store.watch("/registry/", revision=deleted.revision)
        assert (await asyncio.wait_for(anext(watch), TIMEOUT)).revision == again.revision
        await watch.aclose()
    finally:
        await store.close()


async def test_writes_acknowledged_before_sigkill_survive(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(db),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None and child.stderr is not None
        while len(acknowledged) < 200:
            line = await asyncio.wait_for(child.stdout.readline(), 30)  # the first line waits for imports
            if not line:
                stderr = await child.stderr.read()
                pytest.fail(f"the writer exited early: {stderr.decode()}")
            acknowledged.append(line.decode().rstrip("\n"))
        child.send_signal(signal.SIGKILL)
        # Keys printed before the kill but not read yet count too; a line cut off by the kill does not.
        rest = await asyncio.wait_for(child.stdout.read(), TIMEOUT)
        acknowledged += rest.decode().split("\n")[:-1]
        assert await asyncio.wait_for(child.wait(), TIMEOUT) == -signal.SIGKILL
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()

    store = await SqliteStore.open(db)
    try:
        for key in acknowledged:
            kv = await store.get(key)
            assert kv.value == key.encode()
            assert kv.revision <= await store.current_revision()
    finally:
        await store.close()


async def test_burst_of_creates_shares_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    log = store._journal
    batch_sizes: list[int] = []
    write_rows = log._write_rows

    def recording(rows: list) -> None:  # runs on the writer thread
        batch_sizes.append(len(rows))
        write_rows(rows)

    monkeypatch.setattr(log, "_write_rows", recording)
    try:
        await asyncio.gather(*(store.create(f"/registry/pods/default/p{i:03d}", b"x") for i in range(100)))
        assert sum(batch_sizes) == 100
        assert max(batch_sizes) > 1
    finally:
        await store.close()


async def test_reads_see_only_durable_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader must never see a revision that a crash could take back (and a restart hand out again).
    store = await SqliteStore.open(tmp_path / "state.db")
    gate = threading.Event()
    write_rows = store._journal._write_rows

    def gated(rows: list) -> None:  # runs on the writer thread
        gate.wait(TIMEOUT)
        write_rows(rows)

    try:
        first = await store.create("/registry/pods/default/a", b"1")
        monkeypatch.setattr(store._journal, "_write_rows", gated)
        creating = asyncio.ensure_future(store.create("/registry/pods/default/b", b"1"))
        updating = asyncio.ensure_future(store.update(first.key, b"2", first.revision))
        await asyncio.sleep(0)  # one turn of the loop: both writes are now applied and waiting for the log

        listed = await store.list("/registry/")
        assert listed.items == [first] and listed.revision == first.revision
        assert await store.current_revision() == first.revision
        with pytest.raises(KeyExistsError):  # compare-and-swap does see writes in flight
            await store.create("/registry/pods/default/b", b"again")
        getting = asyncio.ensure_future(store.get(first.key))
        await asyncio.sleep(0)
        assert not getting.done()  # a read of a key with a write in flight waits for it

        gate.set()
        created, updated = await asyncio.wait_for(asyncio.gather(creating, updating), TIMEOUT)
        assert await asyncio.wait_for(getting, TIMEOUT) == updated
        assert await store.current_revision() == max(created.revision, updated.revision)
    finally:
        gate.set()
        await store.close()


async def test_compaction_keeps_only_what_a_restart_needs(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = await SqliteStore.open(db)
    kv = await store.create("/registry/leases/default/l", b"0")
    for i in range(1, 50):
        kv = await store.update(kv.key, str(i).encode(), kv.revision)
    for i in range(10):
        await store.create(f"/registry/pods/default/p{i}", b"x")
        await store.delete(f"/registry/pods/default/p{i}")
    kept = await store.create("/registry/pods/default/kept", b"x")
    await store.compact(await store.current_revision())
    await store.close()

    assert log_rows(db) == 2  # the lease's newest row and the kept pod's
    store = await SqliteStore.open(db)
    try:
        assert await store.get(kv.key) == kv
        assert await store.get(kept.key) == kept
        assert await store.count("/registry/") == 2
        assert await store.current_revision() == kept.revision
    finally:
        await store.close()


async def test_log_compacts_itself_as_it_grows(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = await SqliteStore.open(db, compact_every=20)
    kv = await store.create("/registry/leases/default/l", b"0")
    for i in range(200):
        kv = await store.update(kv.key, str(i).encode(), kv.revision)
    await store.close()
    assert log_rows(db) <= 21


async def test_failing_log_fails_writes_instead_of_hanging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        good = await store.create("/registry/pods/default/good", b"x")
        watch = store.watch("/registry/")
        delivered = asyncio.ensure_future(collect(watch))

        def disk_full(rows: list) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(store._journal, "_write_rows", disk_full)
        results = await asyncio.wait_for(
            asyncio.gather(
                store.create("/registry/pods/default/lost", b"x"),
                store.update(good.key, b"y", good.revision),
                return_exceptions=True,
            ),
            TIMEOUT,
        )
        assert all(isinstance(result, UnavailableError) for result in results)
        with pytest.raises(UnavailableError):
            await store.create("/registry/pods/default/later", b"x")
        # Still readable, at the last durable state.
        assert await store.get(good.key) == good
        with pytest.raises(KeyNotFoundError):
            await store.get("/registry/pods/default/lost")
        assert await store.current_revision() == good.revision
        # No event was published for the lost writes: the watch ends on close with nothing delivered.
        await store.close()
        assert await asyncio.wait_for(delivered, TIMEOUT) == []
    finally:
        await store.close()


async def test_second_open_of_the_same_file_is_refused(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        with pytest.raises(UnavailableError, match="in use"):
            await SqliteStore.open(tmp_path / "state.db")
    finally:
        await store.close()
    reopened = await SqliteStore.open(tmp_path / "state.db")
    await reopened.close()
