"""In-process scheduler throughput, modelled on upstream's test/integration/scheduler_perf.

Upstream runs each workload against a real API server; this feeds the snapshot directly (nodes and pods as the
informers would deliver them) so it measures the scheduler alone: queue -> scheduling cycle -> assume -> confirmed
binding. The workloads and pod templates are upstream's (SchedulingBasic, SchedulingNodeAffinity,
SchedulingPodAntiAffinity, SchedulingPodAffinity, SchedulingPreferredPodAffinity / AntiAffinity, TopologySpreading,
SchedulingWithMixedChurn) on 5000 nodes of 4 CPU / 32Gi / 110 pods. Unlike upstream's nodes, ours carry the
kubernetes.io/hostname label a kubelet sets, so hostname-keyed (anti-)affinity actually constrains placement.

    python bench/scheduler/scheduler_perf.py            # full sizes (several minutes on 2 cores)
    python bench/scheduler/scheduler_perf.py --quick    # smaller pod counts, same 5000 nodes
    python bench/scheduler/scheduler_perf.py --only SchedulingBasic --nodes 1000
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from controlplane.scheduler.cache import Cache
from controlplane.scheduler.core import Scheduler
from controlplane.scheduler.queue import (
    EVENT_ASSIGNED_POD_DELETE,
    EVENT_NODE_ADD,
    PriorityQueue,
)

# ---------------------------------------------------------------------------------------------------------------
# Templates (upstream's scheduler_perf templates)
# ---------------------------------------------------------------------------------------------------------------

_RES = {"limits": {"cpu": "100m", "memory": "500Mi"}, "requests": {"cpu": "100m", "memory": "500Mi"}}


def node_template(name: str, labels: dict[str, str] | None = None, pods: str = "110") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {},
            "status": {"capacity": {"pods": pods, "cpu": "4", "memory": "32Gi"},
                       "conditions": [{"status": "True", "type": "Ready"}], "phase": "Running"}}


def pod_default() -> dict[str, Any]:
    return {"metadata": {"generateName": "pod-"},
            "spec": {"containers": [{"image": "registry.k8s.io/pause:3.10.1", "name": "pause",
                                     "ports": [{"containerPort": 80}], "resources": _RES}]}}


def pod_with_node_affinity() -> dict[str, Any]:
    p = pod_default()
    p["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone1", "zone2"]}]}]}}}
    return p


def pod_with_pod_anti_affinity() -> dict[str, Any]:
    p = pod_default()
    p["metadata"]["labels"] = {"color": "green"}
    p["spec"]["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"color": "green"}}, "topologyKey": "kubernetes.io/hostname",
         "namespaces": ["sched-1", "sched-0"]}]}}
    return p


def pod_with_pod_affinity() -> dict[str, Any]:
    p = pod_default()
    p["metadata"]["labels"] = {"foo": ""}
    p["spec"]["affinity"] = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"foo": ""}}, "topologyKey": "topology.kubernetes.io/zone",
         "namespaces": ["sched-1", "sched-0"]}]}}
    return p


def pod_with_preferred(kind: str, color: str) -> dict[str, Any]:
    p = pod_default()
    p["metadata"]["labels"] = {"color": color}
    p["spec"]["affinity"] = {kind: {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"podAffinityTerm": {"labelSelector": {"matchLabels": {"color": color}},
                             "topologyKey": "kubernetes.io/hostname", "namespaces": ["sched-1", "sched-0"]},
         "weight": 1}]}}
    return p


def pod_with_topology_spreading() -> dict[str, Any]:
    p = pod_default()
    p["metadata"]["labels"] = {"color": "blue"}
    p["spec"]["topologySpreadConstraints"] = [
        {"maxSkew": 5, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
         "labelSelector": {"matchLabels": {"color": "blue"}}}]
    return p


def pod_high_priority_large_cpu() -> dict[str, Any]:
    return {"metadata": {"generateName": "pod-h-"},
            "spec": {"priority": 10, "containers": [{"image": "registry.k8s.io/pause:3.10.1", "name": "pause",
                                                     "ports": [{"containerPort": 80}],
                                                     "resources": {"requests": {"cpu": "9", "memory": "500Mi"}}}]}}


# ---------------------------------------------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------------------------------------------

class Cluster:
    """A snapshot, a scheduler and a queue wired together; binding is confirmed in-process."""

    def __init__(self, seed: int = 1) -> None:
        self.cache = Cache(initial_capacity=8192)
        self.scheduler = Scheduler(self.cache, rng=random.Random(seed))
        self.queue: PriorityQueue = self.scheduler.new_queue()
        self._n = 0

    def add_nodes(self, count: int, labels_for: Callable[[int], dict[str, str]] | None = None,
                  prefix: str = "scheduler-perf-") -> None:
        for i in range(count):
            self.cache.add_node(node_template(f"{prefix}{i}", labels_for(i) if labels_for else None))

    def make_pods(self, template: Callable[[], dict[str, Any]], count: int, namespace: str = "default"
                  ) -> list[dict[str, Any]]:
        base = template()
        out = []
        for _ in range(count):
            self._n += 1
            p = copy.deepcopy(base)
            md = p["metadata"]
            md["name"] = f"{md.pop('generateName', 'pod-')}{self._n}"
            md["namespace"] = namespace
            md["uid"] = f"uid-{self._n}"
            out.append(p)
        return out

    def schedule_all(self, pods: list[dict[str, Any]], on_tick: Callable[[], None] | None = None) -> tuple[int, float]:
        """Queue ``pods`` and run scheduling cycles until none is left to schedule; returns (scheduled, seconds)."""
        cache, sched, queue = self.cache, self.scheduler, self.queue
        t0 = time.perf_counter()
        for p in pods:
            queue.add(p)
        scheduled = 0
        while True:
            if on_tick is not None:
                on_tick()
            q, res, bc = sched.schedule_next(queue)
            if q is None:
                break
            if bc is not None:
                # The API loop would bind and the informer would confirm; here both happen at once.
                cache.finish_binding(bc.assumed.uid)
                cache.add_pod(bc.assumed)
                queue.done(bc.assumed.uid)
                scheduled += 1
        return scheduled, time.perf_counter() - t0


@dataclass
class Result:
    name: str
    nodes: int
    init_pods: int
    measured_pods: int
    scheduled: int
    seconds: float
    target: float | None
    check: str = "-"

    @property
    def rate(self) -> float:
        return self.scheduled / self.seconds if self.seconds else 0.0


def _zone1(_: int) -> dict[str, str]:
    return {"topology.kubernetes.io/zone": "zone1"}


def _moon(i: int) -> dict[str, str]:
    return {"topology.kubernetes.io/zone": f"moon-{i % 3 + 1}"}


def run_workload(name: str, nodes: int, init: int, measure: int, init_tpl: Callable[[], dict[str, Any]],
                 measure_tpl: Callable[[], dict[str, Any]], *, labels: Callable[[int], dict[str, str]] | None = None,
                 init_ns: str = "sched-0", measure_ns: str = "sched-1", target: float | None = None,
                 churn: bool = False) -> Result:
    c = Cluster()
    c.add_nodes(nodes, labels)
    c.schedule_all(c.make_pods(init_tpl, init, init_ns))
    pods = c.make_pods(measure_tpl, measure, measure_ns)
    tick: Callable[[], None] | None = None
    if churn:
        tick = _churn(c)
    gc.collect()
    scheduled, seconds = c.schedule_all(pods, tick)
    if churn:
        scheduled = sum(1 for p in pods if c.cache.has_pod(p["metadata"]["uid"]))
    return Result(name, nodes, init, measure, scheduled, seconds, target, check_placement(name, c))


def check_placement(name: str, c: Cluster) -> str:
    """Verify the constraints each workload exercises actually hold in the final placement."""
    infos = c.cache.node_infos()
    if name == "SchedulingPodAntiAffinity":
        worst = max(sum(1 for p in i.pods.values() if p.labels.get("color") == "green") for i in infos)
        return "ok" if worst <= 1 else f"FAIL: {worst} anti-affine pods on one node"
    if name == "SchedulingNodeAffinity":
        bad = sum(len(i.pods) for i in infos if i.labels.get("topology.kubernetes.io/zone") not in ("zone1", "zone2"))
        return "ok" if bad == 0 else f"FAIL: {bad} pods outside zone1/zone2"
    if name == "TopologySpreading":
        per_zone: dict[str, int] = {}
        for i in infos:
            z = i.labels.get("topology.kubernetes.io/zone", "")
            per_zone[z] = per_zone.get(z, 0) + sum(1 for p in i.pods.values() if p.labels.get("color") == "blue")
        skew = max(per_zone.values()) - min(per_zone.values())
        return "ok" if skew <= 5 else f"FAIL: skew {skew}"
    if name in ("SchedulingBasic", "SchedulingWithMixedChurn"):
        over = sum(1 for i in infos if i.requested.get("cpu", 0) > i.allocatable.get("cpu", 0))
        return "ok" if over == 0 else f"FAIL: {over} overcommitted nodes"
    return "-"


def _churn(c: Cluster, interval: float = 1.0) -> Callable[[], None]:
    """SchedulingWithMixedChurn: every interval, recreate one node (0 pods capacity), one unschedulable
    high-priority 9-CPU pod and one Service, as upstream's churn op in "recreate" mode."""
    state: dict[str, Any] = {"next": time.perf_counter() + interval, "i": 0, "node": None, "pod": None}

    def tick() -> None:
        now = time.perf_counter()
        if now < state["next"]:
            return
        state["next"] = now + interval
        state["i"] += 1
        i = state["i"]
        if state["node"] is not None:
            c.cache.remove_node(state["node"])
        node = node_template(f"node-churn-{i}", pods="0")
        c.cache.add_node(node)
        state["node"] = node
        c.queue.move_all_to_active_or_backoff(EVENT_NODE_ADD, None, node)
        if state["pod"] is not None:
            c.queue.delete(state["pod"])
        pod = c.make_pods(pod_high_priority_large_cpu, 1, "default")[0]
        c.queue.add(pod)
        state["pod"] = pod
        svc = {"metadata": {"name": f"svc-{i}", "namespace": "default"}, "spec": {"selector": {"app": f"x{i}"}}}
        c.cache.upsert_object("Service", svc)
        if i > 1:
            c.cache.delete_object("Service", {"metadata": {"name": f"svc-{i - 1}", "namespace": "default"}})
        c.queue.move_all_to_active_or_backoff(EVENT_ASSIGNED_POD_DELETE, None, None)
    return tick


