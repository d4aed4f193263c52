"""Upstream's rules that the kubelet applies without any I/O: pod phase, container states, CrashLoopBackOff timing,
$(VAR) expansion and env sources, node taints and allocatable, and reading CRI logs with tail/limit/timestamps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controlplane.kubelet.backoff import Backoff, go_duration
from controlplane.kubelet.config import NodeConfig
from controlplane.kubelet.cri import crilog
from controlplane.kubelet.cri.api import (
    ContainerMetadata,
    ContainerState,
    ContainerStatus,
)
from controlplane.kubelet.envvars import ContainerConfigError, container_env, expand
from controlplane.kubelet.logs import LogOptions, read_logs
from controlplane.kubelet.nodestatus import allocatable, node_object, node_status
from controlplane.kubelet.podstatus import ContainerView, container_status, phase


def status(state: ContainerState, exit_code: int = 0, cid: str = "c1") -> ContainerStatus:
    return ContainerStatus(id=cid, metadata=ContainerMetadata("app"), state=state, created_at=1,
                           started_at=1_700_000_000_000_000_000, finished_at=1_700_000_001_000_000_000 if
                           state == ContainerState.EXITED else 0, exit_code=exit_code,
                           reason=("Completed" if exit_code == 0 else "Error") if state == ContainerState.EXITED else "")


def view(state: ContainerState | None, exit_code: int = 0, waiting: tuple[str, str] | None = None) -> ContainerView:
    return ContainerView("app", "img", current=status(state, exit_code) if state is not None else None,
                         waiting=waiting)


@pytest.mark.parametrize(("policy", "views", "expected"), [
    ("Always", [view(None)], "Pending"),
    ("Always", [view(ContainerState.RUNNING), view(None)], "Pending"),
    ("Always", [view(ContainerState.RUNNING)], "Running"),
    ("Always", [view(ContainerState.EXITED, 0)], "Running"),  # it will be restarted
    ("Never", [view(ContainerState.EXITED, 0), view(ContainerState.EXITED, 0)], "Succeeded"),
    ("Never", [view(ContainerState.EXITED, 0), view(ContainerState.EXITED, 1)], "Failed"),
    ("OnFailure", [view(ContainerState.EXITED, 1)], "Running"),
    ("OnFailure", [view(ContainerState.EXITED, 0)], "Succeeded"),
    ("Never", [view(ContainerState.RUNNING), view(ContainerState.EXITED, 1)], "Running"),
])
def test_phase_follows_upstream(policy: str, views: list[ContainerView], expected: str) -> None:
    assert phase({"restartPolicy": policy}, [], views) == expected


def test_failed_init_container_fails_the_pod_only_with_restart_policy_never() -> None:
    failed_init = [view(ContainerState.EXITED, 3)]
    assert phase({"restartPolicy": "Never"}, failed_init, [view(None)]) == "Failed"
    assert phase({"restartPolicy": "Always"}, failed_init, [view(None)]) == "Pending"


def test_crash_looping_container_is_waiting_with_its_last_termination() -> None:
    v = view(ContainerState.EXITED, 2, waiting=("CrashLoopBackOff", "back-off 10s restarting failed container=app"))
    v.restart_count = 3
    st = container_status(v, "containerd")
    assert st["state"] == {"waiting": {"reason": "CrashLoopBackOff",
                                       "message": "back-off 10s restarting failed container=app"}}
    assert st["lastState"]["terminated"]["exitCode"] == 2 and st["lastState"]["terminated"]["reason"] == "Error"
    assert st["lastState"]["terminated"]["containerID"] == "containerd://c1"
    assert st["restartCount"] == 3 and st["ready"] is False


def test_backoff_is_immediate_then_doubles_up_to_the_cap() -> None:
    b = Backoff(10, 40)
    key, t = "uid/app", 1000.0
    assert b.remaining(key, t, t) == 0  # the first restart is immediate
    b.next(key, t, t)
    assert b.remaining(key, t + 1, t + 1) == 10  # then 10 s after the container finished
    for expected in (20, 40, 40):
        b.next(key, t, t)
        assert b.current(key) == expected
    # A container that ran for longer than twice the cap starts over.
    assert b.remaining(key, t + 200, t + 200) == 0
    assert [go_duration(s) for s in (0.5, 10, 80, 300)] == ["500ms", "10s", "1m20s", "5m0s"]


def test_expansion_follows_kubernetes() -> None:
    env = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)", env) == "x-y"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A) costs $5", env) == "$(A) costs $5"
    assert expand("open $(A", env) == "open $(A"


async def test_env_sources_in_order_and_upstream_errors() -> None:
    objects: dict[tuple[str, str], dict[str, Any]] = {
        ("ConfigMap", "cm"): {"data": {"k": "from-cm", "bad-name!": "skipped"}},
        ("Secret", "sec"): {"data": {"pw": "c2VjcmV0"}},
    }

    async def getter(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return objects.get((kind, name))

    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
           "spec": {"nodeName": "n1"}}
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "WHERE", "value": "$(APP)@$(NODE)"},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": True}}}],
    }
    env = await container_env(pod, container, getter, pod_ip="10.0.0.5", host_ip="10.0.0.1",
                              node_allocatable={"memory": "2Gi"})
    assert env == {"CM_k": "from-cm", "K": "from-cm", "PW": "secret", "APP": "web", "WHERE": "web@$(NODE)",
                   "NODE": "n1", "MEM": "2048"}
    missing_key = {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nokey"}}}]}
    with pytest.raises(ContainerConfigError, match="couldn't find key nokey in ConfigMap ns/cm"):
        await container_env(pod, missing_key, getter, pod_ip="", host_ip="", node_allocatable={})
    missing = {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]}
    with pytest.raises(ContainerConfigError, match='secret "gone" not found'):
        await container_env(pod, missing, getter, pod_ip="", host_ip="", node_allocatable={})


def test_node_object_for_an_external_cloud_and_reserved_resources() -> None:
    cfg = NodeConfig("n1", cloud_provider="external", taints=[{"key": "a", "effect": "NoExecute"}],
                     capacity={"cpu": "4", "memory": "8Gi", "pods": "110"}, reserved={"cpu": "500m", "memory": "1Gi"})
    assert allocatable(cfg) == {"cpu": "3500m", "memory": "7Gi", "pods": "110"}
    node = node_object(cfg, node_status(cfg, runtime_name="rt", runtime_version="1", kubelet_port=10250))
    assert [t["key"] for t in node["spec"]["taints"]] == ["a", "node.cloudprovider.kubernetes.io/uninitialized"]
    assert "addresses" not in node["status"]
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"] == "rt://1"


async def _read(path: Path, **options: Any) -> bytes:
    return b"".join([chunk async for chunk in read_logs(str(path), LogOptions(**options))])


async def test_log_reader_joins_partial_lines_and_honours_tail_limit_since_and_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    t0 = 1_700_000_000_000_000_000
    path.write_bytes(b"".join([
        crilog.format_line("stdout", b"one", timestamp_ns=t0),
        crilog.format_line("stdout", b"two-a", partial=True, timestamp_ns=t0 + 10**9),
        crilog.format_line("stdout", b"-b", timestamp_ns=t0 + 10**9),
        crilog.format_line("stderr", b"three", timestamp_ns=t0 + 2 * 10**9),
        b"2023-11-14T22:13:23.0Z stdout F torn-without-newline",
    ]))
    assert await _read(path) == b"one\ntwo-a-b\nthree\n"
    assert await _read(path, tail_lines=2) == b"two-a-b\nthree\n"
    assert await _read(path, tail_lines=0) == b""
    assert await _read(path, limit_bytes=6) == b"one\ntw"
    assert await _read(path, since=datetime.fromtimestamp(t0 / 1e9 + 1.5, UTC)) == b"three\n"
    stamped = (await _read(path, timestamps=True)).splitlines()
    assert stamped[0] == b"2023-11-14T22:13:20.000000000Z one"


async def test_log_follow_ends_when_the_container_stops(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(crilog.format_line("stdout", b"first"))
    alive = asyncio.Event()
    alive.set()

    async def running() -> bool:
        return alive.is_set()

    chunks: list[bytes] = []

    async def follow() -> None:
        async for chunk in read_logs(str(path), LogOptions(follow=True), running):
            chunks.append(chunk)
            if chunk == b"first\n":
                path.write_bytes(path.read_bytes() + crilog.format_line("stdout", b"second"))
                alive.clear()

    await asyncio.wait_for(follow(), 10)
    assert chunks == [b"first\n", b"second\n"]
