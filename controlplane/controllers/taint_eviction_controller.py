"""Taint-based eviction: deletes pods from nodes with NoExecute taints they do not tolerate (long enough).

Upstream split this out of node lifecycle as ``taint-eviction-controller`` (1.29). A pod on a node with a NoExecute
taint is deleted at once if some such taint has no matching toleration; if all are tolerated, it is deleted when the
shortest matching ``tolerationSeconds`` has passed since the taint was added (the API server gives every pod
not-ready and unreachable tolerations of 300 s unless it brings its own). Tolerations without tolerationSeconds
tolerate for ever. Before deleting, the pod gets a DisruptionTarget condition saying why, as upstream does.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from controlplane.client import ApiClient, ApiError, NotFound, SharedInformerFactory, split_key
from controlplane.client.resources import NODES, PODS
from controlplane.controllers import podutil
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.controllers.controller_utils import update_pod_status
from controlplane.client.events import NORMAL, EventRecorder
from controlplane.scheduler.labels import taint_key, tolerates, toleration_key

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def _epoch(rfc3339: str) -> float:
    # Python 3.11's fromisoformat reads RFC 3339, fractions included, once "Z" is spelled as an offset.
    return dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def no_execute_taints(node: Obj | None) -> list[Obj]:
    return [t for t in ((node or {}).get("spec") or {}).get("taints") or [] if t.get("effect") == "NoExecute"]


def toleration_deadline(pod: Obj, taints: list[Obj]) -> float | None:
    """Seconds (wall clock, epoch) after which the pod must go: 0 for now, None for never."""
    tolerations = [t for t in (pod.get("spec") or {}).get("tolerations") or []
                   if (t.get("effect") or "NoExecute") == "NoExecute"]
    keys = [(t, toleration_key(t)) for t in tolerations]
    used: list[Obj] = []
    for taint in taints:
        tk = taint_key(taint)
        matching = [t for t, k in keys if tolerates(k, tk)]
        if not matching:
            return 0.0
        used.extend(matching)
    seconds = [max(0, int(t["tolerationSeconds"])) for t in used if t.get("tolerationSeconds") is not None]
    if not seconds:
        return None
    added = [_epoch(t["timeAdded"]) for t in taints if t.get("timeAdded")]
    start = min(added) if added else dt.datetime.now(dt.timezone.utc).timestamp()
    return start + min(seconds)


class TaintEvictionController:
    name = "taint-eviction-controller"

    def __init__(self, ctx: ControllerContext | None = None) -> None:
        ctx = ctx or ControllerContext()
        self.workers = int(ctx.option("concurrent_taint_eviction_syncs", 4))

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.recorder = EventRecorder(client, "taint-eviction-controller")
        self.nodes = informers.informer(NODES)
        self.pods = informers.informer(PODS)
        self.pods.add_index("node", lambda p: (p.get("spec") or {}).get("nodeName") or None)

        def node_changed(node: Obj, *rest: Obj) -> None:
            new = rest[-1] if rest else node
            if rest and no_execute_taints(node) == no_execute_taints(new):
                return
            if not no_execute_taints(new):
                return  # taints removed: nothing to evict (a pending deadline re-checks and finds none)
            for pod in self.pods.by_index("node", new["metadata"]["name"]):
                enqueue(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}")

        def pod_changed(pod: Obj, *rest: Obj) -> None:
            pod = rest[-1] if rest else pod
            if (pod.get("spec") or {}).get("nodeName"):
                enqueue(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}")

        self.nodes.add_handler(on_add=node_changed, on_update=node_changed)
        self.pods.add_handler(on_add=pod_changed, on_update=pod_changed)

    async def shutdown(self) -> None:
        await self.recorder.aclose()

    async def reconcile(self, key: str) -> Result:
        pod = self.pods.get(key)
        if pod is None or podutil.is_terminating(pod) or podutil.is_terminal(pod):
            return DONE
        node_name = (pod.get("spec") or {}).get("nodeName")
        taints = no_execute_taints(self.nodes.get(node_name) if node_name else None)
        if not taints:
            return DONE
        deadline = toleration_deadline(pod, taints)
        if deadline is None:
            return DONE
        remaining = deadline - dt.datetime.now(dt.timezone.utc).timestamp()
        if remaining > 0:
            return Result(requeue_after=remaining)
        await self._evict(key, pod)
        return DONE

    async def _evict(self, key: str, pod: Obj) -> None:
        ns, name = split_key(key)
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        target = {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
                  "message": "Taint manager: deleting due to NoExecute taint"}

        def with_target(live: Obj) -> Obj | None:
            status = dict(live.get("status") or {})
            return status if podutil.set_condition(status, target, now) else None

        try:
            # A stale copy (the node controller marks a lost node's pods not ready at about the same time) is
            # decided on again live, so the pod is not deleted without the condition saying why.
            live = await update_pod_status(self.client, pod, with_target)
        except ApiError as exc:
            log.info("pod %s: setting DisruptionTarget failed (%s); deleting anyway", key, exc)
        else:
            if live is None:
                return  # gone, or replaced by a new pod of that name
            pod = live
        log.info("pod %s: deleting, NoExecute taint not tolerated on node %s", key, pod["spec"].get("nodeName"))
        self.recorder.event(pod, NORMAL, "TaintManagerEviction", f"Marking for deletion Pod {key}")
        try:
            await self.client.delete(PODS, name, ns, preconditions={"uid": pod["metadata"]["uid"]})
        except NotFound:
            pass
