"""A CRI v1 gRPC client: the RuntimeService and ImageService of any CRI endpoint (containerd, or ours).

This is how a kubelet drives a real container runtime, e.g. ``unix:///run/containerd/containerd.sock``, and how
tests drive our own server to prove the simulated and process runtimes speak real CRI. It uses grpc.aio with the
compiled stubs of ``container-runtime-interface-api`` and maps gRPC status codes to this package's CRIError
classes. ``exec`` follows the URL CRI's Exec returns with a WebSocket client (see streaming.py).
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

from . import convert
from .api import (
    ERRORS_BY_CODE,
    AuthConfig,
    Container,
    ContainerConfig,
    ContainerFilter,
    ContainerStats,
    ContainerStatsFilter,
    ContainerStatus,
    CRIError,
    ExecRequest,
    ExecSession,
    ExecSyncResponse,
    Image,
    ImageFilter,
    ImageSpec,
    PodSandbox,
    PodSandboxConfig,
    PodSandboxFilter,
    PodSandboxStatus,
    StatusResponse,
    VersionResponse,
)
from .streaming import WebSocketExecSession


def grpc_target(endpoint: str) -> str:
    """``unix:///path``, ``unix:path`` or a bare socket path, as a gRPC target."""
    if endpoint.startswith(("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")):
        return endpoint
    return "unix:" + endpoint


def error_from_rpc(e: grpc.aio.AioRpcError) -> CRIError:
    code = e.code()
    name = code.name if code is not None else "UNKNOWN"
    cls = ERRORS_BY_CODE.get(name, CRIError)
    err = cls(e.details() or name)
    if cls is CRIError:
        err.code = name  # keep codes we have no class for (RESOURCE_EXHAUSTED, ...) visible
    return err


