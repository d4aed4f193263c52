"""The Job controller (and the TTL-after-finished controller), as upstream's pkg/controller/job and ttlafterfinished.

Jobs run pods to `completions` with `parallelism` at a time, replace failed pods with exponential backoff until
`backoffLimit` failures, stop at `activeDeadlineSeconds`, honour `suspend` (pods deleted, Suspended condition,
startTime reset on resume) and `podFailurePolicy` (FailJob / Ignore / Count on exit codes and pod conditions such as
DisruptionTarget). Indexed jobs give each pod a completion index (annotation and label
batch.kubernetes.io/job-completion-index, JOB_COMPLETION_INDEX env, hostname `<job>-<index>`) and track
status.completedIndexes. Pods are counted through the batch.kubernetes.io/job-tracking finalizer as upstream does:
a finished pod's uid goes to status.uncountedTerminatedPods, its finalizer is removed, then it moves into the
succeeded/failed counters — so a pod deleted early can never be missed or counted twice. Finishing is two-step as
in 1.31+: SuccessCriteriaMet / FailureTarget first, Complete / Failed once no pod is left terminating.

The TTL-after-finished controller deletes a finished Job `ttlSecondsAfterFinished` after it finished, with
background propagation; it lives here because it is the Job's other half (upstream keeps it in its own package).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

from controlplane.client import ApiClient, Clock, NotFound, SharedInformerFactory
from controlplane.client import errors as api_errors
from controlplane.client.protocol import copy_object
from controlplane.client.resources import JOBS, PODS
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
    compare_pods_for_deletion,
    controller_clock,
    controller_ref,
    format_time,
    gather_limited,
    get_controller_of,
    is_pod_active,
    is_pod_ready,
    key_of,
    meta,
    option,
    parse_time,
    pod_condition,
    pod_from_template,
    pod_phase,
    pods_prefix,
    resolve_controller_ref,
    selector_matcher,
)

log = logging.getLogger(__name__)

TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # annotation and label
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"
MAX_UNCOUNTED_PODS = 500
MAX_POD_CREATE_DELETE_PER_SYNC = 500
ORPHAN_PREFIX = "pod:"  # keys of pods whose tracking finalizer may need removing (namespaces cannot hold ':')


# ------------------------------------------------------------------------------------------------ job helpers


def conditions_of(job: Obj) -> list[Obj]:
    return list((job.get("status") or {}).get("conditions") or [])


def find_condition(job: Obj, ctype: str) -> Obj | None:
    for c in conditions_of(job):
        if c.get("type") == ctype:
            return c
    return None


def is_finished(job: Obj) -> bool:
    """util.IsJobFinished: Complete or Failed is True."""
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions_of(job))


def finish_time(job: Obj) -> float | None:
    for c in conditions_of(job):
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return parse_time(c.get("lastTransitionTime"))
    return None


def is_indexed(job: Obj) -> bool:
    return (job.get("spec") or {}).get("completionMode") == "Indexed"


def is_suspended(job: Obj) -> bool:
    return bool((job.get("spec") or {}).get("suspend"))


def completions_of(job: Obj) -> int | None:
    value = (job.get("spec") or {}).get("completions")
    return None if value is None else int(value)


def has_finalizer(pod: Obj) -> bool:
    return TRACKING_FINALIZER in (meta(pod).get("finalizers") or [])


def completion_index(pod: Obj) -> int:
    value = (meta(pod).get("annotations") or {}).get(COMPLETION_INDEX)
    try:
        index = int(value) if value is not None else -1
    except ValueError:
        return -1
    return index if index >= 0 else -1


def only_replace_failed(job: Obj) -> bool:
    spec = job.get("spec") or {}
    return spec.get("podReplacementPolicy") == "Failed" or spec.get("podFailurePolicy") is not None


def is_pod_failed(pod: Obj, job: Obj) -> bool:
    """A Failed pod; under TerminatingOrFailed also one being deleted before it succeeded."""
    if pod_phase(pod) == "Failed":
        return True
    if only_replace_failed(job):
        return False
    return bool(meta(pod).get("deletionTimestamp")) and pod_phase(pod) != "Succeeded"


def is_terminating(pod: Obj) -> bool:
    return bool(meta(pod).get("deletionTimestamp")) and pod_phase(pod) not in ("Succeeded", "Failed")


def new_condition(ctype: str, status: str, reason: str, message: str, now: str) -> Obj:
    return {"type": ctype, "status": status, "lastProbeTime": now, "lastTransitionTime": now, "reason": reason,
            "message": message}


def ensure_condition(conditions: list[Obj], ctype: str, status: str, reason: str, message: str, now: str) -> bool:
    """ensureJobConditionStatus: update a differing condition, add a new non-False one. True if changed."""
    for i, c in enumerate(conditions):
        if c.get("type") == ctype:
            if c.get("status") != status or c.get("reason") != reason or c.get("message") != message:
                conditions[i] = new_condition(ctype, status, reason, message, now)
                return True
            return False
    if status != "False":
        conditions.append(new_condition(ctype, status, reason, message, now))
        return True
    return False


# --- pod failure policy ---------------------------------------------------------------------------------------


def _exit_code_matches(code: int, req: Obj) -> bool:
    values = req.get("values") or []
    return code in values if req.get("operator") == "In" else code not in values


def _matching_container(pod: Obj, req: Obj) -> Obj | None:
    status = pod.get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated is None:
            continue
        if req.get("containerName") not in (None, cs.get("name")):
            continue
        code = int(terminated.get("exitCode") or 0)
        if code != 0 and _exit_code_matches(code, req):
            return cs
    return None


def match_pod_failure_policy(policy: Obj | None, pod: Obj) -> tuple[str | None, bool, str | None]:
    """matchPodFailurePolicy: (job failure message, whether the failure counts, the matched action)."""
    if policy is None:
        return None, True, None
    for i, rule in enumerate(policy.get("rules") or []):
        action = rule.get("action")
        if rule.get("onExitCodes") is not None:
            cs = _matching_container(pod, rule["onExitCodes"])
            if cs is None:
                continue
            if action == "Ignore":
                return None, False, action
            if action == "Count":
                return None, True, action
            if action == "FailJob":
                code = cs["state"]["terminated"]["exitCode"]
                m = meta(pod)
                message = (f"Container {cs['name']} for pod {m.get('namespace')}/{m.get('name')} failed with "
                           f"exit code {code} matching {action} rule at index {i}")
                return message, True, action
            if action == "FailIndex":
                return None, True, action
        elif rule.get("onPodConditions") is not None:
            for pattern in rule["onPodConditions"]:
                cond = pod_condition(pod, pattern.get("type", ""))
                if cond is None or cond.get("status") != pattern.get("status", "True"):
                    continue
                if action == "Ignore":
                    return None, False, action
                if action == "Count":
                    return None, True, action
                if action == "FailJob":
                    m = meta(pod)
                    message = (f"Pod {m.get('namespace')}/{m.get('name')} has condition {cond['type']} matching "
                               f"{action} rule at index {i}")
                    return message, True, action
                if action == "FailIndex":
                    return None, True, action
    return None, True, None


# --- completed index intervals ----------------------------------------------------------------------------------


def parse_indexes(text: str | None, completions: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for part in (text or "").split(","):
        if not part:
            continue
        first_text, _, last_text = part.partition("-")
        try:
            first = int(first_text)
            last = int(last_text) if last_text else first
        except ValueError:
            continue
        if first >= completions:
            break
        last = min(last, completions - 1)
        if out and out[-1][1] == first - 1:
            out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


def with_indexes(intervals: list[tuple[int, int]], new: list[int]) -> list[tuple[int, int]]:
    points = sorted({i for a, b in intervals for i in range(a, b + 1)} | set(new))
    out: list[tuple[int, int]] = []
    for p in points:
        if out and out[-1][1] == p - 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def format_indexes(intervals: list[tuple[int, int]]) -> str:
    parts = []
    for a, b in intervals:
        parts.append(str(a) if a == b else f"{a},{b}" if b == a + 1 else f"{a}-{b}")
    return ",".join(parts)


def total_indexes(intervals: list[tuple[int, int]]) -> int:
    return sum(b - a + 1 for a, b in intervals)


def has_index(intervals: list[tuple[int, int]], ix: int) -> bool:
    return any(a <= ix <= b for a, b in intervals)


# --- backoff ------------------------------------------------------------------------------------------------


@dataclass
class BackoffRecord:
    failures_after_last_success: int = 0
    last_failure_time: float | None = None


def finished_time(pod: Obj) -> float:
    """getFinishedTime: latest container finish, else Ready=False transition, else deletion, else creation."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    latest: float | None = None
    all_done = bool(statuses)
    for cs in statuses:
        terminated = (cs.get("state") or {}).get("terminated") or {}
        t = parse_time(terminated.get("finishedAt"))
        if t is None:
            all_done = False
            break
        latest = t if latest is None else max(latest, t)
    if all_done and latest is not None:
        return latest
    ready = pod_condition(pod, "Ready")
    if ready is not None and ready.get("status") == "False" and parse_time(ready.get("lastTransitionTime")):
        return parse_time(ready.get("lastTransitionTime")) or 0.0
    deleted = parse_time(meta(pod).get("deletionTimestamp"))
    if deleted is not None:
        return deleted - int(meta(pod).get("deletionGracePeriodSeconds") or 0)
    return parse_time(meta(pod).get("creationTimestamp")) or 0.0


