"""Small rules about pods that several controllers share: readiness, terminal phases, service port resolution.

They follow upstream's podutil and endpointutil helpers, so the endpoints, endpointslice, quota and node controllers
agree on what "a ready pod" or "the port a named targetPort means" is.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def condition(obj: Obj, type_: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            found: Obj = cond
            return found
    return None


def set_condition(status: Obj, cond: Obj, now: str) -> bool:
    """Put ``cond`` into ``status["conditions"]`` in place of the one of its type, as upstream's UpdatePodCondition:
    its lastTransitionTime stays when its status does not change, and nothing changes (False) when status, reason
    and message are all the same already."""
    conditions = list(status.get("conditions") or [])
    old = next((c for c in conditions if c.get("type") == cond["type"]), None)
    if old is not None and all(old.get(k) == cond.get(k) for k in ("status", "reason", "message")):
        return False
    transition = old.get("lastTransitionTime") if old is not None and old.get("status") == cond.get("status") \
        else now
    status["conditions"] = [c for c in conditions if c.get("type") != cond["type"]] + [
        {**cond, "lastTransitionTime": transition}]
    return True


def is_pod_ready(pod: Obj) -> bool:
    cond = condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def is_terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def is_terminating(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def pod_ips(pod: Obj) -> list[str]:
    status = pod.get("status") or {}
    ips = [p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return ips


def should_be_in_endpoints(pod: Obj, include_terminating: bool) -> bool:
    """endpointutil.ShouldPodBeInEndpoints: not terminal, has an IP, and not terminating unless asked."""
    if is_terminal(pod) or not pod_ips(pod):
        return False
    if not include_terminating and is_terminating(pod):
        return False
    return True


def find_port(pod: Obj, service_port: Obj) -> int | None:
    """podutil.FindPort: a numeric targetPort as is; a named one is the container port with that name and the
    service port's protocol (None when the pod has no such port)."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int):
        return target
    if target is None:
        return None
    if isinstance(target, str) and target.isdigit():
        return int(target)
    protocol = service_port.get("protocol") or "TCP"
    spec = pod.get("spec") or {}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for port in container.get("ports") or []:
            if port.get("name") == target and (port.get("protocol") or "TCP") == protocol:
                value = port.get("containerPort")
                return int(value) if value is not None else None
    return None


def target_ref(pod: Obj) -> Obj:
    meta = pod["metadata"]
    return {"kind": "Pod", "namespace": meta.get("namespace"), "name": meta["name"], "uid": meta.get("uid")}


def service_selects(service: Obj, pod: Obj) -> bool:
    """A non-empty ``spec.selector`` whose every pair is among the pod's labels (services select by equality)."""
    selector = (service.get("spec") or {}).get("selector") or {}
    if not selector:
        return False
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())
