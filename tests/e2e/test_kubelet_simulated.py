"""The same kubelet on the simulated runtime: the core pod lifecycle (exit, crash loop, probes, logs, exec, graceful
deletion) driven by ``sim.ccmkit.io/`` annotations, and a pool of many nodes sharing one informer and one lease
loop, each node still with its own Node, Lease and pod statuses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.client import LEASES, NODES, PODS, ApiClient
from controlplane.kubelet.config import NodeConfig
from controlplane.kubelet.pool import KubeletPool
from controlplane.kubelet.runtimes import node_runtime
from controlplane.kubelet.testing import (
    condition,
    container_status,
    fast_options,
    get_pod,
    phase_is,
    pod_manifest,
    pod_where,
    wait_for,
)
from controlplane.testing import ThreadedApiServer

NODE = "sim-node"


@pytest.fixture
async def client(apiserver: ThreadedApiServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(apiserver.url) as c:
        yield c


@pytest.fixture
async def kubelet(apiserver: ThreadedApiServer, tmp_path: Path) -> AsyncIterator[KubeletPool]:
    pool = KubeletPool(apiserver.url, [node_runtime("simulated", NodeConfig(NODE), tmp_path, 0)],
                       fast_options(tmp_path / "kubelet"), own_runtimes=True)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


def sim_pod(name: str, annotations: dict[str, str], node: str = NODE, **spec: Any) -> dict[str, Any]:
    containers = spec.pop("containers", [{"name": "app", "image": "registry.local/app:1"}])
    return pod_manifest(name, node, containers, metadata={"annotations": {
        f"sim.ccmkit.io/{k}": v for k, v in annotations.items()}}, **spec)


async def run_kubectl(kubectl: Any, *args: str, check: bool = True) -> Any:
    return await asyncio.to_thread(kubectl.run, *args, check=check)


async def test_pod_that_exits_succeeds_with_its_logs(kubelet: KubeletPool, client: ApiClient, kubectl: Any) -> None:
    await client.create(PODS, sim_pod("job", {"exit-after-s": "0.2", "stdout": "done\nall good"},
                                      restartPolicy="Never"))
    pod = await pod_where(client, "job", phase_is("Succeeded"), "Succeeded")
    st = container_status(pod, "app")
    assert st["state"]["terminated"]["reason"] == "Completed" and st["containerID"].startswith("ccmkit-simulated://")
    assert pod["status"]["podIP"].startswith("10.244.0.")
    assert (await run_kubectl(kubectl, "logs", "job")).stdout == "done\nall good\n"


async def test_crash_loop_back_off_and_previous_logs(kubelet: KubeletPool, client: ApiClient,
                                                     kubectl: Any) -> None:
    await client.create(PODS, sim_pod("crash", {"exit-after-s": "0.1", "exit-code": "2", "stderr": "boom"}))
    pod = await pod_where(client, "crash", lambda p: container_status(p).get("restartCount", 0) >= 2 and
                          container_status(p)["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff",
                          "CrashLoopBackOff")
    assert container_status(pod)["lastState"]["terminated"]["exitCode"] == 2
    assert (await run_kubectl(kubectl, "logs", "crash", "--previous")).stdout == "boom\n"


async def test_on_failure_restarts_until_success(kubelet: KubeletPool, client: ApiClient) -> None:
    # exit code 0 after running: OnFailure does not restart it, and the pod succeeds.
    await client.create(PODS, sim_pod("once", {"exit-after-s": "0.1"}, restartPolicy="OnFailure"))
    pod = await pod_where(client, "once", phase_is("Succeeded"), "Succeeded")
    assert container_status(pod)["restartCount"] == 0


async def test_probes_gate_readiness_and_restart_on_liveness_failure(kubelet: KubeletPool,
                                                                     client: ApiClient) -> None:
    ready = {"name": "app", "image": "app", "readinessProbe": {
        "exec": {"command": ["cat", "/ready"]}, "periodSeconds": 1}}
    await client.create(PODS, sim_pod("ready", {"files": json.dumps({"/ready": "ok"})}, containers=[ready]))
    pod = await pod_where(client, "ready", lambda p: condition(p, "Ready") == "True", "Ready")
    assert container_status(pod)["started"] is True

    not_ready = {"name": "app", "image": "app", "readinessProbe": {
        "exec": {"command": ["cat", "/ready"]}, "periodSeconds": 1}}
    await client.create(PODS, sim_pod("unready", {}, containers=[not_ready]))
    pod = await pod_where(client, "unready", phase_is("Running"), "Running")
    assert condition(pod, "Ready") == "False" and condition(pod, "ContainersReady") == "False"

    dying = {"name": "app", "image": "app", "livenessProbe": {
        "exec": {"command": ["test", "-f", "/healthy"]}, "periodSeconds": 1, "failureThreshold": 1}}
    await client.create(PODS, sim_pod("dying", {}, containers=[dying], terminationGracePeriodSeconds=1))
    pod = await pod_where(client, "dying", lambda p: container_status(p).get("restartCount", 0) >= 1, "a restart")
    assert container_status(pod)["lastState"]["terminated"]["exitCode"] == 143


async def test_kubectl_exec_in_a_simulated_container(kubelet: KubeletPool, client: ApiClient, kubectl: Any) -> None:
    await client.create(PODS, sim_pod("shell", {"files": json.dumps({"/etc/motd": "welcome"})}))
    await pod_where(client, "shell", lambda p: condition(p, "Ready") == "True", "Ready")
    out = await run_kubectl(kubectl, "exec", "shell", "--", "cat", "/etc/motd")
    assert out.stdout == "welcome"
    failed = await run_kubectl(kubectl, "exec", "shell", "--", "sh", "-c", "echo no >&2; exit 4", check=False)
    assert failed.returncode == 4 and "no" in failed.stderr


async def test_graceful_deletion_waits_for_the_container_to_stop(kubelet: KubeletPool, client: ApiClient,
                                                                 kubectl: Any) -> None:
    await client.create(PODS, sim_pod("slow-stop", {"stop-ms": "500"}, terminationGracePeriodSeconds=5))
    await pod_where(client, "slow-stop", lambda p: condition(p, "Ready") == "True", "Ready")
    await client.delete(PODS, "slow-stop", "default")
    marked = await get_pod(client, "slow-stop")
    assert marked is not None and marked["metadata"]["deletionGracePeriodSeconds"] == 5
    await wait_for(lambda: _gone(client, "slow-stop"), 15, what="the pod to be removed by its kubelet")


async def _gone(client: ApiClient, name: str) -> bool:
    return await get_pod(client, name) is None


async def test_pool_of_many_nodes_shares_one_watch(apiserver: ThreadedApiServer, client: ApiClient,
                                                   tmp_path: Path) -> None:
    names = [f"pool-{i}" for i in range(20)]
    pool = KubeletPool(apiserver.url, [node_runtime("simulated", NodeConfig(n), tmp_path, i)
                                       for i, n in enumerate(names)],
                       fast_options(tmp_path / "kubelet"), own_runtimes=True)
    await pool.start()
    try:
        nodes = (await client.list(NODES))["items"]
        assert sorted(n["metadata"]["name"] for n in nodes) == sorted(names)
        leases = (await client.list(LEASES, "kube-node-lease"))["items"]
        assert sorted(lease["spec"]["holderIdentity"] for lease in leases) == sorted(names)
        await asyncio.gather(*(client.create(PODS, sim_pod(f"p-{i}", {"stdout": f"I am p-{i}"},
                                                            node=names[i % len(names)]))
                               for i in range(100)))

        async def all_ready() -> list[dict[str, Any]] | None:
            pods = (await client.list(PODS, "default"))["items"]
            ok = [p for p in pods if condition(p, "Ready") == "True"]
            return pods if len(ok) == 100 else None

        pods = await wait_for(all_ready, 60, interval=0.2, what="100 pods Ready on 20 nodes")
        assert len({p["status"]["podIP"] for p in pods}) == 100  # per-node pod CIDRs: no address twice
        assert all(p["status"]["podIP"].startswith(f"10.244.{names.index(p['spec']['nodeName'])}.")
                   for p in pods)
        # Logs of a pool node go through the one server of the pool, under /nodes/<node>/.
        log = await client.raw("GET", "/api/v1/namespaces/default/pods/p-23/log")
        assert log.text == "I am p-23\n"
        summary = await pool.stats_summary("pool-3")
        assert len(summary["pods"]) == 5
    finally:
        await pool.stop()
