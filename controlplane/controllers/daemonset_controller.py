"""The DaemonSet controller: one pod per eligible node, as upstream's pkg/controller/daemon.

A node is eligible when the template's nodeSelector and required node affinity match it and its NoSchedule /
NoExecute taints are tolerated — counting the tolerations every daemon pod gets (not-ready and unreachable
NoExecute; disk-, memory-, pid-pressure and unschedulable NoSchedule; network-unavailable for host-network pods).
Pods are not bound here: each carries a required node affinity `matchFields metadata.name In [<node>]` and the
scheduler places it, as upstream since 1.12. Pods follow nodes as they come, change and go; a failed pod is replaced
with backoff. Templates are recorded as ControllerRevisions, pods labelled with the revision's hash; RollingUpdate
replaces pods within maxUnavailable (or surges with maxSurge), OnDelete waits for users. Status carries the
desired/current/misscheduled/ready/updated/available/unavailable counts.
"""

from __future__ import annotations

import logging
from typing import Any

from controlplane.client import ApiClient, Clock, NotFound, SharedInformerFactory
from controlplane.client import errors as api_errors
from controlplane.client.protocol import copy_object
from controlplane.client.resources import CONTROLLERREVISIONS, DAEMONSETS, NODES, PODS
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.client.events import EventRecorder
from controlplane.controllers.controller_utils import (
    CONTROLLER_REVISION_HASH_LABEL,
    ControllerRefManager,
    Expectations,
    Obj,
    Timers,
    add_indexes,
    claim_candidates,
    compute_hash,
    controller_clock,
    controller_ref,
    gather_limited,
    get_controller_of,
    is_empty_selector,
    is_pod_available,
    is_pod_ready,
    key_of,
    meta,
    option,
    owners_selecting,
    parse_time,
    pod_from_template,
    pod_phase,
    pods_prefix,
    resolve_controller_ref,
    revision_name,
    revision_number,
    scaled_value,
    selector_matcher,
    semantic,
    sort_revisions,
)
from controlplane.scheduler.labels import (
    NO_EXECUTE,
    NO_SCHEDULE,
    find_untolerated_taint,
    parse_node_selector,
    taint_key,
    toleration_key,
)

log = logging.getLogger(__name__)

TEMPLATE_GENERATION_LABEL = "pod-template-generation"
BURST_REPLICAS = 250
FAILED_POD_BACKOFF = (1.0, 900.0)  # upstream's failedPodsBackoff: 1 s doubling to 15 min

# AddOrUpdateDaemonPodTolerations: what every daemon pod tolerates, so node trouble does not evict it.
DAEMON_TOLERATIONS: tuple[dict[str, str], ...] = (
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": NO_EXECUTE},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": NO_EXECUTE},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": NO_SCHEDULE},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": NO_SCHEDULE},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": NO_SCHEDULE},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": NO_SCHEDULE},
)
HOST_NETWORK_TOLERATION = {"key": "node.kubernetes.io/network-unavailable", "operator": "Exists",
                           "effect": NO_SCHEDULE}


def add_daemon_tolerations(spec: Obj) -> None:
    """util.AddOrUpdateDaemonPodTolerations: add (or replace a differing copy of) each daemon toleration."""
    tolerations = list(spec.get("tolerations") or [])
    wanted = list(DAEMON_TOLERATIONS)
    if spec.get("hostNetwork"):
        wanted.append(HOST_NETWORK_TOLERATION)
    for tol in wanted:
        for i, existing in enumerate(tolerations):
            if (existing.get("key") == tol["key"] and existing.get("effect") == tol["effect"]
                    and (existing.get("operator") or "Equal") == tol["operator"]
                    and (existing.get("value") or "") == ""):
                if existing != tol:
                    tolerations[i] = dict(tol)
                break
        else:
            tolerations.append(dict(tol))
    spec["tolerations"] = tolerations


