"""Everything the scheduler needs to know about one pod, computed once per pod version.

A Pod arrives as a plain dict in the Kubernetes wire format; plugins would otherwise re-walk its containers,
affinity and volumes on every node they look at. ``PodInfo`` is upstream's framework.PodInfo: aggregated resource
requests (as upstream's resourcehelper.PodRequests, sidecar-aware), host ports, tolerations, compiled node affinity
and pod (anti-)affinity terms, images and claimed volumes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any

from .labels import (
    EVERYTHING,
    NOTHING,
    NodeSelector,
    NodeSelectorTerm,
    Selector,
    label_selector,
    parse_node_selector,
    parse_node_selector_term,
    toleration_key,
)
from .quantity import parse_quantity, to_int

__all__ = [
    "AffinityTerm", "PodInfo", "pod_requests", "is_scalar_resource", "normalized_image_name",
    "DEFAULT_MILLI_CPU_REQUEST", "DEFAULT_MEMORY_REQUEST", "parse_time", "pod_key",
]

# schedutil.DefaultMilliCPURequest / DefaultMemoryRequest: what a container without a request "costs" when scoring,
# so that many request-less pods do not all land on one node.
DEFAULT_MILLI_CPU_REQUEST = 100
DEFAULT_MEMORY_REQUEST = 200 * 1024 * 1024

_NATIVE = ("cpu", "memory", "ephemeral-storage", "pods")


def is_scalar_resource(name: str) -> bool:
    """schedutil.IsScalarResourceName: extended (domain-qualified), hugepages-*, attachable-volumes-*."""
    return "/" in name or name.startswith("hugepages-") or name.startswith("attachable-volumes-")


def normalized_image_name(name: str) -> str:
    """ImageLocality's normalizedImageName: an image without a tag means :latest."""
    if name.rfind(":") <= name.rfind("/"):
        name = name + ":latest"
    return name


def parse_time(value: str | None) -> float | None:
    """An RFC 3339 timestamp as seconds since the epoch."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def pod_key(pod: Mapping[str, Any]) -> str:
    md = pod.get("metadata") or {}
    return f"{md.get('namespace', '') or 'default'}/{md.get('name', '')}"


# ---------------------------------------------------------------------------------------------------------------
# Resource requests
# ---------------------------------------------------------------------------------------------------------------

def _container_requests(container: Mapping[str, Any]) -> dict[str, Fraction]:
    res = container.get("resources") or {}
    reqs = {k: parse_quantity(v) for k, v in (res.get("requests") or {}).items()}
    # API defaulting copies limits into missing requests; do it here too in case the object skipped defaulting.
    for k, v in (res.get("limits") or {}).items():
        if k not in reqs:
            reqs[k] = parse_quantity(v)
    return reqs


def _add(into: dict[str, Fraction], other: Mapping[str, Fraction]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


def _max(into: dict[str, Fraction], other: Mapping[str, Fraction]) -> None:
    for k, v in other.items():
        if k not in into or v > into[k]:
            into[k] = v


def _aggregate(spec: Mapping[str, Any], non_missing: Mapping[str, Fraction] | None) -> dict[str, Fraction]:
    """resourcehelper.PodRequests: max(sum(containers), max over init containers) + overhead, where a restartable
    (sidecar) init container is added to the sum and to every later init container's usage (KEP-753)."""
    reqs: dict[str, Fraction] = {}
    for c in spec.get("containers") or ():
        cr = _container_requests(c)
        if non_missing:
            for k, v in non_missing.items():
                if k not in cr:
                    cr[k] = v
        _add(reqs, cr)
    sidecars: dict[str, Fraction] = {}
    init_max: dict[str, Fraction] = {}
    for c in spec.get("initContainers") or ():
        cr = _container_requests(c)
        if non_missing:
            for k, v in non_missing.items():
                if k not in cr:
                    cr[k] = v
        if c.get("restartPolicy") == "Always":
            _add(reqs, cr)
            _add(sidecars, cr)
            usage = dict(sidecars)
        else:
            usage = dict(cr)
            _add(usage, sidecars)
        _max(init_max, usage)
    _max(reqs, init_max)
    overhead = spec.get("overhead")
    if overhead:
        _add(reqs, {k: parse_quantity(v) for k, v in overhead.items()})
    return reqs


