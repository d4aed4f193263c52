"""Pod status as the kubelet reports it, computed from what the runtime says about each container.

Pure functions, apart from the sync loop, because this is where upstream's rules live and where they are easiest to
check: container states with their reasons (ContainerCreating, PodInitializing, CrashLoopBackOff, Completed, Error),
restart counts, ``started``/``ready``, the pod phase (upstream's getPhase), and the kubelet-owned conditions with
their lastTransitionTime kept while a condition does not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .cri.api import ContainerState, ContainerStatus
from .nodestatus import rfc3339

KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


@dataclass(slots=True)
class ContainerView:
    """What the sync loop knows about one container of the spec."""

    name: str
    image: str
    current: ContainerStatus | None = None  # the latest attempt
    previous: ContainerStatus | None = None  # the attempt before it
    restart_count: int = 0
    # Why it is not running, when the runtime cannot say: CrashLoopBackOff, CreateContainerConfigError, ...
    waiting: tuple[str, str] | None = None
    ready: bool = False
    started: bool = False


def _ts(ns: int) -> str | None:
    return rfc3339(ns / 1e9) if ns else None


def terminated_state(cs: ContainerStatus, runtime_name: str) -> dict[str, Any]:
    state: dict[str, Any] = {
        "exitCode": cs.exit_code,
        "reason": cs.reason or ("Completed" if cs.exit_code == 0 else "Error"),
        "startedAt": _ts(cs.started_at),
        "finishedAt": _ts(cs.finished_at),
        "containerID": f"{runtime_name}://{cs.id}",
    }
    if cs.message:
        state["message"] = cs.message
    return state


def container_status(view: ContainerView, runtime_name: str, *, waiting_reason: str = "ContainerCreating",
                     init: bool = False) -> dict[str, Any]:
    cur, prev = view.current, view.previous
    state: dict[str, Any]
    last: dict[str, Any] = {}
    if cur is not None and cur.state == ContainerState.CONTAINER_RUNNING:
        state = {"running": {"startedAt": _ts(cur.started_at)}}
        if prev is not None and prev.state == ContainerState.CONTAINER_EXITED:
            last = {"terminated": terminated_state(prev, runtime_name)}
    elif cur is not None and cur.state == ContainerState.CONTAINER_EXITED and view.waiting is None:
        state = {"terminated": terminated_state(cur, runtime_name)}
        if prev is not None and prev.state == ContainerState.CONTAINER_EXITED:
            last = {"terminated": terminated_state(prev, runtime_name)}
    else:
        reason, message = view.waiting or (waiting_reason, "")
        state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        if cur is not None and cur.state == ContainerState.CONTAINER_EXITED:
            # Waiting to restart: the attempt that just ended is the last state (what `logs --previous` shows).
            last = {"terminated": terminated_state(cur, runtime_name)}
        elif prev is not None and prev.state == ContainerState.CONTAINER_EXITED:
            last = {"terminated": terminated_state(prev, runtime_name)}
    out: dict[str, Any] = {
        "name": view.name,
        "state": state,
        "lastState": last,
        "ready": view.ready,
        "restartCount": view.restart_count,
        "image": view.image,
        "imageID": cur.image_ref if cur is not None else "",
        "started": view.started,
    }
    if cur is not None:
        out["containerID"] = f"{runtime_name}://{cur.id}"
    if init:
        # Upstream reports no `started` for init containers.
        out.pop("started")
    return out


def init_done(views: Iterable[ContainerView]) -> bool:
    return all(v.current is not None and v.current.state == ContainerState.CONTAINER_EXITED
               and v.current.exit_code == 0 for v in views)


def phase(spec: Mapping[str, Any], init_views: list[ContainerView], views: list[ContainerView]) -> str:
    """upstream's getPhase, for the states this kubelet produces."""
    policy = spec.get("restartPolicy", "Always")
    if not init_done(init_views):
        failed = any(v.current is not None and v.current.state == ContainerState.CONTAINER_EXITED
                     and v.current.exit_code != 0 for v in init_views)
        return "Failed" if failed and policy == "Never" else "Pending"
    waiting = running = stopped = succeeded = 0
    for v in views:
        cur = v.current
        if cur is not None and cur.state == ContainerState.CONTAINER_RUNNING:
            running += 1
        elif cur is not None and cur.state == ContainerState.CONTAINER_EXITED:
            stopped += 1
            if cur.exit_code == 0:
                succeeded += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped == len(views):
        if policy == "Always":
            return "Running"
        if succeeded == stopped:
            return "Succeeded"
        return "Failed" if policy == "Never" else "Running"
    return "Pending"


