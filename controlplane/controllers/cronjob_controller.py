"""The CronJob controller: Jobs on a cron schedule, as upstream's cronjob_controllerv2.

Schedules are standard five-field cron (names, ranges, steps; day-of-month and day-of-week ORed as vixie cron) and
the @yearly/@annually/@monthly/@weekly/@daily/@midnight/@hourly/@every macros, in spec.timeZone (IANA, via zoneinfo)
or UTC. Each run is a Job `<cronjob>-<scheduled time in minutes since the epoch>` — the name doubles as a lock, so a
run is never created twice — annotated with batch.kubernetes.io/cronjob-scheduled-timestamp. Only the most recent
missed start is run (upstream warns with TooManyMissedTimes past 100 missed starts); startingDeadlineSeconds drops
starts that are too late; concurrencyPolicy Allow / Forbid / Replace; suspend; history limits for successful and
failed Jobs; status.active, lastScheduleTime, lastSuccessfulTime.

Time comes from an injectable Clock read as Unix seconds, and the controller wakes itself through that clock when
the next start is due, so tests step a FakeClock instead of waiting for minutes.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from controlplane.client import ApiClient, Clock, NotFound, SharedInformerFactory
from controlplane.client import errors as api_errors
from controlplane.client.protocol import copy_object
from controlplane.client.resources import CRONJOBS, JOBS
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.client.events import EventRecorder
from controlplane.controllers.controller_utils import (
    CONTROLLER_INDEX,
    Obj,
    Timers,
    add_indexes,
    controller_clock,
    controller_ref,
    format_time,
    get_controller_of,
    key_of,
    meta,
    option,
    parse_time,
    resolve_controller_ref,
)

log = logging.getLogger(__name__)

SCHEDULED_TIMESTAMP_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"
NEXT_SCHEDULE_DELTA = 0.1  # upstream wakes 100 ms after the start time, so the start is surely in the past
TOO_MANY_MISSED = 100

_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
           "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ScheduleError(ValueError):
    """The schedule cannot be parsed (robfig/cron's ParseStandard would refuse it)."""


def _go_duration(text: str) -> float:
    if not text or _DURATION_RE.sub("", text):
        raise ScheduleError(f"time: invalid duration {text!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_RE.findall(text))


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: ``next(t)`` is the first start strictly after Unix time ``t`` (whole seconds)."""

    expr: str  # five-field cron, or "" for @every
    tz: dt.tzinfo
    every: float = 0.0

    def next(self, t: float) -> float:
        t = float(int(t))
        if self.every:
            return t + max(1.0, float(int(self.every)))
        start = dt.datetime.fromtimestamp(t, self.tz)
        return float(croniter(self.expr, start).get_next(dt.datetime).timestamp())


def parse_schedule(schedule: str, time_zone: str | None) -> Schedule:
    """cron.ParseStandard of `TZ=<zone> <schedule>` (formatSchedule adds the prefix from spec.timeZone)."""
    text = schedule.strip()
    zone = time_zone
    for prefix in ("TZ=", "CRON_TZ="):
        if text.startswith(prefix):
            zone, _, text = text[len(prefix):].partition(" ")
            text = text.strip()
    try:
        tz: dt.tzinfo = ZoneInfo(zone) if zone else dt.UTC
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"provided bad location {zone}: {exc}") from None
    if text.startswith("@every"):
        return Schedule("", tz, _go_duration(text[len("@every"):].strip()))
    expr = _MACROS.get(text, text)
    if expr.startswith("@"):
        raise ScheduleError(f"unrecognized descriptor: {text}")
    if len(expr.split()) != 5:
        raise ScheduleError(f"expected exactly 5 fields, found {len(expr.split())}: {text}")
    if not croniter.is_valid(expr):
        raise ScheduleError(f"failed to parse schedule: {text}")
    return Schedule(expr, tz)


def job_name(cronjob: Obj, scheduled: float) -> str:
    return f"{meta(cronjob)['name']}-{int(scheduled) // 60}"


def is_job_finished(job: Obj) -> tuple[bool, str]:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return True, c["type"]
    return False, ""


def most_recent_schedule_time(cj: Obj, now: float, schedule: Schedule,
                              include_deadline: bool) -> tuple[float, float | None, int]:
    """mostRecentScheduleTime: (earliest time considered, the most recent missed start or None, missed count).

    Counting starts is approximated from the interval between two starts, as upstream does, so a schedule that
    missed thousands of starts costs a handful of steps, not one per start."""
    status = cj.get("status") or {}
    earliest = parse_time(status.get("lastScheduleTime")) or parse_time(meta(cj).get("creationTimestamp")) or now
    deadline = (cj.get("spec") or {}).get("startingDeadlineSeconds")
    if include_deadline and deadline is not None:
        earliest = max(earliest, now - int(deadline))
    t1 = schedule.next(earliest)
    t2 = schedule.next(t1)
    if now < t1:
        return earliest, None, 0
    if now < t2:
        return earliest, t1, 1
    between = round(t2 - t1)
    if between < 1:
        raise ScheduleError("time difference between two schedules is less than 1 second")
    missed = int((now - t1) // between) + 1
    recent: float | None = None
    t = schedule.next(t1 + (missed - 2) * between)
    while t <= now:
        recent = t
        t = schedule.next(t)
    return earliest, recent, missed


class CronJobController:
    name = "cronjob"

    def __init__(self, ctx: ControllerContext | None = None, *, workers: int | None = None,
                 clock: Clock | None = None) -> None:
        self.workers = workers or option(ctx, "concurrent_cron_job_syncs", 5)
        self.clock: Clock = controller_clock(ctx, clock)

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.enqueue = enqueue
        self.timers = Timers(self.clock, enqueue)
        self.events = EventRecorder(client, "cronjob-controller", self.clock)
        self.cj_informer = informers.informer(CRONJOBS)
        self.job_informer = add_indexes(informers.informer(JOBS))
        self.cj_informer.add_handler(on_add=lambda c: enqueue(key_of(c)), on_update=lambda o, n: enqueue(key_of(n)),
                                     on_delete=lambda c: self.timers.cancel(key_of(c)))
        self.job_informer.add_handler(on_add=self._job_event, on_update=self._job_updated, on_delete=self._job_event)

    async def shutdown(self) -> None:
        await self.timers.stop()
        await self.events.aclose()

    def _job_event(self, job: Obj) -> None:
        cj = resolve_controller_ref(self.cj_informer, job, "CronJob")
        if cj is not None:
            self.enqueue(key_of(cj))

    def _job_updated(self, old: Obj, new: Obj) -> None:
        if get_controller_of(old) != get_controller_of(new):
            self._job_event(old)
        self._job_event(new)

    # -- reconcile --------------------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        cached = self.cj_informer.get(key)
        if cached is None:
            return DONE
        cj = copy_object(cached)
        jobs = [j for j in self.job_informer.by_index(CONTROLLER_INDEX, meta(cj).get("uid") or "")]
        changed = await self._cleanup_finished(cj, jobs)
        requeue, synced_changed, error = await self._sync(cj, jobs)
        if changed or synced_changed:
            try:
                await self.client.update_status(CRONJOBS, cj)
            except api_errors.Conflict:
                self.enqueue(key)
                return DONE
            except NotFound:
                return DONE
        if requeue is not None:
            self.timers.at(key, requeue)
            return DONE
        if error is not None:
            raise error
        return DONE

    def _now(self) -> float:
        return self.clock.now()

    async def _sync(self, cj: Obj, jobs: list[Obj]) -> tuple[float | None, bool, Exception | None]:
        """syncCronJob: returns (wake up at, on the controller's clock; status changed; error)."""
        status = cj.setdefault("status", {})
        active: list[Obj] = status.setdefault("active", [])
        active_uids = {a.get("uid") for a in active}
        now = self._now()
        changed = False
        children = set()
        for job in jobs:
            uid = meta(job).get("uid")
            children.add(uid)
            done, kind = is_job_finished(job)
            if uid not in active_uids and not done:
                fresh = await self.client.get(CRONJOBS, meta(cj)["name"], meta(cj).get("namespace"))
                if uid in {a.get("uid") for a in (fresh.get("status") or {}).get("active") or []}:
                    cj.clear()
                    cj.update(fresh)
                    status = cj.setdefault("status", {})
                    active = status.setdefault("active", [])
                    active_uids = {a.get("uid") for a in active}
                    continue
                self.events.event(cj, "Warning", "UnexpectedJob",
                                        f"Saw a job that the controller did not create or forgot: {meta(job)['name']}")
            elif uid in active_uids and done:
                active[:] = [a for a in active if a.get("uid") != uid]
                active_uids.discard(uid)
                self.events.event(cj, "Normal", "SawCompletedJob",
                                        f"Saw completed job: {meta(job)['name']}, condition: {kind}")
                changed = True
            if done and kind == "Complete":
                completed = (job.get("status") or {}).get("completionTime")
                last = parse_time(status.get("lastSuccessfulTime"))
                if completed and (last is None or (parse_time(completed) or 0) > last):
                    status["lastSuccessfulTime"] = completed
                    changed = True
        for ref in list(active):
            if ref.get("uid") in children:
                continue
            try:
                await self.client.get(JOBS, ref.get("name", ""), ref.get("namespace"))
            except NotFound:
                # The job went missing: forget it, so it cannot hold a Forbid cronjob forever.
                self.events.event(cj, "Normal", "MissingJob", f"Active job went missing: {ref.get('name')}")
                active[:] = [a for a in active if a.get("uid") != ref.get("uid")]
                changed = True
        if meta(cj).get("deletionTimestamp"):
            return None, changed, None
        spec = cj.get("spec") or {}
        if spec.get("suspend"):
            return None, changed, None
        try:
            schedule = parse_schedule(spec.get("schedule") or "", spec.get("timeZone"))
        except ScheduleError as exc:
            reason = "UnknownTimeZone" if "location" in str(exc) else "UnparseableSchedule"
            self.events.event(cj, "Warning", reason, f"unparseable schedule: {spec.get('schedule')!r} : {exc}")
            return None, changed, None
        try:
            _, scheduled, missed = most_recent_schedule_time(cj, now, schedule, True)
        except ScheduleError as exc:
            self.events.event(cj, "Warning", "InvalidSchedule", f"invalid schedule: {spec.get('schedule')} : "
                                                                     f"{exc}")
            return None, changed, None
        if scheduled is not None and missed > TOO_MANY_MISSED:
            self.events.event(cj, "Warning", "TooManyMissedTimes", "too many missed start times. Set or "
                                    "decrease .spec.startingDeadlineSeconds or check clock skew")
        if scheduled is None or scheduled > now:
            return self._next_wake(cj, now, schedule), changed, None
        deadline = spec.get("startingDeadlineSeconds")
        if deadline is not None and scheduled + int(deadline) < now:
            stamp = dt.datetime.fromtimestamp(scheduled, dt.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
            self.events.event(cj, "Warning", "MissSchedule", f"Missed scheduled time to start a job: {stamp}")
            return self._next_wake(cj, now, schedule), changed, None
        name = job_name(cj, scheduled)
        if (any(a.get("name") == name for a in active)
                or parse_time(status.get("lastScheduleTime")) == float(int(scheduled))):
            return self._next_wake(cj, now, schedule), changed, None
        policy = spec.get("concurrencyPolicy") or "Allow"
        if policy == "Forbid" and active:
            self.events.event(cj, "Normal", "JobAlreadyActive", "Not starting job because prior execution is "
                                    "running and concurrency policy is Forbid")
            return self._next_wake(cj, now, schedule), changed, None
        if policy == "Replace":
            for ref in list(active):
                try:
                    job = await self.client.get(JOBS, ref.get("name", ""), ref.get("namespace"))
                except NotFound:
                    active[:] = [a for a in active if a.get("uid") != ref.get("uid")]
                    changed = True
                    continue
                except api_errors.ApiError as exc:
                    self.events.event(cj, "Warning", "FailedGet", f"Get job: {exc}")
                    return None, changed, exc
                await self._delete_job(cj, job)
                changed = True
        body = self._job_from_template(cj, scheduled, schedule)
        try:
            created = await self.client.create(JOBS, body, meta(cj).get("namespace"))
        except api_errors.AlreadyExists:
            try:
                created = await self.client.get(JOBS, name, meta(cj).get("namespace"))
            except api_errors.ApiError as exc:
                return None, changed, exc
            owner = get_controller_of(created)
            if owner is None or owner.get("uid") != meta(cj).get("uid"):
                return None, changed, None  # someone else's job: assume its owner keeps the status
            if meta(created).get("uid") in {a.get("uid") for a in active}:
                return None, changed, None
        except api_errors.ApiError as exc:
            self.events.event(cj, "Warning", "FailedCreate", f"Error creating job: {exc}")
            return None, changed, exc
        else:
            self.events.event(cj, "Normal", "SuccessfulCreate", f"Created job {name}")
        active.append({"kind": "Job", "namespace": meta(created).get("namespace"), "name": meta(created)["name"],
                       "uid": meta(created).get("uid"), "apiVersion": "batch/v1",
                       "resourceVersion": meta(created).get("resourceVersion")})
        status["lastScheduleTime"] = format_time(scheduled)
        return self._next_wake(cj, now, schedule), True, None

    def _next_wake(self, cj: Obj, now: float, schedule: Schedule) -> float:
        """nextScheduleTimeDuration, as the instant: just after the next start. An instant, not a delay, so time
        that passes before the timer is set (a status write) does not push the wake-up later."""
        try:
            earliest, recent, _ = most_recent_schedule_time(cj, now, schedule, False)
            base = recent if recent is not None else earliest
        except ScheduleError:
            base = now
        return schedule.next(base) + NEXT_SCHEDULE_DELTA

    def _job_from_template(self, cj: Obj, scheduled: float, schedule: Schedule) -> Obj:
        template = (cj.get("spec") or {}).get("jobTemplate") or {}
        tmeta = template.get("metadata") or {}
        local = dt.datetime.fromtimestamp(scheduled, schedule.tz)
        annotations = {**(tmeta.get("annotations") or {}),
                       SCHEDULED_TIMESTAMP_ANNOTATION: local.isoformat().replace("+00:00", "Z")}
        return {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job_name(cj, scheduled), "labels": dict(tmeta.get("labels") or {}),
                         "annotations": annotations,
                         "ownerReferences": [controller_ref(cj, CRONJOBS.api_version, CRONJOBS.kind)]},
            "spec": copy_object(template.get("spec") or {}),
        }

    async def _delete_job(self, cj: Obj, job: Obj) -> bool:
        try:
            await self.client.delete(JOBS, meta(job)["name"], meta(job).get("namespace"),
                                     propagation_policy="Background")
        except NotFound:
            pass
        except api_errors.ApiError as exc:
            self.events.event(cj, "Warning", "FailedDelete", f"Deleted job: {exc}")
            return False
        # In place: the caller holds this list and appends the replacement to it.
        active = cj.setdefault("status", {}).setdefault("active", [])
        active[:] = [a for a in active if a.get("uid") != meta(job).get("uid")]
        self.events.event(cj, "Normal", "SuccessfulDelete", f"Deleted job {meta(job)['name']}")
        return True

    async def _cleanup_finished(self, cj: Obj, jobs: list[Obj]) -> bool:
        spec = cj.get("spec") or {}
        ok_limit, failed_limit = spec.get("successfulJobsHistoryLimit"), spec.get("failedJobsHistoryLimit")
        if ok_limit is None and failed_limit is None:
            return False
        succeeded: list[Obj] = []
        failed: list[Obj] = []
        for job in jobs:
            done, kind = is_job_finished(job)
            if done and not meta(job).get("deletionTimestamp"):
                (succeeded if kind == "Complete" else failed).append(job)
        changed = False
        for group, limit in ((succeeded, ok_limit), (failed, failed_limit)):
            if limit is None or len(group) <= int(limit):
                continue
            # Oldest first by start time (jobs that never started last), then by name.
            group.sort(key=lambda j: (parse_time((j.get("status") or {}).get("startTime")) is None,
                                      parse_time((j.get("status") or {}).get("startTime")) or 0.0,
                                      meta(j)["name"]))
            for job in group[:len(group) - int(limit)]:
                if await self._delete_job(cj, job):
                    changed = True
        return changed
