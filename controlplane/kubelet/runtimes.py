"""Choosing a node's CRI runtime by name, and the kubelet as a cluster component (``ccmkit up --nodes N``).

``simulated`` keeps containers in memory (thousands of nodes per process), ``process`` runs them as local
processes, ``remote:SOCKET`` speaks CRI gRPC to containerd or another CRI server. Each node of a pool gets its own
pod CIDR, so pod IPs are unique across the cluster: 10.244.<i>.0/24 (simulated) or 127.<1+i/256>.<i%256>.0/24
(process: loopback addresses a test can connect to).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import KubeletOptions, NodeConfig
from .pool import KubeletPool, NodeRuntime

RUNTIME_KINDS = ("simulated", "process", "remote:SOCKET")


def pod_cidr(kind: str, index: int) -> str:
    if kind == "process":
        return f"127.{1 + index // 256}.{index % 256}.0/24"
    return f"10.{244 + index // 256}.{index % 256}.0/24"


def build_runtime(kind: str, data_dir: Path, index: int = 0, cidr: str | None = None) -> tuple[Any, Any]:
    """(RuntimeService, ImageService) for ``kind``; the remote runtime is both. ``cidr`` overrides the pod CIDR
    chosen by ``index``."""
    if kind == "simulated":
        from .cri.simulated import SimulatedRuntime

        sim = SimulatedRuntime(pod_cidr=cidr or pod_cidr(kind, index))
        return sim, sim.images
    if kind == "process":
        from .cri.process import ProcessRuntime

        proc = ProcessRuntime(Path(data_dir) / "process", pod_cidr=cidr or pod_cidr(kind, index))
        return proc, proc.images
    if kind.startswith(("remote:", "unix:")):
        from .cri.remote import RemoteRuntime

        endpoint = kind.split(":", 1)[1] if kind.startswith("remote:") else kind
        remote = RemoteRuntime(endpoint)
        return remote, remote
    raise ValueError(f"unknown runtime {kind!r}: choose simulated, process or remote:SOCKET")


def node_runtime(kind: str, config: NodeConfig, data_dir: Path, index: int = 0) -> NodeRuntime:
    runtime, images = build_runtime(kind, Path(data_dir) / config.name, index)
    return NodeRuntime(config, runtime, images)


@dataclass
class KubeletComponent:
    """``ccmkit up``'s kubelets: one pool of ``nodes`` nodes named ``<prefix>-1`` ... on one runtime kind."""

    nodes: int = 1
    runtime: str = "process"
    prefix: str = "ccmkit-node"
    cloud_provider: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    options: Callable[[Path], KubeletOptions] | None = None

    def node_names(self) -> list[str]:
        return [f"{self.prefix}-{i + 1}" for i in range(self.nodes)]

    async def __call__(self, api_url: str, data_dir: Path) -> KubeletPool:
        if self.runtime.startswith(("remote:", "unix:")) and self.nodes > 1:
            raise ValueError("a remote CRI endpoint serves one node: use --nodes 1 with --runtime remote:SOCKET")
        base = Path(data_dir) / "kubelet"
        options = self.options(base) if self.options else KubeletOptions(data_dir=base)
        nodes = [node_runtime(self.runtime, NodeConfig(name, labels=dict(self.labels),
                                                       cloud_provider=self.cloud_provider), base, i)
                 for i, name in enumerate(self.node_names())]
        return KubeletPool(api_url, nodes, options, own_runtimes=True)
