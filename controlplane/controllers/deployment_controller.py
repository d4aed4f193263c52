"""The Deployment controller: rolls a pod template out through ReplicaSets, as upstream's pkg/controller/deployment.

Each template gets a ReplicaSet `<deployment>-<pod-template-hash>` labelled with that hash; the controller scales the
new one up and the old ones down within maxSurge / maxUnavailable (RollingUpdate: surge rounds up, unavailability
down, both zero means one unavailable) or all old ones to zero first (Recreate), scales proportionally when the
Deployment is resized mid-rollout, numbers revisions in `deployment.kubernetes.io/revision` (a rollback — `kubectl
rollout undo` patches an old template back — moves that ReplicaSet to the newest revision and records its history),
deletes old ReplicaSets beyond revisionHistoryLimit, honours spec.paused, and keeps the Progressing / Available
conditions and progressDeadlineSeconds the way `kubectl rollout status` reads them.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence

from controlplane.client import (
    ApiClient,
    Clock,
    Conflict,
    NotFound,
    SharedInformerFactory,
)
from controlplane.client import errors as api_errors
from controlplane.client.protocol import copy_object
from controlplane.client.resources import DEPLOYMENTS, PODS, REPLICASETS
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.client.events import EventRecorder
from controlplane.controllers.controller_utils import (
    CONTROLLER_INDEX,
    POD_TEMPLATE_HASH_LABEL,
    ControllerRefManager,
    Obj,
    Timers,
    add_indexes,
    claim_candidates,
    compute_hash,
    controller_clock,
    controller_ref,
    format_time,
    get_controller_of,
    is_empty_selector,
    key_of,
    meta,
    option,
    owners_selecting,
    parse_time,
    resolve_controller_ref,
    scaled_value,
    selector_matcher,
    template_equal_ignore_hash,
)

log = logging.getLogger(__name__)

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
REVISION_HISTORY_ANNOTATION = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS_ANNOTATION = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS_ANNOTATION = "deployment.kubernetes.io/max-replicas"
# Deployment annotations that are not copied to its ReplicaSets (deploymentutil's annotationsToSkip).
SKIP_COPY_ANNOTATIONS = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration", REVISION_ANNOTATION, REVISION_HISTORY_ANNOTATION,
    DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION, "deprecated.deployment.rollback.to",
})
MAX_REV_HISTORY_CHARS = 2000
MAX_INT32 = 2**31 - 1

# Condition reasons (deploymentutil).
NEW_RS_REASON = "NewReplicaSetCreated"
FOUND_NEW_RS_REASON = "FoundNewReplicaSet"
RS_UPDATED_REASON = "ReplicaSetUpdated"
NEW_RS_AVAILABLE_REASON = "NewReplicaSetAvailable"
TIMED_OUT_REASON = "ProgressDeadlineExceeded"
FAILED_RS_CREATE_REASON = "ReplicaSetCreateError"
PAUSED_REASON = "DeploymentPaused"
RESUMED_REASON = "DeploymentResumed"
MIN_AVAILABLE_REASON = "MinimumReplicasAvailable"
MIN_UNAVAILABLE_REASON = "MinimumReplicasUnavailable"


# ------------------------------------------------------------------------------------------- deploymentutil


def _replicas(obj: Obj) -> int:
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def _status(obj: Obj, field: str) -> int:
    return int((obj.get("status") or {}).get(field) or 0)


def _annotations(obj: Obj) -> dict[str, str]:
    return meta(obj).get("annotations") or {}


def revision_of(obj: Obj) -> int:
    try:
        return int(_annotations(obj).get(REVISION_ANNOTATION, "0") or 0)
    except ValueError:
        return 0


def is_rolling_update(d: Obj) -> bool:
    return ((d.get("spec") or {}).get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"


def resolve_fenceposts(d: Obj) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as absolute numbers: surge rounds up, unavailable down; never both zero."""
    rolling = ((d.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
    desired = _replicas(d)
    surge = scaled_value(rolling.get("maxSurge"), desired, True, "25%")
    unavailable = scaled_value(rolling.get("maxUnavailable"), desired, False, "25%")
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_surge(d: Obj) -> int:
    return resolve_fenceposts(d)[0] if is_rolling_update(d) else 0


def max_unavailable(d: Obj) -> int:
    if not is_rolling_update(d) or _replicas(d) == 0:
        return 0
    return min(resolve_fenceposts(d)[1], _replicas(d))


def _created_key(rs: Obj) -> tuple[float, str]:
    return (parse_time(meta(rs).get("creationTimestamp")) or 0.0, meta(rs).get("name", ""))


def by_creation(rss: list[Obj], newest_first: bool = False) -> list[Obj]:
    return sorted(rss, key=_created_key, reverse=newest_first)


def active(rss: Sequence[Obj | None]) -> list[Obj]:
    return [rs for rs in rss if rs is not None and _replicas(rs) > 0]


def replica_count(rss: Sequence[Obj | None]) -> int:
    return sum(_replicas(rs) for rs in rss if rs is not None)


def actual_count(rss: Sequence[Obj | None], field: str = "replicas") -> int:
    return sum(_status(rs, field) for rs in rss if rs is not None)


def find_new_replicaset(d: Obj, rss: list[Obj]) -> Obj | None:
    template = (d.get("spec") or {}).get("template")
    for rs in by_creation(rss):
        if template_equal_ignore_hash((rs.get("spec") or {}).get("template"), template):
            # Several may match (a hash collision made a second one); the oldest wins, as upstream.
            return rs
    return None


def deployment_complete(d: Obj, status: Obj) -> bool:
    n = _replicas(d)
    return (int(status.get("updatedReplicas") or 0) == n and int(status.get("replicas") or 0) == n
            and int(status.get("availableReplicas") or 0) == n
            and int(status.get("observedGeneration") or 0) >= int(meta(d).get("generation") or 1))


def deployment_progressing(d: Obj, new: Obj) -> bool:
    old = d.get("status") or {}

    def g(s: Obj, f: str) -> int:
        return int(s.get(f) or 0)

    old_old = g(old, "replicas") - g(old, "updatedReplicas")
    new_old = g(new, "replicas") - g(new, "updatedReplicas")
    return (g(new, "updatedReplicas") > g(old, "updatedReplicas") or new_old < old_old
            or g(new, "readyReplicas") > g(old, "readyReplicas")
            or g(new, "availableReplicas") > g(old, "availableReplicas"))


def has_progress_deadline(d: Obj) -> bool:
    pds = (d.get("spec") or {}).get("progressDeadlineSeconds")
    return pds is not None and int(pds) != MAX_INT32


def get_condition(status: Obj, ctype: str) -> Obj | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def new_condition(ctype: str, status: str, reason: str, message: str, now: str) -> Obj:
    return {"type": ctype, "status": status, "lastUpdateTime": now, "lastTransitionTime": now, "reason": reason,
            "message": message}


def set_deployment_condition(status: Obj, cond: Obj) -> None:
    """deploymentutil.SetDeploymentCondition: same status and reason is a no-op; same status keeps the
    transition time."""
    current = get_condition(status, cond["type"])
    if current is not None and current.get("status") == cond["status"] and current.get("reason") == cond["reason"]:
        return
    if current is not None and current.get("status") == cond["status"]:
        cond["lastTransitionTime"] = current.get("lastTransitionTime")
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != cond["type"]] + [cond]


def remove_condition(status: Obj, ctype: str) -> None:
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != ctype]


