"""A CRI runtime whose containers are plain local processes, for real workloads without a container engine.

A kubelet on this runtime runs real programs (an HTTP server, a script that exits 3) that a test can reach and
watch, in well under a second and without root. Each pod sandbox gets its own loopback address (127.1.x.y by
default), passed as ``POD_IP``, so a container that listens on its pod IP is reachable from the host exactly
like a pod IP on a real node; logs are written in the CRI log format where the kubelet expects them.

What a process is not, and how this runtime answers for it (decisions, documented here once):

- Isolation: none. No namespaces, cgroups or chroot; processes run as the runtime's user on the host's
  filesystem, PATH and network. Linux resources and security contexts are recorded and reported, never enforced.
  Each container runs in its own process group; when its main process exits, the rest of the group is killed,
  as a PID namespace would do; stop sends SIGTERM to the group, then SIGKILL once the timeout has passed.
- Images: the image is a name only (``SimulatedImageService``: any name pulls instantly); the command runs from
  the host. A container with neither command nor args is rejected, since no image supplies an entrypoint.
- Mounts: bind mounts need privileges, so they are not made. Every container gets a root directory,
  ``<data_dir>/containers/<id>/root``, exported as ``CCMKIT_CONTAINER_ROOT``, and for each mount a symlink
  ``root/<container_path>`` -> ``host_path`` (the host directory is created if missing, as the kubelet would for
  an emptyDir). The working directory defaults to that root, so a program that opens its volume by a path
  relative to its root (``./etc/config/app.yaml``) or under ``$CCMKIT_CONTAINER_ROOT`` finds it; an absolute
  container path (``/etc/config``) is *not* remapped. ``working_dir`` is used as is when it is an existing host
  directory, else it is created under the root. ``readonly`` is not enforced.
- Network: ``POD_IP`` and ``HOSTNAME`` are set in the environment (explicit envs from the config win). There is
  no hostname namespace and no port mapping (hostPort). A host-network pod gets no address of its own: its
  POD_IP is ``node_ip`` (127.0.0.1) and, as with containerd, its sandbox status reports no IP.
- Exec: runs the command with the container's environment and working directory; no TTY (a TTY request is served
  without one). Exec'd processes are not killed when the container stops.
- Stats: CPU time and RSS summed over the processes of the container's group, read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

from . import crilog
from .api import (
    STDERR,
    STDOUT,
    AlreadyExistsError,
    Container,
    ContainerAttributes,
    ContainerConfig,
    ContainerFilter,
    ContainerState,
    ContainerStats,
    ContainerStatsFilter,
    ContainerStatus,
    CpuUsage,
    CRIError,
    DeadlineExceededError,
    ExecRequest,
    ExecSession,
    ExecSyncResponse,
    FailedPreconditionError,
    Image,
    InvalidArgumentError,
    MemoryUsage,
    NamespaceOption,
    NotFoundError,
    PodSandbox,
    PodSandboxConfig,
    PodSandboxFilter,
    PodSandboxNetworkStatus,
    PodSandboxState,
    PodSandboxStatus,
    RuntimeCondition,
    RuntimeStatus,
    StatusResponse,
    VersionResponse,
    exit_reason,
    matches_labels,
)
from .ippool import IPPool
from .simulated import SimulatedImageService

VERSION = "0.1.0"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _new_id() -> str:
    return os.urandom(32).hex()


def _exit_code(returncode: int) -> int:
    """A shell's view of how a process ended: 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Sandbox:
    __slots__ = ("config", "containers", "created_at", "id", "ip", "key", "state")

    def __init__(self, id: str, config: PodSandboxConfig, ip: str, key: tuple[str, ...]) -> None:
        self.id = id
        self.config = config
        self.state = PodSandboxState.SANDBOX_READY
        self.created_at = time.time_ns()
        self.ip = ip
        self.containers: dict[str, None] = {}
        self.key = key


class _Container:
    def __init__(
        self,
        id: str,
        sandbox: _Sandbox,
        config: ContainerConfig,
        image: Image,
        root: Path,
        cwd: Path,
        env: dict[str, str],
        log_path: Path,
        key: tuple[str, str, int],
    ) -> None:
        self.id = id
        self.sandbox = sandbox
        self.config = config
        self.image = image
        self.root = root
        self.cwd = cwd
        self.env = env
        self.log_path = log_path
        self.key = key
        self.state = ContainerState.CONTAINER_CREATED
        self.created_at = time.time_ns()
        self.started_at = 0
        self.finished_at = 0
        self.exit_code = 0
        self.reason = ""
        self.message = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.exited = asyncio.Event()
        self.monitor: asyncio.Task[None] | None = None
        self.last_cpu: tuple[int, int] | None = None  # (wall ns, cpu ns) of the previous stats sample


