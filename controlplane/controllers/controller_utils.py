"""What the workload controllers share, as upstream's pkg/controller/controller_utils.go and friends provide it.

Pod-template hashing (the `pod-template-hash` / `controller-revision-hash` values), controller ownerReferences and
the adopt/release dance of ControllerRefManager, creation/deletion expectations (so a burst of creates is not
repeated before the informer has seen them), pod readiness and availability with minReadySeconds, the deletion
ranking ReplicaSets use when scaling down, intstr percentages, and small conveniences (events, timers, times).

Time: controllers take a ``Clock`` (controlplane.client.clock) and read ``now()`` as Unix seconds, because the API
stores wall-clock timestamps (Ready transitions, startTime, cron schedules). ``SystemClock`` is the production
clock; tests pass ``FakeClock(start=<unix seconds>)`` and step it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from controlplane.client import (
    ApiClient,
    Clock,
    Informer,
    NotFound,
    RealClock,
    Resource,
)
from controlplane.client import errors as api_errors
from controlplane.client.protocol import copy_object
from controlplane.client.resources import PODS
from controlplane.scheduler.labels import label_selector

log = logging.getLogger(__name__)

Obj = dict[str, Any]

POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
CONTROLLER_REVISION_HASH_LABEL = "controller-revision-hash"
POD_DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
CONTROLLER_INDEX = "controller-uid"  # informer index: the uid of the object's controller ownerReference
ORPHAN_INDEX = "orphans"  # informer index: the namespace of objects no controller owns (candidates for adoption)

# --------------------------------------------------------------------------------------------------------- time


class SystemClock:
    """The production clock for controllers: wall-clock seconds (API timestamps are wall-clock), asyncio sleep."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def controller_clock(ctx: Any, clock: Clock | None) -> Clock:
    """The clock a workload controller reads wall time from: an explicit one, else the manager's if it was
    injected (a test's FakeClock), else the system's. The manager's default RealClock is monotonic, which cannot
    be compared with API timestamps, so it is replaced by SystemClock."""
    if clock is not None:
        return clock
    ctx_clock = getattr(ctx, "clock", None)
    if ctx_clock is not None and not isinstance(ctx_clock, RealClock):
        return ctx_clock  # type: ignore[no-any-return]
    return SystemClock()


def option(ctx: Any, name: str, default: Any) -> Any:
    """A kube-controller-manager setting from the manager's context (ControllerContext.options), or the default."""
    if ctx is None:
        return default
    value = (getattr(ctx, "options", None) or {}).get(name)
    return default if value is None else value


def format_time(t: float) -> str:
    """RFC 3339 with second precision, as metav1.Time serialises."""
    return dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> float | None:
    """Unix seconds of an RFC 3339 timestamp (None stays None; garbage reads as None)."""
    if not value:
        return None
    try:
        text = value.replace("Z", "+00:00") if value.endswith("Z") else value
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


class Timers:
    """Re-enqueue keys after a delay measured on the controller's clock.

    The work queue's own delays run on real time; a controller whose decisions depend on an injected clock
    (cron schedules, deadlines, TTLs) must wake up when *that* clock reaches the time, so a test can step a
    FakeClock instead of waiting. Asking twice for one key keeps the earlier wake-up, as client-go's AddAfter does.
    """

    def __init__(self, clock: Clock, enqueue: Callable[[str], None]) -> None:
        self.clock = clock
        self.enqueue = enqueue
        self._pending: dict[str, tuple[float, asyncio.Task[None]]] = {}

    def after(self, key: str, delay: float) -> None:
        self.at(key, self.clock.now() + delay)

    def at(self, key: str, due: float) -> None:
        """Re-enqueue ``key`` once the clock reads ``due``."""
        if due <= self.clock.now():
            self.enqueue(key)
            return
        current = self._pending.get(key)
        if current is not None and not current[1].done():
            if current[0] <= due:
                return
            current[1].cancel()
        task = asyncio.get_running_loop().create_task(self._fire(key, due), name=f"requeue-{key}")
        self._pending[key] = (due, task)

    async def _fire(self, key: str, due: float) -> None:
        # Measured from the clock when the task runs, not when it was made: a clock stepped in between (a test's
        # FakeClock) must not move the wake-up.
        await self.clock.sleep(max(0.0, due - self.clock.now()))
        entry = self._pending.get(key)
        if entry is not None and entry[1] is asyncio.current_task():
            del self._pending[key]
        self.enqueue(key)

    def cancel(self, key: str) -> None:
        entry = self._pending.pop(key, None)
        if entry is not None:
            entry[1].cancel()

    async def stop(self) -> None:
        tasks = [task for _, task in self._pending.values()]
        self._pending.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --------------------------------------------------------------------------------------------------------- hashing

