"""The DaemonSet controller against a real API server: one pod per eligible node, following nodes as they come,
change and go; taints and the automatic daemon tolerations; rolling updates and OnDelete; status."""

from __future__ import annotations

import asyncio
from typing import Any, Self

import pytest
from workload_harness import FakeKubelet, PodScript, RunningControllers, eventually

from controlplane.client import CONTROLLERREVISIONS, DAEMONSETS, NODES, PODS, ApiClient, SharedInformerFactory
from controlplane.controllers.controller_utils import is_pod_ready
from controlplane.controllers.daemonset_controller import DaemonSetController, target_node_name
from controlplane.testing import ThreadedApiServer


def daemonset(name: str, image: str = "agent:v1", node_selector: dict[str, str] | None = None,
              tolerations: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    pod_spec: dict[str, Any] = {"containers": [{"name": "agent", "image": image}]}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": pod_spec}, **spec}}


async def pods_by_node(client: ApiClient, app: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for pod in (await client.list(PODS, "default", label_selector={"app": app}))["items"]:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        out.setdefault(target_node_name(pod) or "?", []).append(pod)
    return out


async def on_nodes(client: ApiClient, app: str, nodes: set[str], ready: bool = True) -> bool:
    by_node = await pods_by_node(client, app)
    if set(by_node) != nodes or any(len(p) != 1 for p in by_node.values()):
        return False
    return not ready or all(is_pod_ready(p[0]) for p in by_node.values())


async def ds_status(client: ApiClient, name: str) -> dict[str, Any]:
    ds = await client.get(DAEMONSETS, name, "default")
    return {"generation": ds["metadata"]["generation"], **(ds.get("status") or {})}


async def status_is(client: ApiClient, name: str, **expected: int) -> bool:
    s = await ds_status(client, name)
    return s.get("observedGeneration") == s["generation"] and all(s.get(k, 0) == v for k, v in expected.items())


async def test_follows_nodes_and_node_selector(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    kubelet = FakeKubelet(apiserver.url, nodes=())
    async with kubelet, RunningControllers(apiserver.url, DaemonSetController()):
        await kubelet.add_node("node-1", labels={"role": "worker"})
        await kubelet.add_node("node-2", labels={"role": "worker"})
        await kubelet.add_node("node-3")
        await client.create(DAEMONSETS, daemonset("agent", node_selector={"role": "worker"}))
        await eventually(lambda: on_nodes(client, "agent", {"node-1", "node-2"}), message="on both workers")
        await eventually(lambda: status_is(client, "agent", desiredNumberScheduled=2, currentNumberScheduled=2,
                                           numberReady=2, numberAvailable=2, updatedNumberScheduled=2,
                                           numberMisscheduled=0, numberUnavailable=0))

        pod = (await pods_by_node(client, "agent"))["node-1"][0]
        # Placed through node affinity, as upstream does, for the scheduler to honour.
        affinity = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert affinity == {"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["node-1"]}]}]}
        tolerations = {(t["key"], t["effect"]) for t in pod["spec"]["tolerations"]}
        assert {("node.kubernetes.io/not-ready", "NoExecute"), ("node.kubernetes.io/unreachable", "NoExecute"),
                ("node.kubernetes.io/disk-pressure", "NoSchedule"), ("node.kubernetes.io/memory-pressure",
                                                                     "NoSchedule"),
                ("node.kubernetes.io/pid-pressure", "NoSchedule"),
                ("node.kubernetes.io/unschedulable", "NoSchedule")} <= tolerations
        not_ready = next(t for t in pod["spec"]["tolerations"] if t["key"] == "node.kubernetes.io/not-ready")
        assert "tolerationSeconds" not in not_ready  # daemons are never evicted for a not-ready node
        assert pod["metadata"]["generateName"] == "agent-"
        assert pod["metadata"]["labels"]["controller-revision-hash"]

        # A new matching node gets a pod; so does a node that gains the label.
        await kubelet.add_node("node-4", labels={"role": "worker"})
        await client.patch(NODES, "node-3", {"metadata": {"labels": {"role": "worker"}}})
        await eventually(lambda: on_nodes(client, "agent", {"node-1", "node-2", "node-3", "node-4"}))
        # A node that loses the label loses its pod.
        await client.patch(NODES, "node-1", {"metadata": {"labels": {"role": None}}})
        await eventually(lambda: on_nodes(client, "agent", {"node-2", "node-3", "node-4"}))
        await eventually(lambda: status_is(client, "agent", desiredNumberScheduled=3, currentNumberScheduled=3))
        # A deleted node stops counting. (Its bound pod is the pod garbage collector's to remove, as upstream.)
        await kubelet.delete_node("node-4")
        await eventually(lambda: status_is(client, "agent", desiredNumberScheduled=2, currentNumberScheduled=2,
                                           numberReady=2))


async def test_taints_and_daemon_tolerations(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    kubelet = FakeKubelet(apiserver.url, nodes=())
    async with kubelet, RunningControllers(apiserver.url, DaemonSetController()):
        await kubelet.add_node("plain")
        await kubelet.add_node("dedicated", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
        await kubelet.add_node("cordoned", unschedulable=True, taints=[
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}])
        await kubelet.add_node("not-ready", taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}])
        await client.create(DAEMONSETS, daemonset("agent"))
        await client.create(DAEMONSETS, daemonset("db-agent", tolerations=[
            {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]))
        # The automatic tolerations cover cordoned and not-ready nodes; only a toleration covers "dedicated".
        await eventually(lambda: on_nodes(client, "agent", {"plain", "cordoned", "not-ready"}, ready=False))
        await eventually(lambda: on_nodes(client, "db-agent", {"plain", "dedicated", "cordoned", "not-ready"},
                                          ready=False))

        # A NoSchedule taint added later keeps the running pod (it is counted misscheduled)...
        await client.patch(NODES, "plain", {"spec": {"taints": [
            {"key": "maintenance", "value": "soon", "effect": "NoSchedule"}]}}, patch_type="merge")
        await eventually(lambda: status_is(client, "agent", desiredNumberScheduled=2, numberMisscheduled=1))
        assert "plain" in await pods_by_node(client, "agent")
        # ...a NoExecute one it does not tolerate removes it.
        await client.patch(NODES, "plain", {"spec": {"taints": [
            {"key": "maintenance", "value": "now", "effect": "NoExecute"}]}}, patch_type="merge")
        await eventually(lambda: on_nodes(client, "agent", {"cordoned", "not-ready"}, ready=False))
        await eventually(lambda: status_is(client, "agent", desiredNumberScheduled=2, numberMisscheduled=0))


class NodeAvailability:
    """The fewest nodes with a ready pod and the most pods, at any moment of a rollout."""

    def __init__(self, client: ApiClient, app: str) -> None:
        self.factory = SharedInformerFactory(client)
        self.pods = self.factory.informer(PODS, "default", label_selector={"app": app})
        self.min_ready_nodes: int | None = None
        self.max_pods = 0
        self.pods.add_handler(on_add=self._seen, on_update=lambda o, n: self._seen(n), on_delete=self._seen)

    def _seen(self, _: Any) -> None:
        live = [p for p in self.pods.list() if not p["metadata"].get("deletionTimestamp")]
        ready_nodes = {target_node_name(p) for p in live if is_pod_ready(p)}
        self.max_pods = max(self.max_pods, len(live))
        if self.armed:
            n = len(ready_nodes)
            self.min_ready_nodes = n if self.min_ready_nodes is None else min(self.min_ready_nodes, n)

    armed = False

    async def __aenter__(self) -> Self:
        self.factory.start_all()
        assert await self.factory.wait_for_sync(20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.factory.stop_all()


@pytest.mark.parametrize(("surge", "unavailable", "min_nodes", "max_pods"), [(0, 1, 3, 4), (1, 0, 4, 5)])
async def test_rolling_update(apiserver: ThreadedApiServer, client: ApiClient, surge: int, unavailable: int,
                              min_nodes: int, max_pods: int) -> None:
    kubelet = FakeKubelet(apiserver.url, nodes=("n1", "n2", "n3", "n4"),
                          script=lambda pod: PodScript(ready_delay=0.1))
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}
    async with kubelet, RunningControllers(apiserver.url, DaemonSetController()), \
            NodeAvailability(client, "agent") as seen:
        await client.create(DAEMONSETS, daemonset("agent", updateStrategy=strategy))
        await eventually(lambda: on_nodes(client, "agent", {"n1", "n2", "n3", "n4"}))
        await eventually(lambda: status_is(client, "agent", numberAvailable=4))
        seen.armed = True
        seen.max_pods = 0
        first_hash = (await pods_by_node(client, "agent"))["n1"][0]["metadata"]["labels"]["controller-revision-hash"]
        await client.patch(DAEMONSETS, "agent", {"spec": {"template": {"spec": {"containers": [
            {"name": "agent", "image": "agent:v2"}]}}}}, "default", patch_type="strategic")

        async def updated() -> bool:
            by_node = await pods_by_node(client, "agent")
            return (await on_nodes(client, "agent", {"n1", "n2", "n3", "n4"})
                    and all(p[0]["spec"]["containers"][0]["image"] == "agent:v2" for p in by_node.values()))

        await eventually(updated, message="every node on v2")
        await eventually(lambda: status_is(client, "agent", updatedNumberScheduled=4, numberAvailable=4,
                                           desiredNumberScheduled=4))
    assert seen.min_ready_nodes is not None and seen.min_ready_nodes >= min_nodes, seen.min_ready_nodes
    assert seen.max_pods <= max_pods, seen.max_pods
    revisions = sorted((await client.list(CONTROLLERREVISIONS, "default"))["items"], key=lambda r: r["revision"])
    assert [r["revision"] for r in revisions] == [1, 2]
    assert revisions[0]["metadata"]["labels"]["controller-revision-hash"] == first_hash
    assert revisions[0]["metadata"]["name"] == f"agent-{first_hash}"
    new_hash = revisions[1]["metadata"]["labels"]["controller-revision-hash"]
    for pods in (await pods_by_node(client, "agent")).values():
        assert pods[0]["metadata"]["labels"]["controller-revision-hash"] == new_hash


async def test_on_delete(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    async with FakeKubelet(apiserver.url, nodes=("n1", "n2")), RunningControllers(apiserver.url,
                                                                                  DaemonSetController()):
        await client.create(DAEMONSETS, daemonset("agent", updateStrategy={"type": "OnDelete"}))
        await eventually(lambda: on_nodes(client, "agent", {"n1", "n2"}))
        await client.patch(DAEMONSETS, "agent", {"spec": {"template": {"spec": {"containers": [
            {"name": "agent", "image": "agent:v2"}]}}}}, "default", patch_type="strategic")
        await eventually(lambda: status_is(client, "agent", updatedNumberScheduled=0, currentNumberScheduled=2))
        victim = (await pods_by_node(client, "agent"))["n1"][0]
        await client.delete(PODS, victim["metadata"]["name"], "default")

        async def replaced() -> bool:
            by_node = await pods_by_node(client, "agent")
            return (await on_nodes(client, "agent", {"n1", "n2"})
                    and by_node["n1"][0]["spec"]["containers"][0]["image"] == "agent:v2"
                    and by_node["n2"][0]["spec"]["containers"][0]["image"] == "agent:v1")

        await eventually(replaced, message="only the deleted pod replaced, with the new template")
        await eventually(lambda: status_is(client, "agent", updatedNumberScheduled=1))


async def test_kubectl_rollout_status_history_and_undo(apiserver: ThreadedApiServer, client: ApiClient,
                                                       kubectl: Any) -> None:
    """kubectl reads the ControllerRevisions: history lists them, undo re-applies the previous one's data."""
    async with FakeKubelet(apiserver.url, nodes=("n1", "n2")), RunningControllers(apiserver.url,
                                                                                  DaemonSetController()):
        await client.create(DAEMONSETS, daemonset("agent"))
        await eventually(lambda: on_nodes(client, "agent", {"n1", "n2"}))
        await client.patch(DAEMONSETS, "agent", {"spec": {"template": {"spec": {"containers": [
            {"name": "agent", "image": "agent:v2"}]}}}}, "default", patch_type="strategic")
        out = await asyncio.to_thread(kubectl, "rollout", "status", "daemonset/agent", "--timeout=30s")
        assert 'daemon set "agent" successfully rolled out' in out
        history = await asyncio.to_thread(kubectl, "rollout", "history", "daemonset/agent")
        assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["1", "2"]
        await asyncio.to_thread(kubectl, "rollout", "undo", "daemonset/agent")
        await asyncio.to_thread(kubectl, "rollout", "status", "daemonset/agent", "--timeout=30s")

        async def back_on_v1() -> bool:
            by_node = await pods_by_node(client, "agent")
            return (await on_nodes(client, "agent", {"n1", "n2"})
                    and all(p[0]["spec"]["containers"][0]["image"] == "agent:v1" for p in by_node.values()))

        await eventually(back_on_v1, message="pods back on v1")
        history = await asyncio.to_thread(kubectl, "rollout", "history", "daemonset/agent")
        # The old revision came back as the newest, as upstream renumbers it.
        assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["2", "3"]
