"""What a kubelet is told at start: who its node is (NodeConfig) and how often it does things (KubeletOptions).

Split in two because a KubeletPool runs many nodes with one set of timings: each node has its own name, labels,
capacity and runtime, while lease, status and back-off periods are the pool's. Defaults are upstream's
(nodeLeaseDurationSeconds 40, renew every 10 s, CrashLoopBackOff from 10 s doubling to 5 min); tests shorten them.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KUBELET_VERSION = "v1.32.0-ccmkit"
UNINITIALIZED_TAINT = "node.cloudprovider.kubernetes.io/uninitialized"

DEFAULT_CAPACITY: dict[str, str] = {
    "cpu": "4",
    "memory": "8Gi",
    "pods": "110",
    "ephemeral-storage": "50Gi",
}


def go_arch() -> str:
    """The architecture as Kubernetes names it (GOARCH), for the kubernetes.io/arch label and nodeInfo."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


@dataclass
class NodeConfig:
    """One node. ``cloud_provider="external"`` registers it tainted ``node.cloudprovider.kubernetes.io/
    uninitialized`` and without addresses, which the cloud-controller-manager then fills in (as upstream)."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, Any]] = field(default_factory=list)
    capacity: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CAPACITY))
    # Allocatable = capacity minus these (upstream's kube-reserved + system-reserved + eviction threshold).
    reserved: dict[str, str] = field(default_factory=dict)
    node_ip: str = "127.0.0.1"
    hostname: str | None = None  # a provider-given hostname; the node name when None
    cloud_provider: str = ""  # "" or "external"
    provider_id: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def effective_hostname(self) -> str:
        return self.hostname or self.name

    @property
    def external_cloud(self) -> bool:
        return self.cloud_provider == "external"


@dataclass
class KubeletOptions:
    """Timings and knobs shared by every node of a pool. All durations in seconds."""

    data_dir: Path = field(default_factory=lambda: Path(".ccmkit") / "kubelet")
    lease_duration: int = 40
    lease_renew_interval: float = 10.0
    # How often node status is recomputed, and how often it is written even when nothing changed (upstream's
    # nodeStatusUpdateFrequency and nodeStatusReportFrequency): the Lease is the heartbeat, not the status.
    node_status_update_interval: float = 10.0
    node_status_report_interval: float = 300.0
    backoff_initial: float = 10.0
    backoff_max: float = 300.0
    # PLEG: how often each runtime's containers are relisted to notice exits (upstream: 1 s).
    pleg_period: float = 1.0
    # Every pod is re-synced at least this often even without events (upstream's syncFrequency: 1 min).
    resync_period: float = 60.0
    sync_workers: int = 16
    # Concurrent API writes of the lease and status loops (a pool of 1000 nodes should not open 1000 requests).
    api_concurrency: int = 16
    # The kubelet's own HTTP server (logs, exec, stats); None runs none (then logs/exec are unavailable).
    server_host: str | None = "127.0.0.1"
    server_port: int = 0
    max_images_in_status: int = 50
