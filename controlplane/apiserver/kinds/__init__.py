"""The built-in kinds the API server serves, one module per family; `builtin_registry()` assembles them."""

from __future__ import annotations

from controlplane.apiserver.kinds import cluster, core, networking, workloads
from controlplane.apiserver.registry import Registry


def builtin_registry() -> Registry:
    registry = Registry()
    for module in (core, workloads, networking, cluster):
        for rt in module.resources():
            registry.add(rt)
    return registry
