"""What the client needs to know about a kind to reach it over HTTP: its group, version, plural and scope.

Kubernetes addresses every object by a URL built from these four facts, so a small frozen value is all the client
carries instead of typed models. The constants cover the built-in kinds ccmkit's components use; a custom resource
is just another ``Resource(...)`` built by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote


@dataclass(frozen=True, slots=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version_path(self) -> str:
        # The core group lives under the legacy /api prefix; every named group under /apis.
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(self, name: str | None = None, namespace: str | None = None, subresource: str | None = None) -> str:
        """The URL path of this resource's collection, or of one object (and its subresource).

        For a namespaced resource, ``namespace=None`` is the collection across all namespaces (only list, watch and
        a few other verbs accept that). For a cluster-scoped resource ``namespace`` is ignored, as kubectl ignores
        ``-n`` for nodes, so callers can pass a default namespace through without checking the scope.
        """
        parts = [self.group_version_path]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{_segment(namespace)}")
        parts.append(self.plural)
        if name is not None:
            if not name:
                raise ValueError(f"empty name for {self.kind}")
            if self.namespaced and not namespace:
                raise ValueError(f"{self.kind} {name!r} is namespaced: a namespace is required")
            parts.append(_segment(name))
            if subresource:
                parts.append(subresource)
        elif subresource:
            raise ValueError("a subresource needs an object name")
        return "/".join(parts)

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _segment(value: str) -> str:
    # Names are DNS-like in practice, but RBAC objects carry ':' (system:node:x); quote the rest defensively.
    return quote(value, safe=":@")


PODS = Resource("", "v1", "pods", "Pod", True)
NODES = Resource("", "v1", "nodes", "Node", False)
SERVICES = Resource("", "v1", "services", "Service", True)
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints", True)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", True)
SECRETS = Resource("", "v1", "secrets", "Secret", True)
EVENTS = Resource("", "v1", "events", "Event", True)
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount", True)
PERSISTENTVOLUMES = Resource("", "v1", "persistentvolumes", "PersistentVolume", False)
PERSISTENTVOLUMECLAIMS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True)
RESOURCEQUOTAS = Resource("", "v1", "resourcequotas", "ResourceQuota", True)
LIMITRANGES = Resource("", "v1", "limitranges", "LimitRange", True)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment", True)
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet", True)
STATEFULSETS = Resource("apps", "v1", "statefulsets", "StatefulSet", True)
DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet", True)
CONTROLLERREVISIONS = Resource("apps", "v1", "controllerrevisions", "ControllerRevision", True)
JOBS = Resource("batch", "v1", "jobs", "Job", True)
CRONJOBS = Resource("batch", "v1", "cronjobs", "CronJob", True)
HORIZONTALPODAUTOSCALERS = Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", True)
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True)
STORAGECLASSES = Resource("storage.k8s.io", "v1", "storageclasses", "StorageClass", False)
VOLUMEATTACHMENTS = Resource("storage.k8s.io", "v1", "volumeattachments", "VolumeAttachment", False)
PODDISRUPTIONBUDGETS = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True)
PRIORITYCLASSES = Resource("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False)

BUILTIN_RESOURCES: tuple[Resource, ...] = (
    PODS, NODES, SERVICES, ENDPOINTS, NAMESPACES, CONFIGMAPS, SECRETS, EVENTS, SERVICEACCOUNTS, PERSISTENTVOLUMES,
    PERSISTENTVOLUMECLAIMS, RESOURCEQUOTAS, LIMITRANGES, DEPLOYMENTS, REPLICASETS, STATEFULSETS, DAEMONSETS,
    CONTROLLERREVISIONS, JOBS, CRONJOBS, HORIZONTALPODAUTOSCALERS, LEASES, ENDPOINTSLICES, STORAGECLASSES,
    VOLUMEATTACHMENTS, PODDISRUPTIONBUDGETS, PRIORITYCLASSES,
)

__all__ = [
    "Resource", "BUILTIN_RESOURCES", "resource_for", "resource_of",
    *(name for name, value in list(globals().items()) if isinstance(value, Resource)),
]

_BY_GVK: dict[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in BUILTIN_RESOURCES}


def resource_for(api_version: str, kind: str) -> Resource:
    """The built-in Resource for an object's ``apiVersion`` and ``kind``; KeyError for anything else.

    Custom resources are not known here on purpose: a process-wide registry is global state every test would have
    to reset. Build a ``Resource`` for them (or from discovery) where they are used.
    """
    try:
        return _BY_GVK[(api_version, kind)]
    except KeyError:
        raise KeyError(f"no built-in resource for apiVersion={api_version!r} kind={kind!r}") from None


def resource_of(obj: dict[str, Any]) -> Resource:
    """The built-in Resource of an object dict, from its ``apiVersion`` and ``kind``."""
    return resource_for(obj.get("apiVersion", ""), obj.get("kind", ""))
