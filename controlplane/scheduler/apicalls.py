"""The scheduler's writes to the API server: the callbacks the core declares (PodBinder, PreemptionActions,
VolumeAPI) and the pod status updates of a failed attempt, implemented with the async client.

The core stays free of I/O so benchmarks and unit tests feed it in-process; this module is the only place that knows
how kube-scheduler talks to an API server: POST pods/<name>/binding, the PodScheduled and DisruptionTarget conditions
as strategic-merge patches of pods/status, graceful deletion of preemption victims, ``status.nominatedNodeName``,
and volume binding (PV claimRef, the PVC's selected-node annotation, waiting until the claims are bound -- that
wait reads the PVC informer, which ``notify_claims_changed`` pokes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from controlplane.client import ApiClient, NotFound
from controlplane.client.resources import (
    PERSISTENTVOLUMECLAIMS,
    PERSISTENTVOLUMES,
    PODS,
)

from controlplane.client.events import NORMAL, EventRecorder
from .plugins.volume_binding import ANN_BIND_COMPLETED, ANN_SELECTED_NODE, pvc_key

__all__ = ["ApiCalls", "claim_is_bound", "pod_scheduled_condition"]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ns_name(obj: Mapping[str, Any]) -> tuple[str, str]:
    md = obj.get("metadata") or {}
    return md.get("namespace") or "default", md.get("name", "")


def pod_scheduled_condition(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == "PodScheduled":
            return c
    return None


def claim_is_bound(pvc: Mapping[str, Any]) -> bool:
    """A claim the PV controller has bound: a volumeName, and bind-completed (or phase Bound)."""
    md, spec = pvc.get("metadata") or {}, pvc.get("spec") or {}
    if not spec.get("volumeName"):
        return False
    return ANN_BIND_COMPLETED in (md.get("annotations") or {}) or (pvc.get("status") or {}).get("phase") == "Bound"


def _rv_int(obj: Mapping[str, Any] | None) -> int | None:
    rv = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    try:
        return int(rv) if rv is not None else None
    except (TypeError, ValueError):
        return None


class ApiCalls:
    """PodBinder + PreemptionActions + VolumeAPI over one ApiClient.

    ``get_pvc(key)`` reads a claim from the informer ("namespace/name"); ``scheduler_name(pod)`` is the profile
    name that reports events about a pod (its spec.schedulerName)."""

    def __init__(self, client: ApiClient, recorder: EventRecorder, *,
                 get_pvc: Callable[[str], Mapping[str, Any] | None] | None = None, max_binding_requests: int = 32
                 ) -> None:
        self.client = client
        self.recorder = recorder
        self.get_pvc = get_pvc
        # Bindings are started as fast as cycles finish; a burst of thousands of simultaneous POSTs would only open
        # as many connections (httpx's pool scans them per request) without the API server answering any sooner.
        self._binding_slots = asyncio.Semaphore(max_binding_requests)
        self._claims_changed: set[asyncio.Event] = set()
        self._selected: dict[str, int | None] = {}  # claim key -> resourceVersion our annotation produced

    # -- PodBinder ----------------------------------------------------------------------------------------------

    async def bind(self, pod: Mapping[str, Any], node_name: str) -> None:
        ns, name = _ns_name(pod)
        md: dict[str, Any] = {"name": name, "namespace": ns}
        uid = (pod.get("metadata") or {}).get("uid")
        if uid:
            md["uid"] = uid
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": md,
                "target": {"apiVersion": "v1", "kind": "Node", "name": node_name}}
        async with self._binding_slots:
            await self.client.create_subresource(PODS, name, "binding", body, ns)

    # -- pod status -------------------------------------------------------------------------------------------

    async def set_pod_condition(self, pod: Mapping[str, Any], status: str, reason: str, message: str) -> bool:
        """Write PodScheduled=<status> with reason and message unless the pod already says exactly that (upstream's
        updatePod skips no-op writes). Returns whether a write happened; a pod gone meanwhile is no error."""
        cur = pod_scheduled_condition(pod)
        if cur is not None and (cur.get("status"), cur.get("reason"), cur.get("message")) == (status, reason, message):
            return False
        cond = {"type": "PodScheduled", "status": status, "reason": reason, "message": message,
                "lastProbeTime": None,
                "lastTransitionTime": cur.get("lastTransitionTime") if cur is not None and cur.get("status") == status
                else _now()}
        ns, name = _ns_name(pod)
        try:
            await self.client.patch(PODS, name, {"status": {"conditions": [cond]}}, ns, patch_type="strategic",
                                    subresource="status")
        except NotFound:
            return False
        return True

    # -- PreemptionActions --------------------------------------------------------------------------------------

    async def evict(self, victim: Mapping[str, Any], preemptor: Mapping[str, Any], node_name: str) -> None:
        """As upstream's PreemptPod: mark the victim DisruptionTarget, delete it gracefully, report Preempted."""
        ns, name = _ns_name(victim)
        scheduler = (preemptor.get("spec") or {}).get("schedulerName") or "default-scheduler"
        cond = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": f"{scheduler}: preempting to accommodate a higher priority pod",
                "lastTransitionTime": _now()}
        uid = (victim.get("metadata") or {}).get("uid")
        try:
            await self.client.patch(PODS, name, {"status": {"conditions": [cond]}}, ns, patch_type="strategic",
                                    subresource="status")
            await self.client.delete(PODS, name, ns, preconditions={"uid": uid} if uid else None)
        except NotFound:
            return
        preemptor_uid = (preemptor.get("metadata") or {}).get("uid", "")
        self.recorder.event(victim, NORMAL, "Preempted", f"Preempted by pod {preemptor_uid} on node {node_name}",
                            action="Preempting", component=scheduler, related=preemptor)

    async def set_nominated_node_name(self, pod: Mapping[str, Any], node_name: str) -> None:
        ns, name = _ns_name(pod)
        try:
            await self.client.patch(PODS, name, {"status": {"nominatedNodeName": node_name or None}}, ns,
                                    subresource="status")
        except NotFound:
            pass

    # -- VolumeAPI ----------------------------------------------------------------------------------------------

    async def bind_volume(self, pv: Mapping[str, Any], pvc: Mapping[str, Any]) -> None:
        """Pre-bind: set the PV's claimRef to the claim; the PV controller completes the binding."""
        pmd = pvc.get("metadata") or {}
        ref = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": pmd.get("namespace") or "default",
               "name": pmd.get("name"), "uid": pmd.get("uid"), "resourceVersion": pmd.get("resourceVersion")}
        name = (pv.get("metadata") or {}).get("name", "")
        await self.client.patch(PERSISTENTVOLUMES, name, {"spec": {"claimRef": {k: v for k, v in ref.items() if v}}})

    async def select_node(self, pvc: Mapping[str, Any], node_name: str) -> None:
        """Ask the claim's provisioner to provision for ``node_name`` (delayed binding)."""
        ns, name = _ns_name(pvc)
        out = await self.client.patch(PERSISTENTVOLUMECLAIMS, name,
                                      {"metadata": {"annotations": {ANN_SELECTED_NODE: node_name}}}, ns)
        self._selected[pvc_key(pvc)] = _rv_int(out)

    def notify_claims_changed(self) -> None:
        for ev in list(self._claims_changed):
            ev.set()

    async def wait_bound(self, pod: Mapping[str, Any], pvcs: list[Mapping[str, Any]], timeout: float) -> None:
        """Return once every claim is bound; raise when a claim is gone, provisioning was given up (the
        selected-node annotation removed, as upstream checks) or ``timeout`` passes."""
        if self.get_pvc is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        changed = asyncio.Event()
        self._claims_changed.add(changed)
        try:
            while True:
                changed.clear()
                pending = []
                for claim in pvcs:
                    key = pvc_key(claim)
                    cur = self.get_pvc(key)
                    if cur is None:
                        raise RuntimeError(f'persistentvolumeclaim "{key}" not found')
                    if claim_is_bound(cur):
                        continue
                    ours = self._selected.get(key)
                    ann = ((cur.get("metadata") or {}).get("annotations") or {})
                    seen = _rv_int(cur)
                    if key in self._selected and ANN_SELECTED_NODE not in ann and \
                            ours is not None and seen is not None and seen > ours:
                        raise RuntimeError(f"selectedNode annotation reset for PVC {key!r}")
                    pending.append(key)
                if not pending:
                    for claim in pvcs:
                        self._selected.pop(pvc_key(claim), None)
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"binding volumes: timed out waiting for claims {', '.join(pending)}")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await changed.wait()
        finally:
            self._claims_changed.discard(changed)
