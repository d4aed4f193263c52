"""The controller manager: selection by name, retries with backoff, requeue, metrics and health over HTTP, stop."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from controlplane.client import CONFIGMAPS, ApiClient, SharedInformerFactory
from controlplane.controllers import CONTROLLERS, load_factory, select
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.controllers.manager import ControllerManager, ManagerConfig


class Flaky:
    """Fails the first ``failures`` reconciles of every key, asks for one requeue, then succeeds."""

    name = "flaky"
    workers = 2

    def __init__(self, failures: int = 2) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.done: set[str] = set()

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        informers.informer(CONFIGMAPS, "default").add_handler(on_add=lambda cm: enqueue(cm["metadata"]["name"]))

    async def reconcile(self, key: str) -> Result:
        n = self.calls[key] = self.calls.get(key, 0) + 1
        if n <= self.failures:
            raise RuntimeError(f"failure {n} of {key}")
        if n == self.failures + 1:
            return Result(requeue_after=0.05)
        self.done.add(key)
        return DONE


def test_controller_selection_as_upstream():
    known = ["a", "b", "c"]
    assert select("*", known) == ["a", "b", "c"]
    assert select("*,-b", known) == ["a", "c"]
    assert select("b", known) == ["b"]
    assert select(["-a", "*"], known) == ["b", "c"]
    assert select("*", known, disabled_by_default=frozenset({"c"})) == ["a", "b"]
    assert select("*,c", known, disabled_by_default=frozenset({"c"})) == ["a", "b", "c"]
    assert select("namespace-controller", list(CONTROLLERS)) == ["namespace"]
    with pytest.raises(ValueError, match="not in the list of known controllers"):
        select("*,-nosuch", known)


def test_every_registered_controller_loads_and_builds():
    for name in CONTROLLERS:
        controller = load_factory(name)(ControllerContext())
        assert controller.name == name, f"{name} registers a controller named {controller.name!r}"
        assert controller.workers >= 1


async def test_retries_requeue_metrics_and_health(apiserver, client, wait_for):
    flaky = Flaky()
    manager = ControllerManager(apiserver.url, ManagerConfig(metrics_port=0), factories={"flaky": flaky})
    await manager.start()
    try:
        assert manager.running
        for name in ("one", "two"):
            await client.create(CONFIGMAPS, {"metadata": {"name": name}}, "default")
        await wait_for(lambda: flaky.done == {"one", "two"})
        assert flaky.calls == {"one": 4, "two": 4}, "2 failures, 1 requeue, 1 success each"
        runner = manager.runner("flaky")
        assert runner is not None and runner.queue.num_requeues("one") == 0, "success forgets the failures"

        async with httpx.AsyncClient(base_url=manager.metrics_url) as http:
            text = (await http.get("/metrics")).text
            assert 'controller_reconcile_total{controller="flaky",result="error"} 4.0' in text
            assert 'controller_reconcile_total{controller="flaky",result="requeue_after"} 2.0' in text
            assert 'controller_reconcile_total{controller="flaky",result="success"} 2.0' in text
            assert 'controller_reconcile_errors_total{controller="flaky"} 4.0' in text
            assert 'workqueue_retries_total{name="flaky"} 4.0' in text
            assert 'workqueue_depth{name="flaky"} 0.0' in text
            assert 'controller_reconcile_time_seconds_count{controller="flaky"} 8.0' in text
            health = await http.get("/healthz", params={"verbose": "1"})
            assert health.status_code == 200 and "[+]controllers ok" in health.text
    finally:
        await manager.stop()
    assert not manager.running
    leftover = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(("controller-", "informer-"))]
    assert leftover == [], "a clean stop ends every worker and informer task"


async def test_manager_without_election_runs_selected_registry_controllers(apiserver):
    manager = ControllerManager(apiserver.url, ManagerConfig(controllers="*,-garbagecollector,-resourcequota"))
    await manager.start()
    try:
        assert manager.running
        assert "garbagecollector" not in manager.controllers and "namespace" in manager.controllers
        assert manager.healthy
    finally:
        await manager.stop()
