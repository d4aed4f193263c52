"""The Job controller (and TTL-after-finished) against a real API server: completions and parallelism, retries up to
backoffLimit with backoff, Indexed jobs, suspend/resume, activeDeadlineSeconds, podFailurePolicy, finalizer-based
pod tracking, the 1.31+ two-step finish, and TTL cleanup."""

from __future__ import annotations

import itertools
import time
from typing import Any, Self

from workload_harness import FakeKubelet, PodScript, RunningControllers, eventually

from controlplane.client import JOBS, PODS, ApiClient, NotFound, SharedInformerFactory
from controlplane.controllers.garbage_collector import GarbageCollector
from controlplane.controllers.job_controller import JobController, TTLAfterFinishedController
from controlplane.testing import ThreadedApiServer

FINALIZER = "batch.kubernetes.io/job-tracking"


def job(name: str, completions: int | None = 1, parallelism: int = 1, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                            "spec": {"parallelism": parallelism,
                                     "template": {"spec": {"containers": [{"name": "work", "image": "busybox"}],
                                                           "restartPolicy": "Never"}}, **spec}}
    if completions is not None:
        body["spec"]["completions"] = completions
    return body


def exits(code: int, after: float = 0.05, **kw: Any) -> PodScript:
    return PodScript(exit_code=code, run_seconds=after, **kw)


async def job_status(client: ApiClient, name: str) -> dict[str, Any]:
    return (await client.get(JOBS, name, "default")).get("status") or {}


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


async def finished(client: ApiClient, name: str, ctype: str) -> dict[str, Any] | None:
    s = await job_status(client, name)
    cond = conditions(s).get(ctype)
    return s if cond is not None and cond["status"] == "True" else None


