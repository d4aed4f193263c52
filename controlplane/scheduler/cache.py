"""The scheduler's node-info snapshot: nodes and the pods on them, updated incrementally, kept in flat arrays.

Filtering and scoring thousands of nodes for every pod is only affordable in Python as vector work, so per-node state
lives in numpy arrays indexed by a node *slot* (allocatable, requested and free per resource, pod counts, taint and
label codes) and every add/update/delete of a node or pod updates those arrays in O(1) -- nothing is rebuilt per pod.
Beside the arrays sit the indices vector plugins need: pods grouped by (namespace, labels) with per-node counts
(label-selector matches become a sum over a few groups), the (anti-)affinity terms of existing pods with per-node
counts, host ports and images. ``NodeInfo`` keeps the per-node Python view that scalar plugins and preemption use.

Like upstream's cache it holds "assumed" pods (reserved before the binding is confirmed) that expire or are
forgotten, and it doubles as the snapshot: the scheduling cycle is synchronous, so it reads the cache directly.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .labels import NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, taint_key
from .podinfo import PodInfo, is_scalar_resource
from .quantity import to_int

__all__ = [
    "Cache", "NodeInfo", "NodeCounter", "PodGroup", "TermEntry", "REQ_AFFINITY", "REQ_ANTI", "PREF_AFFINITY",
    "PREF_ANTI", "LABEL_HOSTNAME", "LABEL_ZONE", "LABEL_REGION", "FIELD_NAME", "allocatable_of",
]

LABEL_HOSTNAME = "kubernetes.io/hostname"
LABEL_ZONE = "topology.kubernetes.io/zone"
LABEL_REGION = "topology.kubernetes.io/region"
_BETA_ZONE = "failure-domain.beta.kubernetes.io/zone"
_BETA_REGION = "failure-domain.beta.kubernetes.io/region"
# matchFields metadata.name is kept in the label-code tables under a key no real label can have.
FIELD_NAME = "\x00metadata.name"

REQ_AFFINITY, REQ_ANTI, PREF_AFFINITY, PREF_ANTI = "req_affinity", "req_anti", "pref_affinity", "pref_anti"

_CPU, _MEM, _EPH, _PODS = 0, 1, 2, 3


def allocatable_of(node: Mapping[str, Any]) -> dict[str, int]:
    """A node's allocatable as integers; API defaulting makes allocatable = capacity when it is unset."""
    status = node.get("status") or {}
    raw = status.get("allocatable")
    if raw is None:
        raw = status.get("capacity") or {}
    out: dict[str, int] = {}
    for k, v in raw.items():
        if k in ("cpu", "memory", "ephemeral-storage", "pods") or is_scalar_resource(k):
            out[k] = to_int(k, v)
    return out


class NodeCounter:
    """How many pods of one group (or carrying one affinity term) sit on each node slot.

    Sparse (a dict) while small, dense (an array over all slots) once big: both update in O(1) and both add into a
    per-node vector cheaply.
    """

    __slots__ = ("sparse", "dense", "total")
    DENSE_AFTER = 48

    def __init__(self) -> None:
        self.sparse: dict[int, int] | None = {}
        self.dense: np.ndarray | None = None
        self.total = 0

    def add(self, slot: int, delta: int, capacity: int) -> None:
        self.total += delta
        d = self.dense
        if d is not None:
            if slot >= d.shape[0]:
                d = self.dense = np.concatenate([d, np.zeros(capacity - d.shape[0], np.int64)])
            d[slot] += delta
            return
        sp = self.sparse
        assert sp is not None
        v = sp.get(slot, 0) + delta
        if v:
            sp[slot] = v
        else:
            sp.pop(slot, None)
        if len(sp) > self.DENSE_AFTER:
            d = np.zeros(capacity, np.int64)
            for s, c in sp.items():
                d[s] = c
            self.dense = d
            self.sparse = None

    def get(self, slot: int) -> int:
        if self.dense is not None:
            return int(self.dense[slot]) if slot < self.dense.shape[0] else 0
        assert self.sparse is not None
        return self.sparse.get(slot, 0)

    def add_into(self, out: np.ndarray, weight: int = 1) -> None:
        d = self.dense
        if d is not None:
            n = min(d.shape[0], out.shape[0])
            if weight == 1:
                out[:n] += d[:n]
            else:
                out[:n] += d[:n] * weight
            return
        assert self.sparse is not None
        for s, c in self.sparse.items():
            out[s] += c * weight

    def items(self) -> Iterator[tuple[int, int]]:
        if self.dense is not None:
            nz = np.flatnonzero(self.dense)
            return zip(nz.tolist(), self.dense[nz].tolist())
        assert self.sparse is not None
        return iter(list(self.sparse.items()))


