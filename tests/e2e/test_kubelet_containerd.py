"""The kubelet on a real containerd over CRI gRPC: a busybox pod runs in a real container with a real network
namespace, and kubectl reads its logs and execs into it through the API server. Skipped only where containerd
cannot be started (missing tools, not root)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.client import NODES, PODS, ApiClient
from controlplane.kubelet.config import NodeConfig
from controlplane.kubelet.cri.containerd_testing import (
    BUSYBOX_IMAGE,
    Containerd,
    ContainerdUnavailable,
    missing_tools,
)
from controlplane.kubelet.pool import KubeletPool
from controlplane.kubelet.runtimes import node_runtime
from controlplane.kubelet.testing import (
    condition,
    container_status,
    fast_options,
    phase_is,
    pod_manifest,
    pod_where,
)
from controlplane.testing import ThreadedApiServer

NODE = "ctd-node"


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    required = os.environ.get("CCMKIT_REQUIRE_CONTAINERD") == "1"  # CI installs containerd: it must run there
    if missing := missing_tools():
        (pytest.fail if required else pytest.skip)("containerd cannot run here: missing " + ", ".join(missing))
    ctd = Containerd()
    try:
        ctd.start()
    except ContainerdUnavailable as e:
        (pytest.fail if required else pytest.skip)(f"containerd would not start: {e}")
    try:
        yield ctd
    finally:
        ctd.stop()


@pytest.fixture
async def client(apiserver: ThreadedApiServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(apiserver.url) as c:
        yield c


@pytest.fixture
async def kubelet(apiserver: ThreadedApiServer, containerd: Containerd, tmp_path: Path) -> AsyncIterator[KubeletPool]:
    pool = KubeletPool(apiserver.url, [node_runtime(f"remote:{containerd.endpoint}", NodeConfig(NODE), tmp_path)],
                       fast_options(tmp_path / "kubelet"), own_runtimes=True)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


def busybox(name: str, script: str, **spec: Any) -> dict[str, Any]:
    # IfNotPresent: the image was imported into containerd; there is no registry to pull it from.
    return pod_manifest(name, NODE, [{"name": "box", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                                      "command": ["sh", "-c", script]}], **spec)


async def test_busybox_pod_echoes_exits_and_its_logs_are_readable(kubelet: KubeletPool, client: ApiClient,
                                                                   kubectl: Any) -> None:
    node = await client.get(NODES, NODE)
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    await client.create(PODS, busybox("echo", "echo hello from busybox; echo on stderr >&2", restartPolicy="Never"))
    pod = await pod_where(client, "echo", phase_is("Succeeded"), "Succeeded", timeout=60)
    st = container_status(pod)
    assert st["state"]["terminated"]["exitCode"] == 0 and st["containerID"].startswith("containerd://")
    assert pod["status"]["podIP"].startswith("10.244.")
    out = await asyncio.to_thread(kubectl.run, "logs", "echo")
    # Both streams go to one log through separate pipes: their relative order is not guaranteed.
    assert sorted(out.stdout.splitlines()) == ["hello from busybox", "on stderr"]


async def test_kubectl_exec_into_a_containerd_container(kubelet: KubeletPool, client: ApiClient,
                                                        kubectl: Any) -> None:
    await client.create(PODS, busybox("sleeper", "exec sleep 600", terminationGracePeriodSeconds=1))
    await pod_where(client, "sleeper", lambda p: condition(p, "Ready") == "True", "Ready", timeout=60)
    out = await asyncio.to_thread(kubectl.run, "exec", "sleeper", "--", "sh", "-c", "hostname; exit 5",
                                  check=False)
    assert out.returncode == 5 and out.stdout == "sleeper\n"