def target_node_name(pod: Obj) -> str | None:
    """util.GetTargetNodeName: spec.nodeName, else the node the affinity pins the pod to."""
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        return str(node)
    affinity = ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    for term in required.get("nodeSelectorTerms") or []:
        for req in term.get("matchFields") or []:
            values = req.get("values") or []
            if req.get("key") == "metadata.name" and req.get("operator") == "In" and len(values) == 1:
                return str(values[0])
    return None


def pin_to_node(affinity: Obj | None, node: str) -> Obj:
    """util.ReplaceDaemonSetPodNodeNameNodeAffinity: required terms become exactly `metadata.name In [node]`."""
    affinity = copy_object(affinity or {})
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    node_affinity = affinity.setdefault("nodeAffinity", {})
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [term]}
    return affinity


def node_should_run(node: Obj, ds: Obj) -> tuple[bool, bool]:
    """NodeShouldRunDaemonPod: (should run a pod there, may keep running an existing one there)."""
    spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    name = meta(node)["name"]
    if spec.get("nodeName") and spec["nodeName"] != name:
        return False, False
    labels = meta(node).get("labels") or {}
    for k, v in (spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False, False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if required is not None:
        selector = parse_node_selector(required)
        if selector is not None and not selector.matches(labels, name):
            return False, False
    pod_spec = copy_object(spec)
    add_daemon_tolerations(pod_spec)
    tolerations = [toleration_key(t) for t in pod_spec.get("tolerations") or []]
    taints = [taint_key(t) for t in (node.get("spec") or {}).get("taints") or []]
    if find_untolerated_taint(taints, tolerations, (NO_SCHEDULE, NO_EXECUTE)) is not None:
        # A running daemon pod may stay as long as it tolerates the NoExecute taints.
        return False, find_untolerated_taint(taints, tolerations, (NO_EXECUTE,)) is None
    return True, True


def revision_data(ds: Obj) -> Obj:
    template = semantic(copy_object((ds.get("spec") or {}).get("template") or {}))
    template["$patch"] = "replace"
    return {"spec": {"template": template}}


def _created(pod: Obj) -> tuple[float, int]:
    # podByCreationTimestampAndPhase: older first; among equals, running before not.
    return (parse_time(meta(pod).get("creationTimestamp")) or 0.0, 0 if pod_phase(pod) == "Running" else 1)


class DaemonSetController:
    name = "daemonset"

    def __init__(self, ctx: ControllerContext | None = None, *, workers: int | None = None,
                 clock: Clock | None = None, burst_replicas: int = BURST_REPLICAS) -> None:
        self.workers = workers or option(ctx, "concurrent_daemonset_syncs", 2)
        self.clock: Clock = controller_clock(ctx, clock)
        self.burst_replicas = burst_replicas
        self.expectations = Expectations()
        self._failed_backoff: dict[str, tuple[float, float]] = {}  # (ds key, node) -> (delay, last failure)

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.enqueue = enqueue
        self.timers = Timers(self.clock, enqueue)
        self.events = EventRecorder(client, "daemonset-controller", self.clock)
        self.ds_informer = add_indexes(informers.informer(DAEMONSETS))
        self.pod_informer = add_indexes(informers.informer(PODS))
        self.node_informer = informers.informer(NODES)
        self.rev_informer = add_indexes(informers.informer(CONTROLLERREVISIONS))
        self.ds_informer.add_handler(on_add=lambda d: enqueue(key_of(d)), on_update=lambda o, n: enqueue(key_of(n)),
                                     on_delete=self._ds_deleted)
        self.pod_informer.add_handler(on_add=self._pod_added, on_update=self._pod_updated,
                                      on_delete=self._pod_deleted)
        self.node_informer.add_handler(on_add=lambda n: self._all(), on_update=self._node_updated,
                                       on_delete=lambda n: self._all())

    async def shutdown(self) -> None:
        await self.timers.stop()
        await self.events.aclose()

    # -- events -----------------------------------------------------------------------------------------------

    def _all(self) -> None:
        for ds in self.ds_informer.list():
            self.enqueue(key_of(ds))

    def _ds_deleted(self, ds: Obj) -> None:
        self.expectations.forget(key_of(ds))
        self.enqueue(key_of(ds))

    def _node_updated(self, old: Obj, new: Obj) -> None:
        # Heartbeats change nothing a DaemonSet cares about; labels, taints and conditions do.
        def relevant(n: Obj) -> Any:
            status = n.get("status") or {}
            conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
            return meta(n).get("labels"), (n.get("spec") or {}), conditions

        if relevant(old) != relevant(new):
            self._all()

    def _owner_key(self, pod: Obj) -> str | None:
        ds = resolve_controller_ref(self.ds_informer, pod, "DaemonSet")
        return key_of(ds) if ds is not None else None

    def _orphan_owners(self, pod: Obj) -> list[str]:
        return [key_of(ds) for ds in owners_selecting(self.ds_informer, pod)]

    def _pod_added(self, pod: Obj) -> None:
        if meta(pod).get("deletionTimestamp"):
            self._pod_deleted(pod)
            return
        owner = self._owner_key(pod)
        if owner is not None:
            self.expectations.creation_observed(owner)
            self.enqueue(owner)
        elif get_controller_of(pod) is None:
            for key in self._orphan_owners(pod):
                self.enqueue(key)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        owner = self._owner_key(new)
        if owner is not None:
            self.enqueue(owner)
            ds = self.ds_informer.get(owner)
            min_ready = ((ds or {}).get("spec") or {}).get("minReadySeconds") or 0
            if min_ready and not is_pod_ready(old) and is_pod_ready(new):
                self.timers.after(owner, min_ready + 1)
        elif get_controller_of(new) is None:
            for key in self._orphan_owners(new):
                self.enqueue(key)
        if get_controller_of(old) != get_controller_of(new):
            prev = self._owner_key(old)
            if prev is not None:
                self.enqueue(prev)

    def _pod_deleted(self, pod: Obj) -> None:
        owner = self._owner_key(pod)
        if owner is not None:
            self.expectations.deletion_observed(owner)
            self.enqueue(owner)

    # -- reconcile --------------------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        cached = self.ds_informer.get(key)
        if cached is None:
            self.expectations.forget(key)
            return DONE
        ds = copy_object(cached)
        if is_empty_selector((ds.get("spec") or {}).get("selector")):
            self.events.event(ds, "Warning", "SelectingAll",
                                    "This daemon set is selecting all pods. A non-empty selector is required.")
            return DONE
        if meta(ds).get("deletionTimestamp"):
            return DONE
        nodes = self.node_informer.list()
        current, old = await self._construct_history(ds)
        pod_hash = (meta(current).get("labels") or {}).get(CONTROLLER_REVISION_HASH_LABEL, "")
        if not self.expectations.satisfied(key):
            await self._update_status(ds, nodes, pod_hash, observed=False)
            return DONE
        error: Exception | None = None
        try:
            await self._manage(ds, nodes, pod_hash)
            if self.expectations.satisfied(key):
                strategy = ((ds.get("spec") or {}).get("updateStrategy") or {}).get("type", "RollingUpdate")
                if strategy == "RollingUpdate":
                    await self._rolling_update(ds, nodes, pod_hash)
            await self._cleanup_history(ds, old)
        except Exception as exc:  # noqa: BLE001 - the status is still written, then the key retried
            error = exc
        await self._update_status(ds, nodes, pod_hash, observed=True)
        if error is not None:
            raise error
        return DONE

    async def _daemon_pods(self, ds: Obj) -> list[Obj]:
        matches = selector_matcher((ds.get("spec") or {}).get("selector"))
        manager = ControllerRefManager(self.client, ds, DAEMONSETS, matches)
        return await manager.claim(PODS, claim_candidates(self.pod_informer, ds))

    async def _nodes_to_pods(self, ds: Obj) -> dict[str, list[Obj]]:
        out: dict[str, list[Obj]] = {}
        for pod in await self._daemon_pods(ds):
            if pod_phase(pod) in ("Succeeded", "Failed") and meta(pod).get("deletionTimestamp"):
                continue  # finished and on its way out: nothing left to do with it
            node = target_node_name(pod)
            if node is None:
                continue
            out.setdefault(node, []).append(pod)
        return out

    # -- history ----------------------------------------------------------------------------------------------

    async def _construct_history(self, ds: Obj) -> tuple[Obj, list[Obj]]:
        matches = selector_matcher((ds.get("spec") or {}).get("selector"))
        histories = await ControllerRefManager(self.client, ds, DAEMONSETS, matches).claim(
            CONTROLLERREVISIONS, claim_candidates(self.rev_informer, ds))
        data = revision_data(ds)
        current: list[Obj] = []
        old: list[Obj] = []
        for h in histories:
            (current if semantic(h.get("data")) == semantic(data) else old).append(h)
        next_revision = max((revision_number(h) for h in old), default=0) + 1
        if not current:
            cur = await self._snapshot(ds, data, next_revision)
        else:
            current = sort_revisions(current)
            cur = current[-1]
            for dup in current[:-1]:
                try:
                    await self.client.delete(CONTROLLERREVISIONS, meta(dup)["name"], meta(dup).get("namespace"))
                except NotFound:
                    pass
            if revision_number(cur) < next_revision:
                cur = await self.client.patch(CONTROLLERREVISIONS, meta(cur)["name"], {"revision": next_revision},
                                              meta(cur).get("namespace"))
        return cur, old

    async def _snapshot(self, ds: Obj, data: Obj, revision: int) -> Obj:
        template = (ds.get("spec") or {}).get("template") or {}
        collision = (ds.get("status") or {}).get("collisionCount")
        pod_hash = compute_hash(template, collision)
        history: Obj = {
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": revision_name(meta(ds)["name"], pod_hash), "namespace": meta(ds).get("namespace"),
                         "labels": {**((template.get("metadata") or {}).get("labels") or {}),
                                    CONTROLLER_REVISION_HASH_LABEL: pod_hash},
                         "ownerReferences": [controller_ref(ds, DAEMONSETS.api_version, DAEMONSETS.kind)]},
            "data": data, "revision": revision,
        }
        if meta(ds).get("annotations"):
            history["metadata"]["annotations"] = dict(meta(ds)["annotations"])
        try:
            return await self.client.create(CONTROLLERREVISIONS, history)
        except api_errors.AlreadyExists:
            existing = await self.client.get(CONTROLLERREVISIONS, history["metadata"]["name"],
                                             meta(ds).get("namespace"))
            if semantic(existing.get("data")) == semantic(data):
                return existing
            # A hash collision with another template: bump collisionCount, and the next sync picks a new name.
            fresh = await self.client.get(DAEMONSETS, meta(ds)["name"], meta(ds).get("namespace"))
            if (fresh.get("status") or {}).get("collisionCount") != collision:
                raise RuntimeError(f"stale collision count for DaemonSet {key_of(ds)}; will retry") from None
            fresh.setdefault("status", {})["collisionCount"] = int(collision or 0) + 1
            await self.client.update_status(DAEMONSETS, fresh)
            raise

    async def _cleanup_history(self, ds: Obj, old: list[Obj]) -> None:
        limit = int((ds.get("spec") or {}).get("revisionHistoryLimit", 10) or 0)
        to_kill = len(old) - limit
        if to_kill <= 0:
            return
        live = {(meta(p).get("labels") or {}).get(CONTROLLER_REVISION_HASH_LABEL)
                for pods in (await self._nodes_to_pods(ds)).values() for p in pods}
        for history in sort_revisions(old):
            if to_kill <= 0:
                break
            if (meta(history).get("labels") or {}).get(CONTROLLER_REVISION_HASH_LABEL) in live:
                continue
            try:
                await self.client.delete(CONTROLLERREVISIONS, meta(history)["name"], meta(history).get("namespace"))
            except NotFound:
                pass
            to_kill -= 1

    # -- pods -------------------------------------------------------------------------------------------------

    async def _manage(self, ds: Obj, nodes: list[Obj], pod_hash: str) -> None:
        node_pods = await self._nodes_to_pods(ds)
        need: list[str] = []
        delete: list[Obj] = []
        key = key_of(ds)
        now = self.clock.now()
        surge = _surge_allowed(ds)
        for node in nodes:
            name = meta(node)["name"]
            should_run, should_continue = node_should_run(node, ds)
            pods = node_pods.get(name)
            if should_run and not pods:
                need.append(name)
            elif should_continue:
                running: list[Obj] = []
                for pod in pods or []:
                    if meta(pod).get("deletionTimestamp"):
                        continue
                    phase = pod_phase(pod)
                    if phase == "Failed":
                        # Kubelets may reject a pod over and over; replace it with backoff, not in a hot loop.
                        backoff_key = f"{key}/{name}"
                        delay, last = self._failed_backoff.get(backoff_key, (0.0, 0.0))
                        if delay and now - last < delay:
                            self.timers.at(key, last + delay)  # an instant: `now` was read earlier in the sync
                            continue
                        new_delay = min(FAILED_POD_BACKOFF[1], delay * 2 if delay else FAILED_POD_BACKOFF[0])
                        self._failed_backoff[backoff_key] = (new_delay, now)
                        delete.append(pod)
                    elif phase == "Succeeded":
                        delete.append(pod)
                    else:
                        running.append(pod)
                running.sort(key=_created)
                if not surge:
                    delete.extend(running[1:])  # more than one: keep the oldest
                elif len(running) <= 1:
                    if not running and should_run:
                        need.append(name)
                else:
                    oldest_new = oldest_old = None
                    for pod in running:
                        if (meta(pod).get("labels") or {}).get(CONTROLLER_REVISION_HASH_LABEL) == pod_hash:
                            if oldest_new is None:
                                oldest_new = pod
                                continue
                        elif oldest_old is None:
                            oldest_old = pod
                            continue
                        delete.append(pod)
                    if oldest_new is not None and oldest_old is not None:
                        min_ready = int((ds.get("spec") or {}).get("minReadySeconds") or 0)
                        if not is_pod_ready(oldest_old) or is_pod_available(oldest_new, min_ready, now):
                            delete.append(oldest_old)
            elif pods:
                delete.extend(p for p in pods if not meta(p).get("deletionTimestamp"))
        # Unscheduled pods aimed at nodes that no longer exist would wait forever: delete them.
        existing = {meta(n)["name"] for n in nodes}
        for name, pods in node_pods.items():
            if name not in existing:
                delete.extend(p for p in pods if not (p.get("spec") or {}).get("nodeName")
                              and not meta(p).get("deletionTimestamp"))
        await self._sync_nodes(ds, delete, need, pod_hash)

    async def _sync_nodes(self, ds: Obj, delete: list[Obj], need: list[str], pod_hash: str) -> None:
        key = key_of(ds)
        need = need[:self.burst_replicas]
        delete = delete[:self.burst_replicas]
        if not need and not delete:
            return
        self.expectations.expect_creations(key, len(need))
        self.expectations.expect_deletion_count(key, len(delete))
        template = copy_object((ds.get("spec") or {}).get("template") or {})
        add_daemon_tolerations(template.setdefault("spec", {}))
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), CONTROLLER_REVISION_HASH_LABEL: pod_hash}
        ref = controller_ref(ds, DAEMONSETS.api_version, DAEMONSETS.kind)
        namespace = meta(ds).get("namespace")
        errors: list[BaseException] = []

        def creator(node: str) -> Any:
            async def create() -> Obj:
                pod = pod_from_template(template, ref, generate_name=pods_prefix(meta(ds)["name"]))
                pod["spec"]["affinity"] = pin_to_node(pod["spec"].get("affinity"), node)
                try:
                    return await self.client.create(PODS, pod, namespace)
                except Exception:
                    self.expectations.creation_observed(key)
                    raise
            return create

        if need:
            created, results = await gather_limited([creator(n) for n in need])
            skipped = len(need) - len(results)
            if skipped:
                self.expectations.lower(key, add=skipped)
            errors.extend(r for r in results if isinstance(r, BaseException))
            if created:
                self.events.event(ds, "Normal", "SuccessfulCreate",
                                        f"Created pod{'s' if created > 1 else ''} on {created} node"
                                        f"{'s' if created > 1 else ''}")
        for pod in delete:
            try:
                await self.client.delete(PODS, meta(pod)["name"], meta(pod).get("namespace"),
                                         preconditions={"uid": meta(pod)["uid"]})
            except NotFound:
                self.expectations.deletion_observed(key)
            except Exception as exc:  # noqa: BLE001 - collected and raised below
                self.expectations.deletion_observed(key)
                errors.append(exc)
            else:
                self.events.event(ds, "Normal", "SuccessfulDelete", f"Deleted pod: {meta(pod)['name']}")
        if errors:
            error = errors[0]
            raise error if isinstance(error, Exception) else RuntimeError(str(error))

    # -- rolling update ---------------------------------------------------------------------------------------

    def _updated_on_node(self, pods: list[Obj], pod_hash: str) -> tuple[Obj | None, Obj | None, bool]:
        """findUpdatedPodsOnNode: (the updated pod, the old pod, ok) — not ok with two of either kind."""
        new = old = None
        for pod in pods:
            if meta(pod).get("deletionTimestamp"):
                continue
            if (meta(pod).get("labels") or {}).get(CONTROLLER_REVISION_HASH_LABEL) == pod_hash:
                if new is not None:
                    return None, None, False
                new = pod
            else:
                if old is not None:
                    return None, None, False
                old = pod
        return new, old, True

    async def _rolling_update(self, ds: Obj, nodes: list[Obj], pod_hash: str) -> None:
        node_pods = await self._nodes_to_pods(ds)
        desired = 0
        by_name = {meta(n)["name"]: n for n in nodes}
        for node in nodes:
            if node_should_run(node, ds)[0]:
                desired += 1
                node_pods.setdefault(meta(node)["name"], [])
        rolling = ((ds.get("spec") or {}).get("updateStrategy") or {}).get("rollingUpdate") or {}
        max_unavailable = scaled_value(rolling.get("maxUnavailable"), desired, True, 1)
        max_surge = scaled_value(rolling.get("maxSurge"), desired, True, 0)
        if desired > 0 and max_unavailable == 0 and max_surge == 0:
            max_unavailable = 1
        min_ready = int((ds.get("spec") or {}).get("minReadySeconds") or 0)
        now = self.clock.now()
        if max_surge == 0:
            unavailable = 0
            replace: list[Obj] = []
            candidates: list[Obj] = []
            for name, pods in sorted(node_pods.items()):
                new, old, ok = self._updated_on_node(pods, pod_hash)
                if not ok:
                    unavailable += 1
                    continue
                if (new is None) == (old is None):
                    unavailable += 1  # nothing there yet, or both: the manage step sorts it out
                elif new is not None:
                    if not is_pod_available(new, min_ready, now):
                        unavailable += 1
                else:
                    assert old is not None
                    if not is_pod_available(old, min_ready, now):
                        replace.append(old)  # already unavailable: replacing it costs nothing
                        unavailable += 1
                    elif unavailable < max_unavailable:
                        candidates.append(old)
            budget = max(0, min(max_unavailable - unavailable, len(candidates)))
            await self._sync_nodes(ds, replace + candidates[:budget], [], pod_hash)
            return
        # Surging: a node whose old pod is unavailable gets its new pod at once; up to maxSurge nodes with an
        # available old pod get a new one beside it; an old pod goes once the new one is available. With surge the
        # owner expects full availability, so pods on nodes the DaemonSet no longer fits go only as others come up.
        to_delete: list[Obj] = []
        sunset: list[Obj] = []
        allowed_new: list[str] = []
        candidate_new: list[str] = []
        surging = available = 0
        for name, pods in sorted(node_pods.items()):
            new, old, ok = self._updated_on_node(pods, pod_hash)
            if not ok:
                surging += 1  # excess pods: the manage step cleans up; count the node as surging meanwhile
                continue
            counted = old if old is not None else new
            if counted is not None and is_pod_available(counted, min_ready, now):
                available += 1
            if old is None:
                continue
            target = by_name.get(name)
            should_run = target is not None and node_should_run(target, ds)[0]
            if new is None:
                if not is_pod_available(old, min_ready, now):
                    if not should_run:
                        to_delete.append(old)
                    else:
                        allowed_new.append(name)
                elif not should_run:
                    sunset.append(old)
                elif surging < max_surge:
                    candidate_new.append(name)
                continue
            if not is_pod_available(new, min_ready, now):
                surging += 1
                continue
            to_delete.append(old)
        deletable = min(max(0, available - desired), len(sunset))
        to_delete.extend(sunset[:deletable])
        budget = max(0, min(max_surge - surging, len(candidate_new)))
        await self._sync_nodes(ds, to_delete, allowed_new + candidate_new[:budget], pod_hash)

    # -- status -----------------------------------------------------------------------------------------------

    async def _update_status(self, ds: Obj, nodes: list[Obj], pod_hash: str, observed: bool) -> None:
        node_pods = await self._nodes_to_pods(ds)
        desired = current = misscheduled = ready = updated = available = 0
        min_ready = int((ds.get("spec") or {}).get("minReadySeconds") or 0)
        now = self.clock.now()
        for node in nodes:
            should_run, _ = node_should_run(node, ds)
            pods = node_pods.get(meta(node)["name"]) or []
            if should_run:
                desired += 1
                if not pods:
                    continue
                current += 1
                pod = min(pods, key=_created)
                if is_pod_ready(pod):
                    ready += 1
                    if is_pod_available(pod, min_ready, now):
                        available += 1
                if (meta(pod).get("labels") or {}).get(CONTROLLER_REVISION_HASH_LABEL) == pod_hash:
                    updated += 1
            elif pods:
                misscheduled += 1
        old = ds.get("status") or {}
        status = {
            "currentNumberScheduled": current, "numberMisscheduled": misscheduled,
            "desiredNumberScheduled": desired, "numberReady": ready,
            "observedGeneration": meta(ds).get("generation", 1) if observed else old.get("observedGeneration"),
            "updatedNumberScheduled": updated, "numberAvailable": available,
            "numberUnavailable": desired - available,
        }
        if old.get("collisionCount") is not None:
            status["collisionCount"] = old["collisionCount"]
        if old.get("conditions"):
            status["conditions"] = old["conditions"]
        if min_ready and ready != available:
            self.timers.after(key_of(ds), min_ready + 1)
        if _norm(old) == _norm(status):
            return
        try:
            await self.client.update_status(DAEMONSETS, {**ds, "status": status})
        except api_errors.Conflict:
            self.enqueue(key_of(ds))
        except NotFound:
            pass


def _surge_allowed(ds: Obj) -> bool:
    """util.AllowsSurge: a RollingUpdate with a maxSurge that resolves above zero."""
    strategy = (ds.get("spec") or {}).get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return False
    surge = (strategy.get("rollingUpdate") or {}).get("maxSurge")
    try:
        return scaled_value(surge, 1, True, 0) > 0
    except ValueError:
        return False


def _norm(status: Obj) -> Obj:
    return {k: v for k, v in status.items() if v not in (None, 0, [], {})}
