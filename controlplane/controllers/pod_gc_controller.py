"""The pod garbage collector: force-deletes pods that nothing else will ever remove, as upstream's ``podgc``.

Pods outlive the things that would clean them up: a finished pod stays until someone deletes it, a pod bound to a
node that was deleted has no kubelet left to finish it, and a terminating pod that was never scheduled, or sits on a
node declared out of service, waits for a kubelet that will not come. Every ``pod_gc_check_period`` (upstream's
gcCheckPeriod, 20 s) one pass over the informer caches, in upstream's order:

- terminated pods (Succeeded/Failed) beyond ``terminated_pod_gc_threshold`` (``--terminated-pod-gc-threshold``,
  12500; 0 turns this off) are deleted, evicted ones first, then oldest ``creationTimestamp`` first;
- terminating pods on a node that is not Ready and carries the ``node.kubernetes.io/out-of-service`` taint;
- pods bound to a node that does not exist: the node must be missing from the cache for
  ``pod_gc_quarantine_time`` (40 s) and then also from a live GET, since a new node may not have reached the cache
  yet; such pods get a DisruptionTarget condition (reason DeletionByPodGC) so their controllers see why;
- terminating pods that were never scheduled.

Each such pod is first marked Failed if it is not terminal (nothing else would: there is no kubelet to say how it
ended), then deleted with a grace period of 0 and its uid as a precondition, so a new pod of the same name is safe.
"""

from __future__ import annotations

import asyncio
import logging

from controlplane.client import ApiClient, ApiError, NotFound, SharedInformerFactory
from controlplane.client.resources import NODES, PODS
from controlplane.controllers import podutil
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.controllers.controller_utils import Obj, format_time, key_of, parse_time, update_pod_status

log = logging.getLogger(__name__)

GC_KEY = "gc"  # one pass covers every pod; the work queue just runs it (deduplicated, retried on a crash)
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
PARALLEL_DELETES = 16  # upstream starts a goroutine per pod; a bound keeps a burst from swamping the API server


def is_evicted(pod: Obj) -> bool:
    """The kubelet's eviction manager marks the pods it evicts Failed with reason Evicted (eviction.PodIsEvicted)."""
    status = pod.get("status") or {}
    return status.get("phase") == "Failed" and status.get("reason") == "Evicted"


def deletion_order(pod: Obj) -> tuple[bool, float, str]:
    """Upstream's byEvictionAndCreationTimestamp: evicted pods first, then the oldest, then by name."""
    meta = pod["metadata"]
    created = parse_time(meta.get("creationTimestamp"))
    return (not is_evicted(pod), created if created is not None else 0.0, meta["name"])


def _node_ready(node: Obj) -> bool:
    cond = podutil.condition(node, "Ready")
    return cond is not None and cond.get("status") == "True"


def _has_taint(node: Obj, key: str) -> bool:
    return any(t.get("key") == key for t in (node.get("spec") or {}).get("taints") or [])


