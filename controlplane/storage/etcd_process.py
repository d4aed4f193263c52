"""Run real etcd processes on loopback: one member for tests and `ccmkit up --store etcd`, or a small cluster for
failover tests.

The etcd backend is only worth trusting if it is exercised against the real thing, including a member dying, so
this module owns the process side: free ports, the command line (the recipe in DESIGN.md), waiting until a member
serves, stopping by PID, and finding the raft leader. It talks to members over etcd's JSON gateway with httpx so it
needs no gRPC stubs. It also runs the etcd behind ``--store etcd``: one member under the data directory, started
with the store, stopped when the store closes, and found and stopped if a crashed ccmkit left it running.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

import httpx

if TYPE_CHECKING:
    from controlplane.storage.etcd import EtcdStore

__all__ = [
    "EtcdNotFoundError",
    "EtcdStartError",
    "EtcdTLS",
    "LocalEtcd",
    "LocalEtcdCluster",
    "MemberStatus",
    "find_etcd_binary",
    "local_etcd_store",
    "open_local_etcd_store",
]


class EtcdNotFoundError(RuntimeError):
    """The etcd binary is not installed."""

    def __init__(self, binary: str = "etcd") -> None:
        super().__init__(
            f"the etcd binary ({binary!r}) was not found on PATH; install it with "
            "`apt-get install etcd-server` (Debian/Ubuntu) or set CCMKIT_ETCD_BINARY to its path"
        )


class EtcdStartError(RuntimeError):
    """An etcd process exited or did not become healthy in time; the message carries the tail of its log."""


def find_etcd_binary(binary: str | None = None) -> str:
    """The path of the etcd binary, or EtcdNotFoundError naming the Debian package."""
    name = binary or os.environ.get("CCMKIT_ETCD_BINARY") or "etcd"
    path = shutil.which(name)
    if path is None:
        raise EtcdNotFoundError(name)
    return path


def _free_ports(n: int) -> list[int]:
    # Hold every socket open until all are bound so the kernel cannot hand out the same port twice.
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    """TLS for a member's client port: it serves ``cert_file`` and accepts only clients whose certificate
    ``ca_file`` signed. The same certificate is presented as the client certificate of our own health and status
    probes, so it must allow both server and client auth (typical of a test certificate)."""

    ca_file: str
    cert_file: str
    key_file: str

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True, slots=True)
class MemberStatus:
    member_id: int
    leader_id: int
    raft_term: int
    revision: int

    @property
    def is_leader(self) -> bool:
        return self.member_id != 0 and self.member_id == self.leader_id


class LocalEtcd:
    """One etcd member on loopback. Ports 0 mean "pick a free one" (chosen once, kept across restarts).

    A standalone member (no ``initial_cluster``) gets a 10 ms heartbeat and 100 ms election timeout unless told
    otherwise: with no peers the timings cannot cause spurious elections, and etcd's defaults make a lone member
    wait up to a second to elect itself.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        client_port: int = 0,
        peer_port: int = 0,
        *,
        name: str = "default",
        initial_cluster: str | None = None,
        initial_cluster_token: str | None = None,
        heartbeat_ms: int | None = None,
        election_ms: int | None = None,
        tls: EtcdTLS | None = None,
        extra_args: Sequence[str] = (),
        etcd_binary: str | None = None,
    ) -> None:
        self.binary = find_etcd_binary(etcd_binary)
        self.tls = tls
        self.data_dir = Path(data_dir)
        # A standalone member whose ports we picked may pick again if one is taken by the time etcd binds it.
        self._may_repick = not client_port and not peer_port and initial_cluster is None
        if not client_port or not peer_port:
            picked = iter(_free_ports(2))
            client_port = client_port or next(picked)
            peer_port = peer_port or next(picked)
        self.client_port = client_port
        self.peer_port = peer_port
        self.name = name
        if initial_cluster is None:
            heartbeat_ms = 10 if heartbeat_ms is None else heartbeat_ms
            election_ms = 100 if election_ms is None else election_ms
        self._initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self._token = initial_cluster_token or f"ccmkit-{uuid.uuid4().hex[:12]}"
        self._heartbeat_ms = heartbeat_ms
        self._election_ms = election_ms
        self._extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # ---- addresses -------------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        # Beside the data dir, not in it: etcd owns that directory, and the log should outlive wiping it.
        return self.data_dir.with_name(self.data_dir.name + ".log")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        # fmt: off
        cmd = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self._initial_cluster,
            "--initial-cluster-token", self._token,
            "--initial-cluster-state", "new",  # ignored by etcd once the data dir holds a member
        ]
        if self._heartbeat_ms is not None:
            cmd += ["--heartbeat-interval", str(self._heartbeat_ms)]
        if self._election_ms is not None:
            cmd += ["--election-timeout", str(self._election_ms)]
        if self.tls is not None:
            cmd += [
                "--cert-file", self.tls.cert_file,
                "--key-file", self.tls.key_file,
                "--trusted-ca-file", self.tls.ca_file,
                "--client-cert-auth",
            ]
        # fmt: on
        return cmd + self._extra_args

    def _http(self, timeout: float) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = self.tls.client_context() if self.tls is not None else True
        return httpx.AsyncClient(trust_env=False, timeout=timeout, verify=verify)

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the process without waiting for it to serve (a cluster spawns every member before waiting)."""
        if self.running:
            raise RuntimeError(f"etcd member {self.name} is already running (pid {self.pid})")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self._log_file = log
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: a Ctrl-C in the parent's terminal should not reach etcd before we stop it.
            start_new_session=True,
        )

    async def start(self, timeout: float = 15.0) -> None:
        """Start etcd and return once it answers /health (a single member is ready in about 0.15 s)."""
        for attempt in range(3):
            self.spawn()
            try:
                await self.wait_healthy(timeout)
                return
            except EtcdStartError:
                # A free port can be taken between our probe and etcd's bind (e.g. as another connection's
                # ephemeral port). Only a fresh member on ports we chose can simply move elsewhere.
                fresh = not (self.data_dir / "member").exists()
                if not (self._may_repick and fresh and "address already in use" in self.log_tail()) or attempt == 2:
                    raise
                self.kill()
                self.client_port, self.peer_port = _free_ports(2)
                self._initial_cluster = f"{self.name}={self.peer_url}"

    async def wait_healthy(self, timeout: float = 15.0) -> None:
        """Wait until the member reports a healthy cluster (it has a leader and serves reads)."""
        deadline = time.monotonic() + timeout
        async with self._http(1.0) as http:
            while True:
                if not self.running:
                    raise EtcdStartError(f"etcd member {self.name} exited:\n{self.log_tail()}")
                try:
                    r = await http.get(f"{self.endpoint}/health")
                    if r.status_code == 200 and r.json().get("health") in ("true", True):
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                if time.monotonic() >= deadline:
                    raise EtcdStartError(
                        f"etcd member {self.name} not healthy after {timeout:.1f}s:\n{self.log_tail()}"
                    )
                # A process readiness probe has nothing to wait on but time; keep the interval small.
                await asyncio.sleep(0.02)

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        self._reap()

    def kill(self) -> None:
        """SIGKILL, as a crash would (no clean shutdown, no leadership hand-off)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)  # a SIGKILLed process is reaped within milliseconds
        self._reap()

    def stop_sync(self, timeout: float = 5.0) -> None:
        """stop() for callers without an event loop (atexit, finalizers)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def _reap(self) -> None:
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def status(self, timeout: float = 1.0) -> MemberStatus:
        """The member's view of the raft group (maintenance Status over the JSON gateway)."""
        async with self._http(timeout) as http:
            r = await http.post(f"{self.endpoint}/v3/maintenance/status", json={})
            r.raise_for_status()
            body = r.json()
        header = body.get("header", {})
        return MemberStatus(
            member_id=int(header.get("member_id", 0)),
            leader_id=int(body.get("leader", 0)),
            raft_term=int(header.get("raft_term", 0)),
            revision=int(header.get("revision", 0)),
        )

    async def local_revision(self, timeout: float = 1.0) -> int:
        """The revision this member has applied, read locally (serializable) so it shows the member's own state."""
        async with self._http(timeout) as http:
            key = base64.b64encode(b"\x00").decode()
            r = await http.post(
                f"{self.endpoint}/v3/kv/range",
                json={"key": key, "limit": 1, "serializable": True, "count_only": True},
            )
            r.raise_for_status()
            return int(r.json().get("header", {}).get("revision", 0))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class LocalEtcdCluster:
    """``n`` etcd members on loopback ports forming one raft group (three start in about a second)."""

    def __init__(
        self,
        n: int = 3,
        base_dir: str | os.PathLike[str] = ".",
        *,
        heartbeat_ms: int | None = None,
        election_ms: int | None = None,
        extra_args: Sequence[str] = (),
        etcd_binary: str | None = None,
    ) -> None:
        binary = find_etcd_binary(etcd_binary)
        self.base_dir = Path(base_dir)
        ports = _free_ports(2 * n)
        names = [f"m{i}" for i in range(n)]
        initial = ",".join(f"{names[i]}=http://127.0.0.1:{ports[2 * i + 1]}" for i in range(n))
        token = f"ccmkit-{uuid.uuid4().hex[:12]}"
        self.members = [
            LocalEtcd(
                self.base_dir / names[i],
                ports[2 * i],
                ports[2 * i + 1],
                name=names[i],
                initial_cluster=initial,
                initial_cluster_token=token,
                heartbeat_ms=heartbeat_ms,
                election_ms=election_ms,
                extra_args=extra_args,
                etcd_binary=binary,
            )
            for i in range(n)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    async def start(self, timeout: float = 20.0) -> None:
        # Every member must be up before any can elect a leader, so spawn all first, then wait on all.
        for m in self.members:
            m.spawn()
        try:
            await asyncio.gather(*(m.wait_healthy(timeout) for m in self.members))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        # One at a time: a member stopped while its peers are also going down spends seconds trying to hand its
        # leadership to one of them, where one at a time every member exits in milliseconds.
        for m in self.members:
            await m.stop()

    def kill(self, index: int) -> None:
        self.members[index].kill()

    async def restart(self, index: int, timeout: float = 20.0) -> None:
        """Start a stopped or killed member again on its old data dir; it rejoins and catches up by raft."""
        await self.members[index].start(timeout)

    async def leader(self, timeout: float = 10.0) -> int:
        """Index of the current leader, once the running members agree on one."""
        deadline = time.monotonic() + timeout
        while True:
            statuses: list[MemberStatus | None] = []
            for m in self.members:
                if not m.running:
                    statuses.append(None)
                    continue
                try:
                    statuses.append(await m.status())
                except httpx.HTTPError:
                    statuses.append(None)
            leaders = {s.leader_id for s in statuses if s is not None}
            for i, s in enumerate(statuses):
                if s is not None and s.is_leader and leaders == {s.member_id}:
                    return i
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no agreed etcd leader within {timeout:.1f}s: {statuses}")
            await asyncio.sleep(0.05)  # an election has nothing to await but time

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _DataDirLock:
    """An exclusive flock on ``<data_dir>/etcd.lock`` for as long as a store runs the etcd under that directory.

    Two ccmkit processes on one data directory would otherwise both try to run its etcd (the second hangs on the
    lock etcd itself takes), or the second would stop the first one's etcd thinking it left over from a crash. The
    kernel drops the lock when its holder dies, so a crash never leaves the directory locked.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EtcdStartError(
                f"{path.parent} is in use by another ccmkit process (pid {holder}) that runs its etcd; stop it "
                "or choose another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _etcd_pid_serving(pid_file: Path, data_dir: Path) -> int | None:
    """The PID in ``pid_file`` if that process is still an etcd on ``data_dir`` (a PID alone may have been reused)."""
    try:
        pid = int(pid_file.read_text().split()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    try:
        at = argv.index(b"--data-dir")
    except ValueError:
        return None
    return pid if at + 1 < len(argv) and argv[at + 1] == os.fsencode(data_dir) else None


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit (a pidfd becomes readable when it does)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def _stop_leftover(pid_file: Path, data_dir: Path) -> None:
    """Stop the etcd a previous ccmkit started on ``data_dir`` and could not stop (it was SIGKILLed): that etcd
    holds the data directory's lock, and a new one would wait on it forever."""
    pid = _etcd_pid_serving(pid_file, data_dir)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if not _wait_exit(pid, 5.0):
            os.kill(pid, signal.SIGKILL)
            _wait_exit(pid, 5.0)


async def open_local_etcd_store(
    data_dir: str | os.PathLike[str], *, etcd_binary: str | None = None, **store_options: Any
) -> EtcdStore:
    """The store behind ``--store etcd``: a single etcd member under ``data_dir``/etcd, started now and stopped when
    the returned store closes. Its data stays, so the next start on the same ``data_dir`` has every object back.

    EtcdNotFoundError (naming the Debian package) when etcd is not installed, EtcdStartError when the directory is
    in use by another process or etcd does not come up. ``store_options`` go to EtcdStore.
    """
    from controlplane.storage.etcd import (
        EtcdStore,  # the gRPC stubs are only needed once a store is opened
    )

    base = Path(data_dir).resolve()
    binary = find_etcd_binary(etcd_binary)  # before anything is created or locked
    base.mkdir(parents=True, exist_ok=True)
    lock = _DataDirLock(base / "etcd.lock")
    pid_file = base / "etcd.pid"
    etcd: LocalEtcd | None = None
    try:
        await asyncio.to_thread(_stop_leftover, pid_file, base / "etcd")
        etcd = LocalEtcd(base / "etcd", etcd_binary=binary)
        await etcd.start()
        pid_file.write_text(f"{etcd.pid}\n")
    except BaseException:
        if etcd is not None:
            await etcd.stop()
        lock.release()
        raise
    member = etcd

    async def stop_etcd() -> None:
        try:
            await member.stop()
            pid_file.unlink(missing_ok=True)
        finally:
            lock.release()

    return EtcdStore([member.endpoint], on_close=stop_etcd, **store_options)


@asynccontextmanager
async def local_etcd_store(data_dir: str | os.PathLike[str], **store_options: Any) -> AsyncIterator[EtcdStore]:
    """A single-member etcd under ``data_dir``/etcd and an EtcdStore on it; both are stopped on exit.

    Shaped as a contract-suite store factory; ``store_options`` go to EtcdStore (periodic compaction is off unless
    asked for, so tests see only their own revisions).
    """
    store_options.setdefault("compaction_interval", 0)
    store = await open_local_etcd_store(data_dir, **store_options)
    try:
        yield store
    finally:
        await store.close()