def replicas_annotations_need_update(rs: Obj, desired: int, max_replicas: int) -> bool:
    ann = _annotations(rs)
    return ann.get(DESIRED_REPLICAS_ANNOTATION) != str(desired) or ann.get(MAX_REPLICAS_ANNOTATION) != str(max_replicas)


def set_replicas_annotations(rs: Obj, desired: int, max_replicas: int) -> bool:
    ann = meta(rs).setdefault("annotations", {})
    changed = False
    for key, value in ((DESIRED_REPLICAS_ANNOTATION, str(desired)), (MAX_REPLICAS_ANNOTATION, str(max_replicas))):
        if ann.get(key) != value:
            ann[key] = value
            changed = True
    return changed


def _int_annotation(rs: Obj, key: str) -> int | None:
    try:
        return int(_annotations(rs)[key])
    except (KeyError, ValueError):
        return None


def set_new_replicaset_annotations(d: Obj, rs: Obj, new_revision: str, exists: bool) -> bool:
    """deploymentutil.SetNewReplicaSetAnnotations: copy the Deployment's annotations, bump the revision (keeping
    the old number in revision-history when an old ReplicaSet comes back by rollback)."""
    ann = meta(rs).setdefault("annotations", {})
    changed = False
    for k, v in _annotations(d).items():
        if k in SKIP_COPY_ANNOTATIONS:
            continue
        if ann.get(k) != v:
            ann[k] = v
            changed = True
    old_text = ann.get(REVISION_ANNOTATION)
    try:
        old_rev = int(old_text) if old_text else 0
    except ValueError:
        return changed
    new_rev = int(new_revision)
    if old_rev < new_rev:
        ann[REVISION_ANNOTATION] = new_revision
        changed = True
        if old_text:
            history = [h for h in (ann.get(REVISION_HISTORY_ANNOTATION) or "").split(",") if h]
            history.append(old_text)
            while history and len(",".join(history)) > MAX_REV_HISTORY_CHARS:
                history.pop(0)
            ann[REVISION_HISTORY_ANNOTATION] = ",".join(history)
    if not exists and set_replicas_annotations(rs, _replicas(d), _replicas(d) + max_surge(d)):
        changed = True
    return changed


# ------------------------------------------------------------------------------------------------ controller


