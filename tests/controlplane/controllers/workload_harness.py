"""Test helpers for the workload controllers: run controllers against a real API server, and a fake kubelet.

``RunningControllers`` runs given controller instances in the real ControllerManager, so a test can hand one
controller a FakeClock or short periods.

``FakeKubelet`` is the stand-in for the scheduler and the kubelets while neither is wired in: it registers fake
Nodes, binds pending pods to them (honouring a DaemonSet pod's `matchFields metadata.name` affinity, as the
scheduler would), and reports pod status through the pods/status subresource — Running, Ready, exited — on a
per-pod script with configurable delays and failures. It also finishes graceful deletions, as a kubelet does.
That is a legitimate stand-in for controller tests: the controllers only ever see pod status, as from a kubelet.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from controlplane.client import (
    ApiClient,
    Conflict,
    NotFound,
    RateLimitingQueue,
    SharedInformerFactory,
    meta_namespace_key,
    split_key,
)
from controlplane.client.resources import NODES, PODS
from controlplane.controllers.controller_utils import format_time
from controlplane.controllers.manager import ControllerManager, ManagerConfig

log = logging.getLogger(__name__)

Obj = dict[str, Any]


async def eventually(condition: Callable[[], Any], timeout: float = 20.0, message: str = "",
                     interval: float = 0.02) -> Any:
    """Poll ``condition`` (plain or async) until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = condition()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message or condition}")
        await asyncio.sleep(interval)  # a polling interval, not a synchronisation point


class RunningControllers:
    """``async with RunningControllers(url, ReplicaSetController()) as rc:`` runs the given controller instances in a
    real ControllerManager (its queues, workers and retries) until the block ends. Instances rather than registry
    names let a test inject a FakeClock or short periods into one controller."""

    def __init__(self, url: str, *controllers: Any) -> None:
        self.manager = ControllerManager(url, ManagerConfig(controllers="*"),
                                         factories={c.name: c for c in controllers})
        self.client = ApiClient(url)

    async def __aenter__(self) -> Self:
        await self.manager.start()
        assert await self.manager.wait_running(20), "controllers did not start"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.manager.stop()
        await self.client.close()


@dataclass
class PodScript:
    """What the fake kubelet does with one pod, in seconds from the moment it is bound to a node."""

    start_delay: float = 0.0  # Pending -> Running
    ready: bool = True  # becomes Ready once running (False: stays Running but not ready)
    ready_delay: float = 0.0  # Running -> Ready
    exit_code: int | None = None  # None: runs until deleted; else exits with this code...
    run_seconds: float = 0.0  # ...this long after starting
    restarts: int = 0  # containerStatuses restartCount to report
    conditions: tuple[dict[str, Any], ...] = ()  # extra pod conditions to report when it exits (e.g. DisruptionTarget)


DEFAULT_SCRIPT = PodScript()


