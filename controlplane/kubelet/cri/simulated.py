"""An in-memory CRI runtime with no processes, for running thousands of kubelets in one process.

Sandboxes and containers are records in dicts (O(1) status lookups); every scheduled transition (a slow start, a
container that exits after N seconds, a graceful stop) is an entry in one timer heap per runtime, so 50k containers
cost 50k small objects and not 50k tasks. What a pod does is chosen by annotations on its sandbox, so a test can
write a pod manifest that crashes, exits, starts slowly or uses CPU, and the real kubelet code path handles it.

Annotations (``sim.ccmkit.io/<key>`` applies to every container of the pod; ``sim.ccmkit.io/<container>.<key>``
to one container by name; the same keys on a ContainerConfig's own annotations win over both):

=================  ======================================================================  ==========
key                meaning                                                                 default
=================  ======================================================================  ==========
pull-ms            PullImage takes this long (pod-wide only: the pull knows no container)  0
pull-error         PullImage fails with this message (pod-wide only)                       --
start-ms           StartContainer takes this long                                          0
start-error        StartContainer fails with this message; the container ends EXITED,      --
                   exit code 128, reason StartError (as containerd reports it)
exit-after-s       the container exits on its own this many seconds after it started       never
exit-code          ... with this exit code (reason Completed if 0, else Error)             0
stop-ms            after SIGTERM the container takes this long to exit; if that is longer  0
                   than the stop timeout it is killed at the timeout (exit code 137)
stop-exit-code     exit code of a graceful stop (143 is what SIGTERM's default gives)      143
cpu-millicores     reported CPU usage while running                                        0
memory-bytes       reported working set while running                                      0
stdout, stderr     text written to the container log (CRI format) when it starts           --
files              JSON object {path: content}: the fake filesystem ``exec`` sees          {}
=================  ======================================================================  ==========

Exec (``exec_sync`` and ``exec``) understands a tiny shell, enough for exec probes and ``kubectl exec`` smoke
tests: ``true``, ``false``, ``echo [-n]``, ``cat PATH...``, ``test``/``[`` with ``-e``/``-f``/``-n``/``-z``,
``touch``, ``rm [-f]``, ``env``, ``hostname``, ``exit N``, and ``sh -c SCRIPT`` where SCRIPT chains those with
``;``, ``&&``, ``||`` and redirects output with ``>&2``, ``> FILE`` or ``>> FILE``. Files live in the container's
fake filesystem (seeded by the ``files`` annotation, changed by touch/rm/redirects and by ``ex_write_file``). An
unknown program fails the call as containerd does ("executable file not found"); inside ``sh -c`` it exits 127.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import posixpath
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from . import crilog
from .api import (
    AlreadyExistsError,
    AuthConfig,
    CompletedExecSession,
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
    ExecRequest,
    ExecSession,
    ExecSyncResponse,
    FailedPreconditionError,
    Image,
    ImageFilter,
    ImageSpec,
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
from .clock import Clock, SystemClock, TimerEntry, TimerHeap
from .ippool import IPPool

PREFIX = "sim.ccmkit.io/"
PULL_MS = PREFIX + "pull-ms"
PULL_ERROR = PREFIX + "pull-error"

VERSION = "0.1.0"
_SIGKILL_EXIT = 137


# ---------------------------------------------------------------------------------------------------------------
# Images


@functools.lru_cache(maxsize=1024)
def normalize_image_ref(ref: str) -> str:
    """Docker's reference normalisation, as containerd applies it: ``busybox`` is
    ``docker.io/library/busybox:latest``; a name whose first part looks like a host keeps it."""
    if ref.startswith("sha256:"):
        return ref
    name, at, digest = ref.partition("@")
    first, slash, _ = name.partition("/")
    if not slash:
        name = f"docker.io/library/{name}"
    elif not ("." in first or ":" in first or first == "localhost"):
        name = f"docker.io/{name}"
    if not at and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return f"{name}@{digest}" if at else name


def _image_id(normalized: str) -> str:
    return "sha256:" + hashlib.sha256(normalized.encode()).hexdigest()


class SimulatedImageService:
    """Images that exist because they were pulled: any name pulls, instantly unless the sandbox says otherwise
    (``sim.ccmkit.io/pull-ms``, ``sim.ccmkit.io/pull-error``). The process runtime uses it too."""

    def __init__(self, timers: TimerHeap | None = None, image_size: int = 5 * 1024 * 1024) -> None:
        self.timers = timers if timers is not None else TimerHeap(SystemClock())
        self.image_size = image_size
        self._images: dict[str, Image] = {}  # by id
        self._refs: dict[str, str] = {}  # tag or digest reference -> id

    def resolve(self, ref: str) -> Image | None:
        """The image a reference names (tag, digest or id), or None."""
        if ref in self._images:
            return self._images[ref]
        image_id = self._refs.get(normalize_image_ref(ref))
        return self._images.get(image_id) if image_id else None

    async def pull_image(
        self, image: ImageSpec, auth: AuthConfig | None = None, sandbox_config: PodSandboxConfig | None = None
    ) -> str:
        annotations = {**(sandbox_config.annotations if sandbox_config else {}), **image.annotations}
        if delay := _parse_float(annotations, PULL_MS, 0.0) / 1000:
            await self.timers.sleep(delay)
        if message := annotations.get(PULL_ERROR):
            raise CRIError(f'failed to pull and unpack image "{image.image}": {message}')
        return self.add(image.image).id

    def add(self, ref: str) -> Image:
        """Make an image present, as a pull would (also for seeding a node's images)."""
        normalized = normalize_image_ref(ref)
        if (existing := self.resolve(normalized)) is not None:
            return existing
        image_id = _image_id(normalized)
        name = normalized.partition("@")[0]
        repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
        # A made-up manifest digest, stable for the name, so digest references resolve like real ones.
        digest = normalized if "@" in normalized else f"{repo}@{_image_id(image_id)}"
        tags = [] if "@" in normalized else [normalized]
        img = Image(
            id=image_id, repo_tags=tags, repo_digests=[digest], size=self.image_size, spec=ImageSpec(image=normalized)
        )
        self._images[image_id] = img
        for r in (*tags, digest, normalized):
            self._refs[r] = image_id
        return img

    async def list_images(self, filter: ImageFilter | None = None) -> list[Image]:
        if filter and filter.image and filter.image.image:
            found = self.resolve(filter.image.image)
            return [found] if found else []
        return list(self._images.values())

    async def image_status(self, image: ImageSpec, verbose: bool = False) -> Image | None:
        return self.resolve(image.image)

    async def remove_image(self, image: ImageSpec) -> None:
        found = self.resolve(image.image)
        if found is None:
            return
        del self._images[found.id]
        for r in [r for r, i in self._refs.items() if i == found.id]:
            del self._refs[r]


# ---------------------------------------------------------------------------------------------------------------
# Behaviour from annotations


@dataclass(slots=True, frozen=True)
class Behaviour:
    """What one simulated container does, resolved from annotations once, when it is created."""

    start_ms: float = 0.0
    start_error: str = ""
    exit_after_s: float | None = None
    exit_code: int = 0
    stop_ms: float = 0.0
    stop_exit_code: int = 143
    cpu_millicores: int = 0
    memory_bytes: int = 0
    stdout: str = ""
    stderr: str = ""
    files: str = ""  # raw JSON, parsed when the container is created


_DEFAULT_BEHAVIOUR = Behaviour()

_KEYS: dict[str, tuple[str, Callable[[str], object]]] = {
    "start-ms": ("start_ms", float),
    "start-error": ("start_error", str),
    "exit-after-s": ("exit_after_s", float),
    "exit-code": ("exit_code", int),
    "stop-ms": ("stop_ms", float),
    "stop-exit-code": ("stop_exit_code", int),
    "cpu-millicores": ("cpu_millicores", int),
    "memory-bytes": ("memory_bytes", int),
    "stdout": ("stdout", str),
    "stderr": ("stderr", str),
    "files": ("files", str),
}
_POD_ONLY_KEYS = {"pull-ms", "pull-error"}


def _parse_float(annotations: dict[str, str], key: str, default: float) -> float:
    raw = annotations.get(key)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise InvalidArgumentError(f"annotation {key}={raw!r}: not a number") from None


def _split_sim_annotations(annotations: dict[str, str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Pod-wide keys and per-container keys (``<container>.<key>``) of a sandbox's sim annotations."""
    pod: dict[str, str] = {}
    per_container: dict[str, dict[str, str]] = {}
    for key, value in annotations.items():
        if not key.startswith(PREFIX):
            continue
        rest = key[len(PREFIX) :]
        container, dot, name = rest.rpartition(".")
        if name not in _KEYS and name not in _POD_ONLY_KEYS:
            raise InvalidArgumentError(f"unknown simulation annotation {key!r}")
        if dot:
            per_container.setdefault(container, {})[name] = value
        else:
            pod[name] = value
    return pod, per_container


@functools.lru_cache(maxsize=4096)
def _behaviour(*layers: tuple[tuple[str, str], ...]) -> Behaviour:
    """Merge annotation layers, later wins. Cached: the pods of one workload share their annotations."""
    merged: dict[str, object] = {}
    for layer in layers:
        for key, raw in layer:
            if key in _POD_ONLY_KEYS:
                continue
            attr, parse = _KEYS[key]
            try:
                merged[attr] = parse(raw)
            except ValueError:
                raise InvalidArgumentError(f"annotation {PREFIX}{key}={raw!r}: not a valid value") from None
    return replace(_DEFAULT_BEHAVIOUR, **merged) if merged else _DEFAULT_BEHAVIOUR  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# Records


def _new_id() -> str:
    return os.urandom(32).hex()


class _Sandbox:
    __slots__ = ("config", "containers", "created_at", "id", "ip", "key", "sim_per_container", "sim_pod", "state")

    def __init__(self, id: str, config: PodSandboxConfig, created_at: int, ip: str, key: tuple[str, ...]) -> None:
        self.id = id
        self.config = config
        self.state = PodSandboxState.SANDBOX_READY
        self.created_at = created_at
        self.ip = ip
        self.containers: dict[str, None] = {}  # ids, in creation order
        self.sim_pod, self.sim_per_container = _split_sim_annotations(config.annotations)
        self.key = key


class _Container:
    __slots__ = (
        "behaviour",
        "config",
        "created_at",
        "exit_code",
        "exit_timer",
        "exit_waiters",
        "files",
        "finished_at",
        "id",
        "image",
        "image_ref",
        "key",
        "log_path",
        "message",
        "reason",
        "sandbox",
        "started_at",
        "state",
    )

    def __init__(
        self,
        id: str,
        sandbox: _Sandbox,
        config: ContainerConfig,
        image: Image,
        created_at: int,
        log_path: str,
        behaviour: Behaviour,
        key: tuple[str, str, int],
    ) -> None:
        self.id = id
        self.sandbox = sandbox
        self.config = config
        self.image = image
        self.image_ref = image.id
        self.state = ContainerState.CONTAINER_CREATED
        self.created_at = created_at
        self.started_at = 0
        self.finished_at = 0
        self.exit_code = 0
        self.reason = ""
        self.message = ""
        self.log_path = log_path
        self.behaviour = behaviour
        self.exit_timer: TimerEntry | None = None
        self.exit_waiters: list[asyncio.Future[None]] | None = None
        self.files: dict[str, bytes] | None = None
        self.key = key


# ---------------------------------------------------------------------------------------------------------------
# The runtime


class SimulatedRuntime:
    """RuntimeService in memory. ``images`` is its ImageService (pass one to share it); ``clock`` a FakeClock in
    tests. ``pod_cidr`` is where pod IPs come from (host-network pods have none, as with containerd). Runtimes of
    many simulated nodes in one process may share one ``timers`` heap (its clock is then the runtime's clock)."""

    def __init__(
        self,
        clock: Clock | None = None,
        images: SimulatedImageService | None = None,
        pod_cidr: str = "10.244.0.0/16",
        runtime_name: str = "ccmkit-simulated",
        timers: TimerHeap | None = None,
    ) -> None:
        self.timers = timers if timers is not None else TimerHeap(clock or SystemClock())
        self.clock = self.timers.clock
        self.images = images if images is not None else SimulatedImageService(self.timers)
        self.runtime_name = runtime_name
        self._ips = IPPool(pod_cidr)
        self._sandboxes: dict[str, _Sandbox] = {}
        self._containers: dict[str, _Container] = {}
        self._sandbox_names: dict[tuple[str, ...], str] = {}
        self._container_names: dict[tuple[str, str, int], str] = {}

    def _now_ns(self) -> int:
        return int(self.clock.now() * 1e9)

    async def aclose(self) -> None:
        """Drop every scheduled transition of this runtime (a shared heap keeps other runtimes' entries)."""
        for c in self._containers.values():
            if c.exit_timer is not None:
                c.exit_timer.cancel()
                c.exit_timer = None

    # -- lookups ------------------------------------------------------------------------------------------------

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
        sandbox = _Sandbox(_new_id(), config, self._now_ns(), "", key)  # rejects bad sim annotations
        if not config.host_network:
            sandbox.ip = self._ips.allocate()
        self._sandboxes[sandbox.id] = sandbox
        self._sandbox_names[key] = sandbox.id
        return sandbox.id

    async def stop_pod_sandbox(self, pod_sandbox_id: str) -> None:
        sandbox = self._sandboxes.get(pod_sandbox_id)
        if sandbox is None:
            return
        for cid in list(sandbox.containers):
            self._kill_now(self._containers[cid])
        sandbox.state = PodSandboxState.SANDBOX_NOTREADY

    async def remove_pod_sandbox(self, pod_sandbox_id: str) -> None:
        sandbox = self._sandboxes.pop(pod_sandbox_id, None)
        if sandbox is None:
            return
        for cid in list(sandbox.containers):
            self._forget(self._containers[cid])
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
            network=PodSandboxNetworkStatus(ip=s.ip),
            namespace_options=linux.security_context.namespace_options if linux else NamespaceOption(),
            labels=s.config.labels,
            annotations=s.config.annotations,
        )

    async def list_pod_sandbox(self, filter: PodSandboxFilter | None = None) -> list[PodSandbox]:
        if filter and filter.id:
            candidates: Iterable[_Sandbox] = [s] if (s := self._sandboxes.get(filter.id)) else []
        else:
            candidates = self._sandboxes.values()
        return [
            PodSandbox(s.id, s.config.metadata, s.state, s.created_at, s.config.labels, s.config.annotations)
            for s in candidates
            if filter is None
            or (
                (filter.state is None or s.state == filter.state)
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
        name = config.metadata.name
        key = (pod_sandbox_id, name, config.metadata.attempt)
        if key in self._container_names:
            raise AlreadyExistsError(f"container name {name!r} attempt {config.metadata.attempt} is reserved")
        own = {k[len(PREFIX) :]: v for k, v in config.annotations.items() if k.startswith(PREFIX)}
        behaviour = (
            _behaviour(
                tuple(sandbox.sim_pod.items()),
                tuple(sandbox.sim_per_container.get(name, {}).items()),
                tuple(own.items()),
            )
            if sandbox.sim_pod or sandbox.sim_per_container or own
            else _DEFAULT_BEHAVIOUR
        )
        log_path = (
            os.path.join(sandbox.config.log_directory, config.log_path)
            if sandbox.config.log_directory and config.log_path
            else config.log_path
        )
        c = _Container(_new_id(), sandbox, config, image, self._now_ns(), log_path, behaviour, key)
        if behaviour.files:
            try:
                seeded = json.loads(behaviour.files)
                c.files = {posixpath.normpath(p): str(v).encode() for p, v in seeded.items()}
            except (ValueError, AttributeError):
                raise InvalidArgumentError(f"annotation {PREFIX}files: not a JSON object of path: content") from None
        self._containers[c.id] = c
        self._container_names[key] = c.id
        sandbox.containers[c.id] = None
        return c.id

    async def start_container(self, container_id: str) -> None:
        c = self._container(container_id)
        if c.state != ContainerState.CONTAINER_CREATED:
            raise FailedPreconditionError(f"container {container_id} is in {c.state.name} state, not CREATED")
        b = c.behaviour
        if b.start_ms:
            await self.timers.sleep(b.start_ms / 1000)
            if self._containers.get(container_id) is not c or c.state != ContainerState.CONTAINER_CREATED:
                raise FailedPreconditionError(f"container {container_id} was stopped or removed while starting")
        now = self._now_ns()
        if b.start_error:
            c.state, c.finished_at, c.exit_code = ContainerState.CONTAINER_EXITED, now, 128
            c.reason, c.message = "StartError", b.start_error
            raise CRIError(f"failed to start container {container_id!r}: {b.start_error}")
        c.state, c.started_at = ContainerState.CONTAINER_RUNNING, now
        if b.exit_after_s is not None:
            self._schedule_exit(c, self.clock.now() + b.exit_after_s, b.exit_code)
        if (b.stdout or b.stderr) and c.log_path:
            await asyncio.to_thread(self._write_log, c.log_path, b.stdout, b.stderr, now)

    @staticmethod
    def _write_log(path: str, stdout: str, stderr: str, now: int) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            for stream, text in (("stdout", stdout), ("stderr", stderr)):
                for line in text.splitlines():
                    f.write(crilog.format_line(stream, line.encode(), timestamp_ns=now))  # type: ignore[arg-type]

    async def stop_container(self, container_id: str, timeout: float) -> None:
        c = self._container(container_id)
        if c.state != ContainerState.CONTAINER_RUNNING:
            return
        b = c.behaviour
        graceful = b.stop_ms / 1000
        if graceful <= max(timeout, 0):
            self._schedule_exit(c, self.clock.now() + graceful, b.stop_exit_code)
        else:
            self._schedule_exit(c, self.clock.now() + max(timeout, 0), _SIGKILL_EXIT)
        if c.state == ContainerState.CONTAINER_RUNNING:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if c.exit_waiters is None:
                c.exit_waiters = []
            c.exit_waiters.append(waiter)
            await waiter

    async def remove_container(self, container_id: str) -> None:
        c = self._containers.get(container_id)
        if c is not None:
            self._forget(c)

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
            image_ref=c.image_ref,
            reason=c.reason,
            message=c.message,
            labels=cfg.labels,
            annotations=cfg.annotations,
            mounts=cfg.mounts,
            log_path=c.log_path,
            resources=cfg.linux.resources if cfg.linux else None,
        )

    async def list_containers(self, filter: ContainerFilter | None = None) -> list[Container]:
        candidates: Iterable[_Container]
        if filter and filter.id:
            candidates = [c] if (c := self._containers.get(filter.id)) else []
        elif filter and filter.pod_sandbox_id:
            s = self._sandboxes.get(filter.pod_sandbox_id)
            candidates = [self._containers[i] for i in s.containers] if s else []
        else:
            candidates = self._containers.values()
        return [
            Container(
                c.id,
                c.sandbox.id,
                c.config.metadata,
                c.config.image,
                c.image_ref,
                c.state,
                c.created_at,
                c.config.labels,
                c.config.annotations,
            )
            for c in candidates
            if filter is None
            or (
                (filter.state is None or c.state == filter.state)
                and (not filter.pod_sandbox_id or c.sandbox.id == filter.pod_sandbox_id)
                and matches_labels(c.config.labels, filter.label_selector)
            )
        ]

    # -- exec ---------------------------------------------------------------------------------------------------

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float = 0) -> ExecSyncResponse:
        c = self._container(container_id)
        if c.state != ContainerState.CONTAINER_RUNNING:
            raise FailedPreconditionError(f"container {container_id} is not running")
        return _FakeShell(c).run_argv(cmd)

    async def exec(self, request: ExecRequest) -> ExecSession:
        return CompletedExecSession(await self.exec_sync(request.container_id, request.cmd))

    # -- stats --------------------------------------------------------------------------------------------------

    async def container_stats(self, container_id: str) -> ContainerStats:
        return self._stats(self._container(container_id))

    async def list_container_stats(self, filter: ContainerStatsFilter | None = None) -> list[ContainerStats]:
        flt = filter or ContainerStatsFilter()
        return [
            self._stats(c)
            for c in self._containers.values()
            if (not flt.id or c.id == flt.id)
            and (not flt.pod_sandbox_id or c.sandbox.id == flt.pod_sandbox_id)
            and matches_labels(c.config.labels, flt.label_selector)
        ]

    def _stats(self, c: _Container) -> ContainerStats:
        now = self._now_ns()
        running = c.state == ContainerState.CONTAINER_RUNNING
        nano_cores = c.behaviour.cpu_millicores * 1_000_000
        ran_ns = ((now if running else c.finished_at) - c.started_at) if c.started_at else 0
        return ContainerStats(
            attributes=ContainerAttributes(c.id, c.config.metadata, c.config.labels, c.config.annotations),
            cpu=CpuUsage(
                now,
                usage_core_nano_seconds=nano_cores * max(ran_ns, 0) // 1_000_000_000,
                usage_nano_cores=nano_cores if running else 0,
            ),
            memory=MemoryUsage(
                now,
                working_set_bytes=c.behaviour.memory_bytes if running else 0,
                rss_bytes=c.behaviour.memory_bytes if running else 0,
            ),
        )

    # -- extras for tests and simulations (ex_: not part of CRI) -----------------------------------------------

    def ex_exit(self, container_id: str, exit_code: int, reason: str = "") -> None:
        """Make a running container exit now, e.g. ``reason="OOMKilled"`` with 137."""
        c = self._container(container_id)
        if c.state == ContainerState.CONTAINER_RUNNING:
            self._exit(c, exit_code, reason)

    def ex_write_file(self, container_id: str, path: str, data: bytes) -> None:
        c = self._container(container_id)
        if c.files is None:
            c.files = {}
        c.files[posixpath.normpath(path)] = data

    def ex_remove_file(self, container_id: str, path: str) -> None:
        c = self._container(container_id)
        if c.files:
            c.files.pop(posixpath.normpath(path), None)

    # -- transitions --------------------------------------------------------------------------------------------

    def _schedule_exit(self, c: _Container, when: float, exit_code: int) -> None:
        """Make ``c`` exit at ``when`` unless it is already due to exit earlier (a natural exit beats a stop)."""
        if c.exit_timer is not None and not c.exit_timer.cancelled and c.exit_timer.when <= when:
            return
        if c.exit_timer is not None:
            c.exit_timer.cancel()
        if when <= self.clock.now():
            c.exit_timer = None
            self._exit(c, exit_code)
            return
        c.exit_timer = self.timers.call_at(when, lambda: self._exit(c, exit_code))

    def _exit(self, c: _Container, exit_code: int, reason: str = "") -> None:
        if c.state != ContainerState.CONTAINER_RUNNING:
            return
        if c.exit_timer is not None:
            c.exit_timer.cancel()
            c.exit_timer = None
        c.state, c.finished_at, c.exit_code = ContainerState.CONTAINER_EXITED, self._now_ns(), exit_code
        c.reason = reason or exit_reason(exit_code)
        waiters, c.exit_waiters = c.exit_waiters, None
        for w in waiters or ():
            if not w.done():
                w.set_result(None)

    def _kill_now(self, c: _Container) -> None:
        if c.state == ContainerState.CONTAINER_RUNNING:
            self._exit(c, _SIGKILL_EXIT)

    def _forget(self, c: _Container) -> None:
        self._kill_now(c)
        if c.exit_timer is not None:
            c.exit_timer.cancel()
        del self._containers[c.id]
        del self._container_names[c.key]
        c.sandbox.containers.pop(c.id, None)


# ---------------------------------------------------------------------------------------------------------------
# The fake shell behind exec


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _FakeShell:
    def __init__(self, c: _Container) -> None:
        self.c = c
        self.out: list[bytes] = []
        self.err: list[bytes] = []

    @property
    def files(self) -> dict[str, bytes]:
        if self.c.files is None:
            self.c.files = {}
        return self.c.files

    def run_argv(self, argv: list[str]) -> ExecSyncResponse:
        if not argv:
            raise InvalidArgumentError("exec: empty command")
        name = posixpath.basename(argv[0])
        if name in ("sh", "ash", "bash") and len(argv) >= 3 and argv[1] == "-c":
            try:
                code = self.run_script(argv[2])
            except _Exit as e:
                code = e.code
        elif name in _COMMANDS or name == "exit":
            try:
                code = self.run_simple(argv, self.out, self.err)
            except _Exit as e:
                code = e.code
        else:
            raise CRIError(f'exec failed: exec: "{argv[0]}": executable file not found in $PATH')
        return ExecSyncResponse(b"".join(self.out), b"".join(self.err), code)

    def run_script(self, script: str) -> int:
        lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|>")
        lexer.whitespace_split = True
        tokens = list(lexer)
        code, op = 0, ";"
        words: list[str] = []
        for tok in [*tokens, ";"]:
            if tok in (";", "&&", "||"):
                if words and (op == ";" or (op == "&&" and code == 0) or (op == "||" and code != 0)):
                    code = self.run_words(words)
                words, op = [], tok
            else:
                words.append(tok)
        return code

    def run_words(self, words: list[str]) -> int:
        """One simple command with its redirections."""
        out, err = self.out, self.err
        argv: list[str] = []
        target: tuple[str, bool] | None = None  # (path, append)
        i = 0
        while i < len(words):
            w = words[i]
            if w == ">&" and i + 1 < len(words) and words[i + 1] == "2":
                if argv and argv[-1] == "1":
                    argv.pop()
                out = err
                i += 2
                continue
            if w in (">", ">>") and i + 1 < len(words):
                target = (posixpath.normpath(words[i + 1]), w == ">>")
                i += 2
                continue
            argv.append(w)
            i += 1
        if not argv:
            return 0
        if posixpath.basename(argv[0]) not in _COMMANDS and argv[0] != "exit":
            err.append(f"sh: {argv[0]}: not found\n".encode())
            return 127
        if target is None:
            return self.run_simple(argv, out, err)
        captured: list[bytes] = []
        code = self.run_simple(argv, captured, err)
        path, append = target
        self.files[path] = (self.files.get(path, b"") if append else b"") + b"".join(captured)
        return code

    def run_simple(self, argv: list[str], out: list[bytes], err: list[bytes]) -> int:
        name, args = posixpath.basename(argv[0]), argv[1:]
        if name == "exit":
            raise _Exit(int(args[0]) if args else 0)
        return _COMMANDS[name](self, args, out, err)


def _cmd_true(sh: _FakeShell, args: list[str], out: list[bytes], err: list[bytes]) -> int:
    return 0


def _cmd_false(sh: _FakeShell, args: list[str], out: list[bytes], err: list[bytes]) -> int:
    return 1


def _cmd_echo(sh: _FakeShell, args: list[str], out: list[bytes], err: list[bytes]) -> int:
    newline = True
    if args and args[0] == "-n":
        newline, args = False, args[1:]
    out.append((" ".join(args) + ("\n" if newline else "")).encode())
    return 0


def _cmd_cat(sh: _FakeShell, args: list[str], out: list[bytes], err: list[bytes]) -> int:
    code = 0
    for path in args:
        data = sh.files.get(posixpath.normpath(path))
        if data is None:
            err.append(f"cat: can't open '{path}': No such file or directory\n".encode())
            code = 1
        else:
            out.append(data)
    return code


def _cmd_test(sh: _FakeShell, args: list[str], out: list[bytes], err: list[bytes]) -> int:
    if args and args[-1] == "]":
        args = args[:-1]
    if len(args) == 2 and args[0] in ("-e", "-f", "-s"):
        data = sh.files.get(posixpath.normpath(args[1]))
        return 0 if data is not None and (args[0] != "-s" or data) else 1
    if len(args) == 2 and args[0] in ("-n", "-z"):
        return 0 if bool(args[1]) == (args[0] == "-n") else 1
    if len(args) == 3 and args[1] in ("=", "!="):
        return 0 if (args[0] == args[2]) == (args[1] == "=") else 1
    if len(args) == 1:
        return 0 if args[0] else 1
    err.append(b"test: unsupported expression\n")
    return 2


def _cmd_touch(sh: _FakeShell, args: list[str], out: list[bytes], err: list[bytes]) -> int:
    for path in args:
        sh.files.setdefault(posixpath.normpath(path), b"")
    return 0


def _cmd_rm(sh: _FakeShell, args: list[str], out: list[bytes], err: list[bytes]) -> int:
    force = any(a.startswith("-") and "f" in a for a in args)
    code = 0
    for path in (a for a in args if not a.startswith("-")):
        if sh.files.pop(posixpath.normpath(path), None) is None and not force:
            err.append(f"rm: can't remove '{path}': No such file or directory\n".encode())
            code = 1
    return code


def _cmd_env(sh: _FakeShell, args: list[str], out: list[bytes], err: list[bytes]) -> int:
    out.extend(f"{kv.key}={kv.value}\n".encode() for kv in sh.c.config.envs)
    return 0


def _cmd_hostname(sh: _FakeShell, args: list[str], out: list[bytes], err: list[bytes]) -> int:
    out.append(f"{sh.c.sandbox.config.hostname or sh.c.sandbox.config.metadata.name}\n".encode())
    return 0


_COMMANDS: dict[str, Callable[[_FakeShell, list[str], list[bytes], list[bytes]], int]] = {
    "true": _cmd_true,
    "false": _cmd_false,
    "echo": _cmd_echo,
    "cat": _cmd_cat,
    "test": _cmd_test,
    "[": _cmd_test,
    "touch": _cmd_touch,
    "rm": _cmd_rm,
    "env": _cmd_env,
    "hostname": _cmd_hostname,
}
