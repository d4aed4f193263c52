"""The kubelet from the command line: ``ccmkit kubelet`` in its own process (so logs and exec reach it through the
Node's address, not an in-process registry), and ``ccmkit up --nodes N`` composing kubelets into the cluster."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import CcmkitUp, wait_until

from controlplane.client import NODES, PODS, ApiClient
from controlplane.kubelet.apiproxy import LOCAL_KUBELETS
from controlplane.kubelet.testing import (
    condition,
    pod_manifest,
    pod_where,
    wait_for,
)
from controlplane.testing import ThreadedApiServer


@pytest.fixture
def kubelet_process(apiserver: ThreadedApiServer, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    log = open(tmp_path / "kubelet.log", "w")  # noqa: SIM115 - the child writes it until it ends
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane.cli", "kubelet", "--name", "far-node", "--server", apiserver.url,
         "--runtime", "process", "--kubelet-port", "0", "--pod-cidr", "127.9.0.0/24", "--data-dir",
         str(tmp_path / "data"), "--node-labels", "tier=edge", "--register-with-taints", "dedicated=edge:NoSchedule"],
        stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log.close()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


async def test_kubelet_in_its_own_process_serves_logs_and_exec_through_the_api_server(
        apiserver: ThreadedApiServer, kubelet_process: subprocess.Popen[str], kubectl: Any, tmp_path: Path) -> None:
    async with ApiClient(apiserver.url) as client:
        async def ready_node() -> dict[str, Any] | None:
            try:
                node = await client.get(NODES, "far-node")
            except Exception:  # noqa: BLE001 - not registered yet
                return None
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
            return node if ready else None

        node = await wait_for(ready_node, 30, what="the kubelet process to register its node")
        assert node["metadata"]["labels"]["tier"] == "edge"
        assert {"key": "dedicated", "value": "edge", "effect": "NoSchedule"} in node["spec"]["taints"]
        # Not in this process's registry: the API server must use the Node's address and kubelet port.
        assert LOCAL_KUBELETS.lookup(apiserver.server.state.server_address, "far-node") is None  # type: ignore[union-attr]

        await client.create(PODS, pod_manifest("far", "far-node", [{
            "name": "c", "image": "busybox", "command": ["sh", "-c", "echo far away; exec sleep 600"]}],
            tolerations=[{"key": "dedicated", "operator": "Exists"}], terminationGracePeriodSeconds=1))
        pod = await pod_where(client, "far", lambda p: condition(p, "Ready") == "True", "Ready")
        assert pod["status"]["podIP"] == "127.9.0.1"
        await wait_for(lambda: "far away" in kubectl.run("logs", "far", check=False).stdout, 15,
                       what="the log through the node's address")
        out = await asyncio.to_thread(kubectl.run, "exec", "far", "--", "sh", "-c", "echo $POD_IP; exit 7",
                                      check=False)
        assert out.returncode == 7 and out.stdout == "127.9.0.1\n"
        await asyncio.to_thread(kubectl.run, "delete", "pod", "far", "--timeout=30s")

    kubelet_process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(kubelet_process.wait, 30) == 0


def test_ccmkit_up_runs_the_requested_number_of_nodes(tmp_path: Path, kubectl_for: Any) -> None:
    up = CcmkitUp(tmp_path / "data", store="memory", extra=("--nodes", "3", "--runtime", "simulated")).start()
    try:
        # The kubeconfig is written once the API server answers; the kubelets register right after.
        expected = ["node/ccmkit-node-1", "node/ccmkit-node-2", "node/ccmkit-node-3"]
        wait_until(lambda: kubectl_for(up.kubeconfig, "get", "nodes", "-o", "name").stdout.split() == expected,
                   30, "three nodes registered")
        ready = kubectl_for(up.kubeconfig, "wait", "--for=condition=Ready", "node", "--all", "--timeout=30s")
        assert ready.returncode == 0, ready.stderr
        created = kubectl_for(up.kubeconfig, "run", "one", "--image=app", "--restart=Never",
                              "--overrides", '{"spec": {"nodeName": "ccmkit-node-2"}}')
        assert created.returncode == 0, created.stderr
        waited = kubectl_for(up.kubeconfig, "wait", "--for=condition=Ready", "pod/one", "--timeout=30s")
        assert waited.returncode == 0, waited.stderr + up.output()
    finally:
        up.signal(signal.SIGTERM)
        code, output = up.wait()
        assert code == 0, output