_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery rand: no vowels (no words), no 0/1/3 (no look-alikes)


def fnv32a(data: bytes, h: int = 0x811C9DC5) -> int:
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode_string(s: str) -> str:
    """apimachinery's rand.SafeEncodeString."""
    return "".join(_ALPHANUMS[ord(ch) % len(_ALPHANUMS)] for ch in s)


def semantic(value: Any) -> Any:
    """A value as Go's typed structs see it: nulls, empty maps and empty lists are the same as absent.

    Clients send `creationTimestamp: null` in templates (kubectl does; Go's zero time serialises so), and upstream
    compares and hashes typed structs with apimachinery's semantic equality, where those differences vanish.
    """
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = semantic(v)
            if v is None or v == {} or v == []:
                continue
            out[k] = v
        return out
    if isinstance(value, list):
        return [semantic(v) for v in value]
    return value


def compute_hash(obj: Any, collision_count: int | None = None) -> str:
    """The `pod-template-hash` of a template (controller.ComputeHash): FNV-32a, collision count appended, encoded.

    Upstream hashes Go's printout of the struct; we hash canonical JSON. The values differ from a real cluster's,
    but have the same shape and the same properties (stable, changes with the template and the collision count).
    """
    h = fnv32a(orjson.dumps(semantic(obj), option=orjson.OPT_SORT_KEYS))
    if collision_count is not None:
        h = fnv32a(str(collision_count).encode(), h)
    return safe_encode_string(str(h))


