"""Fixtures for controller tests: a client and controller managers against a real API server over HTTP.

Tests act as users and kubelets would (create objects, set pod status, renew leases) and wait for the controllers'
effect by polling a condition with a deadline; nothing waits a fixed time.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from controlplane.client import PODS, ApiClient, NotFound, Resource
from controlplane.controllers.manager import ControllerManager, ManagerConfig
from controlplane.testing import ThreadedApiServer

DEADLINE = 20.0  # generous: two shared cores, and several tests may run at once


async def eventually(condition: Callable[[], Any], timeout: float = DEADLINE, interval: float = 0.05,
                     message: str = "") -> Any:
    """Poll ``condition`` (plain or async) until it returns something truthy, and return that; fail at the
    deadline with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = condition()
            if inspect.isawaitable(last):
                last = await last
        except (AssertionError, NotFound, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message or condition}; last: {last!r}")
        await asyncio.sleep(interval)  # a polling interval, not a synchronisation point


@pytest.fixture
def wait_for() -> Callable[..., Awaitable[Any]]:
    """``await wait_for(lambda: cond, timeout=20)``: poll until truthy (condition may be async)."""
    return eventually


class Kube:
    """What tests do as users and as kubelets: create pods on nodes, report pod readiness."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    async def gone(self, resource: Resource, name: str, namespace: str | None = None) -> bool:
        try:
            await self.client.get(resource, name, namespace)
        except NotFound:
            return True
        return False

    async def pod(self, name: str, namespace: str = "default", *, labels: dict[str, str] | None = None,
                  node: str | None = None, ports: list[dict[str, Any]] | None = None,
                  tolerations: list[dict[str, Any]] | None = None, resources: dict[str, Any] | None = None,
                  owner: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
        container: dict[str, Any] = {"name": "main", "image": "busybox:1.36", "ports": ports or []}
        if resources:
            container["resources"] = resources
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
                                "spec": {"containers": [container], **spec}}
        if node:
            body["spec"]["nodeName"] = node
        if tolerations is not None:
            body["spec"]["tolerations"] = tolerations
        if owner:
            body["metadata"]["ownerReferences"] = [owner]
        return await self.client.create(PODS, body, namespace)

    async def pod_status(self, name: str, namespace: str = "default", *, ip: str | None = None, ready: bool = True,
                         phase: str = "Running") -> dict[str, Any]:
        pod = await self.client.get(PODS, name, namespace)
        status = dict(pod.get("status") or {})
        status["phase"] = phase
        if ip:
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        return await self.client.update_status(PODS, {**pod, "status": status})


@pytest.fixture
async def client(apiserver: ThreadedApiServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(apiserver.url) as c:
        yield c


@pytest.fixture
def kube(client: ApiClient) -> Kube:
    return Kube(client)


ManagerFactory = Callable[..., Awaitable[ControllerManager]]


@pytest.fixture
async def start_manager(apiserver: ThreadedApiServer) -> AsyncIterator[ManagerFactory]:
    """``await start_manager("namespace,garbagecollector", options={...})``: a started manager, stopped after."""
    managers: list[ControllerManager] = []

    async def start(controllers: str = "*", options: dict[str, Any] | None = None, **kwargs: Any) -> ControllerManager:
        manager = ControllerManager(apiserver.url, ManagerConfig(controllers=controllers, options=options or {},
                                                                 **kwargs))
        managers.append(manager)
        await manager.start()
        return manager

    yield start
    for manager in reversed(managers):
        await manager.stop()
