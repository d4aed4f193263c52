"""Builders for Node / Pod / PV objects in the wire format, shared by the scheduler tests."""

from __future__ import annotations

import itertools
import random
from typing import Any

from controlplane.scheduler.cache import Cache
from controlplane.scheduler.core import Scheduler

_uid = itertools.count(1)


def node(name: str, *, cpu: str = "4", memory: str = "32Gi", pods: str = "110", labels: dict[str, str] | None = None,
         taints: list[dict[str, Any]] | None = None, unschedulable: bool = False, extra: dict[str, str] | None = None,
         images: list[tuple[list[str], int]] | None = None, hostname: bool = True) -> dict[str, Any]:
    lbl = {"kubernetes.io/hostname": name} if hostname else {}
    lbl.update(labels or {})
    alloc = {"cpu": cpu, "memory": memory, "pods": pods, **(extra or {})}
    status: dict[str, Any] = {"allocatable": alloc, "capacity": dict(alloc)}
    if images:
        status["images"] = [{"names": names, "sizeBytes": size} for names, size in images]
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": lbl}, "spec": spec,
            "status": status}


def pod(name: str, *, ns: str = "default", cpu: str | None = "100m", memory: str | None = "100Mi",
        labels: dict[str, str] | None = None, node_name: str = "", priority: int | None = None,
        uid: str | None = None, **spec: Any) -> dict[str, Any]:
    req: dict[str, str] = {}
    if cpu is not None:
        req["cpu"] = cpu
    if memory is not None:
        req["memory"] = memory
    extra_req = spec.pop("requests", None)
    if extra_req:
        req.update(extra_req)
    containers = spec.pop("containers", None) or [{"name": "c", "image": spec.pop("image", "pause:3.10"),
                                                   "resources": {"requests": req} if req else {}}]
    body: dict[str, Any] = {"containers": containers, **spec}
    if node_name:
        body["nodeName"] = node_name
    if priority is not None:
        body["priority"] = priority
    md: dict[str, Any] = {"name": name, "namespace": ns, "uid": uid or f"{name}-{next(_uid)}",
                          "labels": labels or {}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": body, "status": {}}


def taint(key: str, value: str = "", effect: str = "NoSchedule") -> dict[str, Any]:
    return {"key": key, "value": value, "effect": effect}


def cluster(*nodes: dict[str, Any], pods: tuple[dict[str, Any], ...] = (), seed: int = 0,
            **kwargs: Any) -> tuple[Cache, Scheduler]:
    cache = Cache()
    for n in nodes:
        cache.add_node(n)
    for p in pods:
        cache.add_pod(p)
    return cache, Scheduler(cache, rng=random.Random(seed), **kwargs)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt
