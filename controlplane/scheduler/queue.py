"""The scheduling queue, as upstream's PriorityQueue: activeQ, backoffQ, unschedulable pods, and the nominator.

Pods wait in activeQ ordered by the profile's QueueSort (priority, then arrival). A pod that failed goes either to
backoffQ (exponential per-pod backoff, 1 s doubling to 10 s by default) or is parked among the unschedulable pods
until a cluster event one of its rejecting plugins registered for -- node added or updated, assigned pod deleted,
PV/PVC changed -- moves it (QueueingHint-lite: an optional hint callback may still skip it), or until the periodic
flush gives up waiting (5 minutes). Time comes from an injectable clock so tests drive it; the periodic flushes are
plain methods, and ``run()`` calls them on timers in the real scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .framework import (
    ActionType,
    ClusterEvent,
    ClusterEventWithHint,
    QueueingHint,
    Status,
)
from .podinfo import PodInfo

__all__ = [
    "QueuedPodInfo", "PriorityQueue", "Nominator", "node_update_event", "assigned_pod_update_event",
    "EVENT_NODE_ADD", "EVENT_ASSIGNED_POD_ADD", "EVENT_ASSIGNED_POD_DELETE", "EVENT_PV_ADD", "EVENT_PV_UPDATE",
    "EVENT_PVC_ADD", "EVENT_PVC_UPDATE", "EVENT_STORAGE_CLASS_ADD", "EVENT_STORAGE_CLASS_UPDATE", "EVENT_NODE_DELETE",
    "UNSCHEDULABLE_TIMEOUT", "FORCE_ACTIVATE",
]

EVENT_NODE_ADD = ClusterEvent("Node", ActionType.ADD, "NodeAdd")
EVENT_NODE_DELETE = ClusterEvent("Node", ActionType.DELETE, "NodeDelete")
EVENT_ASSIGNED_POD_ADD = ClusterEvent("AssignedPod", ActionType.ADD, "AssignedPodAdd")
EVENT_ASSIGNED_POD_DELETE = ClusterEvent("AssignedPod", ActionType.DELETE, "AssignedPodDelete")
EVENT_PV_ADD = ClusterEvent("PersistentVolume", ActionType.ADD, "PvAdd")
EVENT_PV_UPDATE = ClusterEvent("PersistentVolume", ActionType.UPDATE_OTHER, "PvUpdate")
EVENT_PVC_ADD = ClusterEvent("PersistentVolumeClaim", ActionType.ADD, "PvcAdd")
EVENT_PVC_UPDATE = ClusterEvent("PersistentVolumeClaim", ActionType.UPDATE_OTHER, "PvcUpdate")
EVENT_STORAGE_CLASS_ADD = ClusterEvent("StorageClass", ActionType.ADD, "StorageClassAdd")
EVENT_STORAGE_CLASS_UPDATE = ClusterEvent("StorageClass", ActionType.UPDATE_OTHER, "StorageClassUpdate")
UNSCHEDULABLE_TIMEOUT = ClusterEvent("*", ActionType.ALL, "UnschedulableTimeout")
FORCE_ACTIVATE = ClusterEvent("*", ActionType.ALL, "ForceActivate")


def node_update_event(old: Mapping[str, Any], new: Mapping[str, Any]) -> ClusterEvent | None:
    """The specific Node update action types, as upstream's nodeSchedulingPropertiesChange."""
    action = ActionType(0)
    os_, ns_ = old.get("status") or {}, new.get("status") or {}
    om, nm = old.get("metadata") or {}, new.get("metadata") or {}
    osp, nsp = old.get("spec") or {}, new.get("spec") or {}
    if bool(osp.get("unschedulable")) != bool(nsp.get("unschedulable")) or osp.get("taints") != nsp.get("taints"):
        action |= ActionType.UPDATE_NODE_TAINT
    if os_.get("allocatable") != ns_.get("allocatable"):
        action |= ActionType.UPDATE_NODE_ALLOCATABLE
    if (om.get("labels") or {}) != (nm.get("labels") or {}):
        action |= ActionType.UPDATE_NODE_LABEL
    if _conditions(os_) != _conditions(ns_):
        action |= ActionType.UPDATE_NODE_CONDITION
    if (om.get("annotations") or {}) != (nm.get("annotations") or {}):
        action |= ActionType.UPDATE_NODE_ANNOTATION
    if not action:
        return None
    return ClusterEvent("Node", action, "NodeUpdate")


def _conditions(status: Mapping[str, Any]) -> dict[str, str]:
    return {c.get("type", ""): c.get("status", "") for c in status.get("conditions") or ()}


def assigned_pod_update_event(old: PodInfo, new: PodInfo) -> ClusterEvent | None:
    action = ActionType(0)
    if old.labels != new.labels:
        action |= ActionType.UPDATE_POD_LABEL
    if any(new.requests.get(k, 0) < v for k, v in old.requests.items()):
        action |= ActionType.UPDATE_POD_SCALE_DOWN
    if not action:
        return None
    return ClusterEvent("AssignedPod", action, "AssignedPodUpdate")


@dataclass(eq=False)
class QueuedPodInfo:
    """A pod in the queue with its bookkeeping (attempts, when it was last queued, who rejected it)."""

    pod_info: PodInfo
    timestamp: float
    initial_attempt_timestamp: float | None = None
    attempts: int = 0
    unschedulable_plugins: set[str] = field(default_factory=set)
    pending_plugins: set[str] = field(default_factory=set)
    gated: bool = False
    gating_status: Status | None = None
    updated_in_flight: bool = False

    @property
    def pod(self) -> dict[str, Any]:
        return self.pod_info.pod  # type: ignore[return-value]

    @property
    def uid(self) -> str:
        return self.pod_info.uid


class _Heap:
    """A heap keyed by uid with O(log n) push/pop and O(1) lazy delete."""

    def __init__(self, key: Callable[[QueuedPodInfo], Any]) -> None:
        self._key = key
        self._heap: list[tuple[Any, int, str]] = []
        self._items: dict[str, tuple[int, QueuedPodInfo]] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, uid: str) -> bool:
        return uid in self._items

    def get(self, uid: str) -> QueuedPodInfo | None:
        it = self._items.get(uid)
        return it[1] if it is not None else None

    def push(self, q: QueuedPodInfo) -> None:
        n = next(self._counter)
        self._items[q.uid] = (n, q)
        heapq.heappush(self._heap, (self._key(q), n, q.uid))

    def delete(self, uid: str) -> QueuedPodInfo | None:
        it = self._items.pop(uid, None)
        return it[1] if it is not None else None

    def _clean(self) -> None:
        h = self._heap
        while h:
            _, n, uid = h[0]
            it = self._items.get(uid)
            if it is not None and it[0] == n:
                return
            heapq.heappop(h)

    def peek(self) -> QueuedPodInfo | None:
        self._clean()
        if not self._heap:
            return None
        return self._items[self._heap[0][2]][1]

    def pop(self) -> QueuedPodInfo | None:
        self._clean()
        if not self._heap:
            return None
        _, _, uid = heapq.heappop(self._heap)
        return self._items.pop(uid)[1]

    def values(self) -> list[QueuedPodInfo]:
        return [v for _, v in self._items.values()]


class Nominator:
    """Pods nominated to nodes by preemption, so lower-priority pods don't take the room freed for them."""

    def __init__(self) -> None:
        self._by_node: dict[str, dict[str, PodInfo]] = {}
        self._node_of: dict[str, str] = {}

    def add_nominated_pod(self, pi: PodInfo, node_name: str | None = None) -> None:
        """Record ``pi`` as nominated to ``node_name`` (default: its status.nominatedNodeName)."""
        self.delete_nominated_pod_if_exists(pi)
        nn = node_name if node_name is not None else pi.nominated_node_name
        if not nn or pi.node_name:
            return
        self._node_of[pi.uid] = nn
        self._by_node.setdefault(nn, {})[pi.uid] = pi

    def delete_nominated_pod_if_exists(self, pi: PodInfo) -> None:
        nn = self._node_of.pop(pi.uid, None)
        if nn is None:
            return
        d = self._by_node.get(nn)
        if d is not None:
            d.pop(pi.uid, None)
            if not d:
                del self._by_node[nn]

    def update_nominated_pod(self, old: PodInfo, new: PodInfo) -> None:
        # Keep the in-memory nomination if the update didn't carry one yet (the status write may lag).
        nn = new.nominated_node_name or self._node_of.get(old.uid)
        self.add_nominated_pod(new, nn or None)

    def nominated_pods_for_node(self, node_name: str) -> list[PodInfo]:
        d = self._by_node.get(node_name)
        return list(d.values()) if d else []

    def nominated_node_of(self, uid: str) -> str | None:
        return self._node_of.get(uid)

    def nodes(self) -> list[str]:
        return list(self._by_node)


def _less_key(less: Callable[[QueuedPodInfo, QueuedPodInfo], bool]) -> Callable[[QueuedPodInfo], Any]:
    """A heap key from a QueueSort plugin's less() (for plugins without a sort_key)."""

    class Key:
        __slots__ = ("q",)

        def __init__(self, q: QueuedPodInfo) -> None:
            self.q = q

        def __lt__(self, other: Key) -> bool:
            return less(self.q, other.q)
    return Key


def _priority_sort_key(q: QueuedPodInfo) -> tuple[int, float]:
    return (-q.pod_info.priority, q.timestamp)


class PriorityQueue:
    """See the module docstring. ``pre_enqueue`` runs PreEnqueue plugins; ``events`` maps plugin names to the
    events (with optional hints) that may make pods they rejected schedulable."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, pod_initial_backoff: float = 1.0,
                 pod_max_backoff: float = 10.0, pod_max_in_unschedulable: float = 300.0,
                 sort_key: Callable[[QueuedPodInfo], Any] | None = None,
                 less: Callable[[QueuedPodInfo, QueuedPodInfo], bool] | None = None,
                 pre_enqueue: Callable[[PodInfo], Status | None] | None = None,
                 events: Mapping[str, Iterable[ClusterEventWithHint]] | None = None,
                 nominator: Nominator | None = None) -> None:
        self.clock = clock
        self.pod_initial_backoff = pod_initial_backoff
        self.pod_max_backoff = pod_max_backoff
        self.pod_max_in_unschedulable = pod_max_in_unschedulable
        if sort_key is None and less is not None:
            sort_key = _less_key(less)
        self.active_q = _Heap(sort_key or _priority_sort_key)
        self.backoff_q = _Heap(self._backoff_expiry)
        self.unschedulable: dict[str, QueuedPodInfo] = {}
        self._unschedulable_since: dict[str, float] = {}
        self.in_flight: dict[str, QueuedPodInfo] = {}
        self.pre_enqueue = pre_enqueue
        self.events: dict[str, list[ClusterEventWithHint]] = {k: list(v) for k, v in (events or {}).items()}
        self.nominator = nominator if nominator is not None else Nominator()
        self.scheduling_cycle = 0
        self.move_request_cycle = -1
        self._cond: asyncio.Condition | None = None
        self._closed = False

    # -- backoff ------------------------------------------------------------------------------------------------

    def backoff_duration(self, q: QueuedPodInfo) -> float:
        """initial * 2^(attempts-1), capped at max (upstream's calculateBackoffDuration)."""
        if q.attempts <= 0:
            return 0.0
        d = self.pod_initial_backoff
        for _ in range(1, q.attempts):
            if d > self.pod_max_backoff - d:
                return self.pod_max_backoff
            d += d
        return d

    def _backoff_expiry(self, q: QueuedPodInfo) -> float:
        return q.timestamp + self.backoff_duration(q)

    def is_backing_off(self, q: QueuedPodInfo) -> bool:
        return self._backoff_expiry(q) > self.clock()

    # -- adding -------------------------------------------------------------------------------------------------

    def _new(self, pi: PodInfo) -> QueuedPodInfo:
        return QueuedPodInfo(pi, self.clock())

    def _run_pre_enqueue(self, q: QueuedPodInfo) -> bool:
        if self.pre_enqueue is None:
            q.gated = False
            return True
        s = self.pre_enqueue(q.pod_info)
        if s is None or s.is_success():
            q.gated = False
            q.gating_status = None
            return True
        q.gated = True
        q.gating_status = s
        if s.plugin:
            q.unschedulable_plugins = {s.plugin}
        return False

    def _to_active(self, q: QueuedPodInfo) -> bool:
        """addToActiveQ: PreEnqueue first; a gated pod is parked among the unschedulable ones."""
        if not self._run_pre_enqueue(q):
            self._park(q)
            return False
        self.unschedulable.pop(q.uid, None)
        self._unschedulable_since.pop(q.uid, None)
        self.backoff_q.delete(q.uid)
        self.active_q.push(q)
        self._notify()
        return True

    def _park(self, q: QueuedPodInfo) -> None:
        self.unschedulable[q.uid] = q
        self._unschedulable_since.setdefault(q.uid, self.clock())

    def add(self, pod: Mapping[str, Any] | PodInfo) -> QueuedPodInfo:
        """A new unscheduled pod."""
        pi = pod if isinstance(pod, PodInfo) else PodInfo(pod)
        existing = self._find(pi.uid)
        if existing is not None:
            self.update(existing.pod_info.pod, pi)
            return self._find(pi.uid) or existing
        q = self._new(pi)
        self._to_active(q)
        self.nominator.add_nominated_pod(pi)
        return q

    def _find(self, uid: str) -> QueuedPodInfo | None:
        return self.active_q.get(uid) or self.backoff_q.get(uid) or self.unschedulable.get(uid) or \
            self.in_flight.get(uid)

    def __contains__(self, uid: str) -> bool:
        return self._find(uid) is not None

    def __len__(self) -> int:
        return len(self.active_q) + len(self.backoff_q) + len(self.unschedulable)

    # -- popping ------------------------------------------------------------------------------------------------

    def pop_nowait(self) -> QueuedPodInfo | None:
        q = self.active_q.pop()
        if q is None:
            return None
        self.scheduling_cycle += 1
        q.attempts += 1
        if q.initial_attempt_timestamp is None:
            q.initial_attempt_timestamp = self.clock()
        q.unschedulable_plugins = set()
        q.pending_plugins = set()
        q.updated_in_flight = False
        self.in_flight[q.uid] = q
        return q

    async def pop(self) -> QueuedPodInfo | None:
        """Wait for a pod in activeQ; None once closed."""
        cond = self._condition()
        async with cond:
            while True:
                q = self.pop_nowait()
                if q is not None:
                    return q
                if self._closed:
                    return None
                await cond.wait()

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def _notify(self) -> None:
        cond = self._cond
        if cond is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return

        async def wake() -> None:
            async with cond:
                cond.notify_all()
        loop.create_task(wake())

    def close(self) -> None:
        self._closed = True
        self._notify()

    def done(self, uid: str) -> None:
        """The scheduling attempt of ``uid`` is over (bound or re-queued)."""
        self.in_flight.pop(uid, None)

    # -- failures -----------------------------------------------------------------------------------------------

    def add_unschedulable_if_not_present(self, q: QueuedPodInfo, pod_scheduling_cycle: int | None = None) -> None:
        """A scheduling attempt failed. Back off if a move request arrived meanwhile, if the pod changed while in
        flight, or if no plugin rejected it (an error); otherwise park it until a relevant event."""
        uid = q.uid
        self.in_flight.pop(uid, None)
        if uid in self.active_q or uid in self.backoff_q or uid in self.unschedulable:
            return
        cycle = self.scheduling_cycle if pod_scheduling_cycle is None else pod_scheduling_cycle
        q.timestamp = self.clock()
        rejectors = q.unschedulable_plugins | q.pending_plugins
        if self.move_request_cycle >= cycle or not rejectors or q.updated_in_flight:
            self.backoff_q.push(q)
        else:
            self._park(q)
        self.nominator.add_nominated_pod(q.pod_info)

    # -- updates ------------------------------------------------------------------------------------------------

    def update(self, old_pod: Mapping[str, Any] | None, new_pod: Mapping[str, Any] | PodInfo) -> None:
        """An unscheduled pod changed. A meaningful change (spec, labels...) gives a parked pod another chance."""
        pi = new_pod if isinstance(new_pod, PodInfo) else PodInfo(new_pod)
        uid = pi.uid
        for heap in (self.active_q, self.backoff_q):
            q = heap.get(uid)
            if q is not None:
                old = q.pod_info
                q.pod_info = pi
                self.nominator.update_nominated_pod(old, pi)
                heap.delete(uid)
                if heap is self.active_q:
                    self._to_active(q)
                else:
                    heap.push(q)
                return
        q = self.in_flight.get(uid)
        if q is not None:
            # Being scheduled right now: remember the update so a failure retries it promptly.
            self.nominator.update_nominated_pod(q.pod_info, pi)
            q.pod_info = pi
            q.updated_in_flight = True
            return
        q = self.unschedulable.get(uid)
        if q is not None:
            old = q.pod_info
            q.pod_info = pi
            self.nominator.update_nominated_pod(old, pi)
            if _pod_updated(old.pod if old_pod is None else old_pod, pi.pod):
                if q.gated:
                    self._to_active(q)
                elif self.is_backing_off(q):
                    self.unschedulable.pop(uid, None)
                    self._unschedulable_since.pop(uid, None)
                    self.backoff_q.push(q)
                else:
                    self._to_active(q)
            return
        self.add(pi)

    def delete(self, pod: Mapping[str, Any] | PodInfo) -> None:
        pi = pod if isinstance(pod, PodInfo) else PodInfo(pod)
        uid = pi.uid
        self.nominator.delete_nominated_pod_if_exists(pi)
        self.active_q.delete(uid)
        self.backoff_q.delete(uid)
        self.unschedulable.pop(uid, None)
        self._unschedulable_since.pop(uid, None)
        self.in_flight.pop(uid, None)

    def activate(self, uids: Iterable[str]) -> None:
        """Move the given pods straight to activeQ (upstream's Activate)."""
        for uid in uids:
            q = self.unschedulable.get(uid) or self.backoff_q.get(uid)
            if q is not None:
                self.backoff_q.delete(uid)
                self._to_active(q)

    # -- cluster events -------------------------------------------------------------------------------------------

    def _pod_matches_event(self, q: QueuedPodInfo, event: ClusterEvent, old: Any, new: Any) -> bool:
        if event.resource == "*" and event.action == ActionType.ALL:
            return True
        rejectors = q.unschedulable_plugins | q.pending_plugins
        if not rejectors:
            return True
        for plugin in rejectors:
            for ewh in self.events.get(plugin, ()):
                if not ewh.event.matches(event):
                    continue
                if ewh.hint is None:
                    return True
                try:
                    if ewh.hint(q.pod_info, old, new) == QueueingHint.QUEUE:
                        return True
                except Exception:
                    return True
        return False

    def move_all_to_active_or_backoff(self, event: ClusterEvent, old: Any = None, new: Any = None,
                                      precheck: Callable[[QueuedPodInfo], bool] | None = None) -> int:
        """An event happened: move the parked pods it may help. Returns how many moved.

        ``old``/``new`` are handed to the plugins' hints: PodInfo objects for pod events, the objects' dicts for
        everything else (None for the missing side of an add or delete)."""
        moved = 0
        for uid, q in list(self.unschedulable.items()):
            if q.gated:
                continue  # gated pods only move when their gates go (see update)
            if precheck is not None and not precheck(q):
                continue
            if not self._pod_matches_event(q, event, old, new):
                continue
            del self.unschedulable[uid]
            self._unschedulable_since.pop(uid, None)
            if self.is_backing_off(q):
                self.backoff_q.push(q)
            else:
                self._to_active(q)
            moved += 1
        self.move_request_cycle = self.scheduling_cycle
        return moved

    # -- periodic flushes ---------------------------------------------------------------------------------------

    def flush_backoff_completed(self) -> int:
        """Move pods whose backoff expired to activeQ (upstream runs this every second)."""
        now = self.clock()
        moved = 0
        while True:
            q = self.backoff_q.peek()
            if q is None or self._backoff_expiry(q) > now:
                break
            self.backoff_q.pop()
            if self._to_active(q):
                moved += 1
        return moved

    def flush_unschedulable_leftover(self) -> int:
        """Give pods parked longer than pod_max_in_unschedulable another try (upstream runs this every 30 s)."""
        now = self.clock()
        stale = [q for uid, q in self.unschedulable.items()
                 if not q.gated and now - self._unschedulable_since.get(uid, now) > self.pod_max_in_unschedulable]
        moved = 0
        for q in stale:
            del self.unschedulable[q.uid]
            self._unschedulable_since.pop(q.uid, None)
            if self.is_backing_off(q):
                self.backoff_q.push(q)
            else:
                self._to_active(q)
            moved += 1
        return moved

    async def run(self, stop: asyncio.Event, *, backoff_period: float = 1.0, leftover_period: float = 30.0) -> None:
        """Run the periodic flushes until ``stop`` is set (the timers are real; tests call the flushes directly)."""
        last_leftover = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff_period):
                    await stop.wait()
            self.flush_backoff_completed()
            if time.monotonic() - last_leftover >= leftover_period:
                last_leftover = time.monotonic()
                self.flush_unschedulable_leftover()

    # -- introspection ------------------------------------------------------------------------------------------

    def pending_pods(self) -> dict[str, list[PodInfo]]:
        return {
            "active": [q.pod_info for q in self.active_q.values()],
            "backoff": [q.pod_info for q in self.backoff_q.values()],
            "unschedulable": [q.pod_info for q in self.unschedulable.values()],
        }


def _strip(pod: Mapping[str, Any]) -> dict[str, Any]:
    md = dict(pod.get("metadata") or {})
    for k in ("resourceVersion", "generation", "managedFields"):
        md.pop(k, None)
    return {"metadata": md, "spec": pod.get("spec")}


def _pod_updated(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """isPodUpdated: anything but status, resourceVersion and generation changed."""
    return _strip(old) != _strip(new)
