"""Our CRI gRPC server and the remote client against each other: what crosses the wire beyond the shared suite
(error codes, exec streaming with stdin, the serve entry point) and that every message converts without loss."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cri_harness import until
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from controlplane.kubelet.cri import convert
from controlplane.kubelet.cri.api import (
    AlreadyExistsError,
    ContainerAttributes,
    ContainerConfig,
    ContainerMetadata,
    ContainerStats,
    CpuUsage,
    CRIError,
    DNSConfig,
    ExecRequest,
    ImageSpec,
    InvalidArgumentError,
    KeyValue,
    LinuxContainerConfig,
    LinuxContainerResources,
    LinuxContainerSecurityContext,
    LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext,
    MemoryUsage,
    Mount,
    MountPropagation,
    NamespaceMode,
    NamespaceOption,
    NotFoundError,
    PodSandboxConfig,
    PodSandboxMetadata,
    PortMapping,
    Protocol_,
    collect,
)
from controlplane.kubelet.cri.process import ProcessRuntime
from controlplane.kubelet.cri.remote import RemoteRuntime
from controlplane.kubelet.cri.server import main, serve
from controlplane.kubelet.cri.simulated import SimulatedRuntime
from controlplane.kubelet.cri.streaming import PROTOCOLS

IMAGE = "ccmkit.local/app:1"


def pod(name: str = "pod", **annotations: str) -> PodSandboxConfig:
    return PodSandboxConfig(PodSandboxMetadata(name, f"uid-{name}", "default"), annotations=annotations)


@pytest.fixture
async def remote_process(tmp_path: Path, short_dir: Path) -> AsyncIterator[RemoteRuntime]:
    runtime = ProcessRuntime(tmp_path / "data", pod_cidr="127.4.0.0/16")
    runtime.images.add(IMAGE)
    server = await serve(runtime, runtime.images, short_dir / "cri.sock")
    client = RemoteRuntime(server.endpoint)
    try:
        yield client
    finally:
        await client.aclose()
        await server.stop()
        await runtime.aclose()


@pytest.fixture
async def remote_sim(short_dir: Path) -> AsyncIterator[RemoteRuntime]:
    runtime = SimulatedRuntime()
    runtime.images.add(IMAGE)
    server = await serve(runtime, runtime.images, short_dir / "cri.sock")
    client = RemoteRuntime(server.endpoint)
    try:
        yield client
    finally:
        await client.aclose()
        await server.stop()


async def test_errors_keep_their_codes_over_the_wire(remote_sim: RemoteRuntime) -> None:
    with pytest.raises(NotFoundError):
        await remote_sim.container_status("missing")
    await remote_sim.run_pod_sandbox(pod())
    with pytest.raises(AlreadyExistsError):
        await remote_sim.run_pod_sandbox(pod())
    with pytest.raises(InvalidArgumentError):
        await remote_sim.run_pod_sandbox(pod("typo", **{"sim.ccmkit.io/exit-afterr": "1"}))
    with pytest.raises(CRIError, match="denied"):
        await remote_sim.pull_image(
            ImageSpec("x/y:1"), sandbox_config=pod("p2", **{"sim.ccmkit.io/pull-error": "denied"})
        )


async def test_simulation_annotations_cross_the_wire(remote_sim: RemoteRuntime) -> None:
    sandbox = pod(**{"sim.ccmkit.io/cpu-millicores": "500"})
    sid = await remote_sim.run_pod_sandbox(sandbox)
    cid = await remote_sim.create_container(sid, ContainerConfig(ContainerMetadata("c"), ImageSpec(IMAGE)), sandbox)
    await remote_sim.start_container(cid)
    stats = await remote_sim.container_stats(cid)
    assert stats.cpu is not None and stats.cpu.usage_nano_cores == 500_000_000


async def test_exec_with_stdin_over_the_streaming_server(remote_process: RemoteRuntime) -> None:
    sandbox = pod()
    sid = await remote_process.run_pod_sandbox(sandbox)
    config = ContainerConfig(ContainerMetadata("c"), ImageSpec(IMAGE), command=["sleep", "3600"])
    cid = await remote_process.create_container(sid, config, sandbox)
    await remote_process.start_container(cid)
    session = await remote_process.exec(ExecRequest(cid, ["sh", "-c", "cat; echo done >&2"], stdin=True))
    await session.write_stdin(b"piped through\n")
    await session.close_stdin()  # v5.channel.k8s.io: our server can close stdin
    assert await collect(session) == (b"piped through\n", b"done\n", 0)
    await session.close()


async def test_exec_of_a_missing_program_fails(remote_process: RemoteRuntime) -> None:
    sandbox = pod()
    sid = await remote_process.run_pod_sandbox(sandbox)
    config = ContainerConfig(ContainerMetadata("c"), ImageSpec(IMAGE), command=["sleep", "3600"])
    cid = await remote_process.create_container(sid, config, sandbox)
    await remote_process.start_container(cid)
    with pytest.raises(CRIError):
        await remote_process.exec_sync(cid, ["/no/such/program"])
    session = await remote_process.exec(ExecRequest(cid, ["/no/such/program"]))
    with pytest.raises(CRIError, match="no/such/program"):
        await collect(session)


async def test_exec_urls_are_single_use(remote_sim: RemoteRuntime, short_dir: Path) -> None:
    import grpc
    from cri_api.v1 import api_pb2 as pb
    from cri_api.v1 import api_pb2_grpc as pb_grpc

    sandbox = pod()
    sid = await remote_sim.run_pod_sandbox(sandbox)
    cid = await remote_sim.create_container(sid, ContainerConfig(ContainerMetadata("c"), ImageSpec(IMAGE)), sandbox)
    await remote_sim.start_container(cid)
    async with grpc.aio.insecure_channel(f"unix:{short_dir / 'cri.sock'}") as channel:
        url = (await pb_grpc.RuntimeServiceStub(channel).Exec(pb.ExecRequest(container_id=cid, cmd=["true"]))).url
    ws_url = "ws" + url[len("http") :]
    async with connect(ws_url, subprotocols=PROTOCOLS, proxy=None) as ws:
        frames = [frame async for frame in ws]
    last = frames[-1]
    assert isinstance(last, bytes) and last.startswith(b"\x03") and b'"Success"' in last
    with pytest.raises(InvalidStatus, match="404"):
        async with connect(ws_url, subprotocols=PROTOCOLS, proxy=None):
            pass


async def test_main_serves_until_cancelled(tmp_path: Path, short_dir: Path) -> None:
    socket = short_dir / "main.sock"
    task = asyncio.create_task(main("process", str(socket), tmp_path / "data"))
    await until(socket.exists, what="the CRI socket")
    async with RemoteRuntime(f"unix://{socket}") as client:
        await client.wait_ready()
        assert (await client.version()).runtime_name == "ccmkit-process"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not socket.exists()


def test_sandbox_config_round_trip() -> None:
    config = PodSandboxConfig(
        metadata=PodSandboxMetadata("web", "uid-1", "prod", attempt=2),
        hostname="web-0",
        log_directory="/var/log/pods/prod_web_uid-1",
        dns_config=DNSConfig(["10.96.0.10"], ["prod.svc.cluster.local"], ["ndots:5"]),
        port_mappings=[PortMapping(Protocol_.UDP, 53, 5353, "127.0.0.1")],
        labels={"app": "web"},
        annotations={"a": "b"},
        linux=LinuxPodSandboxConfig(
            cgroup_parent="/kubepods/pod1",
            security_context=LinuxSandboxSecurityContext(
                namespace_options=NamespaceOption(NamespaceMode.NODE, NamespaceMode.POD, NamespaceMode.NODE),
                privileged=True,
                run_as_user=1000,
                run_as_group=0,
            ),
            sysctls={"net.ipv4.ip_forward": "1"},
        ),
    )
    assert convert.sandbox_config_from_pb(convert.sandbox_config_to_pb(config)) == config
    assert config.host_network


def test_container_config_round_trip() -> None:
    config = ContainerConfig(
        metadata=ContainerMetadata("app", 3),
        image=ImageSpec("ccmkit.local/app:1", {"x": "y"}),
        command=["/bin/app"],
        args=["--port", "80"],
        working_dir="/srv",
        envs=[KeyValue("A", "1")],
        mounts=[
            Mount(
                "/data",
                "/var/lib/kubelet/pods/1/volumes/x",
                readonly=True,
                propagation=MountPropagation.PROPAGATION_HOST_TO_CONTAINER,
            )
        ],
        labels={"l": "1"},
        annotations={"n": "2"},
        log_path="app/3.log",
        stdin=True,
        tty=True,
        linux=LinuxContainerConfig(
            resources=LinuxContainerResources(
                cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 28, oom_score_adj=1000
            ),
            security_context=LinuxContainerSecurityContext(run_as_user=0, readonly_rootfs=True),
        ),
    )
    assert convert.container_config_from_pb(convert.container_config_to_pb(config)) == config


def test_stats_round_trip_keeps_unset_values_unset() -> None:
    stats = ContainerStats(
        attributes=ContainerAttributes("id", ContainerMetadata("c")),
        cpu=CpuUsage(1, usage_core_nano_seconds=5, usage_nano_cores=None),
        memory=MemoryUsage(1, working_set_bytes=0),
    )
    assert convert.stats_from_pb(convert.stats_to_pb(stats)) == stats