def next_backoff(record: BackoffRecord, succeeded: list[Obj], failed: list[Obj]) -> BackoffRecord:
    rec = BackoffRecord(record.failures_after_last_success, record.last_failure_time)
    succeeded = sorted(succeeded, key=finished_time)
    failed = sorted(failed, key=finished_time)
    if not succeeded:
        if failed:
            rec.failures_after_last_success += len(failed)
            rec.last_failure_time = finished_time(failed[-1])
        return rec
    rec.failures_after_last_success, rec.last_failure_time = 0, None
    last_success = finished_time(succeeded[-1])
    for pod in reversed(failed):
        t = finished_time(pod)
        if t <= last_success:
            break
        if rec.last_failure_time is None:
            rec.last_failure_time = t
        rec.failures_after_last_success += 1
    return rec


def remaining_backoff(record: BackoffRecord, now: float, base: float, cap: float) -> float:
    if record.failures_after_last_success == 0 or record.last_failure_time is None:
        return 0.0
    delay = base
    for _ in range(1, record.failures_after_last_success):
        delay *= 2
        if delay >= cap:
            delay = cap
            break
    elapsed = now - record.last_failure_time
    return 0.0 if delay < elapsed else delay - elapsed


# ------------------------------------------------------------------------------------------------ controller


@dataclass
class _Ctx:
    job: Obj
    pods: list[Obj]
    active_pods: list[Obj]
    ready: int
    uncounted_succeeded: set[str]
    uncounted_failed: set[str]
    expected_rm: set[str]
    terminating: int = 0
    succeeded: int = 0
    failed: int = 0
    finished: Obj | None = None
    prev_indexes: list[tuple[int, int]] = field(default_factory=list)
    indexes: list[tuple[int, int]] = field(default_factory=list)
    backoff: BackoffRecord = field(default_factory=BackoffRecord)


