"""The Container Runtime Interface layer of the kubelet: the CRI Protocols and the runtimes behind them.

``api`` declares RuntimeService and ImageService (CRI v1, async); ``simulated`` runs in memory for thousands of
nodes, ``process`` runs containers as local processes, ``remote`` speaks CRI gRPC to containerd or to our own
``server``. The gRPC modules need the ``cri`` extra (grpcio, container-runtime-interface-api) and are imported
only when used.
"""

from .api import (
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    CRIError,
    ExecRequest,
    ExecSession,
    ImageService,
    ImageSpec,
    KeyValue,
    Mount,
    NotFoundError,
    PodSandboxConfig,
    PodSandboxMetadata,
    PodSandboxState,
    RuntimeService,
)
from .clock import FakeClock, SystemClock

__all__ = [
    "CRIError",
    "ContainerConfig",
    "ContainerMetadata",
    "ContainerState",
    "ExecRequest",
    "ExecSession",
    "FakeClock",
    "ImageService",
    "ImageSpec",
    "KeyValue",
    "Mount",
    "NotFoundError",
    "PodSandboxConfig",
    "PodSandboxMetadata",
    "PodSandboxState",
    "RuntimeService",
    "SystemClock",
]
