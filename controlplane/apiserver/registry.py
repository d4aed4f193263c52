"""The resource registry: every kind the API server serves, declared once.

A `ResourceType` says where a kind lives in the API (group, version, plural, scope), what it is called (kind,
singular, short names, categories), which subresources it has and which `Strategy` gives it its behaviour. Routing,
discovery, storage keys and table printing all read from here, so adding a kind is one declaration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controlplane.apiserver.kinds.base import Strategy

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass
class ScaleSpec:
    """Where the scale subresource reads and writes replicas, like a CRD's scale subresource paths."""

    spec_replicas: str = "spec.replicas"
    status_replicas: str = "status.replicas"
    label_selector: str | None = "status.selector"  # a path to a string selector, or None to derive from spec.selector
    selector_from_spec: bool = True


@dataclass
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    strategy: Strategy
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    name_rule: str = "subdomain"  # subdomain | label | dns1035
    storage_prefix: str = ""
    scale: ScaleSpec | None = None
    # table columns: (definition, cell function); None means the default Name/Age table
    table: Any = None

    def __post_init__(self) -> None:
        if not self.singular:
            self.singular = self.kind.lower()
        if not self.storage_prefix:
            self.storage_prefix = self.plural if self.group in BUILTIN_GROUPS else f"{self.group}/{self.plural}"
        if self.scale is not None and "scale" not in self.subresources:
            self.subresources = (*self.subresources, "scale")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> tuple[str, str]:
        return (self.group, self.version)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def qualified(self) -> str:
        """The resource as errors name it: `pods`, `deployments.apps`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def key_prefix(self, namespace: str | None = None) -> str:
        if self.namespaced and namespace:
            return f"/registry/{self.storage_prefix}/{namespace}/"
        return f"/registry/{self.storage_prefix}/"

    def key(self, namespace: str | None, name: str) -> str:
        if self.namespaced:
            return f"/registry/{self.storage_prefix}/{namespace}/{name}"
        return f"/registry/{self.storage_prefix}/{name}"


# Groups whose resources live at /registry/<plural>/ as upstream lays them out; unknown (custom) groups get
# /registry/<group>/<plural>/ so two groups' plurals can never collide. events.k8s.io shares the plural "events"
# with core, so it is left out here and keeps its own prefix.
BUILTIN_GROUPS = frozenset({
    "", "apps", "batch", "autoscaling", "coordination.k8s.io", "discovery.k8s.io", "storage.k8s.io", "policy",
    "rbac.authorization.k8s.io", "scheduling.k8s.io", "apiextensions.k8s.io", "networking.k8s.io",
    "certificates.k8s.io", "node.k8s.io", "flowcontrol.apiserver.k8s.io", "admissionregistration.k8s.io",
})


@dataclass
class Registry:
    """All served resources, indexed the ways requests look them up."""

    _by_path: dict[tuple[str, str, str], ResourceType] = field(default_factory=dict)
    _by_kind: dict[tuple[str, str], ResourceType] = field(default_factory=dict)
    _listeners: list[Callable[[], None]] = field(default_factory=list)

    def add(self, rt: ResourceType) -> None:
        self._by_path[(rt.group, rt.version, rt.plural)] = rt
        self._by_kind[(rt.api_version, rt.kind)] = rt
        for listener in self._listeners:
            listener()

    def remove(self, group: str, version: str, plural: str) -> None:
        rt = self._by_path.pop((group, version, plural), None)
        if rt is not None:
            self._by_kind.pop((rt.api_version, rt.kind), None)
            for listener in self._listeners:
                listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_path.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        return self._by_kind.get((api_version, kind))

    def all(self) -> Iterable[ResourceType]:
        return self._by_path.values()

    def group_versions(self) -> dict[str, list[str]]:
        """group -> versions, in the order they were registered (the first is the preferred version)."""
        out: dict[str, list[str]] = {}
        for rt in self._by_path.values():
            versions = out.setdefault(rt.group, [])
            if rt.version not in versions:
                versions.append(rt.version)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self._by_path.values() if rt.group == group and rt.version == version]
