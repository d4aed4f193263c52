"""Helpers for the scheduler's end-to-end tests: objects as a user (or a kubelet) would create them, a running
SchedulerService, and polling with a deadline.

The tests talk to a real API server (ThreadedApiServer) over HTTP; no kubelet runs, so Nodes are created directly
with capacity, allocatable, a Ready condition, labels and taints, as a kubelet would register them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from controlplane.client import EVENTS, NODES, PODS, ApiClient, NotFound
from controlplane.scheduler.config import SchedulerConfiguration
from controlplane.scheduler.service import SchedulerOptions, SchedulerService

Obj = dict[str, Any]


async def eventually(condition: Callable[[], Any], timeout: float = 20.0, message: str = "",
                     interval: float = 0.02) -> Any:
    """Poll ``condition`` (plain or async) until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message or condition}")
        await asyncio.sleep(interval)  # a polling interval, not a synchronisation point


def node(name: str, *, cpu: str = "4", memory: str = "16Gi", pods: str = "110", labels: dict[str, str] | None = None,
         taints: list[Obj] | None = None, unschedulable: bool = False) -> Obj:
    """A Node as a kubelet registers it: hostname label, capacity = allocatable, Ready."""
    cap = {"cpu": cpu, "memory": memory, "pods": pods}
    spec: Obj = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  **(labels or {})}},
            "spec": spec,
            "status": {"capacity": cap, "allocatable": dict(cap),
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "message": "kubelet is posting ready status"}],
                       "phase": "Running"}}


def pod(name: str, *, cpu: str | None = "100m", memory: str | None = "64Mi", labels: dict[str, str] | None = None,
        ns: str = "default", scheduler: str | None = None, **spec: Any) -> Obj:
    req: dict[str, str] = {}
    if cpu is not None:
        req["cpu"] = cpu
    if memory is not None:
        req["memory"] = memory
    body: Obj = {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                 "resources": {"requests": req} if req else {}}], **spec}
    if scheduler is not None:
        body["schedulerName"] = scheduler
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}}, "spec": body}


def taint(key: str, value: str = "", effect: str = "NoSchedule") -> Obj:
    return {"key": key, "value": value, "effect": effect}


async def create_nodes(client: ApiClient, *nodes: Obj) -> None:
    for n in nodes:
        await client.create(NODES, n)


async def node_of(client: ApiClient, name: str, ns: str = "default") -> str:
    p = await client.get(PODS, name, ns)
    return (p.get("spec") or {}).get("nodeName") or ""


async def wait_bound(client: ApiClient, name: str, ns: str = "default", timeout: float = 20.0) -> str:
    """The node ``name`` gets bound to (fails at the deadline)."""
    async def bound() -> str:
        return await node_of(client, name, ns)
    return await eventually(bound, timeout, f"pod {ns}/{name} bound")


async def events_for(client: ApiClient, name: str, ns: str = "default", reason: str | None = None) -> list[Obj]:
    items = (await client.list(EVENTS, ns, field_selector=f"involvedObject.name={name}")).get("items") or []
    return [e for e in items if reason is None or e.get("reason") == reason]


async def wait_event(client: ApiClient, name: str, reason: str, ns: str = "default", timeout: float = 20.0) -> Obj:
    async def found() -> Obj | None:
        evs = await events_for(client, name, ns, reason)
        return evs[0] if evs else None
    return await eventually(found, timeout, f"a {reason} event for {ns}/{name}")


def scheduled_condition(p: Obj) -> Obj | None:
    for c in (p.get("status") or {}).get("conditions") or ():
        if c.get("type") == "PodScheduled":
            return c
    return None


async def finish_deletions(client: ApiClient, ns: str = "default") -> int:
    """What a kubelet does for a pod in graceful deletion: confirm it with gracePeriodSeconds=0."""
    done = 0
    for p in (await client.list(PODS, ns)).get("items") or []:
        if (p.get("metadata") or {}).get("deletionTimestamp"):
            with contextlib.suppress(NotFound):
                await client.delete(PODS, p["metadata"]["name"], ns, grace_period_seconds=0)
                done += 1
    return done


@contextlib.asynccontextmanager
async def running_scheduler(url: str, config: SchedulerConfiguration | None = None,
                            **options: Any) -> AsyncIterator[SchedulerService]:
    svc = SchedulerService(url, config, SchedulerOptions(seed=options.pop("seed", 1), **options))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