class ProcessRuntime:
    """RuntimeService over local processes; state and logs live under ``data_dir``. Call ``aclose()`` to kill
    every container when done. ``pod_cidr`` must differ between runtimes sharing a machine."""

    def __init__(
        self,
        data_dir: Path,
        images: SimulatedImageService | None = None,
        pod_cidr: str = "127.1.0.0/16",
        node_ip: str = "127.0.0.1",
        runtime_name: str = "ccmkit-process",
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.images = images if images is not None else SimulatedImageService()
        self.node_ip = node_ip
        self.runtime_name = runtime_name
        self.base_env = (
            dict(base_env)
            if base_env is not None
            else {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        )
        self._ips = IPPool(pod_cidr)
        self._sandboxes: dict[str, _Sandbox] = {}
        self._containers: dict[str, _Container] = {}
        self._sandbox_names: dict[tuple[str, ...], str] = {}
        self._container_names: dict[tuple[str, str, int], str] = {}

    async def aclose(self) -> None:
        """Kill every container (the runtime is going away; processes must not outlive it)."""
        await asyncio.gather(*(self.remove_pod_sandbox(sid) for sid in list(self._sandboxes)))

    def _sandbox(self, pod_sandbox_id: str) -> _Sandbox:
        try:
            return self._sandboxes[pod_sandbox_id]
        except KeyError:
            raise NotFoundError(f"pod sandbox {pod_sandbox_id!r} not found") from None

    def _container(self, container_id: str) -> _Container:
        try:
            return self._containers[container_id]
        except KeyError:
            raise NotFoundError(f"container {container_id!r} not found") from None

    # -- runtime ------------------------------------------------------------------------------------------------

    async def version(self, version: str = "v1") -> VersionResponse:
        return VersionResponse("0.1.0", self.runtime_name, VERSION, "v1")

    async def status(self, verbose: bool = False) -> StatusResponse:
        return StatusResponse(
            RuntimeStatus([RuntimeCondition("RuntimeReady", True), RuntimeCondition("NetworkReady", True)])
        )

    # -- sandboxes ----------------------------------------------------------------------------------------------

    async def run_pod_sandbox(self, config: PodSandboxConfig, runtime_handler: str = "") -> str:
        m = config.metadata
        key = (m.name, m.namespace, m.uid, str(m.attempt))
        if key in self._sandbox_names:
            raise AlreadyExistsError(f"pod sandbox name {'_'.join(key)!r} is reserved for {self._sandbox_names[key]}")
        ip = self.node_ip if config.host_network else self._ips.allocate()
        sandbox = _Sandbox(_new_id(), config, ip, key)
        self._sandboxes[sandbox.id] = sandbox
        self._sandbox_names[key] = sandbox.id
        return sandbox.id

    async def stop_pod_sandbox(self, pod_sandbox_id: str) -> None:
        sandbox = self._sandboxes.get(pod_sandbox_id)
        if sandbox is None:
            return
        await asyncio.gather(*(self.stop_container(cid, 0) for cid in list(sandbox.containers)))
        sandbox.state = PodSandboxState.SANDBOX_NOTREADY

    async def remove_pod_sandbox(self, pod_sandbox_id: str) -> None:
        sandbox = self._sandboxes.get(pod_sandbox_id)
        if sandbox is None:
            return
        await asyncio.gather(*(self.remove_container(cid) for cid in list(sandbox.containers)))
        if self._sandboxes.pop(pod_sandbox_id, None) is None:
            return  # a concurrent remove finished first
        del self._sandbox_names[sandbox.key]
        if not sandbox.config.host_network:
            self._ips.release(sandbox.ip)

    async def pod_sandbox_status(self, pod_sandbox_id: str, verbose: bool = False) -> PodSandboxStatus:
        s = self._sandbox(pod_sandbox_id)
        linux = s.config.linux
        return PodSandboxStatus(
            id=s.id,
            metadata=s.config.metadata,
            state=s.state,
            created_at=s.created_at,
            # As containerd: no pod IP for a host-network pod (the kubelet reports the node's IP instead).
            network=PodSandboxNetworkStatus(ip="" if s.config.host_network else s.ip),
            namespace_options=linux.security_context.namespace_options if linux else NamespaceOption(),
            labels=s.config.labels,
            annotations=s.config.annotations,
        )

    async def list_pod_sandbox(self, filter: PodSandboxFilter | None = None) -> list[PodSandbox]:
        return [
            PodSandbox(s.id, s.config.metadata, s.state, s.created_at, s.config.labels, s.config.annotations)
            for s in self._sandboxes.values()
            if filter is None
            or (
                (not filter.id or s.id == filter.id)
                and (filter.state is None or s.state == filter.state)
                and matches_labels(s.config.labels, filter.label_selector)
            )
        ]

    # -- containers ---------------------------------------------------------------------------------------------

    async def create_container(
        self, pod_sandbox_id: str, config: ContainerConfig, sandbox_config: PodSandboxConfig
    ) -> str:
        sandbox = self._sandbox(pod_sandbox_id)
        if sandbox.state != PodSandboxState.SANDBOX_READY:
            raise FailedPreconditionError(f"pod sandbox {pod_sandbox_id} is not ready")
        image = self.images.resolve(config.image.image)
        if image is None:
            raise NotFoundError(f"image {config.image.image!r} not found")
        if not config.command and not config.args:
            raise InvalidArgumentError("the process runtime needs a command: no image supplies an entrypoint")
        name, attempt = config.metadata.name, config.metadata.attempt
        key = (pod_sandbox_id, name, attempt)
        if key in self._container_names:
            raise AlreadyExistsError(f"container name {name!r} attempt {attempt} is reserved")
        cid = _new_id()
        root = self.data_dir / "containers" / cid / "root"
        cwd = await asyncio.to_thread(self._prepare_root, root, config)
        scfg = sandbox.config
        if scfg.log_directory and config.log_path:
            log_path = Path(scfg.log_directory) / config.log_path
        elif config.log_path and os.path.isabs(config.log_path):
            log_path = Path(config.log_path)
        else:
            log_path = self.data_dir / "logs" / sandbox.id / name / f"{attempt}.log"
        env = {
            **self.base_env,
            "HOME": str(root),
            "HOSTNAME": scfg.hostname or scfg.metadata.name,
            "POD_IP": sandbox.ip,
            "CCMKIT_CONTAINER_ROOT": str(root),
        }
        env.update((kv.key, kv.value) for kv in config.envs)
        c = _Container(cid, sandbox, config, image, root, cwd, env, log_path, key)
        self._containers[cid] = c
        self._container_names[key] = cid
        sandbox.containers[cid] = None
        return cid

    @staticmethod
    def _prepare_root(root: Path, config: ContainerConfig) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        for mount in config.mounts:
            if not os.path.isabs(mount.container_path):
                raise InvalidArgumentError(f"mount path {mount.container_path!r} is not absolute")
            host = Path(mount.host_path)
            if not host.exists():
                host.mkdir(parents=True, exist_ok=True)
            link = root / mount.container_path.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(host)
        if not config.working_dir:
            return root
        if os.path.isdir(config.working_dir):
            return Path(config.working_dir)
        cwd = root / config.working_dir.lstrip("/")
        cwd.mkdir(parents=True, exist_ok=True)
        return cwd

    async def start_container(self, container_id: str) -> None:
        c = self._container(container_id)
        if c.state != ContainerState.CONTAINER_CREATED:
            raise FailedPreconditionError(f"container {container_id} is in {c.state.name} state, not CREATED")
        argv = [*c.config.command, *c.config.args]
        c.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(c.log_path, "ab")  # noqa: SIM115 - owned by the monitor task, closed when the process ends
        loop = asyncio.get_running_loop()
        try:
            # create_subprocess_exec, but with a protocol that tells when the process itself has exited:
            # Process.wait() also waits for the output pipes, which a leftover child may hold open forever.
            transport, protocol = await loop.subprocess_exec(
                lambda: _ExitWatchingProtocol(loop),
                *argv,
                stdin=asyncio.subprocess.PIPE if c.config.stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=c.env,
                cwd=c.cwd,
                start_new_session=True,  # its own process group, so stop can signal every process it started
            )
        except OSError as e:
            log.close()
            c.state, c.finished_at, c.exit_code = ContainerState.CONTAINER_EXITED, time.time_ns(), 128
            c.reason, c.message = "StartError", f"failed to start {argv[0]!r}: {e.strerror or e}"
            c.exited.set()
            raise CRIError(f"failed to start container {container_id!r}: {c.message}") from None
        c.proc = asyncio.subprocess.Process(transport, protocol, loop)
        c.state, c.started_at = ContainerState.CONTAINER_RUNNING, time.time_ns()
        c.monitor = asyncio.create_task(
            self._monitor(c, c.proc, protocol.exited, log), name=f"cri-process-{container_id[:12]}"
        )

    async def _monitor(
        self, c: _Container, proc: asyncio.subprocess.Process, exited: asyncio.Future[None], log: IO[bytes]
    ) -> None:
        async def pump(stream: asyncio.StreamReader | None, name: crilog.Stream) -> None:
            if stream is None:
                return
            writer = crilog.LogLineWriter(log, name)
            while data := await stream.read(65536):
                writer.feed(data)
            writer.close()

        pumps = asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
        try:
            await exited
            c.finished_at = time.time_ns()
            # The main process is gone: take the rest of its group with it, as the end of a PID namespace would,
            # which also closes any copy of the output pipes a straggler still holds.
            _killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(OSError, ValueError):  # a failing log write must not hide the exit
                await pumps
        finally:
            log.close()
            c.state, c.exit_code = ContainerState.CONTAINER_EXITED, _exit_code(proc.returncode or 0)
            c.finished_at = c.finished_at or time.time_ns()
            c.reason = exit_reason(c.exit_code)
            c.exited.set()

    async def stop_container(self, container_id: str, timeout: float) -> None:
        c = self._container(container_id)
        if c.state != ContainerState.CONTAINER_RUNNING or c.proc is None:
            return
        if timeout > 0:
            _killpg(c.proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await c.exited.wait()
        if not c.exited.is_set():
            _killpg(c.proc.pid, signal.SIGKILL)
            await c.exited.wait()

    async def remove_container(self, container_id: str) -> None:
        c = self._containers.get(container_id)
        if c is None:
            return
        await self.stop_container(container_id, 0)
        if self._containers.pop(container_id, None) is None:
            return
        del self._container_names[c.key]
        c.sandbox.containers.pop(container_id, None)
        await asyncio.to_thread(shutil.rmtree, c.root.parent, True)

    async def container_status(self, container_id: str, verbose: bool = False) -> ContainerStatus:
        c = self._container(container_id)
        cfg = c.config
        return ContainerStatus(
            id=c.id,
            metadata=cfg.metadata,
            state=c.state,
            created_at=c.created_at,
            started_at=c.started_at,
            finished_at=c.finished_at,
            exit_code=c.exit_code,
            image=cfg.image,
            image_ref=c.image.id,
            reason=c.reason,
            message=c.message,
            labels=cfg.labels,
            annotations=cfg.annotations,
            mounts=cfg.mounts,
            log_path=str(c.log_path),
            resources=cfg.linux.resources if cfg.linux else None,
        )

    async def list_containers(self, filter: ContainerFilter | None = None) -> list[Container]:
        return [
            Container(
                c.id,
                c.sandbox.id,
                c.config.metadata,
                c.config.image,
                c.image.id,
                c.state,
                c.created_at,
                c.config.labels,
                c.config.annotations,
            )
            for c in self._containers.values()
            if filter is None
            or (
                (not filter.id or c.id == filter.id)
                and (filter.state is None or c.state == filter.state)
                and (not filter.pod_sandbox_id or c.sandbox.id == filter.pod_sandbox_id)
                and matches_labels(c.config.labels, filter.label_selector)
            )
        ]

    # -- exec ---------------------------------------------------------------------------------------------------

    async def _spawn_exec(self, container_id: str, cmd: list[str], stdin: bool) -> asyncio.subprocess.Process:
        c = self._container(container_id)
        if c.state != ContainerState.CONTAINER_RUNNING:
            raise FailedPreconditionError(f"container {container_id} is not running")
        if not cmd:
            raise InvalidArgumentError("exec: empty command")
        try:
            return await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=c.env,
                cwd=c.cwd,
                start_new_session=True,
            )
        except OSError as e:
            raise CRIError(f'exec failed: exec: "{cmd[0]}": {e.strerror or e}') from None

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float = 0) -> ExecSyncResponse:
        proc = await self._spawn_exec(container_id, cmd, stdin=False)
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None):
                stdout, stderr = await proc.communicate()
        except TimeoutError:
            _killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise DeadlineExceededError(f"command {cmd!r} timed out after {timeout}s") from None
        finally:
            _killpg(proc.pid, signal.SIGKILL)  # no exec'd background job outlives its exec
        return ExecSyncResponse(stdout, stderr, _exit_code(proc.returncode or 0))

    async def exec(self, request: ExecRequest) -> ExecSession:
        return ProcessExecSession(await self._spawn_exec(request.container_id, request.cmd, stdin=request.stdin))

    # -- stats --------------------------------------------------------------------------------------------------

    async def container_stats(self, container_id: str) -> ContainerStats:
        c = self._container(container_id)
        usage = await asyncio.to_thread(_group_usage, [c.proc.pid] if c.proc and not c.exited.is_set() else [])
        return self._stats(c, usage)

    async def list_container_stats(self, filter: ContainerStatsFilter | None = None) -> list[ContainerStats]:
        flt = filter or ContainerStatsFilter()
        chosen = [
            c
            for c in self._containers.values()
            if (not flt.id or c.id == flt.id)
            and (not flt.pod_sandbox_id or c.sandbox.id == flt.pod_sandbox_id)
            and matches_labels(c.config.labels, flt.label_selector)
        ]
        pgids = [c.proc.pid for c in chosen if c.proc and not c.exited.is_set()]
        usage = await asyncio.to_thread(_group_usage, pgids)
        return [self._stats(c, usage) for c in chosen]

    def _stats(self, c: _Container, usage: Mapping[int, tuple[int, int]]) -> ContainerStats:
        now = time.time_ns()
        cpu_ns, rss = usage.get(c.proc.pid, (0, 0)) if c.proc and not c.exited.is_set() else (0, 0)
        nano_cores: int | None = None
        if c.last_cpu is not None:
            # Processes that exited take their CPU time with them; never report the counter going backwards.
            cpu_ns = max(cpu_ns, c.last_cpu[1])
            wall = now - c.last_cpu[0]
            nano_cores = (cpu_ns - c.last_cpu[1]) * 1_000_000_000 // wall if wall > 0 else 0
        c.last_cpu = (now, cpu_ns)
        return ContainerStats(
            attributes=ContainerAttributes(c.id, c.config.metadata, c.config.labels, c.config.annotations),
            cpu=CpuUsage(now, usage_core_nano_seconds=cpu_ns, usage_nano_cores=nano_cores),
            memory=MemoryUsage(now, working_set_bytes=rss, rss_bytes=rss),
        )


def _group_usage(pgids: Iterable[int]) -> dict[int, tuple[int, int]]:
    """(cpu ns, rss bytes) summed per process group, from one pass over /proc."""
    wanted = set(pgids)
    totals: dict[int, tuple[int, int]] = {}
    if not wanted:
        return totals
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # Fields after the parenthesised command (which may itself hold spaces): field 3 (state) is at index 0.
        fields = stat[stat.rfind(b")") + 2 :].split()
        pgrp = int(fields[2])
        if pgrp not in wanted:
            continue
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])  # utime stime cutime cstime
        cpu, rss = totals.get(pgrp, (0, 0))
        totals[pgrp] = (cpu + ticks * 1_000_000_000 // _CLK_TCK, rss + int(fields[21]) * _PAGE_SIZE)
    return totals


class _ExitWatchingProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The protocol create_subprocess_exec uses, plus a future that resolves when the process has exited."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class ProcessExecSession:
    """An ExecSession over a local subprocess (its own process group)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._pending: dict[asyncio.Task[bytes], tuple[int, asyncio.StreamReader]] = {}
        for stream, channel in ((proc.stdout, STDOUT), (proc.stderr, STDERR)):
            if stream is not None:
                self._read_more(channel, stream)

    def _read_more(self, channel: int, stream: asyncio.StreamReader) -> None:
        self._pending[asyncio.ensure_future(stream.read(65536))] = (channel, stream)

    async def read(self) -> tuple[int, bytes] | None:
        while self._pending:
            done, _ = await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
            task = min(done, key=lambda t: self._pending[t][0])  # stdout before stderr when both are ready
            channel, stream = self._pending.pop(task)
            if data := task.result():
                self._read_more(channel, stream)
                return channel, data
        return None

    async def write_stdin(self, data: bytes) -> None:
        if self._proc.stdin is None:
            raise FailedPreconditionError("exec was started without stdin")
        self._proc.stdin.write(data)
        await self._proc.stdin.drain()

    async def close_stdin(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()

    async def wait(self) -> int:
        return _exit_code(await self._proc.wait())

    async def close(self) -> None:
        if self._proc.returncode is None:
            _killpg(self._proc.pid, signal.SIGKILL)
            await self._proc.wait()
        for task in self._pending:
            task.cancel()
        self._pending.clear()