class FakeKubelet:
    """Binds and runs pods on fake nodes by writing their status, as the scheduler and kubelets would."""

    def __init__(self, url: str, nodes: tuple[str, ...] = ("node-1", "node-2", "node-3"),
                 script: Callable[[Obj], PodScript] | None = None, node_capacity: dict[str, str] | None = None,
                 terminate_delay: float = 0.0) -> None:
        self.url = url
        self.initial_nodes = nodes
        self.script = script or (lambda pod: DEFAULT_SCRIPT)
        self.overrides: dict[str, PodScript] = {}  # by pod uid
        self._scripts: dict[str, PodScript] = {}
        self.capacity = node_capacity or {"cpu": "4", "memory": "8Gi", "pods": "110"}
        self.terminate_delay = terminate_delay
        self.client = ApiClient(url)
        self.informers = SharedInformerFactory(self.client)
        self.pods = self.informers.informer(PODS)
        self.nodes = self.informers.informer(NODES)
        self.queue: RateLimitingQueue[str] = RateLimitingQueue()
        self._bound_at: dict[str, float] = {}
        self._rr = itertools.count()
        self._ips = itertools.count(2)
        self._tasks: list[asyncio.Task[None]] = []
        self.paused = False  # while True, pods are bound but not started (a cluster with a stuck kubelet)

    async def __aenter__(self) -> Self:
        for name in self.initial_nodes:
            await self.add_node(name)
        self.pods.add_handler(on_add=self._pod_event, on_update=lambda old, new: self._pod_event(new))
        self.informers.start_all()
        assert await self.informers.wait_for_sync(20)
        self._tasks = [asyncio.create_task(self._worker(), name=f"fake-kubelet-{i}") for i in range(4)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.queue.shutdown()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.informers.stop_all()
        await self.client.close()

    # -- nodes ------------------------------------------------------------------------------------------------

    async def add_node(self, name: str, labels: dict[str, str] | None = None,
                       taints: list[dict[str, Any]] | None = None, unschedulable: bool = False) -> Obj:
        node: Obj = {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                            **(labels or {})}},
                     "spec": {}}
        if taints:
            node["spec"]["taints"] = taints
        if unschedulable:
            node["spec"]["unschedulable"] = True
        created = await self.client.create(NODES, node)
        now = format_time(time.time())
        created["status"] = {
            "capacity": dict(self.capacity), "allocatable": dict(self.capacity),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": f"10.0.0.{next(self._ips)}"},
                          {"type": "Hostname", "address": name}],
        }
        return await self.client.update_status(NODES, created)

    async def delete_node(self, name: str) -> None:
        await self.client.delete(NODES, name)

    # -- pods -------------------------------------------------------------------------------------------------

    def set_script(self, pod: Obj, script: PodScript) -> None:
        """Change what happens to one (existing) pod from now on; times still count from its binding."""
        self.overrides[pod["metadata"]["uid"]] = script
        self.queue.add(meta_namespace_key(pod))

    def _script_for(self, pod: Obj) -> PodScript:
        # Asked once per pod, so a script may count attempts or vary per pod.
        uid = pod["metadata"]["uid"]
        if uid not in self._scripts:
            self._scripts[uid] = self.script(pod)
        return self.overrides.get(uid) or self._scripts[uid]

    def _pod_event(self, pod: Obj) -> None:
        self.queue.add(meta_namespace_key(pod))

    async def _worker(self) -> None:
        while (key := await self.queue.get()) is not None:
            try:
                delay = await self._sync(key)
            except (Conflict, NotFound):
                delay = 0.01  # the pod changed or went away meanwhile: look again
            except Exception:
                log.exception("fake kubelet: %s failed", key)
                delay = 0.1
            finally:
                self.queue.done(key)
            if delay is not None:
                self.queue.add_after(key, delay)

    async def _sync(self, key: str) -> float | None:
        pod = self.pods.get(key)
        if pod is None:
            return None
        ns, name = split_key(key)
        uid = pod["metadata"]["uid"]
        status = pod.get("status") or {}
        phase = status.get("phase")
        node = (pod.get("spec") or {}).get("nodeName")
        if pod["metadata"].get("deletionTimestamp"):
            return await self._finish_deletion(pod)
        if not node:
            target = self._pick_node(pod)
            if target is None:
                return 0.2  # unschedulable for now: a node may come
            await self.client.create_subresource(PODS, name, "binding", {
                "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns},
                "target": {"apiVersion": "v1", "kind": "Node", "name": target}}, ns)
            return None
        if self.paused or phase in ("Succeeded", "Failed"):
            return 0.2 if self.paused else None
        script = self._script_for(pod)
        bound = self._bound_at.setdefault(uid, time.monotonic())
        elapsed = time.monotonic() - bound
        if elapsed < script.start_delay:
            return script.start_delay - elapsed
        started = bound + script.start_delay
        if script.exit_code is not None and elapsed >= script.start_delay + script.run_seconds:
            await self._set_status(pod, self._terminated_status(pod, script.exit_code, script))
            return None
        want_ready = script.ready and elapsed >= script.start_delay + script.ready_delay
        new_status = self._running_status(pod, want_ready, script, started)
        if new_status != _comparable(status, new_status):
            await self._set_status(pod, new_status)
        pending = []
        if script.ready and not want_ready:
            pending.append(script.start_delay + script.ready_delay - elapsed)
        if script.exit_code is not None:
            pending.append(script.start_delay + script.run_seconds - elapsed)
        return max(0.005, min(pending)) if pending else None

    def _pick_node(self, pod: Obj) -> str | None:
        nodes = sorted(n["metadata"]["name"] for n in self.nodes.list()
                       if not (n.get("spec") or {}).get("unschedulable"))
        affinity = ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}
        required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
        for term in required.get("nodeSelectorTerms") or []:
            for field in term.get("matchFields") or []:
                if field.get("key") == "metadata.name" and field.get("operator") == "In":
                    pinned = [v for v in field.get("values") or [] if self.nodes.get(v) is not None]
                    return pinned[0] if pinned else None
        if not nodes:
            return None
        return nodes[next(self._rr) % len(nodes)]

    def _container_statuses(self, pod: Obj, state: dict[str, Any], ready: bool, script: PodScript) -> list[Obj]:
        return [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": ready,
                 "restartCount": script.restarts, "started": "running" in state,
                 "containerID": f"fake://{pod['metadata']['uid']}/{c['name']}", "state": copy.deepcopy(state)}
                for c in (pod.get("spec") or {}).get("containers") or []]

    def _conditions(self, pod: Obj, ready: bool, extra: tuple[dict[str, Any], ...] = ()) -> list[Obj]:
        now = format_time(time.time())
        old = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
        wanted = {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "True" if ready else "False",
                  "Ready": "True" if ready else "False"}
        out = []
        for ctype, value in wanted.items():
            prev = old.get(ctype)
            since = prev["lastTransitionTime"] if prev and prev.get("status") == value else now
            out.append({"type": ctype, "status": value, "lastTransitionTime": since})
        for cond in extra:
            out.append({"lastTransitionTime": now, **cond})
        return out

    def _running_status(self, pod: Obj, ready: bool, script: PodScript, started: float) -> Obj:
        status = pod.get("status") or {}
        start_text = status.get("startTime") or format_time(time.time())
        return {
            "phase": "Running",
            "conditions": self._conditions(pod, ready),
            "hostIP": "10.0.0.1",
            "podIP": status.get("podIP") or f"10.244.{next(self._ips) % 250}.{next(self._ips) % 250}",
            "startTime": start_text,
            "qosClass": status.get("qosClass", "BestEffort"),
            "containerStatuses": self._container_statuses(pod, {"running": {"startedAt": start_text}}, ready, script),
        }

    def _terminated_status(self, pod: Obj, exit_code: int, script: PodScript) -> Obj:
        status = pod.get("status") or {}
        now = format_time(time.time())
        started = status.get("startTime") or now
        state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                "startedAt": started, "finishedAt": now,
                                "containerID": f"fake://{pod['metadata']['uid']}"}}
        return {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": self._conditions(pod, False, script.conditions),
            "hostIP": "10.0.0.1", "podIP": status.get("podIP") or "10.244.0.9", "startTime": started,
            "qosClass": status.get("qosClass", "BestEffort"),
            "containerStatuses": self._container_statuses(pod, state, False, script),
        }

    async def _set_status(self, pod: Obj, status: Obj) -> None:
        m = pod["metadata"]
        await self.client.patch(PODS, m["name"], {"metadata": {"resourceVersion": m["resourceVersion"]},
                                                   "status": status}, m["namespace"], subresource="status")

    async def _finish_deletion(self, pod: Obj) -> float | None:
        m = pod["metadata"]
        phase = (pod.get("status") or {}).get("phase")
        if self.terminate_delay:
            key = f"deleting:{m['uid']}"
            first = self._bound_at.setdefault(key, time.monotonic())
            if time.monotonic() - first < self.terminate_delay:
                return self.terminate_delay - (time.monotonic() - first)
        if (pod.get("spec") or {}).get("nodeName") and phase not in ("Succeeded", "Failed"):
            # The kubelet stops the containers and reports a terminal phase before it lets the pod go.
            await self._set_status(pod, self._terminated_status(pod, 137, PodScript()))
            return 0.01
        if m.get("finalizers"):
            return None  # someone else's finalizer holds it; its update event brings us back
        try:
            await self.client.delete(PODS, m["name"], m["namespace"], grace_period_seconds=0,
                                     preconditions={"uid": m["uid"]})
        except NotFound:
            pass
        return None


def _comparable(current: Obj, wanted: Obj) -> Obj:
    """``current`` cut to the keys ``wanted`` has, so an unchanged status is not rewritten."""
    return {k: current.get(k) for k in wanted}