class JobController:
    name = "job"

    def __init__(self, ctx: ControllerContext | None = None, *, workers: int | None = None,
                 clock: Clock | None = None, pod_failure_backoff: float | None = None,
                 max_pod_failure_backoff: float | None = None) -> None:
        self.workers = workers or option(ctx, "concurrent_job_syncs", 5)
        self.clock: Clock = controller_clock(ctx, clock)
        # Upstream: 10 s doubling to 10 min between pod re-creations after failures (DefaultJobPodFailureBackOff).
        self.pod_failure_backoff = float(pod_failure_backoff or option(ctx, "job_pod_failure_backoff", 10.0))
        self.max_pod_failure_backoff = float(max_pod_failure_backoff or
                                             option(ctx, "job_max_pod_failure_backoff", 600.0))
        self.expectations = Expectations()
        self.finalizer_expectations: dict[str, set[str]] = {}
        # The Job as this controller last wrote its status, until the informer catches up with it: the counts of
        # pods whose tracking finalizer is already gone live only there, and a sync on an older copy would see too
        # few succeeded pods and create more than the Job needs.
        self._written: dict[str, Obj] = {}
        self.backoff: dict[str, BackoffRecord] = {}

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.enqueue = enqueue
        self.timers = Timers(self.clock, enqueue)
        self.events = EventRecorder(client, "job-controller", self.clock)
        self.job_informer = add_indexes(informers.informer(JOBS))
        self.pod_informer = add_indexes(informers.informer(PODS))
        self.job_informer.add_handler(on_add=lambda j: enqueue(key_of(j)), on_update=self._job_updated,
                                      on_delete=self._job_deleted)
        self.pod_informer.add_handler(on_add=self._pod_added, on_update=self._pod_updated,
                                      on_delete=lambda p: self._pod_deleted(p, final=True))

    async def shutdown(self) -> None:
        await self.timers.stop()
        await self.events.aclose()

    # -- events -----------------------------------------------------------------------------------------------

    def _job_for(self, pod: Obj, ref: Obj | None = None) -> Obj | None:
        return resolve_controller_ref(self.job_informer, pod, "Job", ref)

    def _enqueue_orphan(self, pod: Obj) -> None:
        self.enqueue(ORPHAN_PREFIX + key_of(pod))

    def _job_updated(self, old: Obj, new: Obj) -> None:
        self.enqueue(key_of(new))
        if is_finished(new):
            self._cleanup_pod_finalizers(new)

    def _job_deleted(self, job: Obj) -> None:
        self.enqueue(key_of(job))
        self._cleanup_pod_finalizers(job)

    def _cleanup_pod_finalizers(self, job: Obj) -> None:
        for pod in self.pod_informer.by_index(CONTROLLER_INDEX, meta(job).get("uid") or ""):
            if has_finalizer(pod):
                self._enqueue_orphan(pod)

    def _pod_added(self, pod: Obj) -> None:
        if meta(pod).get("deletionTimestamp"):
            self._pod_deleted(pod, final=False)
            return
        ref = get_controller_of(pod)
        if ref is not None:
            job = self._job_for(pod, ref)
            if job is None:
                if has_finalizer(pod) and ref.get("kind") == "Job":
                    self._enqueue_orphan(pod)
                return
            self.expectations.creation_observed(key_of(job))
            self.enqueue(key_of(job))
            return
        if has_finalizer(pod):
            self._enqueue_orphan(pod)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        if meta(new).get("resourceVersion") == meta(old).get("resourceVersion"):
            return
        if meta(new).get("deletionTimestamp"):
            self._pod_deleted(new, final=False)
            return
        removed = not has_finalizer(new)
        old_ref, new_ref = get_controller_of(old), get_controller_of(new)
        if old_ref != new_ref and old_ref is not None:
            job = self._job_for(old, old_ref)
            if job is not None:
                if removed:
                    self._finalizer_observed(key_of(job), meta(new).get("uid", ""))
                self.enqueue(key_of(job))
        if new_ref is not None:
            job = self._job_for(new, new_ref)
            if job is None:
                if has_finalizer(new) and new_ref.get("kind") == "Job":
                    self._enqueue_orphan(new)
                return
            if removed:
                self._finalizer_observed(key_of(job), meta(new).get("uid", ""))
            self.enqueue(key_of(job))
            return
        if has_finalizer(new):
            self._enqueue_orphan(new)

    def _pod_deleted(self, pod: Obj, final: bool) -> None:
        ref = get_controller_of(pod)
        job = self._job_for(pod, ref) if ref is not None else None
        if job is None or is_finished(job):
            if has_finalizer(pod):
                self._enqueue_orphan(pod)
            return
        key = key_of(job)
        self.expectations.deletion_observed(key, key_of(pod))
        if final or not has_finalizer(pod):
            self._finalizer_observed(key, meta(pod).get("uid", ""))
        self.enqueue(key)

    def _finalizer_observed(self, key: str, uid: str) -> None:
        pending = self.finalizer_expectations.get(key)
        if pending is not None:
            pending.discard(uid)
            if not pending:
                del self.finalizer_expectations[key]

    # -- reconcile --------------------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        if key.startswith(ORPHAN_PREFIX):
            await self._sync_orphan_pod(key[len(ORPHAN_PREFIX):])
            return DONE
        await self._sync_job(key)
        return DONE

    async def _sync_orphan_pod(self, key: str) -> None:
        pod = self.pod_informer.get(key)
        if pod is None or not has_finalizer(pod):
            return
        ref = get_controller_of(pod)
        if ref is not None:
            if ref.get("kind") != "Job" or ref.get("apiVersion") != JOBS.api_version:
                return  # not ours to touch
            job = self._job_for(pod, ref)
            if job is not None and not is_finished(job):
                return  # it has a live Job: that Job's sync handles it
        await self._remove_finalizer(pod)

    async def _remove_finalizer(self, pod: Obj) -> None:
        patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}}
        try:
            await self.client.patch(PODS, meta(pod)["name"], patch, meta(pod).get("namespace"),
                                    patch_type="strategic")
        except NotFound:
            pass

    def _now(self) -> str:
        return format_time(self.clock.now())

    async def _pods_for(self, job: Obj) -> list[Obj]:
        matches = selector_matcher((job.get("spec") or {}).get("selector"))
        manager = ControllerRefManager(self.client, job, JOBS, matches)
        return await manager.claim(PODS, claim_candidates(self.pod_informer, job))

    async def _sync_job(self, key: str) -> None:
        cached = self.job_informer.get(key)
        written = self._written.get(key)
        if cached is None:
            self._written.pop(key, None)
            self.expectations.forget(key)
            self.finalizer_expectations.pop(key, None)
            self.backoff.pop(key, None)
            return
        if written is not None:
            if meta(written).get("uid") == meta(cached).get("uid") and _newer(written, cached):
                cached = written
            else:
                del self._written[key]  # the informer has caught up (or the Job was recreated)
        job = copy_object(cached)
        if is_finished(job):
            self.backoff.pop(key, None)
            return
        spec = job.setdefault("spec", {})
        if spec.get("completionMode") not in (None, "NonIndexed", "Indexed"):
            self.events.event(job, "Warning", "UnknownCompletionMode",
                                    "Skipped Job sync because completion mode is unknown")
            return
        status = job.setdefault("status", {})
        uncounted = status.setdefault("uncountedTerminatedPods", {})
        satisfied = self.expectations.satisfied(key)
        pods = await self._pods_for(job)
        active_pods = [p for p in pods if is_pod_active(p)]
        ctx = _Ctx(job=job, pods=pods, active_pods=active_pods, ready=sum(1 for p in active_pods if is_pod_ready(p)),
                   uncounted_succeeded=set(uncounted.get("succeeded") or []),
                   uncounted_failed=set(uncounted.get("failed") or []),
                   expected_rm=set(self.finalizer_expectations.get(key, set())))
        ctx.terminating = sum(1 for p in pods if is_terminating(p))
        active = len(active_pods)
        new_succeeded, new_failed = self._new_finished_pods(ctx)
        ctx.succeeded = int(status.get("succeeded") or 0) + len(new_succeeded) + len(ctx.uncounted_succeeded)
        ctx.failed = (int(status.get("failed") or 0) + self._non_ignored(job, new_failed)
                      + len(ctx.uncounted_failed))
        now = self.clock.now()
        if not status.get("startTime") and not is_suspended(job):
            status["startTime"] = self._now()
        ctx.backoff = next_backoff(self.backoff.get(key, BackoffRecord()), new_succeeded, new_failed)

        manage_error: Exception | None = None
        backoff_limit = int(spec.get("backoffLimit", 6))
        ctx.finished = find_condition(job, "SuccessCriteriaMet")
        if ctx.finished is not None and ctx.finished.get("status") != "True":
            ctx.finished = None
        if ctx.finished is None:
            target = find_condition(job, "FailureTarget")
            if target is not None and target.get("status") == "True":
                ctx.finished = new_condition("Failed", "True", target.get("reason", ""), target.get("message", ""),
                                             self._now())
            else:
                message = self._fail_job_message(job, pods)
                if message is not None:
                    ctx.finished = new_condition("FailureTarget", "True", "PodFailurePolicy", message, self._now())
        if ctx.finished is None:
            if ctx.failed > backoff_limit or self._past_backoff_limit_on_failure(job, pods):
                ctx.finished = new_condition("FailureTarget", "True", "BackoffLimitExceeded",
                                             "Job has reached the specified backoff limit", self._now())
            elif self._past_active_deadline(job):
                ctx.finished = new_condition("FailureTarget", "True", "DeadlineExceeded",
                                             "Job was active longer than specified deadline", self._now())
            elif spec.get("activeDeadlineSeconds") is not None and not is_suspended(job):
                # The deadline is an instant: a delay from `now`, read before the pods were listed, would land
                # late by however long the sync has taken since (or by a step of a test's clock).
                started = parse_time(status.get("startTime")) or now
                self.timers.at(key, started + int(spec["activeDeadlineSeconds"]))
        if is_indexed(job):
            completions = completions_of(job) or 0
            ctx.prev_indexes = parse_indexes(status.get("completedIndexes"), completions)
            fresh = sorted({completion_index(p) for p in pods if pod_phase(p) == "Succeeded" and has_finalizer(p)
                            and 0 <= completion_index(p) < completions})
            ctx.indexes = with_indexes(ctx.prev_indexes, fresh)
            ctx.succeeded = total_indexes(ctx.indexes)

        suspend_changed = False
        if ctx.finished is not None:
            deleted_ready, deleted, error = await self._delete_active_pods(job, ctx.active_pods)
            if deleted != active or not satisfied:
                ctx.finished = None  # wait until the pods are gone from the cache too
            active -= deleted
            ctx.terminating += deleted
            ctx.ready -= deleted_ready
            manage_error = error
        else:
            manage_called = False
            if satisfied and not meta(job).get("deletionTimestamp"):
                try:
                    active = await self._manage_job(job, ctx)
                except Exception as exc:  # noqa: BLE001 - status still gets written; the error retries the key
                    manage_error = exc
                    active = len(ctx.active_pods)
                manage_called = True
            wanted = completions_of(job)
            if wanted is None:
                complete = ctx.succeeded > 0 and active == 0
            else:
                complete = ctx.succeeded >= wanted and active == 0
            if complete:
                ctx.finished = new_condition("SuccessCriteriaMet", "True", "CompletionsReached",
                                             "Reached expected number of succeeded pods", self._now())
            elif manage_called:
                conditions = status.setdefault("conditions", [])
                if is_suspended(job):
                    if ensure_condition(conditions, "Suspended", "True", "JobSuspended", "Job suspended",
                                        self._now()):
                        suspend_changed = True
                        self.events.event(job, "Normal", "Suspended", "Job suspended")
                elif ensure_condition(conditions, "Suspended", "False", "JobResumed", "Job resumed", self._now()):
                    suspend_changed = True
                    self.events.event(job, "Normal", "Resumed", "Job resumed")
                    # activeDeadlineSeconds counts continuous activity: resuming restarts the clock.
                    status["startTime"] = self._now()
        needs_update = (suspend_changed or active != int(status.get("active") or 0)
                        or ctx.ready != status.get("ready") or ctx.terminating != status.get("terminating"))
        status["active"] = active
        status["ready"] = ctx.ready
        status["terminating"] = ctx.terminating
        await self._track_and_remove_finalizers(key, ctx, needs_update)
        if manage_error is not None:
            raise manage_error

    def _new_finished_pods(self, ctx: _Ctx) -> tuple[list[Obj], list[Obj]]:
        def valid(p: Obj, uncounted: set[str]) -> bool:
            uid = meta(p).get("uid", "")
            if not has_finalizer(p) or uid in uncounted or uid in ctx.expected_rm:
                return False
            if is_indexed(ctx.job):
                ix = completion_index(p)
                if ix < 0 or ix >= (completions_of(ctx.job) or 0):
                    return False
            return True

        succeeded = [p for p in ctx.pods if valid(p, ctx.uncounted_succeeded) and pod_phase(p) == "Succeeded"]
        failed = [p for p in ctx.pods if valid(p, ctx.uncounted_failed) and is_pod_failed(p, ctx.job)]
        return succeeded, failed

    def _non_ignored(self, job: Obj, failed: list[Obj]) -> int:
        policy = (job.get("spec") or {}).get("podFailurePolicy")
        if policy is None:
            return len(failed)
        return sum(1 for p in failed if match_pod_failure_policy(policy, p)[1])

    def _fail_job_message(self, job: Obj, pods: list[Obj]) -> str | None:
        policy = (job.get("spec") or {}).get("podFailurePolicy")
        if policy is None:
            return None
        for pod in pods:
            if is_pod_failed(pod, job):
                message, _, _ = match_pod_failure_policy(policy, pod)
                if message is not None:
                    return message
        return None

    def _past_backoff_limit_on_failure(self, job: Obj, pods: list[Obj]) -> bool:
        template = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
        if template.get("restartPolicy") != "OnFailure":
            return False
        restarts = 0
        for pod in pods:
            if pod_phase(pod) in ("Running", "Pending"):
                status = pod.get("status") or {}
                for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
                    restarts += int(cs.get("restartCount") or 0)
        limit = int((job.get("spec") or {}).get("backoffLimit", 6))
        return restarts > 0 if limit == 0 else restarts >= limit

    def _past_active_deadline(self, job: Obj) -> bool:
        spec = job.get("spec") or {}
        started = parse_time((job.get("status") or {}).get("startTime"))
        if spec.get("activeDeadlineSeconds") is None or started is None or is_suspended(job):
            return False
        return self.clock.now() - started >= int(spec["activeDeadlineSeconds"])

    # -- pods -------------------------------------------------------------------------------------------------

    async def _delete_active_pods(self, job: Obj, pods: list[Obj]) -> tuple[int, int, Exception | None]:
        """Delete, keeping the tracking finalizers: the pods are counted as failed when they are removed."""
        async def delete(pod: Obj) -> None:
            try:
                await self.client.delete(PODS, meta(pod)["name"], meta(pod).get("namespace"))
            except NotFound:
                pass

        results = await asyncio.gather(*(delete(p) for p in pods), return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        deleted = len(pods) - len(errors)
        ready = sum(1 for p, r in zip(pods, results) if not isinstance(r, Exception) and is_pod_ready(p))
        return ready, deleted, errors[0] if errors else None

    async def _delete_job_pods(self, key: str, pods: list[Obj]) -> tuple[int, int, Exception | None]:
        """Remove the finalizer, then delete: pods removed on purpose (suspend, too many) are not failures."""
        async def delete(pod: Obj) -> None:
            try:
                if has_finalizer(pod):
                    await self._remove_finalizer(pod)
                await self.client.delete(PODS, meta(pod)["name"], meta(pod).get("namespace"))
            except NotFound:
                self.expectations.deletion_observed(key, key_of(pod))
            except Exception:
                self.expectations.deletion_observed(key, key_of(pod))
                raise

        results = await asyncio.gather(*(delete(p) for p in pods), return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        deleted = len(pods) - len(errors)
        ready = sum(1 for p, r in zip(pods, results) if not isinstance(r, Exception) and is_pod_ready(p))
        return ready, deleted, errors[0] if errors else None

    def _pods_for_removal(self, job: Obj, pods: list[Obj], at_least: int) -> list[Obj]:
        remove: list[Obj] = []
        left = list(pods)
        if is_indexed(job):
            completions = completions_of(job) or 0
            by_index: dict[int, list[Obj]] = {}
            left = []
            for pod in pods:
                ix = completion_index(pod)
                if ix < 0 or ix >= completions:
                    remove.append(pod)
                else:
                    by_index.setdefault(ix, []).append(pod)
            for ix in sorted(by_index):
                group = sorted(by_index[ix], key=functools.cmp_to_key(compare_pods_for_deletion))
                remove.extend(group[:-1])
                left.append(group[-1])
        if len(remove) < at_least:
            left.sort(key=functools.cmp_to_key(compare_pods_for_deletion))
            remove.extend(left[:at_least - len(remove)])
        return remove

    async def _manage_job(self, job: Obj, ctx: _Ctx) -> int:
        key = key_of(job)
        spec = job.get("spec") or {}
        active = len(ctx.active_pods)
        parallelism = int(spec.get("parallelism", 1))
        if is_suspended(job):
            victims = self._pods_for_removal(job, ctx.active_pods, active)
            self.expectations.expect_deletions(key, [key_of(p) for p in victims])
            ready, removed, error = await self._delete_job_pods(key, victims)
            ctx.terminating += removed
            ctx.ready -= ready
            if error is not None:
                raise error
            return active - removed
        completions = completions_of(job)
        if completions is None:
            want = active if ctx.succeeded > 0 else parallelism
        else:
            want = max(0, min(completions - ctx.succeeded, parallelism))
        victims = self._pods_for_removal(job, ctx.active_pods, max(0, active - want))
        victims = victims[:MAX_POD_CREATE_DELETE_PER_SYNC]
        if victims:
            self.expectations.expect_deletions(key, [key_of(p) for p in victims])
            ready, removed, error = await self._delete_job_pods(key, victims)
            ctx.terminating += removed
            ctx.ready -= ready
            if error is not None:
                raise error
            return active - removed
        terminating = ctx.terminating if only_replace_failed(job) else 0
        diff = want - terminating - active
        if diff <= 0:
            return active
        remaining = remaining_backoff(ctx.backoff, self.clock.now(), self.pod_failure_backoff,
                                      self.max_pod_failure_backoff)
        if remaining > 0:
            # In backoff after failures: look again when it ends. (Upstream reports active=0 meanwhile; the pods
            # that do run are reported here.)
            self.timers.after(key, remaining)
            return active
        diff = min(diff, MAX_POD_CREATE_DELETE_PER_SYNC)
        indexes: list[int] = []
        if is_indexed(job):
            indexes = self._first_pending_indexes(ctx, diff, completions or 0)
            diff = len(indexes)
            if diff == 0:
                return active
        self.expectations.expect_creations(key, diff)
        template = copy_object(spec.get("template") or {})
        if is_indexed(job):
            pod_spec = template.setdefault("spec", {})
            for group in ("initContainers", "containers"):
                for container in pod_spec.get(group) or []:
                    env = container.setdefault("env", [])
                    if not any(e.get("name") == COMPLETION_INDEX_ENV for e in env):
                        env.append({"name": COMPLETION_INDEX_ENV, "valueFrom": {"fieldRef": {
                            "fieldPath": f"metadata.labels['{COMPLETION_INDEX}']"}}})
        tmeta = template.setdefault("metadata", {})
        finalizers = list(tmeta.get("finalizers") or [])
        if TRACKING_FINALIZER not in finalizers:
            finalizers.append(TRACKING_FINALIZER)
        tmeta["finalizers"] = finalizers
        ref = controller_ref(job, JOBS.api_version, JOBS.kind)
        namespace = meta(job).get("namespace")
        job_name = meta(job)["name"]

        def creator(index: int | None) -> Any:
            async def create() -> Obj:
                t = template
                generate_name = pods_prefix(job_name)
                if index is not None:
                    t = copy_object(template)
                    tm = t.setdefault("metadata", {})
                    tm["annotations"] = {**(tm.get("annotations") or {}), COMPLETION_INDEX: str(index)}
                    tm["labels"] = {**(tm.get("labels") or {}), COMPLETION_INDEX: str(index)}
                    t.setdefault("spec", {})["hostname"] = f"{job_name}-{index}"
                    generate_name = _generate_name_with_index(job_name, index)
                pod = pod_from_template(t, ref, generate_name=generate_name)
                try:
                    return await self.client.create(PODS, pod, namespace)
                except Exception:
                    self.expectations.creation_observed(key)
                    raise
            return create

        calls = [creator(ix) for ix in indexes] if is_indexed(job) else [creator(None)] * diff
        created, results = await gather_limited(calls)
        skipped = diff - len(results)
        for _ in range(skipped):
            self.expectations.creation_observed(key)
        failures = [r for r in results if isinstance(r, BaseException)]
        if created:
            self.events.event(job, "Normal", "SuccessfulCreate",
                                    f"Created pod{'s' if created > 1 else ''}: " + ", ".join(
                                        meta(r)["name"] for r in results if isinstance(r, dict)))
        if failures:
            failure = failures[0]
            raise failure if isinstance(failure, Exception) else RuntimeError(str(failure))
        return active + created

    def _first_pending_indexes(self, ctx: _Ctx, count: int, completions: int) -> list[int]:
        busy = {completion_index(p) for p in ctx.active_pods if completion_index(p) >= 0}
        out: list[int] = []
        for ix in range(completions):
            if len(out) >= count:
                break
            if ix in busy or has_index(ctx.indexes, ix):
                continue
            out.append(ix)
        return out

    # -- status tracking --------------------------------------------------------------------------------------

    async def _track_and_remove_finalizers(self, key: str, ctx: _Ctx, needs_flush: bool) -> None:
        job = ctx.job
        status = job["status"]
        uncounted = status["uncountedTerminatedPods"]
        indexed = is_indexed(job)
        completions = completions_of(job) or 0
        pods = sorted(ctx.pods, key=completion_index) if indexed else ctx.pods
        with_finalizer = {meta(p)["uid"] for p in pods if has_finalizer(p) and meta(p)["uid"] not in ctx.expected_rm}
        if _clean_uncounted(status, with_finalizer):
            needs_flush = True
        to_remove: list[Obj] = []
        new_indexes: list[int] = []
        reached_max = False
        policy = (job.get("spec") or {}).get("podFailurePolicy")
        for pod in pods:
            uid = meta(pod)["uid"]
            if not has_finalizer(pod) or uid in ctx.expected_rm:
                continue
            failed = is_pod_failed(pod, job)
            if not (meta(job).get("deletionTimestamp") or ctx.finished is not None
                    or pod_phase(pod) == "Succeeded" or failed):
                continue
            to_remove.append(pod)
            if pod_phase(pod) == "Succeeded" and uid not in ctx.uncounted_failed:
                if indexed:
                    ix = completion_index(pod)
                    if 0 <= ix < completions and not has_index(ctx.prev_indexes, ix):
                        new_indexes.append(ix)
                        needs_flush = True
                elif uid not in ctx.uncounted_succeeded:
                    uncounted.setdefault("succeeded", []).append(uid)
                    needs_flush = True
            elif failed or (ctx.finished is not None and ctx.finished.get("type") != "SuccessCriteriaMet"):
                ix = completion_index(pod)
                if uid not in ctx.uncounted_failed and (not indexed or 0 <= ix < completions):
                    counts = match_pod_failure_policy(policy, pod)[1] if policy is not None else True
                    if counts:
                        uncounted.setdefault("failed", []).append(uid)
                        needs_flush = True
            if (len(new_indexes) + len(uncounted.get("succeeded") or [])
                    + len(uncounted.get("failed") or [])) >= MAX_UNCOUNTED_PODS:
                reached_max = True
                break
        if indexed:
            ctx.indexes = with_indexes(ctx.indexes, new_indexes)
            text = format_indexes(ctx.indexes)
            if text != (status.get("completedIndexes") or ""):
                needs_flush = True
            status["succeeded"] = total_indexes(ctx.indexes)
            status["completedIndexes"] = text
        if ctx.finished is not None and ctx.finished.get("type") == "FailureTarget":
            # The interim condition goes in first, so the reason survives even if the finalizers are slow to go.
            status.setdefault("conditions", []).append(ctx.finished)
            needs_flush = True
            ctx.finished = new_condition("Failed", "True", ctx.finished["reason"], ctx.finished["message"],
                                         self._now())
        if ctx.finished is not None and ctx.finished.get("type") == "SuccessCriteriaMet":
            if find_condition(job, "SuccessCriteriaMet") is None:
                status.setdefault("conditions", []).append(ctx.finished)
                needs_flush = True
            ctx.finished = new_condition("Complete", "True", ctx.finished.get("reason", ""),
                                         ctx.finished.get("message", ""), self._now())
        if needs_flush:
            await self._write_status(job)
            self.backoff[key] = ctx.backoff
            needs_flush = False
        rm_error: Exception | None = None
        if to_remove:
            pending = self.finalizer_expectations.setdefault(key, set())
            pending.update(meta(p)["uid"] for p in to_remove)

            async def remove(pod: Obj) -> None:
                try:
                    await self._remove_finalizer(pod)
                except Exception:
                    self._finalizer_observed(key, meta(pod)["uid"])
                    raise

            results = await asyncio.gather(*(remove(p) for p in to_remove), return_exceptions=True)
            for pod, result in zip(to_remove, results):
                if isinstance(result, Exception):
                    rm_error = rm_error or result
                else:
                    with_finalizer.discard(meta(pod)["uid"])
        if _clean_uncounted(status, with_finalizer):
            needs_flush = True
        if rm_error is not None:
            if needs_flush:
                await self._write_status(job)
            raise rm_error
        finished = not reached_max and self._enact_finished(ctx)
        if finished or needs_flush:
            await self._write_status(job)
            if finished:
                await self._record_finished(job, ctx.finished)

    def _enact_finished(self, ctx: _Ctx) -> bool:
        if ctx.finished is None:
            return False
        status = ctx.job["status"]
        uncounted = status.get("uncountedTerminatedPods") or {}
        if uncounted.get("succeeded") or uncounted.get("failed"):
            return False
        if ctx.terminating > 0:
            return False  # 1.31+: Complete/Failed only once no pod of the Job is still terminating
        cond = ctx.finished
        ensure_condition(status.setdefault("conditions", []), cond["type"], cond["status"], cond.get("reason", ""),
                         cond.get("message", ""), self._now())
        if cond["type"] == "Complete":
            status["completionTime"] = next(c["lastTransitionTime"] for c in status["conditions"]
                                            if c["type"] == "Complete")
        return True

    async def _record_finished(self, job: Obj, cond: Obj | None) -> None:
        if cond is None:
            return
        if cond["type"] == "Complete":
            self.events.event(job, "Normal", "Completed", "Job completed")
        else:
            self.events.event(job, "Warning", cond.get("reason", ""), cond.get("message", ""))

    async def _write_status(self, job: Obj) -> None:
        status = job["status"]
        uncounted = status.get("uncountedTerminatedPods") or {}
        status["uncountedTerminatedPods"] = {k: v for k, v in uncounted.items() if v}
        updated = await self.client.update_status(JOBS, job)
        meta(job)["resourceVersion"] = meta(updated).get("resourceVersion")
        self._written[key_of(job)] = updated


def _newer(a: Obj, b: Obj) -> bool:
    """Whether ``a`` is a later version of the object than ``b`` (resourceVersions are revisions here)."""
    try:
        return int(meta(a).get("resourceVersion") or 0) > int(meta(b).get("resourceVersion") or 0)
    except ValueError:
        return False


def _clean_uncounted(status: Obj, with_finalizer: set[str]) -> bool:
    """cleanUncountedPodsWithoutFinalizers: uids whose finalizer is gone move into the counters."""
    uncounted = status.setdefault("uncountedTerminatedPods", {})
    changed = False
    for field_name, counter in (("succeeded", "succeeded"), ("failed", "failed")):
        uids = list(uncounted.get(field_name) or [])
        kept = [u for u in uids if u in with_finalizer]
        if len(kept) != len(uids):
            status[counter] = int(status.get(counter) or 0) + len(uids) - len(kept)
            uncounted[field_name] = kept
            changed = True
    return changed


def _generate_name_with_index(job_name: str, index: int) -> str:
    suffix = f"-{index}-"
    prefix = job_name + suffix
    if len(prefix) > 58:
        prefix = job_name[:58 - len(suffix)] + suffix
    return prefix


# --------------------------------------------------------------------------------------- TTL after finished


class TTLAfterFinishedController:
    """Deletes finished Jobs `ttlSecondsAfterFinished` after they finished (background propagation)."""

    name = "ttl-after-finished"

    def __init__(self, ctx: ControllerContext | None = None, *, workers: int | None = None,
                 clock: Clock | None = None) -> None:
        self.workers = workers or option(ctx, "concurrent_ttl_after_finished_syncs", 5)
        self.clock: Clock = controller_clock(ctx, clock)

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.timers = Timers(self.clock, enqueue)
        self.job_informer = informers.informer(JOBS)

        def changed(job: Obj) -> None:
            if _needs_cleanup(job):
                enqueue(key_of(job))

        self.job_informer.add_handler(on_add=changed, on_update=lambda old, new: changed(new))

    async def shutdown(self) -> None:
        await self.timers.stop()

    async def reconcile(self, key: str) -> Result:
        job = self.job_informer.get(key)
        if job is None or not _needs_cleanup(job):
            return DONE
        remaining = self._remaining(job)
        if remaining is None:
            return DONE
        if remaining > 0:
            self.timers.after(key, remaining)
            return DONE
        # The cache may be stale (the TTL could have been changed): decide again on a fresh read.
        try:
            fresh = await self.client.get(JOBS, meta(job)["name"], meta(job).get("namespace"))
        except NotFound:
            return DONE
        if not _needs_cleanup(fresh):
            return DONE
        remaining = self._remaining(fresh)
        if remaining is None:
            return DONE
        if remaining > 0:
            self.timers.after(key, remaining)
            return DONE
        try:
            await self.client.delete(JOBS, meta(fresh)["name"], meta(fresh).get("namespace"),
                                     propagation_policy="Background",
                                     preconditions={"uid": meta(fresh)["uid"],
                                                    "resourceVersion": meta(fresh)["resourceVersion"]})
        except NotFound:
            pass
        except api_errors.Conflict:
            return Result(requeue_after=0.1)  # changed under us: look again
        return DONE

    def _remaining(self, job: Obj) -> float | None:
        finished = finish_time(job)
        if finished is None:
            return None
        ttl = int((job.get("spec") or {}).get("ttlSecondsAfterFinished") or 0)
        return finished + ttl - self.clock.now()


def _needs_cleanup(job: Obj) -> bool:
    return (((job.get("spec") or {}).get("ttlSecondsAfterFinished") is not None) and is_finished(job)
            and not meta(job).get("deletionTimestamp"))