def template_equal_ignore_hash(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """deploymentutil.EqualIgnoreHash: templates equal once the pod-template-hash label is dropped from both."""

    def strip(t: Mapping[str, Any] | None) -> Any:
        t = copy_object(dict(t or {}))
        meta = t.setdefault("metadata", {})
        labels = dict(meta.get("labels") or {})
        labels.pop(POD_TEMPLATE_HASH_LABEL, None)
        if labels:
            meta["labels"] = labels
        else:
            meta.pop("labels", None)
        if not meta:
            t.pop("metadata")
        return t

    return bool(semantic(strip(a)) == semantic(strip(b)))


# -------------------------------------------------------------------------------------------------- objects, refs


def meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def key_of(obj: Mapping[str, Any]) -> str:
    m = meta(obj)
    return f"{m['namespace']}/{m['name']}" if m.get("namespace") else m["name"]


def controller_ref(owner: Mapping[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """metav1.NewControllerRef."""
    m = meta(owner)
    return {"apiVersion": api_version, "kind": kind, "name": m["name"], "uid": m["uid"], "controller": True,
            "blockOwnerDeletion": True}


def get_controller_of(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    for ref in meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def controller_uid_index(obj: Obj) -> str | None:
    """Index function: the uid of the object's controller (for ``by_index(CONTROLLER_INDEX, uid)``)."""
    ref = get_controller_of(obj)
    return ref.get("uid") if ref else None



def resolve_controller_ref(informer: Informer, obj: Mapping[str, Any], kind: str,
                           ref: Mapping[str, Any] | None = None) -> Obj | None:
    """The object's controller of ``kind`` from the informer's cache — upstream's resolveControllerRef: None when
    the controller is of another kind, gone, or a namesake with another uid. ``ref`` defaults to the object's own
    controller reference."""
    ref = ref if ref is not None else get_controller_of(obj)
    if ref is None or ref.get("kind") != kind:
        return None
    owner = informer.get(f"{meta(obj).get('namespace')}/{ref.get('name')}")
    if owner is None or meta(owner).get("uid") != ref.get("uid"):
        return None
    return owner


def owners_selecting(informer: Informer, obj: Mapping[str, Any], *, skip_empty: bool = False) -> list[Obj]:
    """The informer's objects in ``obj``'s namespace whose selector matches its labels: the candidates that might
    adopt an orphan. ``skip_empty`` leaves out empty selectors (a Deployment's selects nothing, upstream)."""
    labels = meta(obj).get("labels") or {}
    found = []
    for owner in informer.by_index("namespace", meta(obj).get("namespace") or ""):
        selector = (owner.get("spec") or {}).get("selector")
        if skip_empty and is_empty_selector(selector):
            continue
        if selector_matcher(selector)(labels):
            found.append(owner)
    return found


def selector_matcher(selector: Mapping[str, Any] | None) -> Callable[[Mapping[str, str] | None], bool]:
    """A metav1.LabelSelector as a predicate on labels. None or an invalid selector matches nothing (as upstream's
    controllers treat a selector they cannot parse); an empty selector matches everything."""
    try:
        sel = label_selector(selector)
    except ValueError:
        return lambda labels: False
    return sel.matches


def is_empty_selector(selector: Mapping[str, Any] | None) -> bool:
    return not selector or not (selector.get("matchLabels") or selector.get("matchExpressions"))


def pod_from_template(template: Mapping[str, Any], owner_ref: Mapping[str, Any], *, generate_name: str | None = None,
                      name: str | None = None) -> Obj:
    """controller.GetPodFromTemplate: the template's labels, annotations, finalizers and spec under a new name."""
    tmeta = template.get("metadata") or {}
    pod_meta: dict[str, Any] = {"labels": dict(tmeta.get("labels") or {}),
                                "annotations": dict(tmeta.get("annotations") or {}),
                                "ownerReferences": [dict(owner_ref)]}
    if tmeta.get("finalizers"):
        pod_meta["finalizers"] = list(tmeta["finalizers"])
    if name:
        pod_meta["name"] = name
    else:
        pod_meta["generateName"] = generate_name or f"{owner_ref['name']}-"
    if not pod_meta["annotations"]:
        del pod_meta["annotations"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": copy_object(template.get("spec") or {})}


def pods_prefix(controller_name: str) -> str:
    """getPodsPrefix: `<name>-`, shortened so generated names stay valid (63 chars max for a generateName base)."""
    prefix = f"{controller_name}-"
    return prefix if len(prefix) <= 58 else prefix[:58]


# ------------------------------------------------------------------------------------------------------- pods


def pod_phase(pod: Mapping[str, Any]) -> str:
    return (pod.get("status") or {}).get("phase") or ""


def is_pod_terminating(pod: Mapping[str, Any]) -> bool:
    return bool(meta(pod).get("deletionTimestamp"))


def is_pod_active(pod: Mapping[str, Any]) -> bool:
    """controller.IsPodActive: not Succeeded, not Failed, not being deleted."""
    return pod_phase(pod) not in ("Succeeded", "Failed") and not is_pod_terminating(pod)


def pod_condition(pod: Mapping[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    cond = pod_condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def pod_ready_time(pod: Mapping[str, Any]) -> float | None:
    """When the pod last became Ready (None if it is not ready)."""
    cond = pod_condition(pod, "Ready")
    if cond is None or cond.get("status") != "True":
        return None
    return parse_time(cond.get("lastTransitionTime"))


def is_pod_available(pod: Mapping[str, Any], min_ready_seconds: int, now: float) -> bool:
    """podutil.IsPodAvailable: ready, and ready for at least minReadySeconds."""
    if not is_pod_ready(pod):
        return False
    if not min_ready_seconds:
        return True
    since = pod_ready_time(pod)
    return since is not None and since + min_ready_seconds <= now



def max_container_restarts(pod: Mapping[str, Any]) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return max((int(s.get("restartCount") or 0) for s in statuses), default=0)


def pod_deletion_cost(pod: Mapping[str, Any]) -> int:
    value = (meta(pod).get("annotations") or {}).get(POD_DELETION_COST_ANNOTATION)
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


_PHASE_ORDINAL = {"Pending": 0, "Unknown": 1, "Running": 2}


def _log_rank(t: float | None, now: float) -> int:
    # logarithmicRankDiff works on nanosecond durations: int(log2(d)).
    if t is None:
        return -1
    d = (now - t) * 1e9
    return -1 if d <= 0 else int(math.log2(d))


def _created(pod: Mapping[str, Any]) -> float | None:
    return parse_time(meta(pod).get("creationTimestamp"))


def compare_pods_for_deletion(a: Mapping[str, Any], b: Mapping[str, Any], rank_a: int = 0, rank_b: int = 0,
                              now: float | None = None) -> int:
    """controller.ActivePodsWithRanks.Less as a cmp: negative when ``a`` should be deleted before ``b``.

    Unassigned < assigned; Pending < Unknown < Running; not ready < ready; lower pod-deletion-cost first; more
    pods of the same owner on the node first; ready for less time first; more restarts first; newer first —
    with upstream's logarithmic time buckets (LogarithmicScaleDown) so near-equal ages fall back to the uid.
    """
    na, nb = bool((a.get("spec") or {}).get("nodeName")), bool((b.get("spec") or {}).get("nodeName"))
    if na != nb:
        return -1 if not na else 1
    pa, pb = _PHASE_ORDINAL.get(pod_phase(a), 0), _PHASE_ORDINAL.get(pod_phase(b), 0)
    if pa != pb:
        return -1 if pa < pb else 1
    ra, rb = is_pod_ready(a), is_pod_ready(b)
    if ra != rb:
        return -1 if not ra else 1
    ca, cb = pod_deletion_cost(a), pod_deletion_cost(b)
    if ca != cb:
        return -1 if ca < cb else 1
    if rank_a != rank_b:
        return -1 if rank_a > rank_b else 1
    uid_cmp = -1 if meta(a).get("uid", "") < meta(b).get("uid", "") else 1
    if ra and rb:
        ta, tb = pod_ready_time(a), pod_ready_time(b)
        if ta != tb:
            if now is None or ta is None or tb is None:
                return _after_or_zero(ta, tb)
            diff = _log_rank(ta, now) - _log_rank(tb, now)
            return uid_cmp if diff == 0 else (-1 if diff < 0 else 1)
    restarts_a, restarts_b = max_container_restarts(a), max_container_restarts(b)
    if restarts_a != restarts_b:
        return -1 if restarts_a > restarts_b else 1
    ta, tb = _created(a), _created(b)
    if ta != tb:
        if now is None or ta is None or tb is None:
            return _after_or_zero(ta, tb)
        diff = _log_rank(ta, now) - _log_rank(tb, now)
        return uid_cmp if diff == 0 else (-1 if diff < 0 else 1)
    return 0


def _after_or_zero(t1: float | None, t2: float | None) -> int:
    # afterOrZero: a zero (unknown) time sorts first, then the later time.
    if t1 is None or t2 is None:
        return -1 if t1 is None else 1
    return -1 if t1 > t2 else 1


def rank_pods_for_deletion(pods: list[Obj], related: Iterable[Obj] = (), now: float | None = None) -> list[Obj]:
    """Pods in the order a ReplicaSet deletes them, ranked by how many related active pods share their node
    (getPodsRankedByRelatedPodsOnSameNode)."""
    on_node: dict[str, int] = {}
    for pod in related:
        node = (pod.get("spec") or {}).get("nodeName")
        if node and is_pod_active(pod):
            on_node[node] = on_node.get(node, 0) + 1
    ranked: list[tuple[Obj, int]] = [(pod, on_node.get((pod.get("spec") or {}).get("nodeName") or "", 0))
                                     for pod in pods]

    def cmp(x: tuple[Obj, int], y: tuple[Obj, int]) -> int:
        return compare_pods_for_deletion(x[0], y[0], x[1], y[1], now)

    ranked.sort(key=functools.cmp_to_key(cmp))
    return [pod for pod, _ in ranked]


# ------------------------------------------------------------------------------------------------- intstr


def scaled_value(value: int | str | None, total: int, round_up: bool, default: int | str = 0) -> int:
    """intstr.GetScaledValueFromIntOrPercent."""
    if value is None:
        value = default
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text.endswith("%"):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"invalid value for IntOrString: invalid value {text!r}") from None
    percent = int(text[:-1])
    exact = percent * total / 100
    return math.ceil(exact) if round_up else math.floor(exact)


# --------------------------------------------------------------------------------------------- expectations


@dataclass
class _Expectation:
    add: int = 0
    delete: set[str] = field(default_factory=set)
    pending_deletes: int = 0  # deletions expected without knowing the keys (count only)
    at: float = 0.0


class Expectations:
    """ControllerExpectations + UIDTrackingControllerExpectations: what a controller is waiting to see in its cache.

    After creating N pods a controller must not create them again before the informer has shown them, however
    fast the next reconcile comes; the same for deletions (tracked per pod key, so one deletion is counted once
    however many events it produces). Expectations older than five minutes are considered satisfied, as upstream,
    so a lost event cannot wedge a controller.
    """

    TTL = 300.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._items: dict[str, _Expectation] = {}

    def satisfied(self, key: str) -> bool:
        exp = self._items.get(key)
        if exp is None:
            return True
        if exp.add <= 0 and not exp.delete and exp.pending_deletes <= 0:
            return True
        return self._clock() - exp.at > self.TTL

    def expect_creations(self, key: str, count: int) -> None:
        exp = self._items.setdefault(key, _Expectation())
        exp.add = count
        exp.at = self._clock()

    def expect_deletions(self, key: str, pod_keys: Iterable[str]) -> None:
        exp = self._items.setdefault(key, _Expectation())
        exp.delete = set(pod_keys)
        exp.at = self._clock()

    def expect_deletion_count(self, key: str, count: int) -> None:
        exp = self._items.setdefault(key, _Expectation())
        exp.pending_deletes = count
        exp.at = self._clock()

    def creation_observed(self, key: str) -> None:
        exp = self._items.get(key)
        if exp is not None and exp.add > 0:
            exp.add -= 1

    def deletion_observed(self, key: str, pod_key: str | None = None) -> None:
        exp = self._items.get(key)
        if exp is None:
            return
        if pod_key is not None and pod_key in exp.delete:
            exp.delete.discard(pod_key)
        elif exp.pending_deletes > 0:
            exp.pending_deletes -= 1

    def lower(self, key: str, add: int = 0, deleted_keys: Iterable[str] = ()) -> None:
        """Give up on expectations that will not be met (a create or delete failed)."""
        exp = self._items.get(key)
        if exp is None:
            return
        exp.add = max(0, exp.add - add)
        for k in deleted_keys:
            exp.delete.discard(k)

    def forget(self, key: str) -> None:
        self._items.pop(key, None)


# ----------------------------------------------------------------------------------------- claiming (adoption)


class ControllerRefManager:
    """Adopt orphans that match the selector and release owned objects that stopped matching (ClaimObjects).

    Adoption first re-reads the owner from the API server (RecheckDeletionTimestamp): an owner that is being
    deleted, or was replaced by a new object of the same name, must not take new children.
    """

    def __init__(self, client: ApiClient, owner: Obj, owner_resource: Resource,
                 matches: Callable[[Mapping[str, str] | None], bool],
                 extra_filter: Callable[[Obj], bool] | None = None) -> None:
        self.client = client
        self.owner = owner
        self.owner_resource = owner_resource
        self.matches = matches
        self.extra_filter = extra_filter
        self._can_adopt: bool | None = None

    async def can_adopt(self) -> bool:
        if self._can_adopt is None:
            m = meta(self.owner)
            try:
                fresh = await self.client.get(self.owner_resource, m["name"], m.get("namespace"))
            except NotFound:
                self._can_adopt = False
            else:
                fm = meta(fresh)
                self._can_adopt = fm.get("uid") == m.get("uid") and not fm.get("deletionTimestamp")
        return self._can_adopt

    async def claim(self, resource: Resource, objects: Iterable[Obj]) -> list[Obj]:
        owner_meta = meta(self.owner)
        owner_uid = owner_meta.get("uid")
        owner_deleting = bool(owner_meta.get("deletionTimestamp"))
        claimed: list[Obj] = []
        for obj in objects:
            if self.extra_filter is not None and not self.extra_filter(obj):
                continue
            ref = get_controller_of(obj)
            labels = meta(obj).get("labels") or {}
            if ref is not None:
                if ref.get("uid") != owner_uid:
                    continue  # someone else's
                if self.matches(labels):
                    claimed.append(obj)
                    continue
                if owner_deleting:
                    continue  # a deleting owner keeps what it has; GC sorts it out
                await self._release(resource, obj)
                continue
            if owner_deleting or meta(obj).get("deletionTimestamp") or not self.matches(labels):
                continue
            if not await self.can_adopt():
                continue
            adopted = await self._adopt(resource, obj)
            if adopted is not None:
                claimed.append(adopted)
        return claimed

    async def _adopt(self, resource: Resource, obj: Obj) -> Obj | None:
        ref = controller_ref(self.owner, self.owner_resource.api_version, self.owner_resource.kind)
        m = meta(obj)
        patch = {"metadata": {"ownerReferences": [ref], "uid": m.get("uid")}}
        try:
            return await self.client.patch(resource, m["name"], patch, m.get("namespace"), patch_type="strategic")
        except (NotFound, api_errors.Invalid, api_errors.Conflict):
            return None  # gone, or changed under us: the next sync looks again

    async def _release(self, resource: Resource, obj: Obj) -> None:
        m = meta(obj)
        patch = {"metadata": {"ownerReferences": [{"$patch": "delete", "uid": meta(self.owner).get("uid")}],
                              "uid": m.get("uid")}}
        try:
            await self.client.patch(resource, m["name"], patch, m.get("namespace"), patch_type="strategic")
        except (NotFound, api_errors.Invalid, api_errors.Conflict):
            pass


# ------------------------------------------------------------------------------------------------------- events


# ------------------------------------------------------------------------------------------------------- pods


async def update_pod_status(client: ApiClient, pod: Obj, status_of: Callable[[Obj], Obj | None],
                            attempts: int = 3) -> Obj | None:
    """Write ``status_of(pod)`` as the pod's status (None from it: nothing to write, the pod is returned as it is).

    After a conflict (the informer's copy was stale) the status is decided again on the live pod, never on a new pod
    of the same name. Returns the pod as written or last read, or None when it is gone or was replaced; a conflict
    on the last attempt is raised."""
    meta_ = pod["metadata"]
    for attempt in range(attempts):
        status = status_of(pod)
        if status is None:
            return pod
        try:
            written: Obj = await client.update_status(PODS, {**pod, "status": status})
            return written
        except NotFound:
            return None
        except api_errors.Conflict:
            if attempt == attempts - 1:
                raise
            try:
                pod = await client.get(PODS, meta_["name"], meta_.get("namespace"))
            except NotFound:
                return None
            if pod["metadata"].get("uid") != meta_.get("uid"):
                return None
    return pod


# ------------------------------------------------------------------------------------------------------- misc


async def gather_limited(calls: list[Callable[[], Awaitable[Any]]], initial_batch: int = 1) -> tuple[int, list[Any]]:
    """slowStartBatch: run ``calls`` in batches of 1, 2, 4, ... stopping after the first batch with a failure.

    Returns how many succeeded and the results of those that ran (exceptions included). A burst of creates that all
    fail the same way (quota, admission) then costs a handful of requests, not hundreds.
    """
    done = 0
    results: list[Any] = []
    remaining = list(calls)
    batch = min(initial_batch, len(remaining))
    while remaining:
        current, remaining = remaining[:batch], remaining[batch:]
        outcome = await asyncio.gather(*(c() for c in current), return_exceptions=True)
        results.extend(outcome)
        ok = sum(1 for r in outcome if not isinstance(r, BaseException))
        done += ok
        if ok != len(current):
            break
        batch = min(2 * batch, len(remaining))
    return done, results


def add_indexes(informer: Informer) -> Informer:
    """The indexes every workload controller asks of a shared informer: by namespace, by controller uid, and
    the orphans of each namespace."""
    from controlplane.client import namespace_index

    informer.add_index("namespace", namespace_index)
    informer.add_index(CONTROLLER_INDEX, controller_uid_index)
    informer.add_index(ORPHAN_INDEX, orphan_namespace_index)
    return informer


def orphan_namespace_index(obj: Mapping[str, Any]) -> str | None:
    """Index function: the namespace of an object without a controller ownerReference."""
    return None if get_controller_of(obj) is not None else (meta(obj).get("namespace") or "")


def claim_candidates(informer: Informer, owner: Mapping[str, Any]) -> list[Obj]:
    """What ``ControllerRefManager.claim`` can act on for ``owner``: the objects it controls (to keep or release)
    and the orphans of its namespace (to adopt). Everything else belongs to another controller and would be
    skipped; not scanning it keeps a sync O(own objects) rather than O(namespace), which is what lets a thousand
    ReplicaSets share one namespace. The informer needs ``add_indexes``."""
    m = meta(owner)
    return [*informer.by_index(CONTROLLER_INDEX, m.get("uid") or ""),
            *informer.by_index(ORPHAN_INDEX, m.get("namespace") or "")]



# -------------------------------------------------------------------------------------- ControllerRevisions


def revision_name(parent_name: str, hash_: str) -> str:
    """history.ControllerRevisionName: `<parent>-<hash>`, the parent's name cut so the whole stays a valid name."""
    return f"{parent_name[:223]}-{hash_}"


def revision_number(rev: Mapping[str, Any]) -> int:
    return int(rev.get("revision") or 0)


def sort_revisions(revisions: list[Obj]) -> list[Obj]:
    """history.SortControllerRevisions: by revision number, then creation time, then name."""
    return sorted(revisions, key=lambda r: (revision_number(r), parse_time(meta(r).get("creationTimestamp")) or 0.0,
                                            meta(r).get("name", "")))


def equal_revision(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """history.EqualRevision: the same data (semantically)."""
    return bool(semantic(a.get("data")) == semantic(b.get("data")))


def new_controller_revision(parent: Obj, parent_api_version: str, parent_kind: str, template_labels: Mapping[str, str],
                            data: Obj, revision: int, collision_count: int | None) -> Obj:
    """history.NewControllerRevision: labelled like the template plus `controller-revision-hash`, owned by the
    parent, named `<parent>-<hash of the data>`."""
    hash_ = compute_hash(data, collision_count)
    return {
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": revision_name(meta(parent)["name"], hash_), "namespace": meta(parent).get("namespace"),
                     "labels": {**template_labels, CONTROLLER_REVISION_HASH_LABEL: hash_},
                     "ownerReferences": [controller_ref(parent, parent_api_version, parent_kind)]},
        "data": data,
        "revision": revision,
    }


async def create_controller_revision(client: ApiClient, parent: Obj, parent_api_version: str, parent_kind: str,
                                     template_labels: Mapping[str, str], data: Obj, revision: int,
                                     collision_count: int) -> tuple[Obj, int]:
    """history.CreateControllerRevision: create it; on a name clash with different data, bump the collision count
    and try the next name. Returns the revision (new or an equal existing one) and the collision count used."""
    from controlplane.client.resources import CONTROLLERREVISIONS

    while True:
        rev = new_controller_revision(parent, parent_api_version, parent_kind, template_labels, data, revision,
                                      collision_count)
        try:
            return await client.create(CONTROLLERREVISIONS, rev), collision_count
        except api_errors.AlreadyExists:
            existing = await client.get(CONTROLLERREVISIONS, meta(rev)["name"], meta(rev).get("namespace"))
            if equal_revision(existing, rev):
                return existing, collision_count
            collision_count += 1
