"""Node lifecycle: notices nodes whose kubelet went silent, marks them Unknown, and taints them so pods move away.

A kubelet proves it is alive by renewing its Lease (kube-node-lease/<node>) and by posting node status. As upstream,
this controller records *when it observed* either change on its own clock (never comparing the kubelet's
timestamps with ours, which may be skewed); once neither changed for ``node_monitor_grace_period`` (40 s) — or, for
a node that never posted status, ``node_startup_grace_period`` (60 s) — it sets the kubelet's conditions to Unknown
(reason NodeStatusUnknown) and marks the node's pods not ready. Taints follow the Ready condition: unreachable
(Unknown) or not-ready (False), each as NoExecute — which the taint-eviction controller turns into pod deletions
after the pods' tolerationSeconds — and as NoSchedule, with the other condition taints upstream sets (memory, disk,
PID pressure, network unavailable, unschedulable). A kubelet that comes back posts Ready and the taints go.

If every node is not ready at once the problem is more likely the control plane's view than the nodes (upstream's
"full disruption"): NoExecute taints are then withheld so a network blip does not evict the whole cluster.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from controlplane.client import ApiClient, ApiError, NotFound, SharedInformerFactory
from controlplane.client.resources import LEASES, NODES, PODS
from controlplane.controllers import podutil
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.client.events import NORMAL, EventRecorder

log = logging.getLogger(__name__)

Obj = dict[str, Any]

LEASE_NAMESPACE = "kube-node-lease"
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
# Condition -> (status that taints, taint key), upstream's nodeConditionToTaintKeyStatusMap, plus Ready's two.
CONDITION_TAINTS = {
    "MemoryPressure": ("True", "node.kubernetes.io/memory-pressure"),
    "DiskPressure": ("True", "node.kubernetes.io/disk-pressure"),
    "PIDPressure": ("True", "node.kubernetes.io/pid-pressure"),
    "NetworkUnavailable": ("True", "node.kubernetes.io/network-unavailable"),
}
UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
MANAGED_NO_SCHEDULE = {UNREACHABLE, NOT_READY, UNSCHEDULABLE, *(k for _, k in CONDITION_TAINTS.values())}
MANAGED_NO_EXECUTE = {UNREACHABLE, NOT_READY}
KUBELET_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")


def _now_wall() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Health:
    """What we last observed of a node, and when (on our clock) it last showed signs of life."""

    probe: float
    ready_key: tuple[Any, ...] | None
    renew_time: str | None


def _ready_key(node: Obj) -> tuple[Any, ...] | None:
    cond = podutil.condition(node, "Ready")
    if cond is None:
        return None
    return (cond.get("status"), cond.get("lastHeartbeatTime"), cond.get("reason"))


def ready_status(node: Obj) -> str | None:
    cond = podutil.condition(node, "Ready")
    return cond.get("status") if cond is not None else None


class NodeLifecycleController:
    name = "nodelifecycle"

    def __init__(self, ctx: ControllerContext | None = None) -> None:
        ctx = ctx or ControllerContext()
        self.clock = ctx.clock
        self.workers = int(ctx.option("concurrent_node_syncs", 2))
        self.monitor_period = float(ctx.option("node_monitor_period", 5.0))
        self.grace_period = float(ctx.option("node_monitor_grace_period", 40.0))
        self.startup_grace_period = float(ctx.option("node_startup_grace_period", 60.0))
        self.health: dict[str, _Health] = {}

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.enqueue = enqueue
        self.recorder = EventRecorder(client, "node-controller", self.clock)
        self.nodes = informers.informer(NODES)
        self.leases = informers.informer(LEASES, LEASE_NAMESPACE)
        self.pods = informers.informer(PODS)
        self.pods.add_index("node", lambda p: (p.get("spec") or {}).get("nodeName") or None)

        def node_changed(node: Obj, *rest: Obj) -> None:
            enqueue((rest[-1] if rest else node)["metadata"]["name"])

        def node_deleted(node: Obj) -> None:
            self.health.pop(node["metadata"]["name"], None)

        def lease_changed(lease: Obj, *rest: Obj) -> None:
            enqueue((rest[-1] if rest else lease)["metadata"]["name"])

        self.nodes.add_handler(on_add=node_changed, on_update=node_changed, on_delete=node_deleted)
        self.leases.add_handler(on_add=lease_changed, on_update=lease_changed)

    async def run(self) -> None:
        """The periodic health check (upstream's monitorNodeHealth every node_monitor_period)."""
        while True:
            await self.clock.sleep(self.monitor_period)
            for name in self.nodes.keys():
                self.enqueue(name)

    async def shutdown(self) -> None:
        await self.recorder.aclose()

    def _observe(self, name: str, node: Obj) -> _Health:
        now = self.clock.now()
        lease = self.leases.get(f"{LEASE_NAMESPACE}/{name}")
        renew = ((lease or {}).get("spec") or {}).get("renewTime")
        ready = _ready_key(node)
        health = self.health.get(name)
        if health is None:
            health = _Health(now, ready, renew)
            self.health[name] = health
            return health
        if ready != health.ready_key:
            health.ready_key = ready
            health.probe = now
        if renew != health.renew_time:
            health.renew_time = renew
            health.probe = now
        return health

    def _all_not_ready(self, current: Obj) -> bool:
        # The node being reconciled counts as we just saw (or wrote) it: the cache may not have caught up.
        name = current["metadata"]["name"]
        others = [n for n in self.nodes.list() if n["metadata"]["name"] != name]
        return ready_status(current) != "True" and all(ready_status(n) != "True" for n in others)

    async def reconcile(self, key: str) -> Result:
        node = self.nodes.get(key)
        if node is None:
            self.health.pop(key, None)
            return DONE
        health = self._observe(key, node)
        never_posted = podutil.condition(node, "Ready") is None
        grace = self.startup_grace_period if never_posted else self.grace_period
        silent_for = self.clock.now() - health.probe
        if silent_for > grace and ready_status(node) != "Unknown":
            node = await self._mark_unknown(node, never_posted)
            health.ready_key = _ready_key(node)  # our own write is not a sign of life
        status = ready_status(node)
        if status != "True":
            await self._mark_pods_not_ready(key)
        await self._ensure_taints(node)
        if status == "Unknown":
            return DONE  # the periodic check and the kubelet's next write bring it back
        return Result(requeue_after=max(0.05, health.probe + grace - self.clock.now()))

    async def _mark_unknown(self, node: Obj, never_posted: bool) -> Obj:
        name = node["metadata"]["name"]
        status = dict(node.get("status") or {})
        conditions = {c.get("type"): dict(c) for c in status.get("conditions") or []}
        now = _now_wall()
        message = "Kubelet never posted node status." if never_posted else "Kubelet stopped posting node status."
        for type_ in KUBELET_CONDITIONS:
            cond = conditions.get(type_)
            if cond is None:
                cond = {"type": type_, "lastHeartbeatTime": node["metadata"].get("creationTimestamp")}
            if cond.get("status") != "Unknown":
                cond["lastTransitionTime"] = now
            cond.update(status="Unknown", reason="NodeStatusUnknown", message=message)
            conditions[type_] = cond
        order = [c.get("type") for c in status.get("conditions") or []]
        status["conditions"] = [conditions[t] for t in order if t in conditions] + [
            c for t, c in conditions.items() if t not in order]
        updated = await self.client.update_status(NODES, {**node, "status": status})
        log.info("node %s: no heartbeat for longer than the grace period; Ready is now Unknown", name)
        self.recorder.event(node, NORMAL, "NodeNotReady", f"Node {name} status is now: NodeNotReady")
        return updated

    async def _mark_pods_not_ready(self, node_name: str) -> None:
        for pod in self.pods.by_index("node", node_name):
            if podutil.is_terminal(pod) or podutil.is_terminating(pod):
                continue
            cond = podutil.condition(pod, "Ready")
            if cond is None or cond.get("status") == "False":
                continue
            status = dict(pod.get("status") or {})
            status["conditions"] = [
                {**c, "status": "False", "lastTransitionTime": _now_wall()} if c.get("type") == "Ready" else c
                for c in status.get("conditions") or []]
            try:
                await self.client.update_status(PODS, {**pod, "status": status})
            except NotFound:
                pass

    def _desired_taints(self, node: Obj) -> set[tuple[str, str]]:
        wanted: set[tuple[str, str]] = set()
        ready = ready_status(node)
        key = UNREACHABLE if ready == "Unknown" else NOT_READY if ready == "False" else None
        if key is not None:
            wanted.add((key, "NoSchedule"))
            if not self._all_not_ready(node):
                wanted.add((key, "NoExecute"))
        for type_, (trigger, taint) in CONDITION_TAINTS.items():
            cond = podutil.condition(node, type_)
            if cond is not None and cond.get("status") == trigger:
                wanted.add((taint, "NoSchedule"))
        if (node.get("spec") or {}).get("unschedulable"):
            wanted.add((UNSCHEDULABLE, "NoSchedule"))
        return wanted

    async def _ensure_taints(self, node: Obj) -> None:
        taints = list((node.get("spec") or {}).get("taints") or [])

        def managed(t: Obj) -> bool:
            effect = t.get("effect")
            return (effect == "NoSchedule" and t.get("key") in MANAGED_NO_SCHEDULE) or (
                effect == "NoExecute" and t.get("key") in MANAGED_NO_EXECUTE)

        current = {(t.get("key"), t.get("effect")) for t in taints if managed(t)}
        wanted = self._desired_taints(node)
        if current == wanted:
            return
        kept = [t for t in taints if not managed(t) or (t.get("key"), t.get("effect")) in wanted]
        now = _now_wall()
        for key, effect in sorted(wanted - current):
            taint: Obj = {"key": key, "effect": effect}
            if effect == "NoExecute":
                taint["timeAdded"] = now  # tolerationSeconds count from here
            kept.append(taint)
        spec = {**(node.get("spec") or {}), "taints": kept}
        if not kept:
            spec.pop("taints")
        try:
            await self.client.update(NODES, {**node, "spec": spec})
        except NotFound:
            return
        except ApiError:
            raise
        log.info("node %s: taints now %s", node["metadata"]["name"],
                 ", ".join(f"{t['key']}:{t['effect']}" for t in kept) or "none")
