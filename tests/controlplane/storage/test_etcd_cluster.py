"""EtcdStore against a real three-member etcd cluster losing its leader: writes come back after a bounded outage
with nothing acknowledged lost, watches resume without gaps, and the killed member catches up when restarted."""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from storage_helpers import wait_until

from controlplane.storage import KeyExistsError, UnavailableError, WatchEvent
from controlplane.storage.etcd import EtcdStore
from controlplane.storage.etcd_process import LocalEtcdCluster

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(
        shutil.which("etcd") is None, reason="the etcd binary is not installed (apt-get install etcd-server)"
    ),
    pytest.mark.timeout(60),
]


PREFIX = "/registry/pods/default/"
# The store's per-operation budget. A write in flight on a follower when the leader dies is lost with the leader
# and only ends at this deadline (etcd does not fail pending proposals on a leader change), so it bounds the outage.
STORE_TIMEOUT = 2.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalEtcdCluster]:
    c = LocalEtcdCluster(3, tmp_path / "etcd")
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@dataclass
class Writer:
    """Streams creates through the store, retrying each one on UnavailableError as an API client would."""

    store: EtcdStore
    acknowledged: dict[str, int] = field(default_factory=dict)  # key -> revision the store reported
    acknowledged_at: list[float] = field(default_factory=list)  # monotonic time of each acknowledgement
    failures: int = 0
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        i = 0
        while not self._stop.is_set():
            key, value = f"{PREFIX}p{i:05d}", b"pod-%d" % i
            retried = False
            while True:
                try:
                    kv = await self.store.create(key, value)
                    revision = kv.revision
                    break
                except UnavailableError:
                    # The write may or may not have landed; send it again.
                    self.failures += 1
                    retried = True
                except KeyExistsError:
                    # Only a retried create can meet its own earlier attempt; any other KeyExists is a bug.
                    assert retried, f"{key} exists although it was never written"
                    current = await self.store.get(key)
                    assert current.value == value
                    revision = current.revision
                    break
            self.acknowledged[key] = revision
            self.acknowledged_at.append(time.monotonic())
            async with self._progress:
                self._progress.notify_all()
            i += 1

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: len(self.acknowledged) >= count), timeout)

    def stop(self) -> None:
        self._stop.set()

    def longest_gap(self) -> float:
        """The longest time between two acknowledged writes: how long writes were unavailable."""
        times = self.acknowledged_at
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def leader_first(cluster: LocalEtcdCluster, leader: int) -> list[str]:
    """The endpoints with the leader first, so the store is talking to the member that is about to die."""
    endpoints = cluster.endpoints
    return [endpoints[leader]] + [e for i, e in enumerate(endpoints) if i != leader]


async def test_writes_survive_leader_kill_and_killed_member_catches_up(cluster: LocalEtcdCluster) -> None:
    leader = await cluster.leader()
    async with EtcdStore(leader_first(cluster, leader), timeout=STORE_TIMEOUT, compaction_interval=0) as store:
        writer = Writer(store)
        writing = asyncio.create_task(writer.run())
        try:
            await writer.wait_for(30)
            cluster.kill(leader)
            killed_at = len(writer.acknowledged)
            await writer.wait_for(killed_at + 30, timeout=STORE_TIMEOUT + 8)
            writer.stop()
            await asyncio.wait_for(writing, STORE_TIMEOUT + 2)
        finally:
            writer.stop()
            writing.cancel()

        assert await cluster.leader() != leader
        outage = writer.longest_gap()
        print(f"\nwrites unavailable for {outage:.2f}s after SIGKILL of the leader ({writer.failures} failed attempts)")
        assert writer.failures > 0, "the kill went unnoticed: the store was not talking to the leader"
        # A write lost with the leader holds the writer for STORE_TIMEOUT; an election takes 1-2 election timeouts
        # (1 s by default), a little more after a split vote.
        assert outage < STORE_TIMEOUT + 4.0

        # Nothing the store acknowledged is lost, and nothing else appeared.
        listed = await store.list(PREFIX)
        assert {kv.key: kv.revision for kv in listed.items} == writer.acknowledged
        latest = await store.current_revision()

    # The killed member comes back on its old data and catches up by raft: its own (serializable, local) reads
    # reach the newest revision and it serves every acknowledged key.
    await cluster.restart(leader)
    member = cluster.members[leader]
    await wait_until(
        lambda: _at_least(member.local_revision(), latest), timeout=10, what="the restarted member to catch up"
    )
    async with EtcdStore([member.endpoint], timeout=STORE_TIMEOUT, compaction_interval=0) as direct:
        assert [kv.key for kv in (await direct.list(PREFIX)).items] == sorted(writer.acknowledged)


async def _at_least(revision: Awaitable[int], wanted: int) -> bool:
    try:
        return await revision >= wanted
    except Exception:  # noqa: BLE001 - the member may still be starting
        return False


async def test_watch_survives_leader_kill_without_gaps(
    cluster: LocalEtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controlplane.storage.etcd")
    leader = await cluster.leader()
    async with EtcdStore(leader_first(cluster, leader), timeout=STORE_TIMEOUT, compaction_interval=0) as store:
        start = await store.current_revision()
        watch = store.watch(PREFIX, revision=start)  # its stream goes to the leader too
        end_key = PREFIX + "zz-end"

        async def collect() -> list[WatchEvent]:
            seen = []
            async for event in watch:
                seen.append(event)
                if event.key == end_key:
                    return seen
            raise AssertionError("the watch ended early")

        collecting = asyncio.create_task(collect())
        writer = Writer(store)
        writing = asyncio.create_task(writer.run())
        try:
            await writer.wait_for(20)
            cluster.kill(leader)
            killed_at = len(writer.acknowledged)
            await writer.wait_for(killed_at + 20, timeout=STORE_TIMEOUT + 8)
            writer.stop()
            await asyncio.wait_for(writing, STORE_TIMEOUT + 2)
            end = await store.create(end_key, b"end")
            seen = await asyncio.wait_for(collecting, 10)
        finally:
            writer.stop()
            writing.cancel()
            collecting.cancel()
            await asyncio.gather(writing, collecting, return_exceptions=True)
            await watch.aclose()

    # Only this test writes, so the revisions are consecutive: one missing is a missed event, one twice a replay.
    assert [e.revision for e in seen] == list(range(start + 1, end.revision + 1))
    assert all(e.type == "ADDED" for e in seen)
    assert {e.key: e.revision for e in seen[:-1]} == writer.acknowledged
    # ...and it really lost its stream with the leader and resumed on another member.
    assert any("resuming after revision" in r.getMessage() for r in caplog.records)
