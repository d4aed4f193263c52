"""The Node and Lease objects a kubelet writes, built as pure functions of its config and what the runtime says.

Kept free of I/O so that one code path serves a single kubelet and a pool of a thousand, and so the wire shape
(labels, taints, conditions with their reasons, nodeInfo, daemonEndpoints) can be checked without a cluster.
Reasons and messages are upstream's, since tools and people match on them.
"""

from __future__ import annotations

import platform
import time
import uuid
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from controlplane.scheduler.quantity import parse_quantity

from .config import KUBELET_VERSION, UNINITIALIZED_TAINT, NodeConfig, go_arch

NODE_LEASE_NAMESPACE = "kube-node-lease"

# (type, status when healthy, reason, message) for each condition, as upstream's setters word them.
_HEALTHY_CONDITIONS = (
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
)


def rfc3339(t: float | None = None) -> str:
    """metav1.Time: seconds precision, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def micro_time(t: float | None = None) -> str:
    """metav1.MicroTime, as Lease.spec.renewTime carries it."""
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1_000_000):06d}Z"


def _os_image() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


_OS_IMAGE = _os_image()
_BOOT_ID = str(uuid.uuid4())


def node_labels(cfg: NodeConfig) -> dict[str, str]:
    arch = go_arch()
    return {
        "beta.kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        "kubernetes.io/hostname": cfg.effective_hostname,
        "kubernetes.io/os": "linux",
        **cfg.labels,
    }


def node_taints(cfg: NodeConfig) -> list[dict[str, Any]]:
    taints = [dict(t) for t in cfg.taints]
    if cfg.external_cloud and not any(t.get("key") == UNINITIALIZED_TAINT for t in taints):
        # What upstream's kubelet adds with --cloud-provider=external; the CCM's node controller removes it once
        # it has initialised the node from the cloud.
        taints.append({"key": UNINITIALIZED_TAINT, "value": "true", "effect": "NoSchedule"})
    return taints


def allocatable(cfg: NodeConfig) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, cap in cfg.capacity.items():
        reserved = cfg.reserved.get(name)
        if reserved is None:
            out[name] = cap
            continue
        left = max(parse_quantity(cap) - parse_quantity(reserved), Fraction(0))
        out[name] = _format_quantity(name, left)
    return out


def _format_quantity(name: str, q: Fraction) -> str:
    if name == "cpu":
        milli = int(q * 1000)
        return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"
    n = int(q)
    for suffix, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def addresses(cfg: NodeConfig) -> list[dict[str, str]]:
    return [{"type": "InternalIP", "address": cfg.node_ip}, {"type": "Hostname", "address": cfg.effective_hostname}]


def node_info(cfg: NodeConfig, runtime_name: str, runtime_version: str) -> dict[str, str]:
    machine_id = uuid.uuid5(uuid.NAMESPACE_DNS, f"{cfg.name}.nodes.ccmkit").hex
    return {
        "machineID": machine_id,
        "systemUUID": str(uuid.UUID(machine_id)),
        "bootID": _BOOT_ID,
        "kernelVersion": platform.release(),
        "osImage": _OS_IMAGE,
        "containerRuntimeVersion": f"{runtime_name}://{runtime_version}",
        "kubeletVersion": KUBELET_VERSION,
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": go_arch(),
    }


def conditions(previous: Iterable[dict[str, Any]], now: str, runtime_ready: bool = True,
               runtime_message: str = "") -> list[dict[str, Any]]:
    """The four node conditions, keeping each one's lastTransitionTime while its status does not change."""
    prev = {c.get("type"): c for c in previous}
    out = []
    for type_, status, reason, message in _HEALTHY_CONDITIONS:
        if type_ == "Ready" and not runtime_ready:
            status, reason = "False", "KubeletNotReady"
            message = runtime_message or "container runtime is down"
        old = prev.get(type_)
        transition = old["lastTransitionTime"] if old and old.get("status") == status and \
            old.get("lastTransitionTime") else now
        out.append({"type": type_, "status": status, "lastHeartbeatTime": now, "lastTransitionTime": transition,
                    "reason": reason, "message": message})
    return out


def node_status(cfg: NodeConfig, *, runtime_name: str, runtime_version: str, kubelet_port: int,
                previous_conditions: Iterable[dict[str, Any]] = (), runtime_ready: bool = True,
                runtime_message: str = "", images: list[dict[str, Any]] | None = None,
                now: str | None = None) -> dict[str, Any]:
    """The status the kubelet owns. With an external cloud provider it carries no addresses: the CCM sets them,
    and a merge of this status must not wipe them out."""
    now = now or rfc3339()
    status: dict[str, Any] = {
        "capacity": dict(cfg.capacity),
        "allocatable": allocatable(cfg),
        "conditions": conditions(previous_conditions, now, runtime_ready, runtime_message),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": node_info(cfg, runtime_name, runtime_version),
    }
    if not cfg.external_cloud:
        status["addresses"] = addresses(cfg)
    if images is not None:
        status["images"] = images
    return status


def node_object(cfg: NodeConfig, status: dict[str, Any]) -> dict[str, Any]:
    """The Node to register."""
    annotations = {
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        **cfg.annotations,
    }
    if cfg.external_cloud and cfg.node_ip:
        # Upstream records --node-ip here for the CCM to honour, since the kubelet sets no addresses itself.
        annotations["alpha.kubernetes.io/provided-node-ip"] = cfg.node_ip
    spec: dict[str, Any] = {}
    if taints := node_taints(cfg):
        spec["taints"] = taints
    if cfg.provider_id:
        spec["providerID"] = cfg.provider_id
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": cfg.name, "labels": node_labels(cfg), "annotations": annotations},
        "spec": spec,
        "status": status,
    }


def lease_object(node_name: str, node_uid: str | None, duration: int, renew_time: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": node_name, "namespace": NODE_LEASE_NAMESPACE}
    if node_uid:
        # Owned by its Node, so deleting the Node garbage-collects the Lease (as upstream).
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {"holderIdentity": node_name, "leaseDurationSeconds": duration,
                 "renewTime": renew_time or micro_time()},
    }


def images_status(images: Iterable[Any], limit: int) -> list[dict[str, Any]]:
    """node.status.images from CRI images, largest first as upstream reports them."""
    out = []
    for img in sorted(images, key=lambda i: i.size, reverse=True)[:limit]:
        names = [*img.repo_digests, *img.repo_tags]
        if names:
            out.append({"names": names, "sizeBytes": img.size})
    return out