_NON_MISSING = {"cpu": Fraction(DEFAULT_MILLI_CPU_REQUEST, 1000), "memory": Fraction(DEFAULT_MEMORY_REQUEST)}


_REQUESTS_MEMO: dict[tuple, tuple[dict[str, int], int, int]] = {}


def _resources_key(spec: Mapping[str, Any]) -> tuple:
    def part(c: Mapping[str, Any]) -> tuple:
        res = c.get("resources") or {}
        return (tuple((res.get("requests") or {}).items()), tuple((res.get("limits") or {}).items()),
                c.get("restartPolicy"))
    overhead = spec.get("overhead")
    return (tuple(part(c) for c in spec.get("containers") or ()),
            tuple(part(c) for c in spec.get("initContainers") or ()),
            tuple(overhead.items()) if overhead else ())


def pod_requests(spec: Mapping[str, Any]) -> tuple[dict[str, int], int, int]:
    """(requests, non-zero cpu millis, non-zero memory bytes) as upstream's computePodResourceRequest and
    calculateResource: requests keyed by resource name, cpu in millicores, others in base units; only resources the
    scheduler accounts (cpu, memory, ephemeral-storage and scalar resources) are kept. Memoised per resource
    shape, since pods of one workload share it."""
    try:
        key = _resources_key(spec)
        hit = _REQUESTS_MEMO.get(key)
    except TypeError:  # unhashable values in a hand-written spec
        key, hit = None, None
    if hit is not None:
        return dict(hit[0]), hit[1], hit[2]
    out = _pod_requests(spec)
    if key is not None:
        if len(_REQUESTS_MEMO) > 4096:
            _REQUESTS_MEMO.clear()
        _REQUESTS_MEMO[key] = out
    return dict(out[0]), out[1], out[2]


def _pod_requests(spec: Mapping[str, Any]) -> tuple[dict[str, int], int, int]:
    agg = _aggregate(spec, None)
    out: dict[str, int] = {}
    for k, v in agg.items():
        if k in ("cpu", "memory", "ephemeral-storage") or is_scalar_resource(k):
            out[k] = to_int(k, v)
    nz = _aggregate(spec, _NON_MISSING)
    return out, to_int("cpu", nz.get("cpu", 0)), to_int("memory", nz.get("memory", 0))


# ---------------------------------------------------------------------------------------------------------------
# Pod (anti-)affinity terms
# ---------------------------------------------------------------------------------------------------------------

@dataclass(eq=False, slots=True)
class AffinityTerm:
    """framework.AffinityTerm: a compiled PodAffinityTerm (plus its weight when it is a preferred term)."""

    namespaces: frozenset[str]
    selector: Selector
    topology_key: str
    namespace_selector: Selector
    weight: int = 0
    key: tuple = ()

    def matches(self, namespace: str, labels: Mapping[str, str], ns_labels: Mapping[str, str] | None) -> bool:
        if namespace in self.namespaces or self.namespace_selector.matches(ns_labels or {}):
            return self.selector.matches(labels)
        return False

    def with_namespaces(self, namespaces: frozenset[str]) -> AffinityTerm:
        """The term with a namespace selector resolved into names (InterPodAffinity's mergeAffinityTermNamespaces)."""
        t = AffinityTerm(namespaces, self.selector, self.topology_key, NOTHING, self.weight)
        t.key = (namespaces, self.selector.key, self.topology_key, NOTHING.key, self.weight)
        return t


