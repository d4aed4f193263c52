"""Serves an in-process runtime over the real CRI v1 gRPC API on a unix socket.

With it the simulated and process runtimes are CRI endpoints like containerd: our RemoteRuntime (and any other
CRI client) can drive them, a kubelet in another process can use them, and one behaviour suite proves all
runtimes agree on the wire. ``ccmkit cri serve --runtime simulated|process --socket PATH`` runs ``main``.
Exec is served as CRI serves it: Exec answers a URL on a loopback WebSocket streaming server (streaming.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

from . import convert
from .api import CRIError, ImageService, RuntimeService
from .streaming import ExecStreamServer

_R = TypeVar("_R")


def _cri_errors(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[_R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[_R]]:
    """Answer a CRIError with its gRPC status code, as a CRI server would."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> _R:
        try:
            return await method(self, request, context)
        except CRIError as e:
            code = getattr(grpc.StatusCode, e.code, grpc.StatusCode.UNKNOWN)
            await context.abort(code, str(e))
            raise  # abort raises; this line is for type checkers

    return wrapper


class _RuntimeServicer(pb_grpc.RuntimeServiceServicer):
    def __init__(self, runtime: RuntimeService, exec_server: ExecStreamServer) -> None:
        self.rt = runtime
        self.exec_server = exec_server

    @_cri_errors
    async def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return convert.version_to_pb(await self.rt.version(request.version))

    @_cri_errors
    async def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: Any) -> pb.RunPodSandboxResponse:
        sid = await self.rt.run_pod_sandbox(convert.sandbox_config_from_pb(request.config), request.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sid)

    @_cri_errors
    async def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: Any) -> pb.StopPodSandboxResponse:
        await self.rt.stop_pod_sandbox(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    @_cri_errors
    async def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest, context: Any) -> pb.RemovePodSandboxResponse:
        await self.rt.remove_pod_sandbox(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    @_cri_errors
    async def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest, context: Any) -> pb.PodSandboxStatusResponse:
        status = await self.rt.pod_sandbox_status(request.pod_sandbox_id, request.verbose)
        return pb.PodSandboxStatusResponse(status=convert.sandbox_status_to_pb(status))

    @_cri_errors
    async def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: Any) -> pb.ListPodSandboxResponse:
        flt = convert.sandbox_filter_from_pb(request.filter) if request.HasField("filter") else None
        return pb.ListPodSandboxResponse(items=[convert.sandbox_to_pb(s) for s in await self.rt.list_pod_sandbox(flt)])

    @_cri_errors
    async def CreateContainer(self, request: pb.CreateContainerRequest, context: Any) -> pb.CreateContainerResponse:
        cid = await self.rt.create_container(
            request.pod_sandbox_id,
            convert.container_config_from_pb(request.config),
            convert.sandbox_config_from_pb(request.sandbox_config),
        )
        return pb.CreateContainerResponse(container_id=cid)

    @_cri_errors
    async def StartContainer(self, request: pb.StartContainerRequest, context: Any) -> pb.StartContainerResponse:
        await self.rt.start_container(request.container_id)
        return pb.StartContainerResponse()

    @_cri_errors
    async def StopContainer(self, request: pb.StopContainerRequest, context: Any) -> pb.StopContainerResponse:
        await self.rt.stop_container(request.container_id, request.timeout)
        return pb.StopContainerResponse()

    @_cri_errors
    async def RemoveContainer(self, request: pb.RemoveContainerRequest, context: Any) -> pb.RemoveContainerResponse:
        await self.rt.remove_container(request.container_id)
        return pb.RemoveContainerResponse()

    @_cri_errors
    async def ListContainers(self, request: pb.ListContainersRequest, context: Any) -> pb.ListContainersResponse:
        flt = convert.container_filter_from_pb(request.filter) if request.HasField("filter") else None
        items = await self.rt.list_containers(flt)
        return pb.ListContainersResponse(containers=[convert.container_to_pb(c) for c in items])

    @_cri_errors
    async def ContainerStatus(self, request: pb.ContainerStatusRequest, context: Any) -> pb.ContainerStatusResponse:
        status = await self.rt.container_status(request.container_id, request.verbose)
        return pb.ContainerStatusResponse(status=convert.container_status_to_pb(status))

    @_cri_errors
    async def ExecSync(self, request: pb.ExecSyncRequest, context: Any) -> pb.ExecSyncResponse:
        out, err, code = await self.rt.exec_sync(request.container_id, list(request.cmd), request.timeout)
        return pb.ExecSyncResponse(stdout=out, stderr=err, exit_code=code)

    @_cri_errors
    async def Exec(self, request: pb.ExecRequest, context: Any) -> pb.ExecResponse:
        req = convert.exec_request_from_pb(request)
        await self.rt.container_status(req.container_id)  # a missing container fails here, as in containerd
        return pb.ExecResponse(url=self.exec_server.register(req))

    @_cri_errors
    async def ContainerStats(self, request: pb.ContainerStatsRequest, context: Any) -> pb.ContainerStatsResponse:
        return pb.ContainerStatsResponse(stats=convert.stats_to_pb(await self.rt.container_stats(request.container_id)))

    @_cri_errors
    async def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: Any
    ) -> pb.ListContainerStatsResponse:
        flt = convert.stats_filter_from_pb(request.filter) if request.HasField("filter") else None
        stats = await self.rt.list_container_stats(flt)
        return pb.ListContainerStatsResponse(stats=[convert.stats_to_pb(s) for s in stats])

    @_cri_errors
    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        return convert.status_to_pb(await self.rt.status(request.verbose))

    async def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: Any
    ) -> pb.UpdateRuntimeConfigResponse:
        # The kubelet sends the node's pod CIDR here; these runtimes take theirs at construction.
        return pb.UpdateRuntimeConfigResponse()