@dataclass(eq=False, slots=True)
class PodGroup:
    """Pods that share namespace, labels and terminating-ness: a label selector matches all of them or none."""

    namespace: str
    labels: dict[str, str]
    deleting: bool
    counter: NodeCounter


@dataclass(eq=False, slots=True)
class TermEntry:
    """One distinct (anti-)affinity term carried by existing pods, with how many such pods each node hosts."""

    kind: str
    term: Any  # podinfo.AffinityTerm
    counter: NodeCounter


class NodeInfo:
    """The per-node Python view (upstream's framework.NodeInfo). Scalar plugins read it; preemption clones it."""

    __slots__ = ("name", "slot", "node", "labels", "taints", "unschedulable", "allocatable", "requested",
                 "nonzero_cpu", "nonzero_mem", "pods", "used_ports", "images", "generation")

    def __init__(self, name: str, slot: int) -> None:
        self.name = name
        self.slot = slot
        self.node: dict[str, Any] | None = None
        self.labels: dict[str, str] = {}
        self.taints: tuple[tuple[str, str, str], ...] = ()
        self.unschedulable = False
        self.allocatable: dict[str, int] = {}
        self.requested: dict[str, int] = {}
        self.nonzero_cpu = 0
        self.nonzero_mem = 0
        self.pods: dict[str, PodInfo] = {}
        self.used_ports: Counter[tuple[str, str, int]] = Counter()
        self.images: dict[str, int] = {}
        self.generation = 0

    def clone(self) -> NodeInfo:
        c = NodeInfo(self.name, self.slot)
        c.node = self.node
        c.labels = self.labels
        c.taints = self.taints
        c.unschedulable = self.unschedulable
        c.allocatable = self.allocatable
        c.requested = dict(self.requested)
        c.nonzero_cpu = self.nonzero_cpu
        c.nonzero_mem = self.nonzero_mem
        c.pods = dict(self.pods)
        c.used_ports = Counter(self.used_ports)
        c.images = self.images
        c.generation = self.generation
        return c

    def add_pod(self, pi: PodInfo) -> None:
        self.pods[pi.uid] = pi
        req = self.requested
        for k, v in pi.requests.items():
            req[k] = req.get(k, 0) + v
        self.nonzero_cpu += pi.nonzero_cpu
        self.nonzero_mem += pi.nonzero_mem
        for p in pi.host_ports:
            self.used_ports[p] += 1
        self.generation += 1

    def remove_pod(self, pi: PodInfo) -> None:
        old = self.pods.pop(pi.uid, None)
        if old is None:
            return
        req = self.requested
        for k, v in old.requests.items():
            req[k] = req.get(k, 0) - v
        self.nonzero_cpu -= old.nonzero_cpu
        self.nonzero_mem -= old.nonzero_mem
        for p in old.host_ports:
            self.used_ports[p] -= 1
            if self.used_ports[p] <= 0:
                del self.used_ports[p]
        self.generation += 1

    def ports_conflict(self, wanted: Iterable[tuple[str, str, int]]) -> bool:
        """HostPortInfo.CheckConflict for each wanted (ip, protocol, port)."""
        if not self.used_ports:
            return False
        for ip, proto, port in wanted:
            for uip, uproto, uport in self.used_ports:
                if uport == port and uproto == proto and (ip == "0.0.0.0" or uip in ("0.0.0.0", ip)):
                    return True
        return False

    def __repr__(self) -> str:
        return f"NodeInfo({self.name}, pods={len(self.pods)})"


@dataclass(eq=False, slots=True)
class _PodState:
    info: PodInfo
    slot: int
    assumed: bool = False
    binding_finished: bool = False
    deadline: float | None = None


