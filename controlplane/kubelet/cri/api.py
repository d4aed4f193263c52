"""The Container Runtime Interface the kubelet speaks, as Python Protocols and plain dataclasses.

The kubelet talks to every runtime (simulated, process, a real containerd over gRPC) through these two
Protocols only, so the same sync loop runs a thousand simulated nodes or one real one. Names follow CRI v1
(k8s.io/cri-api runtime/v1 api.proto) field for field where we keep a field, so a reader can map each one;
what CRI has and we left out is simply absent, never renamed.

Conventions taken from CRI: ids are opaque strings; timestamps are nanoseconds since the Unix epoch; stop and
remove calls are idempotent (removing what is gone is not an error); a missing object raises ``NotFoundError``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

# ---------------------------------------------------------------------------------------------------------------
# Errors: one class per gRPC status code we use, so the gRPC server and client can map them both ways.


class CRIError(Exception):
    """A runtime refused or failed a call. ``code`` is the gRPC status code name a CRI server would answer."""

    code: str = "UNKNOWN"


class NotFoundError(CRIError):
    code = "NOT_FOUND"


class AlreadyExistsError(CRIError):
    code = "ALREADY_EXISTS"


class InvalidArgumentError(CRIError):
    code = "INVALID_ARGUMENT"


class FailedPreconditionError(CRIError):
    code = "FAILED_PRECONDITION"


class DeadlineExceededError(CRIError):
    code = "DEADLINE_EXCEEDED"


class UnimplementedError(CRIError):
    code = "UNIMPLEMENTED"


class UnavailableError(CRIError):
    code = "UNAVAILABLE"


ERRORS_BY_CODE: dict[str, type[CRIError]] = {
    cls.code: cls
    for cls in (
        CRIError,
        NotFoundError,
        AlreadyExistsError,
        InvalidArgumentError,
        FailedPreconditionError,
        DeadlineExceededError,
        UnimplementedError,
        UnavailableError,
    )
}

# ---------------------------------------------------------------------------------------------------------------
# Enums: same numbers as the protobuf enums. The short aliases (READY, RUNNING, ...) are the same members.


class PodSandboxState(enum.IntEnum):
    SANDBOX_READY = 0
    SANDBOX_NOTREADY = 1
    READY = 0
    NOTREADY = 1


class ContainerState(enum.IntEnum):
    CONTAINER_CREATED = 0
    CONTAINER_RUNNING = 1
    CONTAINER_EXITED = 2
    CONTAINER_UNKNOWN = 3
    CREATED = 0
    RUNNING = 1
    EXITED = 2
    UNKNOWN = 3


class Protocol_(enum.IntEnum):
    """CRI's ``Protocol`` enum (named with a trailing underscore so it does not shadow ``typing.Protocol``)."""

    TCP = 0
    UDP = 1
    SCTP = 2


class NamespaceMode(enum.IntEnum):
    POD = 0
    CONTAINER = 1
    NODE = 2
    TARGET = 3


class MountPropagation(enum.IntEnum):
    PROPAGATION_PRIVATE = 0
    PROPAGATION_HOST_TO_CONTAINER = 1
    PROPAGATION_BIDIRECTIONAL = 2


# ---------------------------------------------------------------------------------------------------------------
# Pod sandboxes


@dataclass(slots=True)
class PodSandboxMetadata:
    name: str
    uid: str
    namespace: str
    attempt: int = 0


@dataclass(slots=True)
class DNSConfig:
    servers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PortMapping:
    protocol: Protocol_ = Protocol_.TCP
    container_port: int = 0
    host_port: int = 0
    host_ip: str = ""


@dataclass(slots=True)
class NamespaceOption:
    network: NamespaceMode = NamespaceMode.POD
    pid: NamespaceMode = NamespaceMode.CONTAINER
    ipc: NamespaceMode = NamespaceMode.POD


@dataclass(slots=True)
class LinuxSandboxSecurityContext:
    namespace_options: NamespaceOption = field(default_factory=NamespaceOption)
    privileged: bool = False
    run_as_user: int | None = None
    run_as_group: int | None = None
    readonly_rootfs: bool = False


