"""What only a real containerd shows: its streaming server, host-network sandboxes, and that our test helper
leaves nothing behind (processes, mounts, bridge, directories)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.kubelet.cri.api import (
    STDOUT,
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    ExecRequest,
    ImageSpec,
    LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext,
    NamespaceMode,
    NamespaceOption,
    PodSandboxConfig,
    PodSandboxMetadata,
    UnimplementedError,
)
from controlplane.kubelet.cri.containerd_testing import BUSYBOX_IMAGE, Containerd
from controlplane.kubelet.cri.remote import RemoteRuntime

pytestmark = pytest.mark.containerd


@pytest.fixture
async def client(containerd_daemon: Containerd) -> AsyncIterator[RemoteRuntime]:
    async with RemoteRuntime(containerd_daemon.endpoint) as rt:
        yield rt


def sandbox(host_network: bool = False) -> PodSandboxConfig:
    config = PodSandboxConfig(PodSandboxMetadata("ctd", uuid.uuid4().hex, "default"))
    if host_network:
        # No hostname: a host-network pod has no UTS namespace of its own to set it in.
        config.linux = LinuxPodSandboxConfig(
            security_context=LinuxSandboxSecurityContext(namespace_options=NamespaceOption(network=NamespaceMode.NODE))
        )
    else:
        config.hostname = "ctd"
    return config


async def start(rt: RemoteRuntime, config: PodSandboxConfig, command: list[str]) -> tuple[str, str]:
    sid = await rt.run_pod_sandbox(config)
    cid = await rt.create_container(
        sid, ContainerConfig(ContainerMetadata("c"), ImageSpec(BUSYBOX_IMAGE), command=command), config
    )
    await rt.start_container(cid)
    return sid, cid


async def remove(rt: RemoteRuntime, sid: str) -> None:
    await rt.stop_pod_sandbox(sid)
    await rt.remove_pod_sandbox(sid)


async def test_host_network_sandbox(client: RemoteRuntime) -> None:
    sid, cid = await start(client, sandbox(host_network=True), ["sleep", "3600"])
    try:
        status = await client.pod_sandbox_status(sid)
        assert status.network.ip == ""  # the kubelet reports the node's address for such pods
        assert status.namespace_options is not None and status.namespace_options.network == NamespaceMode.NODE
        assert (await client.container_status(cid)).state == ContainerState.RUNNING
    finally:
        await remove(client, sid)


async def test_exec_stdin_over_containerds_v4_streaming(client: RemoteRuntime) -> None:
    sid, cid = await start(client, sandbox(), ["sleep", "3600"])
    try:
        session = await client.exec(ExecRequest(cid, ["head", "-n", "1"], stdin=True))
        await session.write_stdin(b"first line\n")
        with pytest.raises(UnimplementedError):
            await session.close_stdin()  # containerd 1.6 speaks v4, which cannot half-close stdin
        assert await session.read() == (STDOUT, b"first line\n")
        assert await session.wait() == 0
        await session.close()
    finally:
        await remove(client, sid)


def test_helper_leaves_nothing_behind() -> None:
    with Containerd(subnet="10.245.0.0/24") as ctd:  # a subnet of its own beside the session's containerd

        async def leave_a_container_running() -> None:
            async with RemoteRuntime(ctd.endpoint) as rt:
                await start(rt, sandbox(), ["sleep", "3600"])

        asyncio.run(leave_a_container_running())
        base, bridge = ctd.base_dir, ctd.bridge
        shims = list(ctd._our_shims())
        assert base is not None and shims, "a running container has a shim"
    assert all(gone(pid) for pid in shims)
    assert not base.exists()
    with open("/proc/self/mounts") as f:
        assert str(base) not in f.read()
    assert not Path(f"/sys/class/net/{bridge}").exists()


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"