def memory_per_1000_nodes(nodes: int, pods_per_node: int = 0) -> dict[str, float]:
    """tracemalloc bytes per 1000 nodes: the snapshot's own structures, and including the Node objects."""
    gc.collect()
    prebuilt = [node_template(f"mem-{i}", _zone1(i)) for i in range(nodes)]
    tracemalloc.start()
    c = Cache(initial_capacity=8192)
    for n in prebuilt:
        c.add_node(n)
    own, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    tracemalloc.start()
    c2 = Cache(initial_capacity=8192)
    for i in range(nodes):
        c2.add_node(node_template(f"mem-{i}", _zone1(i)))
    with_nodes, _ = tracemalloc.get_traced_memory()
    out = {"snapshot_only_kib": own / 1024 / (nodes / 1000), "with_node_objects_kib": with_nodes / 1024 / (nodes / 1000)}
    if pods_per_node:
        cl = Cluster()
        cl.cache = c2
        cl.scheduler = Scheduler(c2, rng=random.Random(1))
        cl.queue = cl.scheduler.new_queue()
        before, _ = tracemalloc.get_traced_memory()
        cl.schedule_all(cl.make_pods(pod_default, nodes * pods_per_node))
        after, _ = tracemalloc.get_traced_memory()
        out["per_1000_pods_kib"] = (after - before) / 1024 / (nodes * pods_per_node / 1000)
    tracemalloc.stop()
    del c, c2
    return out