@dataclass(slots=True)
class LinuxPodSandboxConfig:
    cgroup_parent: str = ""
    security_context: LinuxSandboxSecurityContext = field(default_factory=LinuxSandboxSecurityContext)
    sysctls: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class PodSandboxConfig:
    metadata: PodSandboxMetadata
    hostname: str = ""
    # Where the runtime writes container logs; a container's log_path is relative to it (CRI's convention).
    log_directory: str = ""
    dns_config: DNSConfig | None = None
    port_mappings: list[PortMapping] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    linux: LinuxPodSandboxConfig | None = None

    @property
    def host_network(self) -> bool:
        """True for a hostNetwork pod (CRI says so with namespace_options.network == NODE)."""
        return self.linux is not None and self.linux.security_context.namespace_options.network == NamespaceMode.NODE


@dataclass(slots=True)
class PodSandbox:
    """A sandbox as ListPodSandbox reports it."""

    id: str
    metadata: PodSandboxMetadata
    state: PodSandboxState
    created_at: int
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    runtime_handler: str = ""


@dataclass(slots=True)
class PodIP:
    ip: str


@dataclass(slots=True)
class PodSandboxNetworkStatus:
    ip: str = ""
    additional_ips: list[PodIP] = field(default_factory=list)


@dataclass(slots=True)
class PodSandboxStatus:
    id: str
    metadata: PodSandboxMetadata
    state: PodSandboxState
    created_at: int
    network: PodSandboxNetworkStatus = field(default_factory=PodSandboxNetworkStatus)
    # CRI nests this as linux.namespaces.options; the namespace modes are what the kubelet reads from it.
    namespace_options: NamespaceOption | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    runtime_handler: str = ""


@dataclass(slots=True)
class PodSandboxFilter:
    id: str = ""
    state: PodSandboxState | None = None
    label_selector: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Containers


@dataclass(slots=True)
class ContainerMetadata:
    name: str
    attempt: int = 0


@dataclass(slots=True)
class ImageSpec:
    image: str
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class KeyValue:
    key: str
    value: str


@dataclass(slots=True)
class Mount:
    container_path: str
    host_path: str
    readonly: bool = False
    selinux_relabel: bool = False
    propagation: MountPropagation = MountPropagation.PROPAGATION_PRIVATE


@dataclass(slots=True)
class LinuxContainerResources:
    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""


@dataclass(slots=True)
class LinuxContainerSecurityContext:
    privileged: bool = False
    run_as_user: int | None = None
    run_as_group: int | None = None
    readonly_rootfs: bool = False


@dataclass(slots=True)
class LinuxContainerConfig:
    resources: LinuxContainerResources | None = None
    security_context: LinuxContainerSecurityContext | None = None


@dataclass(slots=True)
class ContainerConfig:
    metadata: ContainerMetadata
    image: ImageSpec
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    working_dir: str = ""
    envs: list[KeyValue] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    # Relative to the sandbox's log_directory (CRI's convention), e.g. "app/0.log".
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    linux: LinuxContainerConfig | None = None


@dataclass(slots=True)
class Container:
    """A container as ListContainers reports it."""

    id: str
    pod_sandbox_id: str
    metadata: ContainerMetadata
    image: ImageSpec
    image_ref: str
    state: ContainerState
    created_at: int
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ContainerStatus:
    id: str
    metadata: ContainerMetadata
    state: ContainerState
    created_at: int
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    image: ImageSpec | None = None
    image_ref: str = ""
    # "Completed" (exit 0), "Error", "OOMKilled", "StartError", as containerd reports them.
    reason: str = ""
    message: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    log_path: str = ""  # absolute: log_directory joined with the container's log_path
    resources: LinuxContainerResources | None = None


@dataclass(slots=True)
class ContainerFilter:
    id: str = ""
    state: ContainerState | None = None
    pod_sandbox_id: str = ""
    label_selector: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ContainerStatsFilter:
    id: str = ""
    pod_sandbox_id: str = ""
    label_selector: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ContainerAttributes:
    id: str
    metadata: ContainerMetadata
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class CpuUsage:
    timestamp: int
    usage_core_nano_seconds: int | None = None  # cumulative CPU time
    usage_nano_cores: int | None = None  # rate over the last sampling window; None until there are two samples


