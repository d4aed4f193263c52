"""The CronJob controller against a real API server, with an injected FakeClock so schedules fire when the test
steps the clock: job names and annotations, history limits, Allow/Forbid/Replace, startingDeadlineSeconds, the
too-many-missed-starts warning, time zones and suspend."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from workload_harness import FakeKubelet, PodScript, RunningControllers, eventually

from controlplane.client import CRONJOBS, EVENTS, JOBS, ApiClient, FakeClock, NotFound
from controlplane.controllers.cronjob_controller import CronJobController
from controlplane.controllers.job_controller import JobController
from controlplane.testing import ThreadedApiServer


def cronjob(name: str, schedule: str = "*/1 * * * *", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
            "spec": {"schedule": schedule, "jobTemplate": {"metadata": {"labels": {"cron": name}}, "spec": {
                "template": {"spec": {"containers": [{"name": "tick", "image": "busybox"}],
                                      "restartPolicy": "Never"}}}}, **spec}}


def next_boundary(now: float, period: int = 60) -> float:
    return (int(now) // period + 1) * period


async def caught_up(clock: FakeClock, client: ApiClient, *names: str) -> None:
    """Bring the fake clock level with the CronJobs' creation (server time): no start is due before that, and the
    real minute may have turned between making the clock and creating them."""
    from controlplane.controllers.controller_utils import parse_time

    for name in names:
        created = parse_time((await client.get(CRONJOBS, name, "default"))["metadata"]["creationTimestamp"]) or 0.0
        clock.set(max(clock.now(), created))


def step_past(clock: FakeClock, instant: float) -> None:
    """Move the fake clock just past ``instant`` (the controller wakes 100 ms after a start)."""
    clock.set(max(clock.now(), instant + 0.5))


async def jobs_of(client: ApiClient, cj: str) -> dict[str, dict[str, Any]]:
    items = (await client.list(JOBS, "default", label_selector={"cron": cj}))["items"]
    return {j["metadata"]["name"]: j for j in items if not j["metadata"].get("deletionTimestamp")}


async def cj_status(client: ApiClient, name: str) -> dict[str, Any]:
    return (await client.get(CRONJOBS, name, "default")).get("status") or {}


async def event(client: ApiClient, name: str, reason: str) -> dict[str, Any] | None:
    for ev in (await client.list(EVENTS, "default"))["items"]:
        if ev["involvedObject"].get("name") == name and ev["reason"] == reason:
            return ev
    return None


def controllers(url: str, clock: FakeClock) -> RunningControllers:
    return RunningControllers(url, CronJobController(clock=clock), JobController())


async def test_fires_on_schedule_and_keeps_history(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    clock = FakeClock(start=time.time())
    kubelet = FakeKubelet(apiserver.url, script=lambda pod: PodScript(exit_code=0, run_seconds=0.05))
    async with kubelet, controllers(apiserver.url, clock):
        cj = await client.create(CRONJOBS, cronjob("tick", successfulJobsHistoryLimit=2))
        await caught_up(clock, client, "tick")
        names = []
        for _ in range(4):
            start = next_boundary(clock.now())
            step_past(clock, start)
            name = f"tick-{int(start) // 60}"
            names.append(name)
            job = await eventually(lambda name=name: _job(client, name), message=f"{name} created")
            assert job["metadata"]["ownerReferences"][0]["uid"] == cj["metadata"]["uid"]
            assert job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] == \
                dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert job["metadata"]["labels"]["cron"] == "tick"

            async def settled(start: float = start) -> dict[str, Any] | None:
                s = await cj_status(client, "tick")
                return s if not s.get("active") and s.get("lastSuccessfulTime") and s.get(
                    "lastScheduleTime") == dt.datetime.fromtimestamp(start, dt.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ") else None

            await eventually(settled, message="run finished and recorded")
        # successfulJobsHistoryLimit=2: only the newest two runs remain.
        await eventually(lambda: _names(client, "tick", set(names[-2:])), message="history trimmed")


async def _job(client: ApiClient, name: str) -> dict[str, Any] | None:
    try:
        return await client.get(JOBS, name, "default")
    except NotFound:
        return None


async def _names(client: ApiClient, cj: str, expected: set[str]) -> bool:
    return set(await jobs_of(client, cj)) == expected


async def test_concurrency_policies(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    clock = FakeClock(start=time.time())
    # Runs never finish, so every start finds the previous one still active.
    async with FakeKubelet(apiserver.url), controllers(apiserver.url, clock):
        await client.create(CRONJOBS, cronjob("allow"))
        await client.create(CRONJOBS, cronjob("forbid", concurrencyPolicy="Forbid"))
        await caught_up(clock, client, "allow", "forbid")
        first = next_boundary(clock.now())
        step_past(clock, first)
        await eventually(lambda: _names(client, "allow", {f"allow-{int(first) // 60}"}))
        await eventually(lambda: _names(client, "forbid", {f"forbid-{int(first) // 60}"}))

        second = next_boundary(clock.now())
        step_past(clock, second)
        await eventually(lambda: _names(client, "allow", {f"allow-{int(first) // 60}", f"allow-{int(second) // 60}"}),
                         message="Allow runs side by side")
        await eventually(lambda: event(client, "forbid", "JobAlreadyActive"), message="Forbid skipped the start")
        assert set(await jobs_of(client, "forbid")) == {f"forbid-{int(first) // 60}"}
        assert [a["name"] for a in (await cj_status(client, "forbid"))["active"]] == [f"forbid-{int(first) // 60}"]
        assert len((await cj_status(client, "allow"))["active"]) == 2

        # Replace: the running job is deleted and the new start takes its place.
        await client.patch(CRONJOBS, "forbid", {"spec": {"concurrencyPolicy": "Replace"}}, "default")
        third = next_boundary(clock.now())
        step_past(clock, third)
        await eventually(lambda: _names(client, "forbid", {f"forbid-{int(third) // 60}"}), message="replaced")

        async def active_is_third() -> bool:
            return [a["name"] for a in (await cj_status(client, "forbid")).get("active") or []] == [
                f"forbid-{int(third) // 60}"]

        await eventually(active_is_third, message="the replacement is the active run")


async def test_starting_deadline_and_missed_starts(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    clock = FakeClock(start=time.time())
    async with FakeKubelet(apiserver.url), controllers(apiserver.url, clock):
        await client.create(CRONJOBS, cronjob("strict", "0 * * * *", startingDeadlineSeconds=60))
        await client.create(CRONJOBS, cronjob("lenient", "0 * * * *"))
        await client.create(CRONJOBS, cronjob("minutely"))
        await caught_up(clock, client, "strict", "lenient", "minutely")
        # Two minutes past an hour: too late for a 60 s starting deadline, not for a cronjob without one.
        hour = next_boundary(clock.now() + 7200, 3600)  # far enough for the minutely one to miss > 100 starts
        step_past(clock, hour + 120)
        await eventually(lambda: _names(client, "lenient", {f"lenient-{hour // 60}"}), message="late start runs")
        # The minutely one missed over a hundred starts meanwhile: it warns and runs only the most recent.
        await eventually(lambda: event(client, "minutely", "TooManyMissedTimes"), message="too many missed")
        latest = int(clock.now()) // 60 * 60
        await eventually(lambda: _names(client, "minutely", {f"minutely-{latest // 60}"}),
                         message="only the latest missed start runs")
        assert not await jobs_of(client, "strict")
        assert not (await cj_status(client, "strict")).get("lastScheduleTime")
        # On time, the strict one runs too.
        step_past(clock, hour + 3600)
        await eventually(lambda: _names(client, "strict", {f"strict-{(hour + 3600) // 60}"}))


async def test_time_zone(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    clock = FakeClock(start=time.time())
    async with FakeKubelet(apiserver.url), controllers(apiserver.url, clock):
        # 09:00 in Tokyo (UTC+9, no daylight saving) is midnight UTC.
        await client.create(CRONJOBS, cronjob("tokyo", "0 9 * * *", timeZone="Asia/Tokyo"))
        await caught_up(clock, client, "tokyo")
        midnight_utc = next_boundary(clock.now(), 86400)
        step_past(clock, midnight_utc - 3600)  # 08:00 Tokyo: nothing yet
        step_past(clock, midnight_utc)
        name = f"tokyo-{midnight_utc // 60}"
        job = await eventually(lambda: _job(client, name), message="09:00 Tokyo run")
        stamp = dt.datetime.fromtimestamp(midnight_utc, dt.timezone(dt.timedelta(hours=9))).isoformat()
        assert job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] == stamp
        assert stamp.endswith("T09:00:00+09:00")
        assert set(await jobs_of(client, "tokyo")) == {name}


async def test_suspend(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    clock = FakeClock(start=time.time())
    async with FakeKubelet(apiserver.url), controllers(apiserver.url, clock):
        await client.create(CRONJOBS, cronjob("paused", suspend=True))
        await client.create(CRONJOBS, cronjob("witness"))
        await caught_up(clock, client, "paused", "witness")
        start = next_boundary(clock.now())
        step_past(clock, start)
        await eventually(lambda: _names(client, "witness", {f"witness-{int(start) // 60}"}))
        assert not await jobs_of(client, "paused")
        # Resuming runs the start it missed while suspended (no startingDeadlineSeconds), as upstream does.
        await client.patch(CRONJOBS, "paused", {"spec": {"suspend": False}}, "default")
        await eventually(lambda: _names(client, "paused", {f"paused-{int(start) // 60}"}))
