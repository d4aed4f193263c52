"""Node lifecycle and taint eviction through a real API server, with fake kubelets: this test code registers nodes,
renews their Leases and posts their status, and stops doing so to simulate a lost node."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

from controlplane.client import LEASES, NODES, PODS, ApiClient

OPTIONS = {"node_monitor_grace_period": 2.0, "node_monitor_period": 0.3}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeKubelet:
    """Registers a node and keeps its Lease renewed (every 0.2 s) until stopped."""

    def __init__(self, client: ApiClient, name: str) -> None:
        self.client = client
        self.name = name
        self.task: asyncio.Task[None] | None = None

    async def register(self) -> None:
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready",
                 "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}
        await self.client.create(NODES, {"metadata": {"name": self.name}, "status": {"conditions": [ready]}})
        await self.client.create(LEASES, {"metadata": {"name": self.name, "namespace": "kube-node-lease"},
                                          "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40,
                                                   "renewTime": _now()}}, "kube-node-lease")
        self.start()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(0.2)  # the fake kubelet's heartbeat period
            lease = await self.client.get(LEASES, self.name, "kube-node-lease")
            lease["spec"]["renewTime"] = _now()
            await self.client.update(LEASES, lease)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def post_ready(self) -> None:
        node = await self.client.get(NODES, self.name)
        conditions = [c for c in node["status"]["conditions"] if c["type"] != "Ready"]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": _now(),
                           "lastTransitionTime": _now(), "message": "kubelet is posting ready status"})
        await self.client.update_status(NODES, {**node, "status": {**node["status"], "conditions": conditions}})


def _taints(node: dict[str, Any]) -> set[tuple[str, str]]:
    return {(t["key"], t["effect"]) for t in node.get("spec", {}).get("taints") or []}


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


async def test_lost_node_is_marked_unknown_tainted_and_its_pods_evicted(client, kube, start_manager, wait_for):
    alive, lost = FakeKubelet(client, "alive"), FakeKubelet(client, "lost")
    await alive.register()
    await lost.register()
    unreachable = "node.kubernetes.io/unreachable"
    try:
        # intolerant: only tolerates unreachable for scheduling, so the NoExecute taint evicts it at once.
        await kube.pod("intolerant", node="lost", tolerations=[
            {"key": unreachable, "operator": "Exists", "effect": "NoSchedule"}])
        await kube.pod("short", node="lost", tolerations=[
            {"key": unreachable, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}])
        await kube.pod("forever", node="lost", tolerations=[
            {"key": unreachable, "operator": "Exists", "effect": "NoExecute"}])
        await kube.pod("default-tolerations", node="lost")  # the API server's 300 s
        await kube.pod("elsewhere", node="alive", tolerations=[])
        for name in ("intolerant", "short", "forever", "default-tolerations", "elsewhere"):
            await kube.pod_status(name, ip="10.244.9.9", ready=True)

        await start_manager("nodelifecycle,taint-eviction-controller", options=OPTIONS)
        await lost.stop()  # the kubelet of "lost" goes silent

        async def lost_is_unknown() -> dict[str, Any] | None:
            node = await client.get(NODES, "lost")
            return node if _ready(node)["status"] == "Unknown" else None

        node = await wait_for(lost_is_unknown)
        assert _ready(node)["reason"] == "NodeStatusUnknown"
        assert _ready(node)["message"] == "Kubelet stopped posting node status."
        assert await wait_for(lambda: _has_taints(client, "lost", {(unreachable, "NoSchedule"),
                                                                   (unreachable, "NoExecute")}))
        assert _taints(await client.get(NODES, "alive")) == set()

        async def deleted(name: str) -> dict[str, Any] | None:
            pod = await client.get(PODS, name, "default")
            return pod if pod["metadata"].get("deletionTimestamp") else None

        pod = await wait_for(lambda: deleted("intolerant"))
        target = next(c for c in pod["status"]["conditions"] if c["type"] == "DisruptionTarget")
        assert (target["status"], target["reason"]) == ("True", "DeletionByTaintManager")
        await wait_for(lambda: deleted("short"), message="deleted once its 2 s toleration ran out")

        # Pods still on the lost node are reported not ready.
        forever = await client.get(PODS, "forever", "default")
        assert _ready(forever)["status"] == "False"
        assert not forever["metadata"].get("deletionTimestamp")
        assert not (await client.get(PODS, "default-tolerations", "default"))["metadata"].get("deletionTimestamp")
        assert not (await client.get(PODS, "elsewhere", "default"))["metadata"].get("deletionTimestamp")

        # The kubelet comes back: Ready again, the taints go.
        lost.start()
        await lost.post_ready()
        await wait_for(lambda: _has_taints(client, "lost", set()))
        assert _ready(await client.get(NODES, "lost"))["status"] == "True"
    finally:
        await alive.stop()
        await lost.stop()


async def _has_taints(client: ApiClient, node: str, expected: set[tuple[str, str]]) -> bool:
    return _taints(await client.get(NODES, node)) == expected


async def test_all_nodes_lost_is_a_full_disruption_without_evictions(client, kube, start_manager, wait_for):
    only = FakeKubelet(client, "only")
    await only.register()
    await kube.pod("intolerant", node="only", tolerations=[])
    await start_manager("nodelifecycle,taint-eviction-controller", options=OPTIONS)
    await only.stop()
    unreachable = "node.kubernetes.io/unreachable"
    # Once the controller has decided (both taint kinds are set in one pass), only the NoSchedule one is there.
    await wait_for(lambda: _has_taints(client, "only", {(unreachable, "NoSchedule")}))
    assert _ready(await client.get(NODES, "only"))["status"] == "Unknown"
    assert not (await client.get(PODS, "intolerant", "default"))["metadata"].get("deletionTimestamp")


async def test_kubelet_reporting_not_ready_gets_not_ready_taints(client, kube, start_manager, wait_for):
    ok, sick = FakeKubelet(client, "ok"), FakeKubelet(client, "sick")
    await ok.register()
    await sick.register()
    try:
        await start_manager("nodelifecycle", options=OPTIONS)
        node = await client.get(NODES, "sick")
        conditions = [c for c in node["status"]["conditions"] if c["type"] != "Ready"] + [
            {"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "container runtime is down",
             "lastHeartbeatTime": _now(), "lastTransitionTime": _now()},
            {"type": "MemoryPressure", "status": "True", "reason": "KubeletHasInsufficientMemory",
             "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}]
        await client.update_status(NODES, {**node, "status": {**node["status"], "conditions": conditions}})
        not_ready = "node.kubernetes.io/not-ready"
        await wait_for(lambda: _has_taints(client, "sick", {(not_ready, "NoSchedule"), (not_ready, "NoExecute"),
                                                           ("node.kubernetes.io/memory-pressure", "NoSchedule")}))
        taint = next(t for t in (await client.get(NODES, "sick"))["spec"]["taints"] if t["effect"] == "NoExecute")
        assert taint["timeAdded"], "NoExecute taints carry the time tolerationSeconds count from"
        assert _ready(await client.get(NODES, "sick"))["reason"] == "KubeletNotReady", "the kubelet's own word stays"
        # A cordoned node gets the unschedulable taint.
        await client.patch(NODES, "ok", {"spec": {"unschedulable": True}})
        await wait_for(lambda: _has_taints(client, "ok", {("node.kubernetes.io/unschedulable", "NoSchedule")}))
    finally:
        await ok.stop()
        await sick.stop()


async def test_node_that_never_posted_status_is_unknown_after_startup_grace(client, start_manager, wait_for):
    await client.create(NODES, {"metadata": {"name": "silent"}})
    await start_manager("nodelifecycle", options={**OPTIONS, "node_startup_grace_period": 1.0})

    async def unknown() -> dict[str, Any] | None:
        node = await client.get(NODES, "silent")
        conds = {c["type"]: c for c in (node.get("status") or {}).get("conditions") or []}
        return conds if conds.get("Ready", {}).get("status") == "Unknown" else None

    conds = await wait_for(unknown)
    assert conds["Ready"]["message"] == "Kubelet never posted node status."
    assert {"MemoryPressure", "DiskPressure", "PIDPressure"} <= conds.keys()
