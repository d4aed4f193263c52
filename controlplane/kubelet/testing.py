"""Helpers for tests and benchmarks that run kubelets against a real API server: fast timings, polling with a
deadline, and pod manifests bound to a node without a scheduler.

Tests must wait for conditions, never for time; ``wait_for`` is that one loop, with a deadline and a message that
says what never happened.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from .config import KubeletOptions

T = TypeVar("T")


def fast_options(data_dir: Path, **overrides: Any) -> KubeletOptions:
    """Timings for tests: second-scale loops instead of upstream's 10 s leases and 5 min back-off."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "lease_renew_interval": 1.0,
        "node_status_update_interval": 1.0,
        "node_status_report_interval": 2.0,
        "backoff_initial": 0.5,
        "backoff_max": 2.0,
        "pleg_period": 0.2,
        "resync_period": 5.0,
    }
    values.update(overrides)
    return KubeletOptions(**values)


async def wait_for(check: Callable[[], Awaitable[T | None] | T | None], timeout: float = 30.0,
                   interval: float = 0.05, what: str = "the condition") -> T:
    """Poll ``check()`` (plain or async) until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        last = result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


def pod_manifest(name: str, node: str, containers: list[dict[str, Any]], namespace: str = "default",
                 **spec: Any) -> dict[str, Any]:
    """A pod already bound to ``node`` (spec.nodeName set at create, as a scheduler-less cluster allows)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, **spec.pop("metadata", {})},
        "spec": {"nodeName": node, "containers": containers, **spec},
    }


def condition(pod: dict[str, Any], type_: str) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c.get("status")
    return None


def container_status(pod: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for st in statuses:
        if name is None or st.get("name") == name:
            return st
    return {}


async def get_pod(client: Any, name: str, namespace: str = "default") -> dict[str, Any] | None:
    from controlplane.client import PODS, NotFound

    try:
        return await client.get(PODS, name, namespace)
    except NotFound:
        return None


async def pod_where(client: Any, name: str, check: Callable[[dict[str, Any]], Any], what: str,
                    timeout: float = 30.0, namespace: str = "default") -> dict[str, Any]:
    """Poll the pod through the API server until ``check(pod)`` holds; returns that pod."""

    async def probe() -> dict[str, Any] | None:
        pod = await get_pod(client, name, namespace)
        return pod if pod is not None and check(pod) else None

    return await wait_for(probe, timeout, what=f"pod {namespace}/{name}: {what}")


def phase_is(phase: str) -> Callable[[dict[str, Any]], bool]:
    return lambda pod: (pod.get("status") or {}).get("phase") == phase
