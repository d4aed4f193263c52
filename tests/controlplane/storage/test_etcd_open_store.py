"""open_store with etcd specs: bare ``etcd`` runs a member under the data directory for as long as the store is open
(and keeps its data for the next start), ``etcd://`` joins an existing cluster and fails at once, in one line, when
no member answers."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from controlplane.storage import open_store
from controlplane.storage.etcd import EtcdStore, EtcdUnreachableError
from controlplane.storage.etcd_process import (
    EtcdNotFoundError,
    EtcdStartError,
    LocalEtcd,
)

needs_etcd = pytest.mark.skipif(
    shutil.which("etcd") is None, reason="the etcd binary is not installed (apt-get install etcd-server)"
)
pytestmark = [pytest.mark.timeout(30)]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not a zombie): a stopped etcd must really be gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_etcd
@pytest.mark.etcd
async def test_bare_etcd_runs_a_member_under_the_data_dir_and_keeps_its_data(tmp_path: Path) -> None:
    store = await open_store("etcd", tmp_path)
    assert isinstance(store, EtcdStore)
    pid = int((tmp_path / "etcd.pid").read_text())
    assert alive(pid) and (tmp_path / "etcd" / "member").is_dir()
    created = await store.create("/registry/configmaps/default/kept", b"v1")
    await store.close()
    assert not alive(pid), "closing the store must stop the etcd it started"
    assert not (tmp_path / "etcd.pid").exists()

    again = await open_store("etcd", tmp_path)
    try:
        assert await again.get("/registry/configmaps/default/kept") == created
        assert await again.current_revision() >= created.revision
    finally:
        await again.close()


@needs_etcd
@pytest.mark.etcd
async def test_a_data_dir_is_used_by_one_store_at_a_time(tmp_path: Path) -> None:
    store = await open_store("etcd", tmp_path)
    try:
        with pytest.raises(EtcdStartError, match=f"{tmp_path} is in use by another ccmkit process \\(pid {os.getpid()}"):
            await open_store("etcd", tmp_path)
        await store.create("/registry/a", b"still served")  # the refused second open did not touch the first
    finally:
        await store.close()


@needs_etcd
@pytest.mark.etcd
async def test_an_etcd_left_running_by_a_killed_ccmkit_is_replaced(tmp_path: Path) -> None:
    # What a SIGKILLed `ccmkit up --store etcd` leaves behind: its etcd still running on the data dir (holding
    # etcd's own lock on it) and the pid file naming it.
    leftover = LocalEtcd(tmp_path.resolve() / "etcd")
    await leftover.start()
    try:
        assert leftover.pid is not None
        (tmp_path / "etcd.pid").write_text(f"{leftover.pid}\n")
        store = await open_store("etcd", tmp_path)
        try:
            assert leftover._proc is not None and leftover._proc.poll() is not None, "the leftover etcd still runs"
            await store.create("/registry/a", b"x")
            assert int((tmp_path / "etcd.pid").read_text()) != leftover.pid
        finally:
            await store.close()
    finally:
        await leftover.stop()


async def test_bare_etcd_without_the_binary_names_the_package(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCMKIT_ETCD_BINARY", str(tmp_path / "no-such-etcd"))
    with pytest.raises(EtcdNotFoundError, match="apt-get install etcd-server"):
        await open_store("etcd", tmp_path / "data")
    assert not (tmp_path / "data").exists(), "nothing is created before the binary is found"


async def test_bare_etcd_needs_a_data_dir() -> None:
    with pytest.raises(ValueError, match="data directory"):
        await open_store("etcd", None)


async def test_an_unreachable_cluster_fails_fast_in_one_line_naming_the_endpoints() -> None:
    a, b = closed_port(), closed_port()
    with pytest.raises(EtcdUnreachableError) as info:
        await open_store(f"etcd://127.0.0.1:{a},127.0.0.1:{b}?timeout=0.5", None)
    message = str(info.value)
    assert "\n" not in message
    assert f"cannot reach etcd at 127.0.0.1:{a}, 127.0.0.1:{b} within 0.5s" in message
    assert "check that etcd is running" in message


@needs_etcd
@pytest.mark.etcd
async def test_etcd_url_opens_a_store_on_an_existing_cluster(tmp_path: Path) -> None:
    async with LocalEtcd(tmp_path / "etcd") as member:
        store = await open_store(f"etcd://127.0.0.1:{member.client_port}/tenant-a?compaction_interval=0", None)
        try:
            created = await store.create("/registry/a", b"x")
            assert (await store.get("/registry/a")) == created
        finally:
            await store.close()
        # The prefix in the URL kept the store's keys apart: the same key is free for a store without it.
        plain = await open_store(f"etcd://127.0.0.1:{member.client_port}", None)
        try:
            assert await plain.count("/registry/") == 0
        finally:
            await plain.close()