def _condition(type_: str, ok: bool, previous: Mapping[str, Mapping[str, Any]], now: str, reason: str = "",
               message: str = "") -> dict[str, Any]:
    status = "True" if ok else "False"
    old = previous.get(type_)
    transition = old.get("lastTransitionTime") if old and old.get("status") == status else None
    cond: dict[str, Any] = {"type": type_, "status": status, "lastProbeTime": None,
                            "lastTransitionTime": transition or now}
    if not ok and reason:
        cond["reason"] = reason
    if not ok and message:
        cond["message"] = message
    return cond


def pod_status(pod: Mapping[str, Any], *, runtime_name: str, sandbox_ready: bool, pod_ip: str, host_ip: str,
               start_time: str | None, init_views: list[ContainerView], views: list[ContainerView],
               now: str | None = None) -> dict[str, Any]:
    """The whole status to write, keeping what others own in the current status (their conditions, qosClass,
    nominatedNodeName)."""
    now = now or rfc3339()
    spec = pod.get("spec") or {}
    current = pod.get("status") or {}
    previous = {c.get("type"): c for c in current.get("conditions") or []}
    pod_phase = phase(spec, init_views, views)
    initialized = init_done(init_views)

    init_statuses = []
    for v in init_views:
        st = container_status(v, runtime_name, init=True)
        st["ready"] = bool(v.current is not None and v.current.state == ContainerState.CONTAINER_EXITED
                           and v.current.exit_code == 0)
        init_statuses.append(st)
    statuses = [container_status(v, runtime_name, waiting_reason="ContainerCreating" if initialized
                                 else "PodInitializing") for v in views]

    completed = pod_phase in ("Succeeded", "Failed")
    unready = [v.name for v in views if not v.ready]
    not_init = [v.name for v in init_views if not (v.current is not None and v.current.exit_code == 0
                                                   and v.current.state == ContainerState.CONTAINER_EXITED)]
    ready_reason = "PodCompleted" if completed else "ContainersNotReady"
    ready_message = "" if completed else f"containers with unready status: [{' '.join(unready)}]"
    gates = [g.get("conditionType") for g in spec.get("readinessGates") or []]
    gates_ok = all((previous.get(g) or {}).get("status") == "True" for g in gates)
    conditions = [
        _condition("PodReadyToStartContainers", sandbox_ready, previous, now),
        _condition("Initialized", initialized, previous, now,
                   "PodCompleted" if completed and not initialized else "ContainersNotInitialized",
                   f"containers with incomplete status: [{' '.join(not_init)}]"),
        _condition("Ready", not unready and gates_ok and not completed, previous, now,
                   ready_reason if unready or completed else "ReadinessGatesNotReady",
                   ready_message if unready else "corresponding condition of pod readiness gate is not true"),
        _condition("ContainersReady", not unready and not completed, previous, now, ready_reason, ready_message),
    ]
    # PodScheduled is the scheduler's; a pod bound by hand has none, and upstream's kubelet then reports it True.
    conditions.append(dict(previous["PodScheduled"]) if "PodScheduled" in previous
                      else _condition("PodScheduled", True, previous, now))
    conditions.extend(dict(c) for t, c in previous.items() if t not in KUBELET_CONDITIONS and t != "PodScheduled")

    status: dict[str, Any] = {
        "phase": pod_phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}] if host_ip else [],
        "startTime": start_time,
        "containerStatuses": statuses,
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if init_statuses:
        status["initContainerStatuses"] = init_statuses
    for key in ("qosClass", "nominatedNodeName"):
        if current.get(key):
            status[key] = current[key]
    return status


def rejected_status(pod: Mapping[str, Any], reason: str, message: str) -> dict[str, Any]:
    """What a pod the node cannot admit gets: phase Failed with upstream's reason (OutOfcpu, ...) and message."""
    current = pod.get("status") or {}
    status: dict[str, Any] = {"phase": "Failed", "reason": reason, "message": message,
                              "conditions": list(current.get("conditions") or []), "startTime": rfc3339()}
    if current.get("qosClass"):
        status["qosClass"] = current["qosClass"]
    return status