class PodGCController:
    name = "podgc"
    workers = 1  # the pass is global; one worker keeps two passes from racing each other

    def __init__(self, ctx: ControllerContext | None = None) -> None:
        ctx = ctx or ControllerContext()
        self.clock = ctx.clock
        self.threshold = int(ctx.option("terminated_pod_gc_threshold", 12500))
        self.check_period = float(ctx.option("pod_gc_check_period", 20.0))
        self.quarantine = float(ctx.option("pod_gc_quarantine_time", 40.0))
        # Nodes pods are bound to but the cache lacks: name -> clock time after which a GET decides
        # (upstream's delaying nodeQueue; a node already waiting keeps its first deadline).
        self.suspect_nodes: dict[str, float] = {}

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.enqueue = enqueue
        self.pods = informers.informer(PODS)
        self.nodes = informers.informer(NODES)
        self._limit = asyncio.Semaphore(PARALLEL_DELETES)

    async def run(self) -> None:
        """A pass at once and then every check period (wait.Until, upstream)."""
        while True:
            self.enqueue(GC_KEY)
            await self.clock.sleep(self.check_period)

    async def reconcile(self, key: str) -> Result:
        if key != GC_KEY:
            return DONE
        pods = self.pods.list()
        handled: set[str] = set()  # uids deleted earlier in this pass (a pod can be both terminated and orphaned)
        if self.threshold > 0:
            await self._gc_terminated(pods, handled)
        await self._gc_terminating_out_of_service(pods, handled)
        await self._gc_orphaned(pods, handled)
        await self._gc_unscheduled_terminating(pods, handled)
        return DONE

    # -- the four collections ------------------------------------------------------------------------------------

    async def _gc_terminated(self, pods: list[Obj], handled: set[str]) -> None:
        terminated = [p for p in pods if podutil.is_terminal(p)]
        excess = len(terminated) - self.threshold
        if excess <= 0:
            return
        log.info("pod gc: %d terminated pods, %d over the threshold of %d: deleting those", len(terminated), excess,
                 self.threshold)
        terminated.sort(key=deletion_order)
        await self._delete_all(terminated[:excess], None, handled, "terminated")

    async def _gc_terminating_out_of_service(self, pods: list[Obj], handled: set[str]) -> None:
        doomed = []
        for pod in pods:
            node_name = (pod.get("spec") or {}).get("nodeName")
            if not podutil.is_terminating(pod) or not node_name:
                continue
            node = self.nodes.get(node_name)
            if node is not None and not _node_ready(node) and _has_taint(node, OUT_OF_SERVICE):
                doomed.append(pod)
        if doomed:
            doomed.sort(key=deletion_order)
            await self._delete_all(doomed, None, handled, "terminating on an out-of-service node")

    async def _gc_orphaned(self, pods: list[Obj], handled: set[str]) -> None:
        existing = set(self.nodes.keys())
        now = self.clock.now()
        for pod in pods:
            node_name = (pod.get("spec") or {}).get("nodeName")
            if node_name and node_name not in existing:
                self.suspect_nodes.setdefault(node_name, now + self.quarantine)
        gone: set[str] = set()
        for node_name, due in list(self.suspect_nodes.items()):
            if due > now:
                continue
            del self.suspect_nodes[node_name]  # seen again next pass if pods still point at it
            if node_name in existing:
                continue
            try:
                await self.client.get(NODES, node_name)
            except NotFound:
                gone.add(node_name)
            except ApiError as exc:
                log.warning("pod gc: could not check whether node %s exists: %s", node_name, exc)
        if not gone:
            return
        orphans = [p for p in pods if (p.get("spec") or {}).get("nodeName") in gone]
        condition = {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
                     "message": "PodGC: node no longer exists"}
        await self._delete_all(orphans, condition, handled, "orphaned (its node no longer exists)")

    async def _gc_unscheduled_terminating(self, pods: list[Obj], handled: set[str]) -> None:
        doomed = [p for p in pods if podutil.is_terminating(p) and not (p.get("spec") or {}).get("nodeName")]
        if doomed:
            await self._delete_all(doomed, None, handled, "terminating and never scheduled")

    # -- marking and deleting ------------------------------------------------------------------------------------

    async def _delete_all(self, pods: list[Obj], condition: Obj | None, handled: set[str], why: str) -> None:
        async def one(pod: Obj) -> None:
            async with self._limit:
                try:
                    await self._mark_failed_and_delete(pod, condition)
                except ApiError as exc:
                    # The next pass looks again; nothing here is urgent enough to retry sooner.
                    log.warning("pod gc: deleting %s pod %s failed: %s", why, key_of(pod), exc)
                else:
                    log.info("pod gc: force deleted %s pod %s", why, key_of(pod))

        todo = [p for p in pods if p["metadata"].get("uid") not in handled]
        handled.update(p["metadata"].get("uid") for p in todo)
        await asyncio.gather(*(one(p) for p in todo))

    async def _mark_failed_and_delete(self, pod: Obj, condition: Obj | None) -> None:
        """Mark the pod Failed (with ``condition``) unless it already ended, then delete it at once."""
        meta = pod["metadata"]
        uid = meta.get("uid")

        def failed(live: Obj) -> Obj | None:
            if podutil.is_terminal(live):
                return None
            status = {**(live.get("status") or {}), "phase": "Failed"}
            if condition is not None:
                podutil.set_condition(status, condition, format_time(self.clock.now()))
            return status

        # As upstream, a pod that cannot be marked Failed (a conflict on every attempt) is not deleted, until the
        # next pass.
        if await update_pod_status(self.client, pod, failed) is None:
            return
        try:
            await self.client.delete(PODS, meta["name"], meta.get("namespace"), grace_period_seconds=0,
                                     preconditions={"uid": uid} if uid else None)
        except NotFound:
            pass