class DeploymentController:
    name = "deployment"

    def __init__(self, ctx: ControllerContext | None = None, *, workers: int | None = None,
                 clock: Clock | None = None) -> None:
        self.workers = workers or option(ctx, "concurrent_deployment_syncs", 5)
        self.clock: Clock = controller_clock(ctx, clock)

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.enqueue = enqueue
        self.timers = Timers(self.clock, enqueue)
        self.events = EventRecorder(client, "deployment-controller", self.clock)
        self.d_informer = add_indexes(informers.informer(DEPLOYMENTS))
        self.rs_informer = add_indexes(informers.informer(REPLICASETS))
        self.pod_informer = add_indexes(informers.informer(PODS))
        self.d_informer.add_handler(on_add=lambda d: enqueue(key_of(d)), on_update=lambda o, n: enqueue(key_of(n)),
                                    on_delete=lambda d: enqueue(key_of(d)))
        self.rs_informer.add_handler(on_add=self._rs_added, on_update=self._rs_updated, on_delete=self._rs_deleted)
        self.pod_informer.add_handler(on_delete=self._pod_deleted)

    async def shutdown(self) -> None:
        await self.timers.stop()
        await self.events.aclose()

    # -- event handlers ---------------------------------------------------------------------------------------

    def _owner_key(self, rs: Obj) -> str | None:
        d = resolve_controller_ref(self.d_informer, rs, "Deployment")
        return key_of(d) if d is not None else None

    def _matching_deployments(self, rs: Obj) -> list[str]:
        return [key_of(d) for d in owners_selecting(self.d_informer, rs, skip_empty=True)]

    def _rs_added(self, rs: Obj) -> None:
        owner = self._owner_key(rs)
        if owner is not None:
            self.enqueue(owner)
        elif get_controller_of(rs) is None:
            for key in self._matching_deployments(rs):
                self.enqueue(key)

    def _rs_updated(self, old: Obj, new: Obj) -> None:
        if get_controller_of(old) != get_controller_of(new):
            prev = self._owner_key(old)
            if prev is not None:
                self.enqueue(prev)
        owner = self._owner_key(new)
        if owner is not None:
            self.enqueue(owner)
        elif get_controller_of(new) is None and (meta(old).get("labels") != meta(new).get("labels")
                                                 or get_controller_of(old) is not None):
            for key in self._matching_deployments(new):
                self.enqueue(key)

    def _rs_deleted(self, rs: Obj) -> None:
        owner = self._owner_key(rs)
        if owner is not None:
            self.enqueue(owner)

    def _pod_deleted(self, pod: Obj) -> None:
        # Recreate waits for every old pod to be gone, and only a pod's deletion says when that is.
        rs = resolve_controller_ref(self.rs_informer, pod, "ReplicaSet")
        if rs is None:
            return
        owner = self._owner_key(rs)
        if owner is None:
            return
        d = self.d_informer.get(owner)
        if d is not None and not is_rolling_update(d):
            self.enqueue(owner)

    # -- reconcile --------------------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        cached = self.d_informer.get(key)
        if cached is None:
            return DONE
        d = copy_object(cached)
        spec = d.get("spec") or {}
        if is_empty_selector(spec.get("selector")):
            self.events.event(d, "Warning", "SelectingAll",
                                    "This deployment is selecting all pods. A non-empty selector is required.")
            if int((d.get("status") or {}).get("observedGeneration") or 0) < int(meta(d).get("generation") or 1):
                d.setdefault("status", {})["observedGeneration"] = meta(d).get("generation", 1)
                await self._write_status(d)
            return DONE
        rs_list = await self._replicasets_for(d)
        if meta(d).get("deletionTimestamp"):
            await self._sync_status_only(d, rs_list)
            return DONE
        await self._check_paused_conditions(d)
        if spec.get("paused"):
            await self._sync(d, rs_list)
            return DONE
        if await self._is_scaling_event(d, rs_list):
            await self._sync(d, rs_list)
            return DONE
        if is_rolling_update(d):
            await self._rollout_rolling(d, rs_list)
        else:
            await self._rollout_recreate(d, rs_list)
        return DONE

    async def _replicasets_for(self, d: Obj) -> list[Obj]:
        matches = selector_matcher((d.get("spec") or {}).get("selector"))
        manager = ControllerRefManager(self.client, d, DEPLOYMENTS, matches)
        return [copy_object(rs) for rs in await manager.claim(REPLICASETS, claim_candidates(self.rs_informer, d))]

    def _now(self) -> str:
        return format_time(self.clock.now())

    async def _check_paused_conditions(self, d: Obj) -> None:
        if not has_progress_deadline(d):
            return
        status = d.setdefault("status", {})
        cond = get_condition(status, "Progressing")
        if cond is not None and cond.get("reason") == TIMED_OUT_REASON:
            return  # a timed-out deployment stays timed out until something new happens
        paused = bool((d.get("spec") or {}).get("paused"))
        paused_cond = cond is not None and cond.get("reason") == PAUSED_REASON
        changed = False
        if paused and not paused_cond:
            set_deployment_condition(status, new_condition("Progressing", "Unknown", PAUSED_REASON,
                                                           "Deployment is paused", self._now()))
            changed = True
        elif not paused and paused_cond:
            set_deployment_condition(status, new_condition("Progressing", "Unknown", RESUMED_REASON,
                                                           "Deployment is resumed", self._now()))
            changed = True
        if changed:
            await self._write_status(d)

    async def _write_status(self, d: Obj) -> None:
        """UpdateStatus, keeping our copy's resourceVersion current for the next write in this sync."""
        updated = await self.client.update_status(DEPLOYMENTS, d)
        meta(d)["resourceVersion"] = meta(updated).get("resourceVersion")

    async def _set_revision(self, d: Obj, revision: str) -> None:
        """Upstream writes the Deployment's revision annotation along with its status; here status writes carry
        only status, so the annotation is a metadata patch of its own."""
        if _annotations(d).get(REVISION_ANNOTATION) == revision:
            return
        updated = await self.client.patch(DEPLOYMENTS, meta(d)["name"],
                                          {"metadata": {"annotations": {REVISION_ANNOTATION: revision},
                                                        "resourceVersion": meta(d)["resourceVersion"]}},
                                          meta(d).get("namespace"))
        meta(d).setdefault("annotations", {})[REVISION_ANNOTATION] = revision
        meta(d)["resourceVersion"] = meta(updated).get("resourceVersion")

    # -- new and old ReplicaSets ------------------------------------------------------------------------------

    async def _all_replicasets(self, d: Obj, rs_list: list[Obj], create: bool) -> tuple[Obj | None, list[Obj]]:
        """getAllReplicaSetsAndSyncRevision: the new ReplicaSet (created if asked) and the old ones."""
        new_rs = find_new_replicaset(d, rs_list)
        old = [rs for rs in rs_list if rs is not new_rs]
        new_rs = await self._get_new_replicaset(d, rs_list, old, new_rs, create)
        return new_rs, old

    async def _get_new_replicaset(self, d: Obj, rs_list: list[Obj], old: list[Obj], existing: Obj | None,
                                  create: bool) -> Obj | None:
        max_old = max((revision_of(rs) for rs in old), default=0)
        new_revision = str(max_old + 1)
        if existing is not None:
            rs = copy_object(existing)
            annotations_updated = set_new_replicaset_annotations(d, rs, new_revision, True)
            min_ready = (d.get("spec") or {}).get("minReadySeconds") or 0
            if annotations_updated or ((rs.get("spec") or {}).get("minReadySeconds") or 0) != min_ready:
                rs.setdefault("spec", {})["minReadySeconds"] = min_ready
                rs = await self.client.update(REPLICASETS, rs)
                # Later steps of this sync read the list again: let them see the ReplicaSet we just wrote.
                existing.clear()
                existing.update(rs)
            await self._set_revision(d, _annotations(rs).get(REVISION_ANNOTATION, new_revision))
            status = d.setdefault("status", {})
            if has_progress_deadline(d) and get_condition(status, "Progressing") is None:
                set_deployment_condition(status, new_condition("Progressing", "True", FOUND_NEW_RS_REASON,
                                                               f'Found new replica set "{meta(rs)["name"]}"',
                                                               self._now()))
                await self._write_status(d)
            return rs
        if not create:
            return None
        spec = d.get("spec") or {}
        template = copy_object(spec.get("template") or {})
        collision = (d.get("status") or {}).get("collisionCount")
        pod_hash = compute_hash(template, collision)
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), POD_TEMPLATE_HASH_LABEL: pod_hash}
        selector = copy_object(spec.get("selector") or {})
        selector["matchLabels"] = {**(selector.get("matchLabels") or {}), POD_TEMPLATE_HASH_LABEL: pod_hash}
        name = f"{meta(d)['name']}-{pod_hash}"
        new_rs: Obj = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": meta(d).get("namespace"), "labels": dict(tmeta["labels"]),
                         "ownerReferences": [controller_ref(d, DEPLOYMENTS.api_version, DEPLOYMENTS.kind)]},
            "spec": {"replicas": 0, "minReadySeconds": spec.get("minReadySeconds") or 0, "selector": selector,
                     "template": template},
        }
        new_rs["spec"]["replicas"] = new_rs_new_replicas(d, [*old, new_rs], new_rs)
        set_new_replicaset_annotations(d, new_rs, new_revision, False)
        already_exists = False
        try:
            created = await self.client.create(REPLICASETS, new_rs)
        except api_errors.AlreadyExists:
            already_exists = True
            try:
                found = await self.client.get(REPLICASETS, name, meta(d).get("namespace"))
            except NotFound:
                raise Conflict({"code": 409, "reason": "Conflict",
                                "message": f"replica set {name} vanished while resolving a collision"}) from None
            ref = get_controller_of(found)
            if (ref is not None and ref.get("uid") == meta(d).get("uid")
                    and template_equal_ignore_hash((found.get("spec") or {}).get("template"), spec.get("template"))):
                created = found
            else:
                # A hash collision: another ReplicaSet holds the name. Bump collisionCount and try again.
                status = d.setdefault("status", {})
                status["collisionCount"] = int(status.get("collisionCount") or 0) + 1
                await self._write_status(d)
                raise Conflict({"code": 409, "reason": "AlreadyExists",
                                "message": f"replica set {name} already exists with another template; "
                                           f"collisionCount is now {status['collisionCount']}"}) from None
        except api_errors.ApiError as exc:
            if has_progress_deadline(d):
                set_deployment_condition(d.setdefault("status", {}), new_condition(
                    "Progressing", "False", FAILED_RS_CREATE_REASON,
                    f'Failed to create new replica set "{name}": {exc.message}', self._now()))
                try:
                    await self._write_status(d)
                except api_errors.ApiError:
                    pass
            raise
        if not already_exists and _replicas(created) > 0:
            self.events.event(d, "Normal", "ScalingReplicaSet",
                                    f"Scaled up replica set {name} from 0 to {_replicas(created)}")
        await self._set_revision(d, new_revision)
        if not already_exists and has_progress_deadline(d):
            set_deployment_condition(d.setdefault("status", {}), new_condition(
                "Progressing", "True", NEW_RS_REASON, f'Created new replica set "{name}"', self._now()))
            await self._write_status(d)
        return created

    # -- scaling ----------------------------------------------------------------------------------------------

    async def _scale_replicaset(self, rs: Obj, new_scale: int, d: Obj, operation: str) -> tuple[bool, Obj]:
        size_changed = _replicas(rs) != new_scale
        desired, max_total = _replicas(d), _replicas(d) + max_surge(d)
        if not size_changed and not replicas_annotations_need_update(rs, desired, max_total):
            return False, rs
        old_scale = _replicas(rs)
        body = copy_object(rs)
        body.setdefault("spec", {})["replicas"] = new_scale
        set_replicas_annotations(body, desired, max_total)
        updated = await self.client.update(REPLICASETS, body)
        if size_changed:
            self.events.event(d, "Normal", "ScalingReplicaSet",
                                    f"Scaled {operation} replica set {meta(rs)['name']} from {old_scale} to {new_scale}")
        return size_changed, updated

    async def _scale_and_record(self, rs: Obj, new_scale: int, d: Obj) -> tuple[bool, Obj]:
        if _replicas(rs) == new_scale:
            return False, rs
        return await self._scale_replicaset(rs, new_scale, d, "up" if _replicas(rs) < new_scale else "down")

    async def _is_scaling_event(self, d: Obj, rs_list: list[Obj]) -> bool:
        new_rs, old = await self._all_replicasets(d, rs_list, create=False)
        for rs in active([*old, new_rs]):
            desired = _int_annotation(rs, DESIRED_REPLICAS_ANNOTATION)
            if desired is not None and desired != _replicas(d):
                return True
        return False

    async def _sync(self, d: Obj, rs_list: list[Obj]) -> None:
        """Scale only (a paused deployment, or a resize): no new ReplicaSet, proportional scaling, cleanup."""
        new_rs, old = await self._all_replicasets(d, rs_list, create=False)
        await self._scale(d, new_rs, old)
        if (d.get("spec") or {}).get("paused"):
            await self._cleanup(d, old)
        await self._sync_deployment_status([*old, new_rs], new_rs, d)

    async def _scale(self, d: Obj, new_rs: Obj | None, old: list[Obj]) -> None:
        target = _find_active_or_latest(new_rs, old)
        if target is not None:
            if _replicas(target) != _replicas(d):
                await self._scale_and_record(target, _replicas(d), d)
            return
        if _is_saturated(d, new_rs):
            for rs in active(list(old)):
                await self._scale_and_record(rs, 0, d)
            return
        if not is_rolling_update(d):
            return
        all_rss = active([*old, new_rs])
        all_replicas = replica_count(list(all_rss))
        allowed = _replicas(d) + max_surge(d) if _replicas(d) > 0 else 0
        to_add = allowed - all_replicas
        operation = ""
        if to_add > 0:
            # Bigger first; among equals, newer first when scaling up.
            all_rss.sort(key=functools.cmp_to_key(lambda a, b: _size_cmp(a, b, newer_first=True)))
            operation = "up"
        elif to_add < 0:
            all_rss.sort(key=functools.cmp_to_key(lambda a, b: _size_cmp(a, b, newer_first=False)))
            operation = "down"
        added = 0
        sizes: dict[str, int] = {}
        for rs in all_rss:
            if to_add != 0:
                proportion = _replicaset_proportion(rs, d, to_add, added)
                sizes[meta(rs)["name"]] = _replicas(rs) + proportion
                added += proportion
            else:
                sizes[meta(rs)["name"]] = _replicas(rs)
        for i, rs in enumerate(all_rss):
            name = meta(rs)["name"]
            if i == 0 and to_add != 0:
                sizes[name] = max(0, sizes[name] + to_add - added)  # leftovers go to the largest
            await self._scale_replicaset(rs, sizes[name], d, operation)

    # -- rolling update ---------------------------------------------------------------------------------------

    async def _rollout_rolling(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old = await self._all_replicasets(d, rs_list, create=True)
        assert new_rs is not None
        all_rss = [*old, new_rs]
        scaled_up, new_rs = await self._reconcile_new(all_rss, new_rs, d)
        all_rss = [*old, new_rs]
        if scaled_up:
            await self._sync_rollout_status(all_rss, new_rs, d)
            return
        scaled_down, old = await self._reconcile_old(all_rss, active(list(old)), old, new_rs, d)
        all_rss = [*old, new_rs]
        if scaled_down:
            await self._sync_rollout_status(all_rss, new_rs, d)
            return
        if deployment_complete(d, d.get("status") or {}):
            await self._cleanup(d, old)
        await self._sync_rollout_status(all_rss, new_rs, d)

    async def _reconcile_new(self, all_rss: list[Obj], new_rs: Obj, d: Obj) -> tuple[bool, Obj]:
        if _replicas(new_rs) == _replicas(d):
            return False, new_rs
        if _replicas(new_rs) > _replicas(d):
            return await self._scale_and_record(new_rs, _replicas(d), d)
        return await self._scale_and_record(new_rs, new_rs_new_replicas(d, all_rss, new_rs), d)

    async def _reconcile_old(self, all_rss: list[Obj], old_active: list[Obj], old: list[Obj], new_rs: Obj,
                             d: Obj) -> tuple[bool, list[Obj]]:
        if replica_count(list(old_active)) == 0:
            return False, old
        all_pods = replica_count(list(all_rss))
        min_available = _replicas(d) - max_unavailable(d)
        new_unavailable = _replicas(new_rs) - _status(new_rs, "availableReplicas")
        max_scaled_down = all_pods - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False, old
        replaced: dict[str, Obj] = {}
        # Unhealthy replicas go first: they would otherwise block the rollout until its deadline.
        cleaned = 0
        for rs in by_creation(old_active):
            if cleaned >= max_scaled_down:
                break
            if _replicas(rs) == 0 or _replicas(rs) == _status(rs, "availableReplicas"):
                continue
            count = min(max_scaled_down - cleaned, _replicas(rs) - _status(rs, "availableReplicas"))
            if count < 0:
                # The status still counts pods the spec already dropped (they are being deleted): never "clean up"
                # upwards. Upstream's reconcileOldReplicaSets gives up the same way *without* an error (no
                # rate-limited retry): the ReplicaSet's next status update brings the Deployment back here.
                log.debug("when cleaning up unhealthy replicas, got invalid request to scale down %s %d -> %d",
                          key_of(rs), _replicas(rs), _replicas(rs) - count)
                return False, old
            _, updated = await self._scale_and_record(rs, _replicas(rs) - count, d)
            replaced[meta(rs)["name"]] = updated
            cleaned += count
        old_active = [replaced.get(meta(rs)["name"], rs) for rs in old_active]
        all_rss = [*old_active, new_rs]
        scaled = await self._scale_down_old_for_rolling(all_rss, old_active, d, replaced)
        old = [replaced.get(meta(rs)["name"], rs) for rs in old]
        return cleaned + scaled > 0, old

    async def _scale_down_old_for_rolling(self, all_rss: list[Obj], old_active: list[Obj], d: Obj,
                                          replaced: dict[str, Obj]) -> int:
        min_available = _replicas(d) - max_unavailable(d)
        available = actual_count(list(all_rss), "availableReplicas")
        if available <= min_available:
            return 0
        total = available - min_available
        scaled = 0
        for rs in by_creation(old_active):
            if scaled >= total:
                break
            if _replicas(rs) == 0:
                continue
            count = min(_replicas(rs), total - scaled)
            _, updated = await self._scale_and_record(rs, _replicas(rs) - count, d)
            replaced[meta(rs)["name"]] = updated
            scaled += count
        return scaled

    # -- recreate ---------------------------------------------------------------------------------------------

    async def _rollout_recreate(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old = await self._all_replicasets(d, rs_list, create=False)
        all_rss: list[Obj | None] = [*old, new_rs]
        scaled_down = False
        for i, rs in enumerate(old):
            if _replicas(rs) != 0:
                _, old[i] = await self._scale_and_record(rs, 0, d)
                scaled_down = True
        if scaled_down:
            await self._sync_rollout_status([*old, new_rs], new_rs, d)
            return
        if self._old_pods_running(new_rs, old, rs_list):
            await self._sync_rollout_status(all_rss, new_rs, d)
            return
        if new_rs is None:
            new_rs, old = await self._all_replicasets(d, rs_list, create=True)
        assert new_rs is not None
        _, new_rs = await self._scale_and_record(new_rs, _replicas(d), d)
        if deployment_complete(d, d.get("status") or {}):
            await self._cleanup(d, old)
        await self._sync_rollout_status([*old, new_rs], new_rs, d)

    def _old_pods_running(self, new_rs: Obj | None, old: list[Obj], rs_list: list[Obj]) -> bool:
        if actual_count(list(old)) > 0:
            return True
        new_uid = meta(new_rs).get("uid") if new_rs is not None else None
        for rs in rs_list:
            uid = meta(rs).get("uid") or ""
            if uid == new_uid:
                continue
            for pod in self.pod_informer.by_index(CONTROLLER_INDEX, uid):
                if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                    return True  # running, pending, unknown or still terminating: Recreate waits
        return False

    # -- cleanup and status -----------------------------------------------------------------------------------

    async def _cleanup(self, d: Obj, old: list[Obj]) -> None:
        limit = (d.get("spec") or {}).get("revisionHistoryLimit")
        if limit is None:
            return
        alive = [rs for rs in old if not meta(rs).get("deletionTimestamp")]
        diff = len(alive) - int(limit)
        if diff <= 0:
            return
        alive.sort(key=lambda rs: (revision_of(rs), *_created_key(rs)))
        for rs in alive[:diff]:
            if (_status(rs, "replicas") != 0 or _replicas(rs) != 0
                    or int(meta(rs).get("generation") or 1) > _status(rs, "observedGeneration")):
                continue
            try:
                await self.client.delete(REPLICASETS, meta(rs)["name"], meta(rs).get("namespace"),
                                         preconditions={"uid": meta(rs)["uid"]})
            except NotFound:
                pass

    def _calculate_status(self, all_rss: Sequence[Obj | None], new_rs: Obj | None, d: Obj) -> Obj:
        available = actual_count(all_rss, "availableReplicas")
        total = replica_count(all_rss)
        status: Obj = {
            "observedGeneration": meta(d).get("generation", 1),
            "replicas": actual_count(all_rss),
            "updatedReplicas": actual_count([new_rs]),
            "readyReplicas": actual_count(all_rss, "readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": max(0, total - available),
            "conditions": copy_object((d.get("status") or {}).get("conditions") or []),
        }
        collision = (d.get("status") or {}).get("collisionCount")
        if collision is not None:
            status["collisionCount"] = collision
        now = self._now()
        if available >= _replicas(d) - max_unavailable(d):
            set_deployment_condition(status, new_condition("Available", "True", MIN_AVAILABLE_REASON,
                                                           "Deployment has minimum availability.", now))
        else:
            set_deployment_condition(status, new_condition("Available", "False", MIN_UNAVAILABLE_REASON,
                                                           "Deployment does not have minimum availability.", now))
        return status

    async def _sync_deployment_status(self, all_rss: Sequence[Obj | None], new_rs: Obj | None, d: Obj) -> None:
        status = self._calculate_status(all_rss, new_rs, d)
        if _same_status(d.get("status") or {}, status):
            return
        await self._write_status({**d, "status": status})

    async def _sync_status_only(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old = await self._all_replicasets(d, rs_list, create=False)
        await self._sync_deployment_status([*old, new_rs], new_rs, d)

    async def _sync_rollout_status(self, all_rss: Sequence[Obj | None], new_rs: Obj | None,
                                   d: Obj) -> None:
        status = self._calculate_status(all_rss, new_rs, d)
        now = self._now()
        if not has_progress_deadline(d):
            remove_condition(status, "Progressing")
        current = get_condition(d.get("status") or {}, "Progressing")
        complete_before = (int(status.get("replicas") or 0) == int(status.get("updatedReplicas") or 0)
                           and current is not None and current.get("reason") == NEW_RS_AVAILABLE_REASON)
        if has_progress_deadline(d) and not complete_before:
            rs_name = meta(new_rs)["name"] if new_rs is not None else None
            if deployment_complete(d, status):
                msg = (f'ReplicaSet "{rs_name}" has successfully progressed.' if rs_name
                       else f'Deployment "{meta(d)["name"]}" has successfully progressed.')
                set_deployment_condition(status, new_condition("Progressing", "True", NEW_RS_AVAILABLE_REASON,
                                                               msg, now))
            elif deployment_progressing(d, status):
                msg = (f'ReplicaSet "{rs_name}" is progressing.' if rs_name
                       else f'Deployment "{meta(d)["name"]}" is progressing.')
                cond = new_condition("Progressing", "True", RS_UPDATED_REASON, msg, now)
                # Progress refreshes lastUpdateTime even with the same reason (the deadline counts from it).
                if current is not None:
                    if current.get("status") == "True":
                        cond["lastTransitionTime"] = current.get("lastTransitionTime")
                    remove_condition(status, "Progressing")
                set_deployment_condition(status, cond)
            elif self._timed_out(d, status):
                msg = (f'ReplicaSet "{rs_name}" has timed out progressing.' if rs_name
                       else f'Deployment "{meta(d)["name"]}" has timed out progressing.')
                set_deployment_condition(status, new_condition("Progressing", "False", TIMED_OUT_REASON, msg, now))
        failure = self._replica_failure([r for r in all_rss if r is not None], new_rs)
        if failure is not None:
            set_deployment_condition(status, failure)
        else:
            remove_condition(status, "ReplicaFailure")
        if _same_status(d.get("status") or {}, status):
            self._requeue_stuck(d, status)
            return
        await self._write_status({**d, "status": status})

    def _timed_out(self, d: Obj, status: Obj) -> bool:
        cond = get_condition(status, "Progressing")
        if cond is None or cond.get("reason") == NEW_RS_AVAILABLE_REASON:
            return False
        if cond.get("reason") == TIMED_OUT_REASON:
            return True
        since = parse_time(cond.get("lastUpdateTime"))
        deadline = int((d.get("spec") or {}).get("progressDeadlineSeconds") or 0)
        return since is not None and since + deadline < self.clock.now()

    def _requeue_stuck(self, d: Obj, status: Obj) -> None:
        """Without visible progress nothing would wake us when the deadline passes: look again then."""
        current = get_condition(d.get("status") or {}, "Progressing")
        if not has_progress_deadline(d) or current is None:
            return
        if deployment_complete(d, status) or current.get("reason") == TIMED_OUT_REASON:
            return
        since = parse_time(current.get("lastUpdateTime"))
        if since is None:
            return
        after = since + int((d.get("spec") or {}).get("progressDeadlineSeconds") or 0) - self.clock.now()
        self.timers.after(key_of(d), max(after, 0) + 1.0)

    def _replica_failure(self, all_rss: list[Obj], new_rs: Obj | None) -> Obj | None:
        candidates = ([new_rs] if new_rs is not None else []) + [rs for rs in all_rss if rs is not new_rs]
        for rs in candidates:
            cond = get_condition(rs.get("status") or {}, "ReplicaFailure")
            if cond is not None:
                return {"type": "ReplicaFailure", "status": cond.get("status", "True"),
                        "lastUpdateTime": cond.get("lastTransitionTime"),
                        "lastTransitionTime": cond.get("lastTransitionTime"),
                        "reason": cond.get("reason"), "message": cond.get("message")}
        return None


def new_rs_new_replicas(d: Obj, all_rss: list[Obj], new_rs: Obj) -> int:
    """deploymentutil.NewRSNewReplicas: how far the new ReplicaSet may grow now."""
    if is_rolling_update(d):
        surge = max_surge(d)
        current = replica_count(list(all_rss))
        max_total = _replicas(d) + surge
        if current >= max_total:
            return _replicas(new_rs)
        scale_up = min(max_total - current, _replicas(d) - _replicas(new_rs))
        return _replicas(new_rs) + scale_up
    return _replicas(d)


def _find_active_or_latest(new_rs: Obj | None, old: list[Obj]) -> Obj | None:
    if new_rs is None and not old:
        return None
    newest_old = by_creation(old, newest_first=True)
    live = active([*newest_old, new_rs])
    if not live:
        return new_rs if new_rs is not None else newest_old[0]
    if len(live) == 1:
        return live[0]
    return None


def _is_saturated(d: Obj, rs: Obj | None) -> bool:
    if rs is None:
        return False
    desired = _int_annotation(rs, DESIRED_REPLICAS_ANNOTATION)
    return (_replicas(rs) == _replicas(d) and desired == _replicas(d)
            and _status(rs, "availableReplicas") == _replicas(d))


def _size_cmp(a: Obj, b: Obj, newer_first: bool) -> int:
    # ReplicaSetsBySizeNewer / BySizeOlder: larger first; ties by age.
    if _replicas(a) != _replicas(b):
        return -1 if _replicas(a) > _replicas(b) else 1
    ka, kb = _created_key(a), _created_key(b)
    if ka == kb:
        return 0
    if newer_first:
        return -1 if ka > kb else 1
    return -1 if ka < kb else 1


def _replicaset_proportion(rs: Obj, d: Obj, to_add: int, added: int) -> int:
    if _replicas(rs) == 0 or to_add == 0 or to_add == added:
        return 0
    fraction = _replicaset_fraction(rs, d)
    allowed = to_add - added
    return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)


def _replicaset_fraction(rs: Obj, d: Obj) -> int:
    if _replicas(d) == 0:
        return -_replicas(rs)
    deployment_replicas = _replicas(d) + max_surge(d)
    annotated = _int_annotation(rs, MAX_REPLICAS_ANNOTATION)
    if annotated is None:
        annotated = _status(d, "replicas")
    if not annotated:
        return 0
    size = _replicas(rs) * deployment_replicas / annotated
    # integer.RoundToInt32: half away from zero.
    rounded = math.floor(size + 0.5) if size >= 0 else -math.floor(-size + 0.5)
    return rounded - _replicas(rs)


def _same_status(old: Obj, new: Obj) -> bool:
    def norm(s: Obj) -> Obj:
        return {k: v for k, v in s.items() if v not in (None, 0, [], {})}

    return norm(old) == norm(new)