class Cache:
    """Nodes and assigned pods, as arrays and indices (see the module docstring). Not thread-safe: one event loop
    feeds it and the scheduling cycle reads it between events."""

    def __init__(self, *, assumed_pod_ttl: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 initial_capacity: int = 64) -> None:
        self.clock = clock
        # 0 means assumed pods never expire once their binding finished (upstream's durationToExpireAssumedPod).
        self.assumed_pod_ttl = assumed_pod_ttl
        cap = max(8, initial_capacity)
        self.capacity = cap
        self.resource_names: list[str] = ["cpu", "memory", "ephemeral-storage", "pods"]
        self.resource_index: dict[str, int] = {n: i for i, n in enumerate(self.resource_names)}
        self.alloc = np.zeros((4, cap), np.int64)
        self.req = np.zeros((4, cap), np.int64)
        self.free = np.zeros((4, cap), np.int64)  # alloc - req, maintained so a fit check is one compare
        self.nz_cpu = np.zeros(cap, np.int64)
        self.nz_mem = np.zeros(cap, np.int64)
        self.live = np.zeros(cap, bool)
        self.unschedulable = np.zeros(cap, bool)
        self.taint_sig = np.zeros(cap, np.int32)
        self.added_seq = np.zeros(cap, np.int64)
        self._seq = 0
        self.names: list[str | None] = [None] * cap
        self.infos: list[NodeInfo | None] = [None] * cap
        self.slot_of: dict[str, int] = {}
        self._free_slots: list[int] = []
        self._top = 0  # slots [0, _top) have been used
        self.num_nodes = 0

        # Generations let plugins memoise per-node masks: a mask computed at label_generation g is valid until it moves.
        self.generation = 0
        self.label_generation = 0
        self.taint_generation = 0
        self.node_set_generation = 0

        # Label codes: for each label key, an int32 code per slot (0 = the node lacks the key).
        self.label_codes: dict[str, np.ndarray] = {}
        self.label_values: dict[str, dict[str, int]] = {}
        self.label_value_names: dict[str, list[str]] = {}
        self._label_ints: dict[str, tuple[int, np.ndarray]] = {}

        # Interned taint lists (only NoSchedule / PreferNoSchedule / NoExecute matter); signature 0 = no taints.
        self.taint_sigs: list[tuple[tuple[str, str, str], ...]] = [()]
        self._taint_sig_index: dict[tuple[tuple[str, str, str], ...], int] = {(): 0}

        self._order: np.ndarray | None = None
        self._zone_seq: dict[str, int] = {}
        self._seq_zone = 0

        self._pods: dict[str, _PodState] = {}
        self.groups: dict[tuple, PodGroup] = {}
        self.group_list: list[PodGroup] = []
        self.groups_generation = 0
        self._empty_groups = 0
        self._group_match_cache: dict[tuple, list[Any]] = {}
        self.terms: dict[str, dict[tuple, TermEntry]] = {REQ_AFFINITY: {}, REQ_ANTI: {}, PREF_AFFINITY: {},
                                                          PREF_ANTI: {}}
        self.port_index: dict[tuple[str, int], dict[int, Counter[str]]] = {}
        self.image_index: dict[str, dict[int, int]] = {}
        self.image_generation = 0
        self.pods_with_affinity = 0

        # Other objects plugins read (PVCs, PVs, StorageClasses, PDBs, Namespaces, ...), keyed by "ns/name" or name.
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}

    # ------------------------------------------------------------------------------------------------------------
    # slots and arrays
    # ------------------------------------------------------------------------------------------------------------

    def _grow(self, need: int) -> None:
        cap = self.capacity
        while cap < need:
            cap *= 2
        if cap == self.capacity:
            return
        extra = cap - self.capacity

        def ext(a: np.ndarray) -> np.ndarray:
            if a.ndim == 2:
                return np.concatenate([a, np.zeros((a.shape[0], extra), a.dtype)], axis=1)
            return np.concatenate([a, np.zeros(extra, a.dtype)])

        self.alloc, self.req, self.free = ext(self.alloc), ext(self.req), ext(self.free)
        self.nz_cpu, self.nz_mem = ext(self.nz_cpu), ext(self.nz_mem)
        self.live, self.unschedulable = ext(self.live), ext(self.unschedulable)
        self.taint_sig, self.added_seq = ext(self.taint_sig), ext(self.added_seq)
        for k in list(self.label_codes):
            self.label_codes[k] = ext(self.label_codes[k])
        self.names.extend([None] * extra)
        self.infos.extend([None] * extra)
        self.capacity = cap

    def _resource_row(self, name: str) -> int:
        idx = self.resource_index.get(name)
        if idx is not None:
            return idx
        idx = len(self.resource_names)
        self.resource_names.append(name)
        self.resource_index[name] = idx
        z = np.zeros((1, self.capacity), np.int64)
        self.alloc = np.concatenate([self.alloc, z])
        self.req = np.concatenate([self.req, z])
        self.free = np.concatenate([self.free, z])
        return idx

    def _new_slot(self, name: str) -> int:
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = self._top
            self._top += 1
            if slot >= self.capacity:
                self._grow(slot + 1)
        self.names[slot] = name
        self.slot_of[name] = slot
        info = NodeInfo(name, slot)
        self.infos[slot] = info
        return slot

    def _release_slot_if_unused(self, slot: int) -> None:
        info = self.infos[slot]
        if info is None or info.node is not None or info.pods:
            return
        # A ghost slot (node deleted, or never seen) without pods: all its arrays are back at zero by now.
        self.alloc[:, slot] = 0
        self.req[:, slot] = 0
        self.free[:, slot] = 0
        self.nz_cpu[slot] = 0
        self.nz_mem[slot] = 0
        del self.slot_of[info.name]
        self.names[slot] = None
        self.infos[slot] = None
        self._free_slots.append(slot)

    @property
    def size(self) -> int:
        """Upper bound of used slots; vectors of length ``capacity`` are valid, only [0, size) can be non-zero."""
        return self._top

    # ------------------------------------------------------------------------------------------------------------
    # labels, taints
    # ------------------------------------------------------------------------------------------------------------

    def _set_label(self, key: str, slot: int, value: str | None) -> None:
        codes = self.label_codes.get(key)
        if codes is None:
            if value is None:
                return
            codes = self.label_codes[key] = np.zeros(self.capacity, np.int32)
            self.label_values[key] = {}
            self.label_value_names[key] = [""]  # code 0 stands for "missing"
        if value is None:
            codes[slot] = 0
            return
        vals = self.label_values[key]
        code = vals.get(value)
        if code is None:
            code = len(self.label_value_names[key])
            vals[value] = code
            self.label_value_names[key].append(value)
        codes[slot] = code

    def value_code(self, key: str, value: str) -> int:
        """The code of ``value`` under ``key``; 0 when no node has it (so it matches no node)."""
        vals = self.label_values.get(key)
        if vals is None:
            return 0
        return vals.get(value, 0)

    def num_values(self, key: str) -> int:
        """Number of value codes of ``key`` including code 0 (missing)."""
        names = self.label_value_names.get(key)
        return len(names) if names is not None else 1

    def codes(self, key: str) -> np.ndarray | None:
        return self.label_codes.get(key)

    def label_int_values(self, key: str) -> np.ndarray:
        """For Gt/Lt: each value code's integer value (NaN when missing or not an int64)."""
        names = self.label_value_names.get(key, [""])
        cached = self._label_ints.get(key)
        if cached is not None and cached[0] == len(names):
            return cached[1]
        arr = np.full(len(names), np.nan)
        for i, v in enumerate(names):
            if i == 0:
                continue
            s = v.lstrip("+-")
            if s.isdigit() and s.isascii():
                n = int(v)
                if -(1 << 63) <= n < (1 << 63):
                    arr[i] = float(n)
        self._label_ints[key] = (len(names), arr)
        return arr

    def _taint_signature(self, node: Mapping[str, Any]) -> tuple[int, tuple[tuple[str, str, str], ...]]:
        taints = tuple(taint_key(t) for t in ((node.get("spec") or {}).get("taints") or ()))
        sig = self._taint_sig_index.get(taints)
        if sig is None:
            sig = len(self.taint_sigs)
            self.taint_sigs.append(taints)
            self._taint_sig_index[taints] = sig
        return sig, taints

    # ------------------------------------------------------------------------------------------------------------
    # nodes
    # ------------------------------------------------------------------------------------------------------------

    def add_node(self, node: Mapping[str, Any]) -> NodeInfo:
        name = (node.get("metadata") or {}).get("name", "")
        slot = self.slot_of.get(name)
        if slot is None:
            slot = self._new_slot(name)
        info = self.infos[slot]
        assert info is not None
        if info.node is None:
            self.live[slot] = True
            self.num_nodes += 1
            self._seq += 1
            self.added_seq[slot] = self._seq
            self._order = None
            self.node_set_generation += 1
            self._set_label(FIELD_NAME, slot, name)
        self._apply_node(info, node)
        return info

    def update_node(self, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> NodeInfo:
        return self.add_node(new)

    def _apply_node(self, info: NodeInfo, node: Mapping[str, Any]) -> None:
        slot = info.slot
        old_labels = info.labels
        labels = dict((node.get("metadata") or {}).get("labels") or {})
        if labels != old_labels or info.node is None:
            for k in old_labels:
                if k not in labels:
                    self._set_label(k, slot, None)
            for k, v in labels.items():
                if old_labels.get(k) != v:
                    self._set_label(k, slot, v)
            if _zone_key(labels) != _zone_key(old_labels):
                self._order = None
            self.label_generation += 1
        info.labels = labels
        spec = node.get("spec") or {}
        sig, taints = self._taint_signature(node)
        unsched = bool(spec.get("unschedulable"))
        if sig != int(self.taint_sig[slot]) or unsched != info.unschedulable or info.node is None:
            self.taint_generation += 1
        self.taint_sig[slot] = sig
        info.taints = taints
        info.unschedulable = unsched
        self.unschedulable[slot] = unsched

        alloc = allocatable_of(node)
        if alloc != info.allocatable:
            for name in set(info.allocatable) | set(alloc):
                row = self._resource_row(name)
                self.alloc[row, slot] = alloc.get(name, 0)
                self.free[row, slot] = self.alloc[row, slot] - self.req[row, slot]
            info.allocatable = alloc

        images: dict[str, int] = {}
        for img in (node.get("status") or {}).get("images") or ():
            size = int(img.get("sizeBytes") or 0)
            for n in img.get("names") or ():
                images[n] = size
        if images != info.images:
            for n in info.images:
                if n not in images:
                    idx = self.image_index.get(n)
                    if idx is not None:
                        idx.pop(slot, None)
                        if not idx:
                            del self.image_index[n]
            for n, size in images.items():
                self.image_index.setdefault(n, {})[slot] = size
            info.images = images
            self.image_generation += 1
        info.node = dict(node)
        info.generation += 1
        self.generation += 1

    def remove_node(self, node_or_name: Mapping[str, Any] | str) -> None:
        name = node_or_name if isinstance(node_or_name, str) else (node_or_name.get("metadata") or {}).get("name", "")
        slot = self.slot_of.get(name)
        if slot is None:
            return
        info = self.infos[slot]
        assert info is not None
        if info.node is None:
            return
        for k in info.labels:
            self._set_label(k, slot, None)
        self._set_label(FIELD_NAME, slot, None)
        for n in info.images:
            idx = self.image_index.get(n)
            if idx is not None:
                idx.pop(slot, None)
                if not idx:
                    del self.image_index[n]
        if info.images:
            self.image_generation += 1
        for name_ in info.allocatable:
            row = self.resource_index[name_]
            self.alloc[row, slot] = 0
            self.free[row, slot] = -self.req[row, slot]
        info.allocatable = {}
        info.labels = {}
        info.images = {}
        info.taints = ()
        info.node = None
        self.taint_sig[slot] = 0
        self.unschedulable[slot] = False
        self.live[slot] = False
        self.num_nodes -= 1
        self._order = None
        self.node_set_generation += 1
        self.label_generation += 1
        self.taint_generation += 1
        self.generation += 1
        # Pods of a deleted node stay accounted until their own deletes arrive (upstream keeps a ghost NodeInfo).
        self._release_slot_if_unused(slot)

    def node_info(self, name: str) -> NodeInfo | None:
        slot = self.slot_of.get(name)
        if slot is None:
            return None
        info = self.infos[slot]
        return info if info is not None and info.node is not None else None

    def node_infos(self) -> list[NodeInfo]:
        """Live nodes in scheduling order."""
        infos = self.infos
        return [infos[s] for s in self.node_order().tolist()]  # type: ignore[misc]

    def node_order(self) -> np.ndarray:
        """Live slots in upstream's nodeTree order: zones round-robin, nodes in the order they were added, so that
        stopping after percentageOfNodesToScore still samples every zone."""
        if self._order is not None:
            return self._order
        live = np.flatnonzero(self.live[: self._top])
        if live.size == 0:
            self._order = live.astype(np.int64)
            return self._order
        live = live[np.argsort(self.added_seq[live], kind="stable")]
        zones: dict[str, list[int]] = {}
        infos = self.infos
        for s in live.tolist():
            zones.setdefault(_zone_key(infos[s].labels), []).append(s)  # type: ignore[union-attr]
        # Zones keep the position they got when their first node arrived, until they empty (nodeTree.zones).
        for z in [z for z in self._zone_seq if z not in zones]:
            del self._zone_seq[z]
        for z in zones:
            if z not in self._zone_seq:
                self._zone_seq[z] = self._seq_zone = self._seq_zone + 1
        if len(zones) == 1:
            self._order = live.astype(np.int64)
            return self._order
        lists = [zones[z] for z in sorted(zones, key=self._zone_seq.__getitem__)]
        out: list[int] = []
        longest = max(len(x) for x in lists)
        for i in range(longest):
            for lst in lists:
                if i < len(lst):
                    out.append(lst[i])
        self._order = np.asarray(out, np.int64)
        return self._order

    # ------------------------------------------------------------------------------------------------------------
    # pods
    # ------------------------------------------------------------------------------------------------------------

    def _slot_for_pod(self, node_name: str) -> int:
        slot = self.slot_of.get(node_name)
        if slot is None:
            # The pod's node is not known yet (pod event before node event): account it on a ghost slot.
            slot = self._new_slot(node_name)
        return slot

    def _add_to_slot(self, pi: PodInfo, slot: int) -> None:
        info = self.infos[slot]
        assert info is not None
        info.add_pod(pi)
        cap = self.capacity
        for name, v in pi.requests.items():
            row = self.resource_index.get(name)
            if row is None:
                row = self._resource_row(name)
            self.req[row, slot] += v
            self.free[row, slot] -= v
        self.req[_PODS, slot] += 1
        self.free[_PODS, slot] -= 1
        self.nz_cpu[slot] += pi.nonzero_cpu
        self.nz_mem[slot] += pi.nonzero_mem
        g = self.groups.get(pi.group_key)
        if g is None:
            g = PodGroup(pi.namespace, dict(pi.labels), pi.deleting, NodeCounter())
            self.groups[pi.group_key] = g
            self.group_list.append(g)
        elif g.counter.total == 0:
            self._empty_groups -= 1
        g.counter.add(slot, 1, cap)
        if pi.has_affinity:
            self.pods_with_affinity += 1
            for kind, terms in ((REQ_AFFINITY, pi.required_affinity_terms), (REQ_ANTI, pi.required_anti_affinity_terms),
                                (PREF_AFFINITY, pi.preferred_affinity_terms),
                                (PREF_ANTI, pi.preferred_anti_affinity_terms)):
                table = self.terms[kind]
                for t in terms:
                    e = table.get(t.key)
                    if e is None:
                        e = table[t.key] = TermEntry(kind, t, NodeCounter())
                    e.counter.add(slot, 1, cap)
        for ip, proto, port in pi.host_ports:
            self.port_index.setdefault((proto, port), {}).setdefault(slot, Counter())[ip] += 1
        self.generation += 1

    def _remove_from_slot(self, pi: PodInfo, slot: int) -> None:
        info = self.infos[slot]
        assert info is not None
        info.remove_pod(pi)
        cap = self.capacity
        for name, v in pi.requests.items():
            row = self.resource_index[name]
            self.req[row, slot] -= v
            self.free[row, slot] += v
        self.req[_PODS, slot] -= 1
        self.free[_PODS, slot] += 1
        self.nz_cpu[slot] -= pi.nonzero_cpu
        self.nz_mem[slot] -= pi.nonzero_mem
        g = self.groups.get(pi.group_key)
        if g is not None:
            g.counter.add(slot, -1, cap)
            if g.counter.total == 0:
                self._empty_groups += 1
                if self._empty_groups > max(256, len(self.group_list) // 2):
                    self._collect_groups()
        if pi.has_affinity:
            self.pods_with_affinity -= 1
            for kind, terms in ((REQ_AFFINITY, pi.required_affinity_terms), (REQ_ANTI, pi.required_anti_affinity_terms),
                                (PREF_AFFINITY, pi.preferred_affinity_terms),
                                (PREF_ANTI, pi.preferred_anti_affinity_terms)):
                table = self.terms[kind]
                for t in terms:
                    e = table.get(t.key)
                    if e is not None:
                        e.counter.add(slot, -1, cap)
                        if e.counter.total == 0:
                            del table[t.key]
        for ip, proto, port in pi.host_ports:
            per_node = self.port_index.get((proto, port))
            if per_node is not None and slot in per_node:
                c = per_node[slot]
                c[ip] -= 1
                if c[ip] <= 0:
                    del c[ip]
                if not c:
                    del per_node[slot]
                if not per_node:
                    del self.port_index[(proto, port)]
        self.generation += 1
        self._release_slot_if_unused(slot)

    def _collect_groups(self) -> None:
        """Drop empty pod groups (e.g. labels of finished Jobs) and invalidate selector-match memos."""
        self.groups = {k: g for k, g in self.groups.items() if g.counter.total > 0}
        self.group_list = [g for g in self.group_list if g.counter.total > 0]
        self._empty_groups = 0
        self.groups_generation += 1
        self._group_match_cache.clear()

    def groups_matching(self, key: tuple, predicate: Callable[[PodGroup], bool]) -> list[PodGroup]:
        """Pod groups for which ``predicate`` holds, memoised under ``key`` (which must identify the predicate).
        New groups are checked incrementally, so a selector is evaluated once per group, not once per pod."""
        ent = self._group_match_cache.get(key)
        if ent is None or ent[0] != self.groups_generation:
            if len(self._group_match_cache) > 4096:
                self._group_match_cache.clear()
            ent = [self.groups_generation, 0, []]
            self._group_match_cache[key] = ent
        n = len(self.group_list)
        if ent[1] < n:
            matched = ent[2]
            for g in self.group_list[ent[1]:]:
                if predicate(g):
                    matched.append(g)
            ent[1] = n
        return ent[2]

    def pod_counts(self, groups: Iterable[PodGroup]) -> np.ndarray:
        """Per-slot number of pods in ``groups``."""
        out = np.zeros(self.capacity, np.int64)
        for g in groups:
            if g.counter.total:
                g.counter.add_into(out)
        return out

    def _key_of(self, pod: Mapping[str, Any]) -> str:
        md = pod.get("metadata") or {}
        return md.get("uid") or f"{md.get('namespace') or 'default'}/{md.get('name', '')}"

    def add_pod(self, pod: Mapping[str, Any] | PodInfo) -> PodInfo | None:
        """An assigned pod appeared (informer Add). Confirms it if it was assumed. Unassigned pods are ignored."""
        pi = pod if isinstance(pod, PodInfo) else PodInfo(pod)
        if not pi.node_name or pi.is_terminal:
            self.remove_pod(pi.pod)
            return None
        st = self._pods.get(pi.uid)
        if st is not None:
            old = st.info
            if old is pi or (old.node_name == pi.node_name and old.group_key == pi.group_key
                             and old.requests == pi.requests and old.host_ports == pi.host_ports
                             and old.nonzero_cpu == pi.nonzero_cpu and old.nonzero_mem == pi.nonzero_mem
                             and not old.has_affinity and not pi.has_affinity):
                # Same accounting (the usual confirmation of an assumed pod): swap the object, keep the arrays.
                info = self.infos[st.slot]
                assert info is not None
                info.pods[pi.uid] = pi
                st.info = pi
                st.assumed = False
                st.binding_finished = False
                st.deadline = None
                return pi
            self._remove_from_slot(st.info, st.slot)
        slot = self._slot_for_pod(pi.node_name)
        self._add_to_slot(pi, slot)
        self._pods[pi.uid] = _PodState(pi, slot)
        return pi

    def update_pod(self, old: Mapping[str, Any] | None, new: Mapping[str, Any] | PodInfo) -> PodInfo | None:
        """An assigned pod changed; terminal pods leave the cache (upstream's informer filters them out)."""
        return self.add_pod(new)

    def remove_pod(self, pod: Mapping[str, Any] | PodInfo) -> PodInfo | None:
        uid = pod.uid if isinstance(pod, PodInfo) else self._key_of(pod)
        st = self._pods.pop(uid, None)
        if st is None:
            return None
        self._remove_from_slot(st.info, st.slot)
        return st.info

    def get_pod(self, uid: str) -> PodInfo | None:
        st = self._pods.get(uid)
        return st.info if st is not None else None

    def has_pod(self, uid: str) -> bool:
        return uid in self._pods

    def pod_count(self) -> int:
        return len(self._pods)

    def assume_pod(self, pi: PodInfo, node_name: str) -> PodInfo:
        """Account ``pi`` on ``node_name`` before its binding is confirmed; returns the assumed PodInfo."""
        if pi.uid in self._pods:
            raise ValueError(f"pod {pi.key} is already in the cache, so can't be assumed")
        assumed = pi if pi.node_name == node_name else pi.assigned_to(node_name)
        slot = self._slot_for_pod(node_name)
        self._add_to_slot(assumed, slot)
        self._pods[assumed.uid] = _PodState(assumed, slot, assumed=True)
        return assumed

    def finish_binding(self, uid: str, now: float | None = None) -> None:
        st = self._pods.get(uid)
        if st is None or not st.assumed:
            return
        st.binding_finished = True
        st.deadline = None if self.assumed_pod_ttl <= 0 else (now if now is not None else self.clock()) + self.assumed_pod_ttl

    def forget_pod(self, uid: str) -> None:
        """Undo assume_pod (binding failed)."""
        st = self._pods.get(uid)
        if st is None or not st.assumed:
            return
        del self._pods[uid]
        self._remove_from_slot(st.info, st.slot)

    def is_assumed(self, uid: str) -> bool:
        st = self._pods.get(uid)
        return st is not None and st.assumed

    def cleanup_assumed_pods(self, now: float | None = None) -> list[PodInfo]:
        """Expire assumed pods whose binding finished but whose Add never arrived within the TTL."""
        now = self.clock() if now is None else now
        expired = [st for st in self._pods.values()
                   if st.assumed and st.binding_finished and st.deadline is not None and now >= st.deadline]
        for st in expired:
            del self._pods[st.info.uid]
            self._remove_from_slot(st.info, st.slot)
        return [st.info for st in expired]

    # ------------------------------------------------------------------------------------------------------------
    # vector helpers shared by plugins
    # ------------------------------------------------------------------------------------------------------------

    def requirement_mask(self, r: NodeSelectorRequirement, *, is_field: bool = False) -> np.ndarray:
        """Slots satisfying one node-selector requirement (a bool array of length ``capacity``)."""
        return self._requirement_mask(FIELD_NAME if is_field else r.key, r)

    def _requirement_mask(self, key: str, r: NodeSelectorRequirement) -> np.ndarray:
        codes = self.label_codes.get(key)
        op = r.operator
        if codes is None:
            if op in ("NotIn", "DoesNotExist"):
                return np.ones(self.capacity, bool)
            return np.zeros(self.capacity, bool)
        if op == "Exists":
            return codes > 0
        if op == "DoesNotExist":
            return codes == 0
        if op in ("In", "NotIn"):
            table = np.zeros(self.num_values(key), bool)
            vals = self.label_values[key]
            for v in r.values:
                c = vals.get(v)
                if c is not None:
                    table[c] = True
            hit = table[codes]
            return hit if op == "In" else ~hit
        ints = self.label_int_values(key)[codes]
        with np.errstate(invalid="ignore"):
            return ints > r.number if op == "Gt" else ints < r.number

    def term_mask(self, term: NodeSelectorTerm) -> np.ndarray:
        if not term.valid:
            return np.zeros(self.capacity, bool)
        mask: np.ndarray | None = None
        for r in term.expressions:
            m = self._requirement_mask(r.key, r)
            mask = m if mask is None else mask & m
        for r in term.fields:
            m = self._requirement_mask(FIELD_NAME, r)
            mask = m if mask is None else mask & m
        assert mask is not None
        return mask

    def node_selector_mask(self, sel: NodeSelector) -> np.ndarray:
        mask = np.zeros(self.capacity, bool)
        for t in sel.terms:
            mask |= self.term_mask(t)
        return mask

    def label_equals_mask(self, key: str, value: str) -> np.ndarray:
        codes = self.label_codes.get(key)
        if codes is None:
            return np.zeros(self.capacity, bool)
        c = self.value_code(key, value)
        if c == 0:
            return np.zeros(self.capacity, bool)
        return codes == c

    # ------------------------------------------------------------------------------------------------------------
    # other objects (listers)
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def object_key(obj: Mapping[str, Any]) -> str:
        md = obj.get("metadata") or {}
        ns = md.get("namespace")
        return f"{ns}/{md.get('name', '')}" if ns else md.get("name", "")

    def upsert_object(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.objects.setdefault(kind, {})[self.object_key(obj)] = dict(obj)
        self.generation += 1

    def delete_object(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.objects.get(kind, {}).pop(self.object_key(obj), None)
        self.generation += 1

    def get_object(self, kind: str, key: str) -> dict[str, Any] | None:
        return self.objects.get(kind, {}).get(key)

    def list_objects(self, kind: str) -> list[dict[str, Any]]:
        return list(self.objects.get(kind, {}).values())

    def namespace_labels(self) -> dict[str, dict[str, str]]:
        """Namespace name -> labels, from Namespace objects fed with upsert_object("Namespace", ...)."""
        return {k: (o.get("metadata") or {}).get("labels") or {} for k, o in self.objects.get("Namespace", {}).items()}


def _zone_key(labels: Mapping[str, str]) -> str:
    """utilnode.GetZoneKey: region and zone joined; "" when the node has neither."""
    region = labels.get(LABEL_REGION) or labels.get(_BETA_REGION) or ""
    zone = labels.get(LABEL_ZONE) or labels.get(_BETA_ZONE) or ""
    if not region and not zone:
        return ""
    return f"{region}:\x00:{zone}"
