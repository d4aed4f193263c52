"""The ReplicaSet controller: keep exactly `spec.replicas` active pods matching the selector, as upstream does.

It creates pods from the template (generateName `<rs>-`, a controller ownerReference), adopts orphans that match
and releases pods that stop matching, deletes surplus pods in upstream's preference order (unscheduled, pending,
not ready, cheaper pod-deletion-cost, doubled-up on a node, recently ready, restarting, newer), and reports
replicas / fullyLabeledReplicas / readyReplicas / availableReplicas / observedGeneration. Expectations keep a
burst of creates from being repeated before the pod informer has caught up. Deployments drive it by scaling.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from controlplane.client import ApiClient, Clock, NotFound, SharedInformerFactory
from controlplane.client import errors as api_errors
from controlplane.client.protocol import copy_object
from controlplane.client.resources import PODS, REPLICASETS
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.client.events import EventRecorder
from controlplane.controllers.controller_utils import (
    CONTROLLER_INDEX,
    ControllerRefManager,
    Expectations,
    Obj,
    Timers,
    add_indexes,
    claim_candidates,
    controller_clock,
    controller_ref,
    format_time,
    gather_limited,
    get_controller_of,
    is_pod_active,
    is_pod_available,
    is_pod_ready,
    key_of,
    meta,
    option,
    owners_selecting,
    pod_from_template,
    pods_prefix,
    rank_pods_for_deletion,
    resolve_controller_ref,
    selector_matcher,
)

log = logging.getLogger(__name__)

BURST_REPLICAS = 500  # upstream's --concurrent... burstReplicas: most creates/deletes per sync


class ReplicaSetController:
    name = "replicaset"

    def __init__(self, ctx: ControllerContext | None = None, *, workers: int | None = None,
                 clock: Clock | None = None, burst_replicas: int = BURST_REPLICAS) -> None:
        self.workers = workers or option(ctx, "concurrent_replicaset_syncs", 5)
        self.clock: Clock = controller_clock(ctx, clock)
        self.burst_replicas = burst_replicas
        self.expectations = Expectations()

    # -- wiring -----------------------------------------------------------------------------------------------

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.enqueue = enqueue
        self.timers = Timers(self.clock, enqueue)
        self.events = EventRecorder(client, "replicaset-controller", self.clock)
        self.rs_informer = add_indexes(informers.informer(REPLICASETS))
        self.pod_informer = add_indexes(informers.informer(PODS))
        self.rs_informer.add_handler(on_add=self._rs_changed, on_update=lambda old, new: self._rs_changed(new),
                                     on_delete=self._rs_deleted)
        self.pod_informer.add_handler(on_add=self._pod_added, on_update=self._pod_updated,
                                      on_delete=self._pod_deleted)

    async def shutdown(self) -> None:
        await self.timers.stop()
        await self.events.aclose()

    def _rs_changed(self, rs: Obj) -> None:
        self.enqueue(key_of(rs))

    def _rs_deleted(self, rs: Obj) -> None:
        self.expectations.forget(key_of(rs))
        self.enqueue(key_of(rs))

    def _owner_key(self, pod: Obj) -> str | None:
        rs = resolve_controller_ref(self.rs_informer, pod, "ReplicaSet")
        return key_of(rs) if rs is not None else None

    def _matching_replicasets(self, pod: Obj) -> list[str]:
        return [key_of(rs) for rs in owners_selecting(self.rs_informer, pod)]

    def _pod_added(self, pod: Obj) -> None:
        if meta(pod).get("deletionTimestamp"):
            # Seen for the first time already being deleted (a relist after a restart): count it as deleted.
            self._pod_deleted(pod)
            return
        owner = self._owner_key(pod)
        if owner is not None:
            self.expectations.creation_observed(owner)
            self.enqueue(owner)
        elif get_controller_of(pod) is None:
            for key in self._matching_replicasets(pod):
                self.enqueue(key)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        if meta(new).get("deletionTimestamp") and not meta(old).get("deletionTimestamp"):
            # Graceful deletion started: the pod stops counting now, not when the kubelet finishes it.
            owner = self._owner_key(new)
            if owner is not None:
                self.expectations.deletion_observed(owner, key_of(new))
        old_ref, new_ref = get_controller_of(old), get_controller_of(new)
        if old_ref != new_ref and old_ref is not None:
            old_key = self._owner_key(old)
            if old_key is not None:
                self.enqueue(old_key)
        owner = self._owner_key(new)
        if owner is not None:
            self.enqueue(owner)
            rs = self.rs_informer.get(owner)
            min_ready = ((rs or {}).get("spec") or {}).get("minReadySeconds") or 0
            if min_ready and not is_pod_ready(old) and is_pod_ready(new):
                # The pod becomes available minReadySeconds from now; look again then (+1 s for rounding).
                self.timers.after(owner, min_ready + 1)
            return
        labels_changed = (meta(old).get("labels") or {}) != (meta(new).get("labels") or {})
        if new_ref is None and (labels_changed or old_ref != new_ref):
            for key in self._matching_replicasets(new):
                self.enqueue(key)

    def _pod_deleted(self, pod: Obj) -> None:
        owner = self._owner_key(pod)
        if owner is not None:
            self.expectations.deletion_observed(owner, key_of(pod))
            self.enqueue(owner)

    # -- reconcile --------------------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        rs = self.rs_informer.get(key)
        if rs is None:
            self.expectations.forget(key)
            return DONE
        rs = copy_object(rs)
        needs_sync = self.expectations.satisfied(key)
        spec = rs.get("spec") or {}
        matches = selector_matcher(spec.get("selector"))
        active = [p for p in claim_candidates(self.pod_informer, rs) if is_pod_active(p)]
        manager = ControllerRefManager(self.client, rs, REPLICASETS, matches)
        pods = await manager.claim(PODS, active)

        manage_error: Exception | None = None
        if needs_sync and not meta(rs).get("deletionTimestamp"):
            try:
                await self._manage_replicas(pods, rs)
            except Exception as exc:  # noqa: BLE001 - reported in status, then retried with backoff
                manage_error = exc
        await self._update_status(rs, pods, manage_error)
        if manage_error is not None:
            raise manage_error
        return DONE

    async def _manage_replicas(self, pods: list[Obj], rs: Obj) -> None:
        key = key_of(rs)
        wanted = int((rs.get("spec") or {}).get("replicas", 1) or 0)
        diff = len(pods) - wanted
        if diff < 0:
            count = min(-diff, self.burst_replicas)
            self.expectations.expect_creations(key, count)
            ref = controller_ref(rs, REPLICASETS.api_version, REPLICASETS.kind)
            template = (rs.get("spec") or {}).get("template") or {}
            body = pod_from_template(template, ref, generate_name=pods_prefix(meta(rs)["name"]))
            namespace = meta(rs).get("namespace")

            async def create() -> Obj:
                return await self.client.create(PODS, copy_object(body), namespace)

            created, results = await gather_limited([create] * count)
            skipped = count - created
            if skipped:
                # Pods never created will never be observed: stop waiting for them.
                self.expectations.lower(key, add=skipped)
                error = next(r for r in results if isinstance(r, BaseException))
                self.events.event(rs, "Warning", "FailedCreate", f"Error creating: {error}")
                raise error if isinstance(error, Exception) else RuntimeError(str(error))
            if created:
                self.events.event(rs, "Normal", "SuccessfulCreate",
                                        f"Created {created} pod{'s' if created > 1 else ''}")
        elif diff > 0:
            count = min(diff, self.burst_replicas)
            related = self._related_pods(rs)
            victims = rank_pods_for_deletion(pods, related, self.clock.now())[:count]
            victim_keys = [key_of(p) for p in victims]
            self.expectations.expect_deletions(key, victim_keys)

            async def delete(pod: Obj) -> None:
                try:
                    await self.client.delete(PODS, meta(pod)["name"], meta(pod).get("namespace"),
                                             preconditions={"uid": meta(pod)["uid"]})
                except NotFound:
                    self.expectations.deletion_observed(key, key_of(pod))
                except Exception:
                    self.expectations.deletion_observed(key, key_of(pod))
                    raise

            results = await asyncio.gather(*(delete(p) for p in victims), return_exceptions=True)
            errors = [r for r in results if isinstance(r, Exception)]
            deleted = len(victims) - len(errors)
            if deleted:
                names = ", ".join(meta(p)["name"] for p in victims)
                self.events.event(rs, "Normal", "SuccessfulDelete", f"Deleted pod: {names}"
                                        if deleted == 1 else f"Deleted {deleted} pods: {names}")
            if errors:
                raise errors[0]

    def _related_pods(self, rs: Obj) -> list[Obj]:
        """Pods of every ReplicaSet with the same controller (the Deployment's other revisions), for ranking."""
        owner = get_controller_of(rs)
        if owner is None:
            return self.pod_informer.by_index(CONTROLLER_INDEX, meta(rs)["uid"])
        related: list[Obj] = []
        for other in self.rs_informer.by_index(CONTROLLER_INDEX, owner["uid"]):
            related.extend(self.pod_informer.by_index(CONTROLLER_INDEX, meta(other)["uid"]))
        return related

    async def _update_status(self, rs: Obj, pods: list[Obj], manage_error: Exception | None) -> None:
        spec = rs.get("spec") or {}
        min_ready = int(spec.get("minReadySeconds") or 0)
        now = self.clock.now()
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        fully_labeled = sum(1 for p in pods if all((meta(p).get("labels") or {}).get(k) == v
                                                   for k, v in template_labels.items()))
        ready = sum(1 for p in pods if is_pod_ready(p))
        available = sum(1 for p in pods if is_pod_available(p, min_ready, now))
        status: dict[str, Any] = copy_object(rs.get("status") or {})
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "ReplicaFailure"]
        failure = next((c for c in status.get("conditions") or [] if c.get("type") == "ReplicaFailure"), None)
        if manage_error is not None:
            wanted = int(spec.get("replicas", 1) or 0)
            reason = "FailedCreate" if len(pods) < wanted else "FailedDelete"
            conditions.append(failure or {"type": "ReplicaFailure", "status": "True", "reason": reason,
                                          "message": str(manage_error),
                                          "lastTransitionTime": format_time(now)})
        new_status: dict[str, Any] = {
            "replicas": len(pods),
            "fullyLabeledReplicas": fully_labeled,
            "readyReplicas": ready,
            "availableReplicas": available,
            "observedGeneration": meta(rs).get("generation", 1),
        }
        if conditions:
            new_status["conditions"] = conditions
        # The API omits zero counts; compare what the server would store.
        new_status = {k: v for k, v in new_status.items() if v or k in ("replicas",)}
        if new_status == {k: v for k, v in status.items() if v or k == "replicas"}:
            self._requeue_for_availability(rs, min_ready, ready, available)
            return
        body = {**rs, "status": new_status}
        try:
            await self.client.update_status(REPLICASETS, body)
        except api_errors.Conflict:
            # A newer RS is in flight; its event brings us back with fresh state.
            self.enqueue(key_of(rs))
            return
        except NotFound:
            return
        self._requeue_for_availability(rs, min_ready, ready, available)

    def _requeue_for_availability(self, rs: Obj, min_ready: int, ready: int, available: int) -> None:
        # Ready pods become available minReadySeconds later without any event: look again then.
        if min_ready and ready != available:
            self.timers.after(key_of(rs), min_ready + 1)
