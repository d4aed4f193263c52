"""The controllers kube-controller-manager runs, by the names its ``--controllers`` flag uses.

This registry is the one place a controller is added: a name mapped to ``"module:factory"``, imported only when the
controller is enabled (a lazy registry, as libcloud's drivers), so a broken or heavy module costs nothing when it is
switched off. A factory is a class or function taking a ``ControllerContext`` (or nothing) and returning a
``Controller`` (base.py). Names are upstream's short names; ``ALIASES`` maps the long ``*-controller`` spellings
kube-controller-manager also accepts since 1.28.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controlplane.controllers.base import DONE, Controller, ControllerContext, Enqueue, Result, RetryLater

    ControllerFactory = Callable[[ControllerContext], Controller]

# base.py's names (and ControllerFactory, which is built from them) are loaded on first use: base imports the client
# (httpx), which `ccmkit up` should not wait for just to check its --controllers flag with ``select``.
_FROM_BASE = frozenset({"DONE", "Controller", "ControllerContext", "Enqueue", "Result", "RetryLater"})


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE or name == "ControllerFactory":
        from controlplane.controllers import base

        for attr in _FROM_BASE:
            globals()[attr] = getattr(base, attr)
        globals()["ControllerFactory"] = Callable[[base.ControllerContext], base.Controller]
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


CONTROLLERS: dict[str, str] = {
    # infrastructure
    "namespace": "controlplane.controllers.namespace_controller:NamespaceController",
    "garbagecollector": "controlplane.controllers.garbage_collector:GarbageCollector",
    "serviceaccount": "controlplane.controllers.serviceaccount_controller:ServiceAccountController",
    "endpoint": "controlplane.controllers.endpoints_controller:EndpointsController",
    "endpointslice": "controlplane.controllers.endpointslice_controller:EndpointSliceController",
    "nodelifecycle": "controlplane.controllers.node_lifecycle_controller:NodeLifecycleController",
    "taint-eviction-controller": "controlplane.controllers.taint_eviction_controller:TaintEvictionController",
    "nodeipam": "controlplane.controllers.node_ipam_controller:NodeIpamController",
    "persistentvolume-binder": "controlplane.controllers.pv_binder_controller:PersistentVolumeBinderController",
    "resourcequota": "controlplane.controllers.resourcequota_controller:ResourceQuotaController",
    "podgc": "controlplane.controllers.pod_gc_controller:PodGCController",
    # workloads
    "deployment": "controlplane.controllers.deployment_controller:DeploymentController",
    "replicaset": "controlplane.controllers.replicaset_controller:ReplicaSetController",
    "statefulset": "controlplane.controllers.statefulset_controller:StatefulSetController",
    "daemonset": "controlplane.controllers.daemonset_controller:DaemonSetController",
    "job": "controlplane.controllers.job_controller:JobController",
    "ttl-after-finished": "controlplane.controllers.job_controller:TTLAfterFinishedController",
    "cronjob": "controlplane.controllers.cronjob_controller:CronJobController",
    "horizontalpodautoscaling": "controlplane.controllers.hpa_controller:HorizontalPodAutoscalerController",
}

# Controllers that "*" does not turn on (upstream: bootstrapsigner, tokencleaner); name them to enable them.
DISABLED_BY_DEFAULT: frozenset[str] = frozenset()

ALIASES: dict[str, str] = {
    "namespace-controller": "namespace",
    "garbage-collector-controller": "garbagecollector",
    "serviceaccount-controller": "serviceaccount",
    "endpoints-controller": "endpoint",
    "endpointslice-controller": "endpointslice",
    "node-lifecycle-controller": "nodelifecycle",
    "node-ipam-controller": "nodeipam",
    "persistentvolume-binder-controller": "persistentvolume-binder",
    "resourcequota-controller": "resourcequota",
    "pod-garbage-collector-controller": "podgc",
    "deployment-controller": "deployment",
    "replicaset-controller": "replicaset",
    "statefulset-controller": "statefulset",
    "daemonset-controller": "daemonset",
    "job-controller": "job",
    "cronjob-controller": "cronjob",
    "ttl-after-finished-controller": "ttl-after-finished",
    "horizontal-pod-autoscaler-controller": "horizontalpodautoscaling",
}


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def select(spec: str | Sequence[str], known: list[str] | None = None,
           disabled_by_default: frozenset[str] = DISABLED_BY_DEFAULT) -> list[str]:
    """The controllers a ``--controllers`` value turns on, in registry order.

    As upstream: ``*`` means every controller not disabled by default, ``foo`` turns ``foo`` on, ``-foo`` turns it
    off, and the last mention of a name wins over ``*``. An unknown name is a ValueError, so a typo fails loudly.
    """
    known = list(CONTROLLERS) if known is None else known
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    star = False
    explicit: dict[str, bool] = {}
    for item in items:
        if item == "*":
            star = True
            continue
        on = not item.startswith("-")
        name = canonical_name(item.lstrip("-"))
        if name not in known:
            raise ValueError(f"{item!r} is not in the list of known controllers: {', '.join(sorted(known))}")
        explicit[name] = on
    return [n for n in known if explicit.get(n, star and n not in disabled_by_default)]


def load_factory(name: str) -> ControllerFactory:
    """Import the factory registered for ``name`` (a KeyError for an unknown name)."""
    target = CONTROLLERS[canonical_name(name)]
    module_name, _, attr = target.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return _adapt(factory)


def _adapt(factory: Callable[..., Controller]) -> ControllerFactory:
    # Factories that need no settings may take no argument; everything else gets the context.
    try:
        params = [p for p in inspect.signature(factory).parameters.values()
                  if p.default is inspect.Parameter.empty
                  and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        takes_context = bool(params) or "ctx" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_context = True
    if takes_context:
        return factory
    return lambda ctx: factory()


__all__ = [
    "ALIASES", "CONTROLLERS", "DISABLED_BY_DEFAULT", "DONE", "Controller", "ControllerContext", "ControllerFactory",
    "Enqueue", "Result", "RetryLater", "canonical_name", "load_factory", "select",
]