WORKLOADS: dict[str, Callable[[int, bool], Result]] = {
    "SchedulingBasic": lambda n, q: run_workload(
        "SchedulingBasic", n, 1000, 2000 if q else 10000, pod_default, pod_default,
        init_ns="default", measure_ns="default", target=680),
    "SchedulingNodeAffinity": lambda n, q: run_workload(
        "SchedulingNodeAffinity", n, 1000 if q else 5000, 2000 if q else 10000, pod_with_node_affinity,
        pod_with_node_affinity, labels=_zone1, init_ns="default", measure_ns="default", target=220),
    "SchedulingPodAntiAffinity": lambda n, q: run_workload(
        "SchedulingPodAntiAffinity", n, 1000, 500 if q else 2000, pod_with_pod_anti_affinity,
        pod_with_pod_anti_affinity, target=60),
    "SchedulingPodAffinity": lambda n, q: run_workload(
        "SchedulingPodAffinity", n, 1000 if q else 5000, 1000 if q else 5000, pod_with_pod_affinity,
        pod_with_pod_affinity, labels=_zone1, target=35),
    "SchedulingPreferredPodAffinity": lambda n, q: run_workload(
        "SchedulingPreferredPodAffinity", n, 1000 if q else 5000, 1000 if q else 5000,
        lambda: pod_with_preferred("podAffinity", "red"), lambda: pod_with_preferred("podAffinity", "red"),
        target=90),
    "SchedulingPreferredPodAntiAffinity": lambda n, q: run_workload(
        "SchedulingPreferredPodAntiAffinity", n, 1000 if q else 5000, 1000 if q else 5000,
        lambda: pod_with_preferred("podAntiAffinity", "yellow"),
        lambda: pod_with_preferred("podAntiAffinity", "yellow"), target=90),
    "TopologySpreading": lambda n, q: run_workload(
        "TopologySpreading", n, 1000 if q else 5000, 1000 if q else 5000, pod_default,
        pod_with_topology_spreading, labels=_moon, init_ns="sched-0", measure_ns="sched-0"),
    "SchedulingWithMixedChurn": lambda n, q: run_workload(
        "SchedulingWithMixedChurn", n, 0, 2000 if q else 10000, pod_default, pod_default,
        init_ns="default", measure_ns="default", churn=True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer pods per workload (same node count)")
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--only", action="append", help="run only this workload (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args(argv)
    names = args.only or list(WORKLOADS)
    results = []
    print(f"{'workload':36} {'nodes':>6} {'init':>6} {'pods':>6} {'sched':>6} {'secs':>7} {'pods/s':>8} {'target':>7}"
          f"  check")
    for name in names:
        r = WORKLOADS[name](args.nodes, args.quick)
        results.append(r)
        tgt = f"{r.target:.0f}" if r.target else "-"
        print(f"{r.name:36} {r.nodes:6d} {r.init_pods:6d} {r.measured_pods:6d} {r.scheduled:6d} {r.seconds:7.2f} "
              f"{r.rate:8.1f} {tgt:>7}  {r.check}", flush=True)
    mem = None
    if not args.no_memory:
        mem = memory_per_1000_nodes(args.nodes, pods_per_node=0 if args.quick else 1)
        print("memory per 1000 nodes: " + ", ".join(f"{k}={v:.0f}" for k, v in mem.items()))
    if args.json:
        args.json.write_text(json.dumps({"results": [r.__dict__ | {"rate": r.rate} for r in results],
                                         "memory": mem}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
