"""The StatefulSet controller: pods with stable identities and storage, as upstream's pkg/controller/statefulset.

Pods are `<set>-<ordinal>` (from spec.ordinals.start), labelled statefulset.kubernetes.io/pod-name and
apps.kubernetes.io/pod-index, with hostname/subdomain from serviceName and a PVC `<template>-<set>-<ordinal>` per
volumeClaimTemplate. OrderedReady creates in ordinal order, each only once its predecessors are Running and Ready
(and available for minReadySeconds), and removes in reverse; Parallel does both at once. Templates are recorded as
ControllerRevisions; pods carry their revision's name in `controller-revision-hash`, and status reports
currentRevision/updateRevision. RollingUpdate replaces pods from the highest ordinal down to the partition, one at a
time, waiting for each to be healthy; OnDelete replaces only pods a user deletes. persistentVolumeClaimRetentionPolicy
is applied through ownerReferences on the claims (to the set for whenDeleted, to the pod once it is scaled away for
whenScaled), so the garbage collector does the deleting.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from controlplane.client import ApiClient, Clock, NotFound, SharedInformerFactory
from controlplane.client import errors as api_errors
from controlplane.client.protocol import copy_object
from controlplane.client.resources import (
    CONTROLLERREVISIONS,
    PERSISTENTVOLUMECLAIMS,
    PODS,
    STATEFULSETS,
)
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.client.events import EventRecorder
from controlplane.controllers.controller_utils import (
    CONTROLLER_REVISION_HASH_LABEL,
    ControllerRefManager,
    Obj,
    Timers,
    add_indexes,
    claim_candidates,
    controller_clock,
    controller_ref,
    create_controller_revision,
    equal_revision,
    get_controller_of,
    is_pod_available,
    is_pod_ready,
    key_of,
    meta,
    new_controller_revision,
    option,
    owners_selecting,
    pod_from_template,
    pod_phase,
    resolve_controller_ref,
    revision_number,
    selector_matcher,
    semantic,
    sort_revisions,
)

log = logging.getLogger(__name__)

POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
_NAME_RE = re.compile(r"^(.*)-([0-9]+)$")


# ------------------------------------------------------------------------------------------------ identity


def parent_and_ordinal(pod: Obj) -> tuple[str, int]:
    m = _NAME_RE.match(meta(pod).get("name", ""))
    if not m:
        return "", -1
    return m.group(1), int(m.group(2))


def ordinal_of(pod: Obj) -> int:
    return parent_and_ordinal(pod)[1]


def is_member_of(sts: Obj, pod: Obj) -> bool:
    return parent_and_ordinal(pod)[0] == meta(sts)["name"]


def start_ordinal(sts: Obj) -> int:
    return int(((sts.get("spec") or {}).get("ordinals") or {}).get("start") or 0)


def end_ordinal(sts: Obj) -> int:
    return start_ordinal(sts) + replicas_of(sts) - 1


def replicas_of(sts: Obj) -> int:
    value = (sts.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def in_ordinal_range(pod: Obj, sts: Obj) -> bool:
    return start_ordinal(sts) <= ordinal_of(pod) <= end_ordinal(sts)


def pod_name(sts: Obj, ordinal: int) -> str:
    return f"{meta(sts)['name']}-{ordinal}"


def claim_name(template: Obj, sts: Obj, ordinal: int) -> str:
    return f"{meta(template)['name']}-{meta(sts)['name']}-{ordinal}"


def claim_templates(sts: Obj) -> list[Obj]:
    return list((sts.get("spec") or {}).get("volumeClaimTemplates") or [])


def retention_policy(sts: Obj) -> tuple[str, str]:
    policy = (sts.get("spec") or {}).get("persistentVolumeClaimRetentionPolicy") or {}
    return policy.get("whenDeleted") or "Retain", policy.get("whenScaled") or "Retain"


def update_identity(sts: Obj, pod: Obj) -> None:
    ordinal = ordinal_of(pod)
    m = pod.setdefault("metadata", {})
    m["name"] = pod_name(sts, ordinal)
    m["namespace"] = meta(sts).get("namespace")
    labels = m.setdefault("labels", {})
    labels[POD_NAME_LABEL] = m["name"]
    labels[POD_INDEX_LABEL] = str(ordinal)
    service = (sts.get("spec") or {}).get("serviceName")
    if service:
        spec = pod.setdefault("spec", {})
        spec["hostname"] = m["name"]
        spec["subdomain"] = service


def identity_matches(sts: Obj, pod: Obj) -> bool:
    parent, ordinal = parent_and_ordinal(pod)
    labels = meta(pod).get("labels") or {}
    return (ordinal >= 0 and parent == meta(sts)["name"] and meta(pod).get("name") == pod_name(sts, ordinal)
            and meta(pod).get("namespace") == meta(sts).get("namespace")
            and labels.get(POD_NAME_LABEL) == meta(pod).get("name")
            and labels.get(POD_INDEX_LABEL) == str(ordinal))


def update_storage(sts: Obj, pod: Obj) -> None:
    ordinal = ordinal_of(pod)
    spec = pod.setdefault("spec", {})
    volumes = [v for v in spec.get("volumes") or []]
    names = {meta(t)["name"] for t in claim_templates(sts)}
    kept = [v for v in volumes if v.get("name") not in names]
    claims = [{"name": meta(t)["name"], "persistentVolumeClaim": {"claimName": claim_name(t, sts, ordinal)}}
              for t in claim_templates(sts)]
    spec["volumes"] = claims + kept if claims else kept
    if not spec["volumes"]:
        del spec["volumes"]


def storage_matches(sts: Obj, pod: Obj) -> bool:
    ordinal = ordinal_of(pod)
    if ordinal < 0:
        return False
    volumes = {v.get("name"): v for v in (pod.get("spec") or {}).get("volumes") or []}
    for t in claim_templates(sts):
        v = volumes.get(meta(t)["name"])
        if v is None or (v.get("persistentVolumeClaim") or {}).get("claimName") != claim_name(t, sts, ordinal):
            return False
    return True


def pod_revision(pod: Obj) -> str:
    return (meta(pod).get("labels") or {}).get(CONTROLLER_REVISION_HASH_LABEL, "")


def is_created(pod: Obj) -> bool:
    """A pod from the cache has a phase; one we only built does not."""
    return bool(pod_phase(pod))


def is_terminating(pod: Obj) -> bool:
    return bool(meta(pod).get("deletionTimestamp"))


def is_running_and_ready(pod: Obj) -> bool:
    return pod_phase(pod) == "Running" and is_pod_ready(pod)


def is_healthy(pod: Obj) -> bool:
    return is_running_and_ready(pod) and not is_terminating(pod)


# ------------------------------------------------------------------------------------------------ revisions


def revision_data(sts: Obj) -> Obj:
    """getPatch: the part of the set a revision records — the template, to be applied with $patch: replace."""
    template = semantic(copy_object((sts.get("spec") or {}).get("template") or {}))
    template["$patch"] = "replace"
    return {"spec": {"template": template}}


def apply_revision(sts: Obj, revision: Obj) -> Obj:
    """ApplyRevision: the set as it was at that revision (its template)."""
    out = copy_object(sts)
    template = copy_object(((revision.get("data") or {}).get("spec") or {}).get("template") or {})
    template.pop("$patch", None)
    out.setdefault("spec", {})["template"] = template
    return out


class StatefulSetController:
    name = "statefulset"

    def __init__(self, ctx: ControllerContext | None = None, *, workers: int | None = None,
                 clock: Clock | None = None) -> None:
        self.workers = workers or option(ctx, "concurrent_statefulset_syncs", 5)
        self.clock: Clock = controller_clock(ctx, clock)

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.enqueue = enqueue
        self.timers = Timers(self.clock, enqueue)
        self.events = EventRecorder(client, "statefulset-controller", self.clock)
        self.sts_informer = add_indexes(informers.informer(STATEFULSETS))
        self.pod_informer = add_indexes(informers.informer(PODS))
        self.rev_informer = add_indexes(informers.informer(CONTROLLERREVISIONS))
        self.pvc_informer = informers.informer(PERSISTENTVOLUMECLAIMS)
        self.sts_informer.add_handler(on_add=lambda s: enqueue(key_of(s)), on_update=lambda o, n: enqueue(key_of(n)),
                                      on_delete=lambda s: enqueue(key_of(s)))
        self.pod_informer.add_handler(on_add=self._pod_event, on_update=self._pod_updated, on_delete=self._pod_event)

    async def shutdown(self) -> None:
        await self.timers.stop()
        await self.events.aclose()

    def _owner_key(self, pod: Obj) -> str | None:
        sts = resolve_controller_ref(self.sts_informer, pod, "StatefulSet")
        return key_of(sts) if sts is not None else None

    def _pod_event(self, pod: Obj) -> None:
        owner = self._owner_key(pod)
        if owner is not None:
            self.enqueue(owner)
            return
        if get_controller_of(pod) is None:
            for sts in owners_selecting(self.sts_informer, pod):
                self.enqueue(key_of(sts))

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        if get_controller_of(old) != get_controller_of(new):
            self._pod_event(old)
        self._pod_event(new)

    # -- reconcile --------------------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        cached = self.sts_informer.get(key)
        if cached is None:
            return DONE
        sts = copy_object(cached)
        matches = selector_matcher((sts.get("spec") or {}).get("selector"))
        revisions = await ControllerRefManager(self.client, sts, STATEFULSETS, matches).claim(
            CONTROLLERREVISIONS, claim_candidates(self.rev_informer, sts))
        manager = ControllerRefManager(self.client, sts, STATEFULSETS, matches, lambda p: is_member_of(sts, p))
        pods = await manager.claim(PODS, claim_candidates(self.pod_informer, sts))
        revisions = sort_revisions([copy_object(r) for r in revisions])
        current, update, collision = await self._revisions(sts, revisions)
        status: Obj | None = None
        error: Exception | None = None
        try:
            status = await self._update_statefulset(sts, current, update, collision, pods)
        except Exception as exc:  # noqa: BLE001 - status is still written, then the error retries the key
            error = exc
        if status is not None:
            await self._update_status(sts, status)
        await self._truncate_history(sts, pods, revisions, current, update)
        min_ready = int((sts.get("spec") or {}).get("minReadySeconds") or 0)
        if min_ready and status is not None and int(status.get("availableReplicas") or 0) != replicas_of(sts):
            self.timers.after(key, min_ready + 1)
        if error is not None:
            raise error
        return DONE

    async def _revisions(self, sts: Obj, revisions: list[Obj]) -> tuple[Obj, Obj, int]:
        collision = int((sts.get("status") or {}).get("collisionCount") or 0)
        next_number = revision_number(revisions[-1]) + 1 if revisions else 1
        labels = ((sts.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
        data = revision_data(sts)
        candidate = new_controller_revision(sts, STATEFULSETS.api_version, STATEFULSETS.kind, labels, data,
                                            next_number, collision)
        equal = [r for r in revisions if equal_revision(r, candidate)]
        if equal and revisions and equal_revision(revisions[-1], equal[-1]):
            update = revisions[-1]
        elif equal:
            # The template went back to an earlier revision: that revision becomes the newest again.
            update = await self.client.patch(CONTROLLERREVISIONS, meta(equal[-1])["name"],
                                             {"revision": next_number}, meta(equal[-1]).get("namespace"))
        else:
            update, collision = await create_controller_revision(self.client, sts, STATEFULSETS.api_version,
                                                                 STATEFULSETS.kind, labels, data, next_number,
                                                                 collision)
        current_name = (sts.get("status") or {}).get("currentRevision")
        current = next((r for r in revisions if meta(r)["name"] == current_name), None) or update
        return current, update, collision

    def _new_pod(self, sts: Obj, ordinal: int) -> Obj:
        template = (sts.get("spec") or {}).get("template") or {}
        pod = pod_from_template(template, controller_ref(sts, STATEFULSETS.api_version, STATEFULSETS.kind),
                                name=pod_name(sts, ordinal))
        pod["metadata"]["namespace"] = meta(sts).get("namespace")
        update_identity(sts, pod)
        update_storage(sts, pod)
        return pod

    def _new_versioned_pod(self, current_set: Obj, update_set: Obj, current: Obj, update: Obj, ordinal: int) -> Obj:
        strategy = (current_set.get("spec") or {}).get("updateStrategy") or {}
        rolling = strategy.get("rollingUpdate")
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            if rolling is None:
                use_current = ordinal < start_ordinal(current_set) + int(
                    (current_set.get("status") or {}).get("currentReplicas") or 0)
            else:
                use_current = ordinal < start_ordinal(current_set) + int(rolling.get("partition") or 0)
            if use_current:
                pod = self._new_pod(current_set, ordinal)
                pod["metadata"]["labels"][CONTROLLER_REVISION_HASH_LABEL] = meta(current)["name"]
                return pod
        pod = self._new_pod(update_set, ordinal)
        pod["metadata"]["labels"][CONTROLLER_REVISION_HASH_LABEL] = meta(update)["name"]
        return pod

    def _compute_status(self, sts: Obj, current: Obj, update: Obj, collision: int, pods: list[Obj]) -> Obj:
        min_ready = int((sts.get("spec") or {}).get("minReadySeconds") or 0)
        now = self.clock.now()
        status: Obj = {"observedGeneration": meta(sts).get("generation", 1), "currentRevision": meta(current)["name"],
                       "updateRevision": meta(update)["name"], "collisionCount": collision, "replicas": 0,
                       "readyReplicas": 0, "availableReplicas": 0, "currentReplicas": 0, "updatedReplicas": 0}
        for pod in pods:
            if not is_created(pod):
                continue
            status["replicas"] += 1
            if is_running_and_ready(pod):
                status["readyReplicas"] += 1
                if is_pod_available(pod, min_ready, now):
                    status["availableReplicas"] += 1
            if not is_terminating(pod):
                if pod_revision(pod) == meta(current)["name"]:
                    status["currentReplicas"] += 1
                if pod_revision(pod) == meta(update)["name"]:
                    status["updatedReplicas"] += 1
        return status

    async def _update_statefulset(self, sts: Obj, current: Obj, update: Obj, collision: int,
                                  pods: list[Obj]) -> Obj:
        current_set = apply_revision(sts, current)
        update_set = apply_revision(sts, update)
        status = self._compute_status(sts, current, update, collision, pods)
        count = replicas_of(sts)
        replicas: list[Obj | None] = [None] * count
        condemned: list[Obj] = []
        for pod in pods:
            ordinal = ordinal_of(pod)
            if in_ordinal_range(pod, sts):
                replicas[ordinal - start_ordinal(sts)] = pod
            elif ordinal >= 0:
                condemned.append(pod)
        for i in range(count):
            if replicas[i] is None:
                replicas[i] = self._new_versioned_pod(current_set, update_set, current, update,
                                                      start_ordinal(sts) + i)
        live: list[Obj] = [p for p in replicas if p is not None]
        condemned.sort(key=ordinal_of, reverse=True)
        first_unhealthy: Obj | None = None
        for pod in live:
            if not is_healthy(pod):
                first_unhealthy = first_unhealthy or pod
        for pod in reversed(condemned):
            if not is_healthy(pod):
                first_unhealthy = first_unhealthy or pod
        if meta(sts).get("deletionTimestamp"):
            return status
        monotonic = ((sts.get("spec") or {}).get("podManagementPolicy") or "OrderedReady") != "Parallel"
        min_ready = int((sts.get("spec") or {}).get("minReadySeconds") or 0)

        def recompute() -> Obj:
            return self._compute_status(sts, current, update, collision, [*live, *condemned])

        if await self._run_for_all(live, lambda i: self._process_replica(sts, update_set, monotonic, live, i,
                                                                        min_ready), monotonic):
            return recompute()
        if await self._run_for_all(condemned, lambda i: self._fix_condemned_claims(update_set, condemned[i]),
                                   monotonic):
            return recompute()
        if await self._run_for_all(condemned, lambda i: self._process_condemned(sts, first_unhealthy, monotonic,
                                                                               condemned, i, min_ready), monotonic):
            return recompute()
        status = recompute()
        strategy = (sts.get("spec") or {}).get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") == "OnDelete":
            return status
        partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0)
        update_min = partition
        for target in range(len(live) - 1, update_min - 1, -1):
            pod = live[target]
            if pod_revision(pod) != meta(update)["name"] and not is_terminating(pod):
                # Highest ordinal first; one at a time, waiting for health in between.
                await self._delete_pod(sts, pod)
                status["currentReplicas"] -= 1
                return status
            if not is_healthy(pod):
                return status
        return status

    async def _run_for_all(self, pods: list[Obj], fn: Any, monotonic: bool) -> bool:
        """runForAll: in order, stopping at the first that asks to (OrderedReady), or all at once (Parallel).
        True means "stop this sync here"."""
        if monotonic:
            for i in range(len(pods)):
                if await fn(i):
                    return True
            return False
        results = await asyncio.gather(*(fn(i) for i in range(len(pods))), return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]
        return False

    async def _process_replica(self, sts: Obj, update_set: Obj, monotonic: bool, replicas: list[Obj], i: int,
                               min_ready: int) -> bool:
        pod = replicas[i]
        phase = pod_phase(pod)
        if phase in ("Failed", "Succeeded"):
            # A pod that stopped is recreated under the same name once it is gone.
            if not is_terminating(pod):
                await self._delete_pod(sts, pod)
            return True
        if not is_created(pod):
            if await self._claims_stale(sts, pod):
                return True
            await self._create_pod(sts, pod)
            return monotonic
        if phase == "Pending":
            await self._create_claims(sts, pod)
        if is_terminating(pod) and monotonic:
            return True
        if not is_running_and_ready(pod) and monotonic:
            return True
        if not (is_running_and_ready(pod) and is_pod_available(pod, min_ready, self.clock.now())) and monotonic:
            return True
        claims_ok = await self._claims_match_retention(update_set, pod)
        if identity_matches(sts, pod) and storage_matches(sts, pod) and claims_ok:
            return False
        await self._update_pod(update_set, copy_object(pod))
        return False

    async def _process_condemned(self, sts: Obj, first_unhealthy: Obj | None, monotonic: bool,
                                 condemned: list[Obj], i: int, min_ready: int) -> bool:
        pod = condemned[i]
        if is_terminating(pod):
            return monotonic
        if monotonic and pod is not first_unhealthy and (
                not is_running_and_ready(pod) or not is_pod_available(pod, min_ready, self.clock.now())):
            return True
        await self._delete_pod(sts, pod)
        return True

    # -- pods and claims --------------------------------------------------------------------------------------

    async def _create_pod(self, sts: Obj, pod: Obj) -> None:
        await self._create_claims(sts, pod)
        try:
            await self.client.create(PODS, pod, meta(sts).get("namespace"))
        except api_errors.AlreadyExists:
            return  # our cache is behind; the next sync sees it
        self.events.event(sts, "Normal", "SuccessfulCreate",
                                f"create Pod {meta(pod)['name']} in StatefulSet {meta(sts)['name']} successful")

    async def _delete_pod(self, sts: Obj, pod: Obj) -> None:
        try:
            await self.client.delete(PODS, meta(pod)["name"], meta(pod).get("namespace"),
                                     preconditions={"uid": meta(pod)["uid"]})
        except NotFound:
            return
        self.events.event(sts, "Normal", "SuccessfulDelete",
                                f"delete Pod {meta(pod)['name']} in StatefulSet {meta(sts)['name']} successful")

    async def _update_pod(self, update_set: Obj, pod: Obj) -> None:
        if not identity_matches(update_set, pod):
            update_identity(update_set, pod)
        if not storage_matches(update_set, pod):
            update_storage(update_set, pod)
            await self._create_claims(update_set, pod)
        if not await self._claims_match_retention(update_set, pod):
            await self._fix_claims(update_set, pod)
        try:
            await self.client.update(PODS, pod)
        except NotFound:
            pass

    def _claims_for(self, sts: Obj, pod: Obj) -> list[Obj]:
        ordinal = ordinal_of(pod)
        match_labels = ((sts.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        claims = []
        for template in claim_templates(sts):
            claim = copy_object(template)
            cm = claim.setdefault("metadata", {})
            cm["name"] = claim_name(template, sts, ordinal)
            cm["namespace"] = meta(sts).get("namespace")
            cm["labels"] = {**(cm.get("labels") or {}), **match_labels}
            claim.pop("status", None)
            claim["apiVersion"], claim["kind"] = "v1", "PersistentVolumeClaim"
            claims.append(claim)
        return claims

    async def _get_claim(self, name: str, namespace: str | None) -> Obj | None:
        cached = self.pvc_informer.get(f"{namespace}/{name}")
        if cached is not None:
            return cached
        try:
            return await self.client.get(PERSISTENTVOLUMECLAIMS, name, namespace)
        except NotFound:
            return None

    async def _create_claims(self, sts: Obj, pod: Obj) -> None:
        for claim in self._claims_for(sts, pod):
            cm = claim["metadata"]
            existing = await self._get_claim(cm["name"], cm["namespace"])
            if existing is None:
                _set_claim_owners(claim, sts, pod)
                try:
                    await self.client.create(PERSISTENTVOLUMECLAIMS, claim, cm["namespace"])
                except api_errors.AlreadyExists:
                    continue
                self.events.event(sts, "Normal", "SuccessfulCreate",
                                        f"create Claim {cm['name']} Pod {meta(pod)['name']} in StatefulSet "
                                        f"{meta(sts)['name']} success")
            elif meta(existing).get("deletionTimestamp"):
                raise RuntimeError(f"pvc {cm['name']} is being deleted")

    async def _claims_stale(self, sts: Obj, pod: Obj) -> bool:
        """PodClaimIsStale: a claim still being deleted (from a scale-down) must go before the pod comes back."""
        for claim in self._claims_for(sts, pod):
            existing = await self._get_claim(meta(claim)["name"], meta(claim).get("namespace"))
            if existing is not None and meta(existing).get("deletionTimestamp"):
                return True
        return False

    async def _claims_match_retention(self, sts: Obj, pod: Obj) -> bool:
        for claim in self._claims_for(sts, pod):
            existing = await self._get_claim(meta(claim)["name"], meta(claim).get("namespace"))
            if existing is None:
                continue
            wanted = copy_object(existing)
            if _set_claim_owners(wanted, sts, pod):
                return False
        return True

    async def _fix_claims(self, sts: Obj, pod: Obj) -> None:
        for claim in self._claims_for(sts, pod):
            existing = await self._get_claim(meta(claim)["name"], meta(claim).get("namespace"))
            if existing is None:
                continue
            wanted = copy_object(existing)
            if _set_claim_owners(wanted, sts, pod):
                try:
                    await self.client.update(PERSISTENTVOLUMECLAIMS, wanted)
                except NotFound:
                    pass

    async def _fix_condemned_claims(self, update_set: Obj, pod: Obj) -> bool:
        if not await self._claims_match_retention(update_set, pod):
            await self._fix_claims(update_set, pod)
        return False

    # -- status and history -----------------------------------------------------------------------------------

    async def _update_status(self, sts: Obj, status: Obj) -> None:
        strategy = ((sts.get("spec") or {}).get("updateStrategy") or {}).get("type", "RollingUpdate")
        if (strategy == "RollingUpdate" and status["updatedReplicas"] == status["replicas"]
                and status["readyReplicas"] == status["replicas"]):
            # completeRollingUpdate: everything runs the update revision, which is now the current one.
            status["currentReplicas"] = status["updatedReplicas"]
            status["currentRevision"] = status["updateRevision"]
        old = sts.get("status") or {}
        keep = {k: v for k, v in old.items() if k == "conditions"}
        new_status = {**keep, **status}
        if _norm(old) == _norm(new_status):
            return
        try:
            await self.client.update_status(STATEFULSETS, {**sts, "status": new_status})
        except api_errors.Conflict:
            self.enqueue(key_of(sts))
        except NotFound:
            pass

    async def _truncate_history(self, sts: Obj, pods: list[Obj], revisions: list[Obj], current: Obj,
                                update: Obj) -> None:
        live = {meta(current)["name"], meta(update)["name"], *(pod_revision(p) for p in pods)}
        history = [r for r in revisions if meta(r)["name"] not in live]
        limit = int((sts.get("spec") or {}).get("revisionHistoryLimit", 10) or 0)
        for rev in history[:max(0, len(history) - limit)]:
            try:
                await self.client.delete(CONTROLLERREVISIONS, meta(rev)["name"], meta(rev).get("namespace"))
            except NotFound:
                pass


def _has_owner(claim: Obj, owner: Obj) -> bool:
    return any(r.get("uid") == meta(owner).get("uid") for r in meta(claim).get("ownerReferences") or [])


def _set_owner(claim: Obj, owner: Obj, api_version: str, kind: str) -> bool:
    if _has_owner(claim, owner):
        return False
    refs = meta(claim).setdefault("ownerReferences", [])
    refs.append({"apiVersion": api_version, "kind": kind, "name": meta(owner)["name"], "uid": meta(owner)["uid"]})
    return True


def _remove_owner(claim: Obj, owner: Obj) -> bool:
    if not _has_owner(claim, owner):
        return False
    m = meta(claim)
    m["ownerReferences"] = [r for r in m.get("ownerReferences") or [] if r.get("uid") != meta(owner).get("uid")]
    if not m["ownerReferences"]:
        del m["ownerReferences"]
    return True


def _set_claim_owners(claim: Obj, sts: Obj, pod: Obj) -> bool:
    """updateClaimOwnerRefForSetAndPod: the ownerReferences the retention policy asks for. True if changed.

    whenDeleted=Delete: the set owns the claim (deleting the set deletes it). whenScaled=Delete: a pod beyond the
    replica count owns its claim (deleting the pod on scale-down deletes it). Retain: neither.
    """
    when_deleted, when_scaled = retention_policy(sts)
    scaled_down = not in_ordinal_range(pod, sts)
    pod_known = bool(meta(pod).get("uid"))  # a pod not yet created cannot own anything
    changed = False
    if when_deleted == "Delete" and not (when_scaled == "Delete" and scaled_down):
        changed |= _set_owner(claim, sts, STATEFULSETS.api_version, STATEFULSETS.kind)
    else:
        changed |= _remove_owner(claim, sts)
    if when_scaled == "Delete" and scaled_down and pod_known:
        changed |= _set_owner(claim, pod, "v1", "Pod")
    elif pod_known:
        changed |= _remove_owner(claim, pod)
    return changed


def _norm(status: Obj) -> Obj:
    return {k: v for k, v in status.items() if v not in (None, 0, "", [], {})}