@dataclass(slots=True)
class MemoryUsage:
    timestamp: int
    working_set_bytes: int | None = None
    rss_bytes: int | None = None
    usage_bytes: int | None = None


@dataclass(slots=True)
class ContainerStats:
    attributes: ContainerAttributes
    cpu: CpuUsage | None = None
    memory: MemoryUsage | None = None


# ---------------------------------------------------------------------------------------------------------------
# Exec


class ExecSyncResponse(NamedTuple):
    """What ExecSync answers; a tuple so ``stdout, stderr, exit_code = await rt.exec_sync(...)`` reads naturally."""

    stdout: bytes
    stderr: bytes
    exit_code: int


@dataclass(slots=True)
class ExecRequest:
    container_id: str
    cmd: list[str]
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


# Channel numbers of Kubernetes' streaming protocol (channel.k8s.io), so output can be forwarded without mapping.
STDIN, STDOUT, STDERR = 0, 1, 2


class ExecSession(Protocol):
    """A running ``exec``: the simplest handle that lets the kubelet proxy ``kubectl exec POD -- CMD``.

    CRI's Exec answers a URL of the runtime's streaming server; the kubelet would hand that to the API server to
    proxy. Here ``RuntimeService.exec`` returns this handle instead, for every runtime: in process it wraps the
    command itself, and for a remote runtime it is a client of the URL that CRI's Exec returned (the
    ``v4/v5.channel.k8s.io`` WebSocket protocol that containerd's streaming server speaks), so the kubelet's own
    exec endpoint just copies ``read()`` chunks to its client and ends with ``wait()``'s exit code. No TTY and no
    terminal resize: only the non-interactive case (stdin is supported where the runtime can close it).
    """

    async def read(self) -> tuple[int, bytes] | None:
        """The next output chunk as ``(STDOUT|STDERR, data)``; None once both streams have ended."""
        ...

    async def write_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def wait(self) -> int:
        """The command's exit code, once it has ended (output not yet read stays readable)."""
        ...

    async def close(self) -> None:
        """Abandon the session, killing the command if it still runs. Idempotent."""
        ...


class CompletedExecSession:
    """An ExecSession whose command has already finished: what a runtime with no real processes returns."""

    def __init__(self, response: ExecSyncResponse) -> None:
        self._chunks = [(ch, data) for ch, data in ((STDOUT, response.stdout), (STDERR, response.stderr)) if data]
        self._exit_code = response.exit_code

    async def read(self) -> tuple[int, bytes] | None:
        return self._chunks.pop(0) if self._chunks else None

    async def write_stdin(self, data: bytes) -> None:
        return None

    async def close_stdin(self) -> None:
        return None

    async def wait(self) -> int:
        return self._exit_code

    async def close(self) -> None:
        self._chunks.clear()


async def collect(session: ExecSession) -> ExecSyncResponse:
    """Read a session to its end: its output split by stream, and its exit code."""
    out: dict[int, list[bytes]] = {STDOUT: [], STDERR: []}
    while (chunk := await session.read()) is not None:
        out[chunk[0]].append(chunk[1])
    return ExecSyncResponse(b"".join(out[STDOUT]), b"".join(out[STDERR]), await session.wait())


# ---------------------------------------------------------------------------------------------------------------
# Runtime status and version


@dataclass(slots=True)
class VersionResponse:
    version: str  # the CRI version of the kubelet API ("0.1.0" for v1)
    runtime_name: str
    runtime_version: str
    runtime_api_version: str  # "v1"


RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"


@dataclass(slots=True)
class RuntimeCondition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


@dataclass(slots=True)
class RuntimeStatus:
    conditions: list[RuntimeCondition] = field(default_factory=list)

    def condition(self, type_: str) -> RuntimeCondition | None:
        return next((c for c in self.conditions if c.type == type_), None)


@dataclass(slots=True)
class StatusResponse:
    status: RuntimeStatus
    info: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Images


@dataclass(slots=True)
class Image:
    id: str
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    size: int = 0
    uid: int | None = None
    username: str = ""
    spec: ImageSpec | None = None
    pinned: bool = False