def _affinity_term(owner_ns: str, term: Mapping[str, Any], weight: int = 0) -> AffinityTerm:
    selector = label_selector(term.get("labelSelector"))
    ns_sel_raw = term.get("namespaceSelector")
    ns_selector = label_selector(ns_sel_raw)
    names = term.get("namespaces") or []
    # getNamespacesFromPodAffinityTerm: no namespaces and no selector means the owner pod's namespace.
    namespaces = frozenset([owner_ns]) if not names and ns_sel_raw is None else frozenset(names)
    key = (namespaces, selector.key, term.get("topologyKey", ""), ns_selector.key, weight)
    return AffinityTerm(namespaces, selector, term.get("topologyKey", ""), ns_selector, weight, key)


# ---------------------------------------------------------------------------------------------------------------
# PodInfo
# ---------------------------------------------------------------------------------------------------------------

class PodInfo:
    """The parsed view of one pod version. Treat as immutable: the cache and queue share instances."""

    __slots__ = (
        "pod", "uid", "namespace", "name", "key", "labels", "node_name", "scheduler_name", "priority",
        "preemption_policy", "deleting", "start_time", "requests", "nonzero_cpu", "nonzero_mem", "host_ports",
        "tolerations", "tolerations_key", "node_selector", "required_node_affinity", "preferred_node_affinity",
        "required_affinity_terms", "required_anti_affinity_terms", "preferred_affinity_terms",
        "preferred_anti_affinity_terms", "has_affinity", "images", "num_containers", "claims",
        "spread_constraints", "scheduling_gates", "nominated_node_name", "parse_error", "group_key", "phase",
        "node_affinity_key",
    )

    def __init__(self, pod: Mapping[str, Any], *, priority: int | None = None) -> None:
        md = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        self.pod = pod
        self.namespace: str = md.get("namespace") or "default"
        self.name: str = md.get("name", "")
        self.key = f"{self.namespace}/{self.name}"
        self.uid: str = md.get("uid") or self.key
        self.labels: dict[str, str] = md.get("labels") or {}
        self.node_name: str = spec.get("nodeName") or ""
        self.scheduler_name: str = spec.get("schedulerName") or "default-scheduler"
        self.priority: int = priority if priority is not None else int(spec.get("priority") or 0)
        self.preemption_policy: str = spec.get("preemptionPolicy") or "PreemptLowerPriority"
        self.deleting = md.get("deletionTimestamp") is not None
        self.start_time = parse_time(status.get("startTime"))
        self.nominated_node_name: str = status.get("nominatedNodeName") or ""
        self.phase: str = status.get("phase") or ""
        self.parse_error: str | None = None

        self.requests, self.nonzero_cpu, self.nonzero_mem = pod_requests(spec)

        ports: list[tuple[str, str, int]] = []
        images: list[str] = []
        for c in (*(spec.get("initContainers") or ()), *(spec.get("containers") or ())):
            if c.get("image"):
                images.append(normalized_image_name(c["image"]))
        # Upstream counts host ports of app containers and restartable init containers alike (HostPortInfo).
        for c in (*(spec.get("containers") or ()),
                  *(ic for ic in (spec.get("initContainers") or ()) if ic.get("restartPolicy") == "Always")):
            for p in c.get("ports") or ():
                hp = int(p.get("hostPort") or 0)
                if hp > 0:
                    ports.append((p.get("hostIP") or "0.0.0.0", p.get("protocol") or "TCP", hp))
        self.host_ports = tuple(ports)
        self.images = tuple(images)
        self.num_containers = len(spec.get("initContainers") or ()) + len(spec.get("containers") or ())

        tols = spec.get("tolerations") or ()
        self.tolerations = tuple(toleration_key(t) for t in tols)
        self.tolerations_key = self.tolerations

        self.node_selector: dict[str, str] = spec.get("nodeSelector") or {}
        affinity = spec.get("affinity") or {}
        na = affinity.get("nodeAffinity") or {}
        self.required_node_affinity: NodeSelector | None = parse_node_selector(
            na.get("requiredDuringSchedulingIgnoredDuringExecution"))
        self.preferred_node_affinity: tuple[tuple[int, NodeSelectorTerm], ...] = tuple(
            (int(p.get("weight") or 0), parse_node_selector_term(p.get("preference")))
            for p in (na.get("preferredDuringSchedulingIgnoredDuringExecution") or ()))
        self.node_affinity_key = (
            tuple(sorted(self.node_selector.items())),
            self.required_node_affinity.key if self.required_node_affinity is not None else None,
        )

        pa = affinity.get("podAffinity") or {}
        paa = affinity.get("podAntiAffinity") or {}
        self.required_affinity_terms: tuple[AffinityTerm, ...] = ()
        self.required_anti_affinity_terms: tuple[AffinityTerm, ...] = ()
        self.preferred_affinity_terms: tuple[AffinityTerm, ...] = ()
        self.preferred_anti_affinity_terms: tuple[AffinityTerm, ...] = ()
        try:
            self.required_affinity_terms = tuple(
                _affinity_term(self.namespace, t) for t in (pa.get("requiredDuringSchedulingIgnoredDuringExecution") or ()))
            self.required_anti_affinity_terms = tuple(
                _affinity_term(self.namespace, t) for t in (paa.get("requiredDuringSchedulingIgnoredDuringExecution") or ()))
            self.preferred_affinity_terms = tuple(
                _affinity_term(self.namespace, w.get("podAffinityTerm") or {}, int(w.get("weight") or 0))
                for w in (pa.get("preferredDuringSchedulingIgnoredDuringExecution") or ()))
            self.preferred_anti_affinity_terms = tuple(
                _affinity_term(self.namespace, w.get("podAffinityTerm") or {}, int(w.get("weight") or 0))
                for w in (paa.get("preferredDuringSchedulingIgnoredDuringExecution") or ()))
        except ValueError as e:
            # The API server does not fully validate selectors inside affinity terms; such a pod is unschedulable
            # with this message rather than crashing the scheduler (upstream's PodInfo.ParseError).
            self.parse_error = str(e)
        self.has_affinity = bool(pa or paa)

        claims: list[tuple[str, str, bool]] = []
        for vol in spec.get("volumes") or ():
            if vol.get("persistentVolumeClaim") is not None:
                claims.append((vol.get("name", ""), (vol["persistentVolumeClaim"] or {}).get("claimName", ""), False))
            elif vol.get("ephemeral") is not None:
                # ephemeral.VolumeClaimName: <pod name>-<volume name>
                claims.append((vol.get("name", ""), f"{self.name}-{vol.get('name', '')}", True))
        self.claims = tuple(claims)
        self.spread_constraints: list[dict[str, Any]] = spec.get("topologySpreadConstraints") or []
        self.scheduling_gates = tuple(g.get("name", "") for g in (spec.get("schedulingGates") or ()))
        self.group_key = (self.namespace, frozenset(self.labels.items()), self.deleting)

    # -- helpers ------------------------------------------------------------------------------------------------

    @property
    def has_required_anti_affinity(self) -> bool:
        return bool(self.required_anti_affinity_terms)

    @property
    def is_terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def assigned_to(self, node_name: str) -> PodInfo:
        """A copy of this PodInfo (and a shallow copy of its pod) bound to ``node_name``: the "assumed" pod."""
        clone = copy.copy(self)
        pod = dict(self.pod)
        pod["spec"] = {**(self.pod.get("spec") or {}), "nodeName": node_name}
        clone.pod = pod
        clone.node_name = node_name
        return clone

    def __repr__(self) -> str:
        return f"PodInfo({self.key}, node={self.node_name!r}, prio={self.priority})"


__all__ += ["EVERYTHING"]