class PodWatch:
    """Pods of one job as they come: creation order and times, peak concurrency, finalizers seen."""

    def __init__(self, client: ApiClient, job_name: str) -> None:
        self.factory = SharedInformerFactory(client)
        self.pods = self.factory.informer(PODS, "default", label_selector={"batch.kubernetes.io/job-name": job_name})
        self.created: list[tuple[str, float]] = []
        self.max_running = 0
        self.finalized: set[str] = set()
        self.pods.add_handler(on_add=self._added, on_update=lambda o, n: self._seen(n))

    def _added(self, pod: dict[str, Any]) -> None:
        self.created.append((pod["metadata"]["name"], time.monotonic()))
        self._seen(pod)

    def _seen(self, pod: dict[str, Any]) -> None:
        if FINALIZER in (pod["metadata"].get("finalizers") or []):
            self.finalized.add(pod["metadata"]["name"])
        live = [p for p in self.pods.list() if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                and not p["metadata"].get("deletionTimestamp")]
        self.max_running = max(self.max_running, len(live))

    async def __aenter__(self) -> Self:
        self.factory.start_all()
        assert await self.factory.wait_for_sync(20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.factory.stop_all()


async def pods_of(client: ApiClient, name: str) -> list[dict[str, Any]]:
    return (await client.list(PODS, "default", label_selector={"batch.kubernetes.io/job-name": name}))["items"]


async def test_completions_parallelism_and_tracking(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    kubelet = FakeKubelet(apiserver.url, script=lambda pod: exits(0, after=0.1))
    async with kubelet, RunningControllers(apiserver.url, JobController()), PodWatch(client, "calc") as seen:
        created = await client.create(JOBS, job("calc", completions=5, parallelism=2))
        status = await eventually(lambda: finished(client, "calc", "Complete"), message="Complete")
    assert status["succeeded"] == 5 and not status.get("failed") and not status.get("active")
    assert status["ready"] == 0 and status["terminating"] == 0
    assert not (status.get("uncountedTerminatedPods") or {}).get("succeeded")
    conds = conditions(status)
    assert conds["SuccessCriteriaMet"]["status"] == "True"
    assert conds["Complete"]["reason"] == "CompletionsReached"
    assert conds["Complete"]["message"] == "Reached expected number of succeeded pods"
    assert status["completionTime"] == conds["Complete"]["lastTransitionTime"]
    assert status["startTime"] <= status["completionTime"]
    assert len(seen.created) == 5, seen.created
    assert seen.max_running <= 2
    pods = await pods_of(client, "calc")
    assert len(pods) == 5
    for pod in pods:
        assert pod["metadata"]["generateName"] == "calc-"
        assert pod["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
        # Tracked with the finalizer while it ran, released once counted.
        assert pod["metadata"]["name"] in seen.finalized
        assert FINALIZER not in (pod["metadata"].get("finalizers") or [])


async def test_failed_pods_are_retried_with_backoff_up_to_backoff_limit(apiserver: ThreadedApiServer,
                                                                        client: ApiClient) -> None:
    kubelet = FakeKubelet(apiserver.url, script=lambda pod: exits(1))
    controller = JobController(pod_failure_backoff=1.0)
    async with kubelet, RunningControllers(apiserver.url, controller), PodWatch(client, "flaky") as seen:
        await client.create(JOBS, job("flaky", backoffLimit=2))
        status = await eventually(lambda: finished(client, "flaky", "Failed"), message="Failed")
    assert status["failed"] == 3 and not status.get("succeeded") and not status.get("active")
    conds = conditions(status)
    assert conds["FailureTarget"]["reason"] == conds["Failed"]["reason"] == "BackoffLimitExceeded"
    assert conds["Failed"]["message"] == "Job has reached the specified backoff limit"
    assert "Complete" not in conds and "completionTime" not in status
    assert len(seen.created) == 3
    # The second retry waits twice the base backoff (measured from the 1 s-resolution finish time).
    (_, t1), (_, t2), (_, t3) = seen.created
    assert t3 - t2 > 0.9, (t2 - t1, t3 - t2)


async def test_indexed_job(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    attempts: dict[str, int] = {}

    def script(pod: dict[str, Any]) -> PodScript:
        index = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        attempts[index] = attempts.get(index, 0) + 1
        # Index 1 fails its first attempt.
        return exits(1 if index == "1" and attempts[index] == 1 else 0)

    kubelet = FakeKubelet(apiserver.url, script=script)
    async with kubelet, RunningControllers(apiserver.url, JobController(pod_failure_backoff=0.1)):
        await client.create(JOBS, job("idx", completions=3, parallelism=3, completionMode="Indexed"))
        status = await eventually(lambda: finished(client, "idx", "Complete"), message="Complete")
    assert status["completedIndexes"] == "0-2"
    assert status["succeeded"] == 3 and status["failed"] == 1
    pods = await pods_of(client, "idx")
    by_index: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        by_index.setdefault(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"], []).append(pod)
    assert sorted(by_index) == ["0", "1", "2"] and len(by_index["1"]) == 2
    for index, group in by_index.items():
        for pod in group:
            assert pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == index
            assert pod["metadata"]["generateName"] == f"idx-{index}-"
            assert pod["spec"]["hostname"] == f"idx-{index}"
            env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
            assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
                "metadata.labels['batch.kubernetes.io/job-completion-index']"


async def test_suspend_and_resume(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    async with FakeKubelet(apiserver.url), RunningControllers(apiserver.url, JobController()):
        await client.create(JOBS, job("held", completions=2, parallelism=2, suspend=True))

        async def suspended() -> dict[str, Any] | None:
            s = await job_status(client, "held")
            cond = conditions(s).get("Suspended")
            return s if cond and cond["status"] == "True" and cond["reason"] == "JobSuspended" else None

        status = await eventually(suspended, message="Suspended=True")
        assert "startTime" not in status and not await pods_of(client, "held")

        await client.patch(JOBS, "held", {"spec": {"suspend": False}}, "default")

        async def running() -> dict[str, Any] | None:
            s = await job_status(client, "held")
            cond = conditions(s).get("Suspended") or {}
            return s if s.get("ready") == 2 and cond.get("status") == "False" else None

        status = await eventually(running, message="resumed and running")
        assert conditions(status)["Suspended"]["reason"] == "JobResumed"
        assert status["startTime"]

        # Suspending a running job removes its pods without counting them as failures.
        await client.patch(JOBS, "held", {"spec": {"suspend": True}}, "default")

        async def emptied() -> bool:
            pods = [p for p in await pods_of(client, "held") if not p["metadata"].get("deletionTimestamp")]
            s = await job_status(client, "held")
            return not pods and not s.get("active") and conditions(s)["Suspended"]["status"] == "True"

        await eventually(emptied, message="pods removed on suspend")
        assert not (await job_status(client, "held")).get("failed")


async def test_active_deadline(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    # Pods run until stopped; the deadline stops them.
    async with FakeKubelet(apiserver.url), RunningControllers(apiserver.url, JobController()):
        await client.create(JOBS, job("slow", completions=2, parallelism=2, activeDeadlineSeconds=1))
        status = await eventually(lambda: finished(client, "slow", "Failed"), message="Failed")
        conds = conditions(status)
        assert conds["Failed"]["reason"] == "DeadlineExceeded"
        assert conds["Failed"]["message"] == "Job was active longer than specified deadline"
        assert conds["FailureTarget"]["reason"] == "DeadlineExceeded"
        assert status["failed"] == 2 and not status.get("active") and status.get("terminating") == 0

        async def pods_stopped() -> bool:
            pods = await pods_of(client, "slow")
            return all((p.get("status") or {}).get("phase") == "Failed" or p["metadata"].get("deletionTimestamp")
                       for p in pods)

        await eventually(pods_stopped)


async def test_pod_failure_policy(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    order = itertools.count()
    disruption = ({"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"},)

    def script(pod: dict[str, Any]) -> PodScript:
        n = next(order)
        if n == 0:
            return exits(137, conditions=disruption)  # disrupted: ignored, replaced without counting
        if n == 1:
            return exits(3)  # counted
        return exits(42)  # fails the whole job at once

    policy = {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "work", "operator": "In", "values": [42]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [0]}},
    ]}
    async with FakeKubelet(apiserver.url, script=script), RunningControllers(apiserver.url,
                                                                            JobController(pod_failure_backoff=0.1)):
        await client.create(JOBS, job("pfp", backoffLimit=5, podFailurePolicy=policy))
        status = await eventually(lambda: finished(client, "pfp", "Failed"), message="Failed by policy")
    conds = conditions(status)
    assert conds["Failed"]["reason"] == "PodFailurePolicy"
    pods = sorted(await pods_of(client, "pfp"), key=lambda p: p["metadata"]["creationTimestamp"])
    assert len(pods) == 3
    failing = next(p for p in pods if p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 42)
    assert conds["Failed"]["message"] == (f"Container work for pod default/{failing['metadata']['name']} failed with "
                                          f"exit code 42 matching FailJob rule at index 0")
    assert status["failed"] == 2  # the disrupted pod was ignored


async def test_ttl_after_finished_deletes_the_job_and_its_pods(apiserver: ThreadedApiServer,
                                                               client: ApiClient) -> None:
    kubelet = FakeKubelet(apiserver.url, script=lambda pod: exits(0))
    async with kubelet, RunningControllers(apiserver.url, JobController(), TTLAfterFinishedController(),
                                           GarbageCollector()):
        await client.create(JOBS, job("short", ttlSecondsAfterFinished=1))
        await client.create(JOBS, job("kept"))
        status = await eventually(lambda: finished(client, "short", "Complete"), message="Complete")
        completed_at = status["completionTime"]

        async def gone() -> bool:
            try:
                await client.get(JOBS, "short", "default")
            except NotFound:
                return True
            return False

        await eventually(gone, message="job deleted after its TTL")
        # Not before the TTL: deleted at or after completionTime + 1 s.
        from controlplane.controllers.controller_utils import parse_time
        assert time.time() >= (parse_time(completed_at) or 0) + 1
        await eventually(lambda: _no_pods(client, "short"), message="pods deleted in the background")
        assert await finished(client, "kept", "Complete")  # no TTL, no deletion


async def _no_pods(client: ApiClient, name: str) -> bool:
    return not await pods_of(client, name)