@dataclass(slots=True)
class ImageFilter:
    image: ImageSpec | None = None


@dataclass(slots=True)
class AuthConfig:
    username: str = ""
    password: str = ""
    auth: str = ""
    server_address: str = ""
    identity_token: str = ""
    registry_token: str = ""


# ---------------------------------------------------------------------------------------------------------------
# The two services


@runtime_checkable
class RuntimeService(Protocol):
    """CRI's RuntimeService: pod sandboxes, containers, exec, stats, runtime status."""

    async def version(self, version: str = "v1") -> VersionResponse: ...

    async def run_pod_sandbox(self, config: PodSandboxConfig, runtime_handler: str = "") -> str:
        """Create and start a sandbox; returns its id. Once this returns, the sandbox is READY with its IP."""
        ...

    async def stop_pod_sandbox(self, pod_sandbox_id: str) -> None:
        """Force-stop every container of the sandbox and mark it NOTREADY. Idempotent. For a sandbox that was
        already removed, containerd answers NotFoundError and these runtimes nothing: treat NotFound as done."""
        ...

    async def remove_pod_sandbox(self, pod_sandbox_id: str) -> None:
        """Stop and remove the sandbox and all its containers; releases its IP. Idempotent (gone is fine)."""
        ...

    async def pod_sandbox_status(self, pod_sandbox_id: str, verbose: bool = False) -> PodSandboxStatus: ...

    async def list_pod_sandbox(self, filter: PodSandboxFilter | None = None) -> list[PodSandbox]: ...

    async def create_container(
        self, pod_sandbox_id: str, config: ContainerConfig, sandbox_config: PodSandboxConfig
    ) -> str:
        """Create a container (state CREATED) in a READY sandbox; the image must be present. Returns its id."""
        ...

    async def start_container(self, container_id: str) -> None: ...

    async def stop_container(self, container_id: str, timeout: float) -> None:
        """SIGTERM, then SIGKILL once ``timeout`` seconds have passed; returns when the container has exited.
        Stopping a container that is not running is not an error."""
        ...

    async def remove_container(self, container_id: str) -> None:
        """Remove a container, force-stopping it if it runs. Idempotent."""
        ...

    async def list_containers(self, filter: ContainerFilter | None = None) -> list[Container]: ...

    async def container_status(self, container_id: str, verbose: bool = False) -> ContainerStatus: ...

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float = 0) -> ExecSyncResponse:
        """Run ``cmd`` in a running container and return its output. ``timeout`` 0 means none; past it,
        the command is killed and ``DeadlineExceededError`` raised."""
        ...

    async def exec(self, request: ExecRequest) -> ExecSession:
        """Start ``request.cmd`` in a running container and return a handle to stream it (see ExecSession)."""
        ...

    async def container_stats(self, container_id: str) -> ContainerStats: ...

    async def list_container_stats(self, filter: ContainerStatsFilter | None = None) -> list[ContainerStats]: ...

    async def status(self, verbose: bool = False) -> StatusResponse: ...


@runtime_checkable
class ImageService(Protocol):
    """CRI's ImageService."""

    async def pull_image(
        self, image: ImageSpec, auth: AuthConfig | None = None, sandbox_config: PodSandboxConfig | None = None
    ) -> str:
        """Pull an image; returns its image ref (the id, ``sha256:...``)."""
        ...

    async def list_images(self, filter: ImageFilter | None = None) -> list[Image]: ...

    async def image_status(self, image: ImageSpec, verbose: bool = False) -> Image | None:
        """The image, or None if it is not present (CRI answers an empty image rather than an error)."""
        ...

    async def remove_image(self, image: ImageSpec) -> None:
        """Remove an image. Idempotent."""
        ...


# ---------------------------------------------------------------------------------------------------------------
# Small helpers every runtime needs


def matches_labels(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """CRI's label_selector: every key must be present with exactly that value."""
    return all(labels.get(k) == v for k, v in selector.items())


def exit_reason(exit_code: int) -> str:
    """The reason containerd reports for a container that exited on its own or by signal."""
    return "Completed" if exit_code == 0 else "Error"