class _ImageServicer(pb_grpc.ImageServiceServicer):
    def __init__(self, images: ImageService) -> None:
        self.images = images

    @_cri_errors
    async def PullImage(self, request: pb.PullImageRequest, context: Any) -> pb.PullImageResponse:
        ref = await self.images.pull_image(
            convert.image_spec_from_pb(request.image),
            convert.auth_from_pb(request.auth) if request.HasField("auth") else None,
            convert.sandbox_config_from_pb(request.sandbox_config) if request.HasField("sandbox_config") else None,
        )
        return pb.PullImageResponse(image_ref=ref)

    @_cri_errors
    async def ListImages(self, request: pb.ListImagesRequest, context: Any) -> pb.ListImagesResponse:
        flt = convert.image_filter_from_pb(request.filter) if request.HasField("filter") else None
        return pb.ListImagesResponse(images=[convert.image_to_pb(i) for i in await self.images.list_images(flt)])

    @_cri_errors
    async def ImageStatus(self, request: pb.ImageStatusRequest, context: Any) -> pb.ImageStatusResponse:
        image = await self.images.image_status(convert.image_spec_from_pb(request.image), request.verbose)
        return pb.ImageStatusResponse(image=convert.image_to_pb(image) if image else None)

    @_cri_errors
    async def RemoveImage(self, request: pb.RemoveImageRequest, context: Any) -> pb.RemoveImageResponse:
        await self.images.remove_image(convert.image_spec_from_pb(request.image))
        return pb.RemoveImageResponse()

    async def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: Any) -> pb.ImageFsInfoResponse:
        return pb.ImageFsInfoResponse()  # no image filesystem to report: images here take no disk


class CRIServer:
    """A running CRI endpoint. ``stop()`` closes it; ``wait()`` returns when it has stopped."""

    def __init__(self, server: grpc.aio.Server, exec_server: ExecStreamServer, socket_path: Path) -> None:
        self._server = server
        self.exec_server = exec_server
        self.socket_path = socket_path

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_path}"

    async def stop(self, grace: float | None = 1.0) -> None:
        await self._server.stop(grace)
        await self.exec_server.stop()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def wait(self) -> None:
        await self._server.wait_for_termination()


async def serve(runtime: RuntimeService, image_service: ImageService, socket_path: str | Path) -> CRIServer:
    """Start serving ``runtime`` and ``image_service`` on a unix socket; returns once it accepts calls."""
    path = Path(socket_path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket of a previous run would make the bind fail
    exec_server = ExecStreamServer(runtime)
    await exec_server.start()
    server = grpc.aio.server()
    pb_grpc.add_RuntimeServiceServicer_to_server(_RuntimeServicer(runtime, exec_server), server)  # type: ignore[no-untyped-call]
    pb_grpc.add_ImageServiceServicer_to_server(_ImageServicer(image_service), server)  # type: ignore[no-untyped-call]
    if server.add_insecure_port(f"unix:{path}") == 0:
        await exec_server.stop()
        raise OSError(f"cannot listen on unix socket {path}")
    await server.start()
    return CRIServer(server, exec_server, path)


def build_runtime(kind: str, data_dir: Path) -> tuple[RuntimeService, ImageService]:
    """The runtime (and its image service) ``ccmkit cri serve --runtime KIND`` runs."""
    if kind == "simulated":
        from .simulated import SimulatedRuntime

        sim = SimulatedRuntime()
        return sim, sim.images
    if kind == "process":
        from .process import ProcessRuntime

        proc = ProcessRuntime(data_dir)
        return proc, proc.images
    raise ValueError(f"unknown runtime {kind!r}: choose simulated or process")


async def main(runtime: str, socket: str, data_dir: Path) -> None:
    """Serve a runtime until cancelled or sent SIGTERM/SIGINT; then kill what it runs and remove the socket."""
    rt, images = build_runtime(runtime, Path(data_dir))
    server = await serve(rt, images, socket)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread, etc.
            loop.add_signal_handler(sig, stopping.set)
            handled.append(sig)
    print(f"CRI {runtime} runtime serving on {server.endpoint} (pid {os.getpid()})", flush=True)
    try:
        waiter = asyncio.ensure_future(server.wait())
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait([waiter, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await server.stop()
        close = getattr(rt, "aclose", None)
        if close is not None:
            await close()