class RemoteRuntime:
    """RuntimeService and ImageService of a CRI endpoint. ``timeout`` is the default deadline of a call."""

    def __init__(self, endpoint: str, timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(
            grpc_target(endpoint), options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        )
        self._runtime = pb_grpc.RuntimeServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._images = pb_grpc.ImageServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> RemoteRuntime:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._channel.close()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the endpoint answers Version (the socket may not exist yet)."""
        await self._call(self._runtime.Version, pb.VersionRequest(version="v1"), timeout, wait_for_ready=True)

    async def _call(self, method: Any, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        try:
            return await method(request, timeout=timeout or self.timeout, **kwargs)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from None

    # -- RuntimeService -----------------------------------------------------------------------------------------

    async def version(self, version: str = "v1") -> VersionResponse:
        return convert.version_from_pb(await self._call(self._runtime.Version, pb.VersionRequest(version=version)))

    async def run_pod_sandbox(self, config: PodSandboxConfig, runtime_handler: str = "") -> str:
        req = pb.RunPodSandboxRequest(config=convert.sandbox_config_to_pb(config), runtime_handler=runtime_handler)
        return (await self._call(self._runtime.RunPodSandbox, req)).pod_sandbox_id  # type: ignore[no-any-return]

    async def stop_pod_sandbox(self, pod_sandbox_id: str) -> None:
        await self._call(self._runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_sandbox_id))

    async def remove_pod_sandbox(self, pod_sandbox_id: str) -> None:
        await self._call(self._runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_sandbox_id))

    async def pod_sandbox_status(self, pod_sandbox_id: str, verbose: bool = False) -> PodSandboxStatus:
        req = pb.PodSandboxStatusRequest(pod_sandbox_id=pod_sandbox_id, verbose=verbose)
        return convert.sandbox_status_from_pb((await self._call(self._runtime.PodSandboxStatus, req)).status)

    async def list_pod_sandbox(self, filter: PodSandboxFilter | None = None) -> list[PodSandbox]:
        req = pb.ListPodSandboxRequest(filter=convert.sandbox_filter_to_pb(filter) if filter else None)
        return [convert.sandbox_from_pb(s) for s in (await self._call(self._runtime.ListPodSandbox, req)).items]

    async def create_container(
        self, pod_sandbox_id: str, config: ContainerConfig, sandbox_config: PodSandboxConfig
    ) -> str:
        req = pb.CreateContainerRequest(
            pod_sandbox_id=pod_sandbox_id,
            config=convert.container_config_to_pb(config),
            sandbox_config=convert.sandbox_config_to_pb(sandbox_config),
        )
        return (await self._call(self._runtime.CreateContainer, req)).container_id  # type: ignore[no-any-return]

    async def start_container(self, container_id: str) -> None:
        await self._call(self._runtime.StartContainer, pb.StartContainerRequest(container_id=container_id))

    async def stop_container(self, container_id: str, timeout: float) -> None:
        seconds = max(0, math.ceil(timeout))  # CRI's timeout is whole seconds
        req = pb.StopContainerRequest(container_id=container_id, timeout=seconds)
        await self._call(self._runtime.StopContainer, req, self.timeout + seconds)

    async def remove_container(self, container_id: str) -> None:
        await self._call(self._runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=container_id))

    async def list_containers(self, filter: ContainerFilter | None = None) -> list[Container]:
        req = pb.ListContainersRequest(filter=convert.container_filter_to_pb(filter) if filter else None)
        resp = await self._call(self._runtime.ListContainers, req)
        return [convert.container_from_pb(c) for c in resp.containers]

    async def container_status(self, container_id: str, verbose: bool = False) -> ContainerStatus:
        req = pb.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return convert.container_status_from_pb((await self._call(self._runtime.ContainerStatus, req)).status)

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float = 0) -> ExecSyncResponse:
        seconds = max(0, math.ceil(timeout))
        req = pb.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=seconds)
        resp = await self._call(self._runtime.ExecSync, req, self.timeout + seconds)
        return ExecSyncResponse(resp.stdout, resp.stderr, resp.exit_code)

    async def exec(self, request: ExecRequest) -> ExecSession:
        resp = await self._call(self._runtime.Exec, convert.exec_request_to_pb(request))
        return await WebSocketExecSession.connect(resp.url)

    async def container_stats(self, container_id: str) -> ContainerStats:
        req = pb.ContainerStatsRequest(container_id=container_id)
        return convert.stats_from_pb((await self._call(self._runtime.ContainerStats, req)).stats)

    async def list_container_stats(self, filter: ContainerStatsFilter | None = None) -> list[ContainerStats]:
        req = pb.ListContainerStatsRequest(filter=convert.stats_filter_to_pb(filter) if filter else None)
        return [convert.stats_from_pb(s) for s in (await self._call(self._runtime.ListContainerStats, req)).stats]

    async def status(self, verbose: bool = False) -> StatusResponse:
        return convert.status_from_pb(await self._call(self._runtime.Status, pb.StatusRequest(verbose=verbose)))

    # -- ImageService -------------------------------------------------------------------------------------------

    async def pull_image(
        self, image: ImageSpec, auth: AuthConfig | None = None, sandbox_config: PodSandboxConfig | None = None
    ) -> str:
        req = pb.PullImageRequest(
            image=convert.image_spec_to_pb(image),
            auth=convert.auth_to_pb(auth) if auth else None,
            sandbox_config=convert.sandbox_config_to_pb(sandbox_config) if sandbox_config else None,
        )
        # Pulls are slow on real registries; give them far more than an ordinary call.
        return (await self._call(self._images.PullImage, req, max(self.timeout, 600))).image_ref  # type: ignore[no-any-return]

    async def list_images(self, filter: ImageFilter | None = None) -> list[Image]:
        req = pb.ListImagesRequest(filter=convert.image_filter_to_pb(filter) if filter else None)
        return [convert.image_from_pb(i) for i in (await self._call(self._images.ListImages, req)).images]

    async def image_status(self, image: ImageSpec, verbose: bool = False) -> Image | None:
        req = pb.ImageStatusRequest(image=convert.image_spec_to_pb(image), verbose=verbose)
        resp = await self._call(self._images.ImageStatus, req)
        return convert.image_from_pb(resp.image) if resp.HasField("image") and resp.image.id else None

    async def remove_image(self, image: ImageSpec) -> None:
        await self._call(self._images.RemoveImage, pb.RemoveImageRequest(image=convert.image_spec_to_pb(image)))
