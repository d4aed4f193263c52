"""The scheduling framework: extension points, statuses, cycle state, cluster events and profiles.

This is upstream's framework in small Protocols -- PreEnqueue, QueueSort, PreFilter (+AddPod/RemovePod extensions),
Filter, PostFilter, PreScore, Score (+NormalizeScore, weights), Reserve/Unreserve, Permit, PreBind, Bind, PostBind --
so a plugin is one module with the methods of the points it implements. Two optional vector forms let a plugin
judge or score every node slot at once from the snapshot arrays (``filter_vector``, ``score_vector``); the framework
uses them when present and falls back to the per-node methods otherwise (and always for preemption, which evaluates
cloned NodeInfos). A ``Framework`` is one profile built from a KubeSchedulerProfile config and the plugin registry.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from .cache import Cache, NodeInfo
from .podinfo import PodInfo

if TYPE_CHECKING:
    from .config import ProfileConfig
    from .queue import Nominator

__all__ = [
    "Code", "Status", "CycleState", "NodeToStatus", "Diagnosis", "PreFilterResult", "PostFilterResult", "NodeList",
    "ActionType", "ClusterEvent", "ClusterEventWithHint", "QueueingHint", "Handle", "Framework", "FrameworkError",
    "PodBinder", "MAX_NODE_SCORE", "MIN_NODE_SCORE", "PreEnqueuePlugin", "QueueSortPlugin", "PreFilterPlugin",
    "PreFilterExtensions", "FilterPlugin", "VectorFilterPlugin", "PostFilterPlugin", "PreScorePlugin", "ScorePlugin",
    "VectorScorePlugin", "ReservePlugin", "PermitPlugin", "PreBindPlugin", "BindPlugin", "PostBindPlugin",
    "EnqueueExtensions", "PluginFactory", "default_normalize_score", "WaitingPod",
]

MAX_NODE_SCORE = 100
MIN_NODE_SCORE = 0


# ---------------------------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------------------------

class Code(enum.IntEnum):
    SUCCESS = 0
    ERROR = 1
    UNSCHEDULABLE = 2
    UNSCHEDULABLE_AND_UNRESOLVABLE = 3
    WAIT = 4
    SKIP = 5
    PENDING = 6


class Status:
    """A plugin's verdict with reasons. ``None`` stands for Success everywhere a Status is returned."""

    __slots__ = ("code", "reasons", "plugin", "error")

    def __init__(self, code: Code = Code.SUCCESS, *reasons: str, plugin: str = "",
                 error: BaseException | None = None) -> None:
        self.code = code
        self.reasons: tuple[str, ...] = tuple(reasons)
        self.plugin = plugin
        self.error = error

    @classmethod
    def unschedulable(cls, *reasons: str) -> Status:
        return cls(Code.UNSCHEDULABLE, *reasons)

    @classmethod
    def unresolvable(cls, *reasons: str) -> Status:
        return cls(Code.UNSCHEDULABLE_AND_UNRESOLVABLE, *reasons)

    @classmethod
    def skip(cls) -> Status:
        return cls(Code.SKIP)

    @classmethod
    def as_error(cls, err: BaseException | str) -> Status:
        e = err if isinstance(err, BaseException) else RuntimeError(err)
        return cls(Code.ERROR, str(e), error=e)

    def is_success(self) -> bool:
        return self.code == Code.SUCCESS

    def is_rejected(self) -> bool:
        return self.code in (Code.UNSCHEDULABLE, Code.UNSCHEDULABLE_AND_UNRESOLVABLE, Code.PENDING)

    def is_skip(self) -> bool:
        return self.code == Code.SKIP

    def message(self) -> str:
        return ", ".join(self.reasons)

    def with_plugin(self, plugin: str) -> Status:
        s = Status(self.code, *self.reasons, plugin=plugin, error=self.error)
        return s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Status):
            return NotImplemented
        return self.code == other.code and self.reasons == other.reasons

    def __hash__(self) -> int:
        return hash((self.code, self.reasons))

    def __repr__(self) -> str:
        return f"Status({self.code.name}, {list(self.reasons)!r}{', plugin=' + self.plugin if self.plugin else ''})"


def _ok(s: Status | None) -> bool:
    return s is None or s.code == Code.SUCCESS


# ---------------------------------------------------------------------------------------------------------------
# Cycle state, results, node lists
# ---------------------------------------------------------------------------------------------------------------

class CycleState:
    """Per-cycle scratch space shared by the plugins of one scheduling attempt. Values with a ``clone()`` method are
    cloned when preemption forks the state per candidate node."""

    __slots__ = ("_data", "skip_filter_plugins", "skip_score_plugins")

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self.skip_filter_plugins: set[str] = set()
        self.skip_score_plugins: set[str] = set()

    def read(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise KeyError(f"{key!r} not found in CycleState") from None

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def write(self, key: str, value: Any) -> None:
        self._data[key] = value

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def clone(self) -> CycleState:
        c = CycleState()
        c._data = {k: (v.clone() if hasattr(v, "clone") else v) for k, v in self._data.items()}
        c.skip_filter_plugins = set(self.skip_filter_plugins)
        c.skip_score_plugins = set(self.skip_score_plugins)
        return c


@dataclass(slots=True)
class PreFilterResult:
    """A PreFilter plugin narrowing the nodes to evaluate; ``None`` node_names means all nodes."""

    node_names: set[str] | None = None

    def all_nodes(self) -> bool:
        return self.node_names is None

    def merge(self, other: PreFilterResult | None) -> PreFilterResult:
        if other is None or other.node_names is None:
            return self
        if self.node_names is None:
            return PreFilterResult(set(other.node_names))
        return PreFilterResult(self.node_names & other.node_names)


@dataclass(slots=True)
class PostFilterResult:
    """What PostFilter (preemption) decided: the node to nominate, the pods to evict there, and pods of lower
    priority already nominated to that node whose nomination must be cleared."""

    nominated_node_name: str = ""
    victims: list[PodInfo] = field(default_factory=list)
    clear_nominations: list[PodInfo] = field(default_factory=list)
    clear_own_nomination: bool = False


class NodeToStatus:
    """Upstream's NodeToStatus: explicit per-node statuses plus the status implied for nodes not listed."""

    __slots__ = ("statuses", "absent")

    def __init__(self, statuses: dict[str, Status] | None = None, absent: Status | None = None) -> None:
        self.statuses: dict[str, Status] = statuses if statuses is not None else {}
        self.absent = absent if absent is not None else Status.unresolvable()

    def get(self, name: str) -> Status:
        return self.statuses.get(name, self.absent)

    def set(self, name: str, status: Status) -> None:
        self.statuses[name] = status

    def __len__(self) -> int:
        return len(self.statuses)


@dataclass(slots=True)
class Diagnosis:
    node_to_status: NodeToStatus = field(default_factory=NodeToStatus)
    unschedulable_plugins: set[str] = field(default_factory=set)
    pending_plugins: set[str] = field(default_factory=set)
    pre_filter_msg: str = ""
    post_filter_msg: str = ""


class NodeList:
    """A set of candidate nodes as slots into the snapshot, with names and NodeInfos materialised on demand."""

    __slots__ = ("cache", "slots", "_infos", "_names")

    def __init__(self, cache: Cache, slots: np.ndarray) -> None:
        self.cache = cache
        self.slots = slots
        self._infos: list[NodeInfo] | None = None
        self._names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.slots.shape[0])

    @property
    def infos(self) -> list[NodeInfo]:
        if self._infos is None:
            infos = self.cache.infos
            self._infos = [infos[s] for s in self.slots.tolist()]  # type: ignore[misc]
        return self._infos

    @property
    def names(self) -> list[str]:
        if self._names is None:
            names = self.cache.names
            self._names = [names[s] for s in self.slots.tolist()]  # type: ignore[misc]
        return self._names

    @classmethod
    def from_infos(cls, cache: Cache, infos: Sequence[NodeInfo]) -> NodeList:
        nl = cls(cache, np.asarray([i.slot for i in infos], np.int64))
        nl._infos = list(infos)
        return nl


# ---------------------------------------------------------------------------------------------------------------
# Cluster events (QueueingHint-lite)
# ---------------------------------------------------------------------------------------------------------------

class ActionType(enum.IntFlag):
    ADD = 1
    DELETE = 2
    UPDATE_NODE_ALLOCATABLE = 4
    UPDATE_NODE_LABEL = 8
    UPDATE_NODE_TAINT = 16
    UPDATE_NODE_CONDITION = 32
    UPDATE_NODE_ANNOTATION = 64
    UPDATE_POD_LABEL = 128
    UPDATE_POD_SCALE_DOWN = 256
    UPDATE_POD_TOLERATION = 512
    UPDATE_POD_SCHEDULING_GATES_ELIMINATED = 1024
    UPDATE_OTHER = 2048  # an update of a resource without finer-grained action types (PV, PVC, StorageClass...)
    UPDATE = (UPDATE_NODE_ALLOCATABLE | UPDATE_NODE_LABEL | UPDATE_NODE_TAINT | UPDATE_NODE_CONDITION
              | UPDATE_NODE_ANNOTATION | UPDATE_POD_LABEL | UPDATE_POD_SCALE_DOWN | UPDATE_POD_TOLERATION
              | UPDATE_POD_SCHEDULING_GATES_ELIMINATED | UPDATE_OTHER)
    ALL = ADD | DELETE | UPDATE


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    """A change in the cluster that may make unschedulable pods schedulable. Resources: "Pod", "AssignedPod",
    "UnscheduledPod", "Node", "PersistentVolume", "PersistentVolumeClaim", "StorageClass", "CSINode", "*"."""

    resource: str
    action: ActionType
    label: str = ""

    def matches(self, incoming: ClusterEvent) -> bool:
        """Whether this registered event covers ``incoming`` (upstream's MatchClusterEvents)."""
        if self.resource == "*" and self.action == ActionType.ALL:
            return True
        res_ok = (self.resource == "*" or self.resource == incoming.resource
                  or (self.resource == "Pod" and incoming.resource in ("AssignedPod", "UnscheduledPod")))
        return bool(res_ok and (self.action & incoming.action))


class QueueingHint(enum.Enum):
    SKIP = 0
    QUEUE = 1


# hint(pod being requeued, old object, new object) -> QueueingHint
HintFn = Callable[[PodInfo, Any, Any], QueueingHint]


@dataclass(frozen=True, slots=True)
class ClusterEventWithHint:
    event: ClusterEvent
    hint: HintFn | None = None


# ---------------------------------------------------------------------------------------------------------------
# Plugin protocols
# ---------------------------------------------------------------------------------------------------------------

class Plugin(Protocol):
    name: str


@runtime_checkable
class PreEnqueuePlugin(Protocol):
    name: str

    def pre_enqueue(self, pod: PodInfo) -> Status | None: ...


@runtime_checkable
class QueueSortPlugin(Protocol):
    name: str

    def less(self, a: Any, b: Any) -> bool: ...


@runtime_checkable
class PreFilterExtensions(Protocol):
    def add_pod(self, state: CycleState, pod: PodInfo, to_add: PodInfo, node: NodeInfo) -> Status | None: ...

    def remove_pod(self, state: CycleState, pod: PodInfo, to_remove: PodInfo, node: NodeInfo) -> Status | None: ...


@runtime_checkable
class PreFilterPlugin(Protocol):
    name: str

    def pre_filter(self, state: CycleState, pod: PodInfo) -> tuple[PreFilterResult | None, Status | None]: ...


@runtime_checkable
class FilterPlugin(Protocol):
    name: str

    def filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None: ...


@runtime_checkable
class VectorFilterPlugin(Protocol):
    """A Filter that can also judge every node slot at once. Must agree with ``filter`` on every node."""

    name: str

    def filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None: ...

    def filter_vector(self, state: CycleState, pod: PodInfo) -> np.ndarray: ...


@runtime_checkable
class PostFilterPlugin(Protocol):
    name: str

    def post_filter(self, state: CycleState, pod: PodInfo,
                    statuses: NodeToStatus) -> tuple[PostFilterResult | None, Status | None]: ...


@runtime_checkable
class PreScorePlugin(Protocol):
    name: str

    def pre_score(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> Status | None: ...


@runtime_checkable
class ScorePlugin(Protocol):
    """Score one node; optionally ``normalize_score(state, pod, nodes, scores) -> scores`` over all of them."""

    name: str

    def score(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> int: ...


@runtime_checkable
class VectorScorePlugin(Protocol):
    name: str

    def score_vector(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> np.ndarray: ...


@runtime_checkable
class ReservePlugin(Protocol):
    name: str

    def reserve(self, state: CycleState, pod: PodInfo, node_name: str) -> Status | None: ...

    def unreserve(self, state: CycleState, pod: PodInfo, node_name: str) -> None: ...


@runtime_checkable
class PermitPlugin(Protocol):
    name: str

    def permit(self, state: CycleState, pod: PodInfo, node_name: str) -> tuple[Status | None, float]: ...


@runtime_checkable
class PreBindPlugin(Protocol):
    name: str

    async def pre_bind(self, state: CycleState, pod: PodInfo, node_name: str) -> Status | None: ...


@runtime_checkable
class BindPlugin(Protocol):
    """Returns a Skip status when this binder does not handle the pod."""

    name: str

    async def bind(self, state: CycleState, pod: PodInfo, node_name: str) -> Status | None: ...


@runtime_checkable
class PostBindPlugin(Protocol):
    name: str

    async def post_bind(self, state: CycleState, pod: PodInfo, node_name: str) -> None: ...


@runtime_checkable
class EnqueueExtensions(Protocol):
    def events_to_register(self) -> list[ClusterEventWithHint]: ...


class PodBinder(Protocol):
    """The API call that binds a pod (POST pods/<name>/binding); used by DefaultBinder."""

    async def bind(self, pod: Mapping[str, Any], node_name: str) -> None: ...


PluginFactory = Callable[[Mapping[str, Any], "Handle"], Any]


# ---------------------------------------------------------------------------------------------------------------
# Handle: what plugins may use
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Handle:
    """The framework handle handed to plugin factories: the snapshot, the nominator, listers and callbacks."""

    cache: Cache
    nominator: Nominator | None = None
    namespace_labels: Callable[[], Mapping[str, Mapping[str, str]]] | None = None
    pod_binder: PodBinder | None = None
    volume_api: Any = None  # plugins.volume_binding.VolumeAPI
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic
    framework: Framework | None = None
    extenders: Sequence[Any] = ()

    def ns_labels(self) -> Mapping[str, Mapping[str, str]]:
        if self.namespace_labels is not None:
            return self.namespace_labels()
        return self.cache.namespace_labels()


# ---------------------------------------------------------------------------------------------------------------
# Permit waiting
# ---------------------------------------------------------------------------------------------------------------

class WaitingPod:
    """A pod held at Permit; plugins allow or reject it by name, the binding cycle awaits the verdict."""

    def __init__(self, pod: PodInfo, pending: Mapping[str, float]) -> None:
        self.pod = pod
        self.pending = dict(pending)  # plugin -> timeout seconds
        self._future: asyncio.Future[Status | None] | None = None
        self._verdict: Status | None | bool = False  # False = undecided

    def allow(self, plugin: str) -> None:
        self.pending.pop(plugin, None)
        if not self.pending:
            self._decide(None)

    def reject(self, plugin: str, msg: str) -> None:
        self._decide(Status(Code.UNSCHEDULABLE, msg, plugin=plugin))

    def _decide(self, verdict: Status | None) -> None:
        if self._verdict is not False:
            return
        self._verdict = verdict
        if self._future is not None and not self._future.done():
            self._future.set_result(verdict)

    async def wait(self) -> Status | None:
        if self._verdict is not False:
            return self._verdict  # type: ignore[return-value]
        loop = asyncio.get_running_loop()
        self._future = loop.create_future()
        timeout = min(self.pending.values()) if self.pending else 0
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._future)
        except TimeoutError:
            plugin = min(self.pending, key=self.pending.__getitem__) if self.pending else ""
            return Status(Code.UNSCHEDULABLE, f"rejected due to timeout after waiting {timeout}s at plugin {plugin}",
                          plugin=plugin)


# ---------------------------------------------------------------------------------------------------------------
# Framework (one profile)
# ---------------------------------------------------------------------------------------------------------------

class FrameworkError(ValueError):
    """The profile configuration cannot be built."""


def default_normalize_score(scores: np.ndarray, reverse: bool, max_priority: int = MAX_NODE_SCORE) -> np.ndarray:
    """helper.DefaultNormalizeScore on an array."""
    if scores.size == 0:
        return scores
    max_count = int(scores.max())
    if max_count <= 0:
        return np.full_like(scores, max_priority) if reverse else np.zeros_like(scores)
    out = max_priority * scores // max_count
    return max_priority - out if reverse else out


_POINTS = ("pre_enqueue", "queue_sort", "pre_filter", "filter", "post_filter", "pre_score", "score", "reserve",
           "permit", "pre_bind", "bind", "post_bind")
_METHOD_OF_POINT = {"pre_enqueue": "pre_enqueue", "queue_sort": "less", "pre_filter": "pre_filter",
                    "filter": "filter", "post_filter": "post_filter", "pre_score": "pre_score", "score": "score",
                    "reserve": "reserve", "permit": "permit", "pre_bind": "pre_bind", "bind": "bind",
                    "post_bind": "post_bind"}


def implements(plugin: Any, point: str) -> bool:
    if point == "score":
        return callable(getattr(plugin, "score", None)) or callable(getattr(plugin, "score_vector", None))
    return callable(getattr(plugin, _METHOD_OF_POINT[point], None))


class Framework:
    """One scheduling profile: the ordered plugins of each extension point, score weights and how to run them."""

    def __init__(self, profile_name: str, handle: Handle, plugins: Mapping[str, Sequence[Any]],
                 score_weights: Mapping[str, int], *, percentage_of_nodes_to_score: int | None = None) -> None:
        self.profile_name = profile_name
        self.handle = handle
        self.percentage_of_nodes_to_score = percentage_of_nodes_to_score
        self.pre_enqueue_plugins: list[Any] = list(plugins.get("pre_enqueue", ()))
        qs = list(plugins.get("queue_sort", ()))
        self.queue_sort_plugin: Any = qs[0] if qs else None
        self.pre_filter_plugins: list[Any] = list(plugins.get("pre_filter", ()))
        self.filter_plugins: list[Any] = list(plugins.get("filter", ()))
        self.post_filter_plugins: list[Any] = list(plugins.get("post_filter", ()))
        self.pre_score_plugins: list[Any] = list(plugins.get("pre_score", ()))
        self.score_plugins: list[Any] = list(plugins.get("score", ()))
        self.reserve_plugins: list[Any] = list(plugins.get("reserve", ()))
        self.permit_plugins: list[Any] = list(plugins.get("permit", ()))
        self.pre_bind_plugins: list[Any] = list(plugins.get("pre_bind", ()))
        self.bind_plugins: list[Any] = list(plugins.get("bind", ()))
        self.post_bind_plugins: list[Any] = list(plugins.get("post_bind", ()))
        self.score_weights = {p.name: int(score_weights.get(p.name, 1) or 1) for p in self.score_plugins}
        self.waiting_pods: dict[str, WaitingPod] = {}
        self._pre_filter_ext: list[tuple[str, Any]] = []
        for p in self.pre_filter_plugins:
            ext = p.pre_filter_extensions() if hasattr(p, "pre_filter_extensions") else None
            if ext is not None:
                self._pre_filter_ext.append((p.name, ext))
        self.all_plugins: dict[str, Any] = {}
        for point in _POINTS:
            for p in plugins.get(point, ()):
                self.all_plugins.setdefault(p.name, p)
        handle.framework = self

    # -- building ---------------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, profile: ProfileConfig, registry: Mapping[str, PluginFactory], handle: Handle,
                    default_args: Mapping[str, Mapping[str, Any]] | None = None) -> Framework:
        """Instantiate a profile as upstream's NewFramework: plugins enabled per extension point plus MultiPoint
        expansion (explicit extension-point config first, then MultiPoint order, then the rest)."""
        from .config import PluginSet

        plugins_cfg = profile.plugins
        default_args = default_args or {}
        names: list[str] = []
        for point in ("multi_point",) + _POINTS:
            for p in getattr(plugins_cfg, point).enabled:
                if p.name not in names:
                    names.append(p.name)
        instances: dict[str, Any] = {}
        for n in names:
            factory = registry.get(n)
            if factory is None:
                raise FrameworkError(f"plugin {n!r} does not exist in the registry (profile {profile.scheduler_name!r})")
            args = dict(default_args.get(n, {}))
            args.update(profile.plugin_config.get(n, {}) or {})
            instances[n] = factory(args, handle)

        ordered: dict[str, list[Any]] = {}
        weights: dict[str, int] = {}
        for p in plugins_cfg.multi_point.enabled:
            if p.weight:
                weights[p.name] = p.weight
        for point in _POINTS:
            ps: PluginSet = getattr(plugins_cfg, point)
            enabled = [p.name for p in ps.enabled]
            for p in ps.enabled:
                if not implements(instances[p.name], point):
                    raise FrameworkError(f"plugin {p.name!r} does not extend {point} plugin")
                if point == "score" and p.weight:
                    weights[p.name] = p.weight
            disabled = {p.name for p in ps.disabled}
            if "*" in disabled:
                ordered[point] = [instances[n] for n in enabled]
                continue
            override: list[str] = []
            multi: list[str] = []
            for p in plugins_cfg.multi_point.enabled:
                inst = instances[p.name]
                if not implements(inst, point) or p.name in disabled:
                    continue
                if p.name in enabled:
                    override.append(p.name)
                    continue
                if p.name in multi:
                    raise FrameworkError(f"plugin {p.name!r} already registered as {point!r}")
                multi.append(p.name)
            final = override + multi + [n for n in enabled if n not in override]
            seen: set[str] = set()
            for n in final:
                if n in seen:
                    raise FrameworkError(f"plugin {n!r} already registered as {point!r}")
                seen.add(n)
            ordered[point] = [instances[n] for n in final]
        if len(ordered.get("queue_sort", [])) > 1:
            raise FrameworkError("only one queue sort plugin can be enabled")
        if not ordered.get("bind"):
            raise FrameworkError("at least one bind plugin is needed")
        pct = profile.percentage_of_nodes_to_score
        return cls(profile.scheduler_name, handle, ordered, weights, percentage_of_nodes_to_score=pct)

    # -- queue-facing --------------------------------------------------------------------------------------------

    def run_pre_enqueue(self, pod: PodInfo) -> Status | None:
        for p in self.pre_enqueue_plugins:
            s = p.pre_enqueue(pod)
            if not _ok(s):
                return s.with_plugin(p.name)  # type: ignore[union-attr]
        return None

    def events_to_register(self) -> dict[str, list[ClusterEventWithHint]]:
        """Plugin name -> the cluster events that may make pods it rejected schedulable."""
        out: dict[str, list[ClusterEventWithHint]] = {}
        for name, p in self.all_plugins.items():
            fn = getattr(p, "events_to_register", None)
            if fn is not None:
                out[name] = list(fn())
        return out

    # -- scheduling cycle ----------------------------------------------------------------------------------------

    def run_pre_filter(self, state: CycleState, pod: PodInfo) -> tuple[PreFilterResult | None, Status | None, set[str]]:
        """RunPreFilterPlugins: Skip marks the plugin's Filter to be skipped; Unschedulable keeps running the rest
        (so preemption sees them all); UnschedulableAndUnresolvable stops."""
        result: PreFilterResult | None = None
        ret: Status | None = None
        plugins_with_nodes: list[str] = []
        rejected: set[str] = set()
        for p in self.pre_filter_plugins:
            r, s = p.pre_filter(state, pod)
            if s is not None and s.code == Code.SKIP:
                state.skip_filter_plugins.add(p.name)
                continue
            if not _ok(s):
                assert s is not None
                s = s.with_plugin(p.name)
                if s.code == Code.UNSCHEDULABLE_AND_UNRESOLVABLE:
                    return None, s, {p.name}
                if s.code == Code.UNSCHEDULABLE:
                    ret = s
                    rejected.add(p.name)
                    continue
                return None, Status(Code.ERROR, f"running PreFilter plugin {p.name!r}: {s.message()}",
                                    plugin=p.name, error=s.error), set()
            if r is not None and not r.all_nodes():
                plugins_with_nodes.append(p.name)
                result = (result or PreFilterResult()).merge(r)
                if result.node_names is not None and not result.node_names:
                    if len(plugins_with_nodes) == 1:
                        msg = f"node(s) didn't satisfy plugin {plugins_with_nodes[0]}"
                    else:
                        msg = f"node(s) didn't satisfy plugin(s) [{' '.join(plugins_with_nodes)}] simultaneously"
                    return result, Status(Code.UNSCHEDULABLE_AND_UNRESOLVABLE, msg), set(plugins_with_nodes)
        return result, ret, rejected | set(plugins_with_nodes)

    def run_pre_filter_add_pod(self, state: CycleState, pod: PodInfo, to_add: PodInfo, node: NodeInfo) -> Status | None:
        for name, ext in self._pre_filter_ext:
            if name in state.skip_filter_plugins:
                continue
            s = ext.add_pod(state, pod, to_add, node)
            if not _ok(s):
                return Status.as_error(f"running AddPod on PreFilter plugin {name!r}: {s.message()}")  # type: ignore
        return None

    def run_pre_filter_remove_pod(self, state: CycleState, pod: PodInfo, to_remove: PodInfo,
                                  node: NodeInfo) -> Status | None:
        for name, ext in self._pre_filter_ext:
            if name in state.skip_filter_plugins:
                continue
            s = ext.remove_pod(state, pod, to_remove, node)
            if not _ok(s):
                return Status.as_error(f"running RemovePod on PreFilter plugin {name!r}: {s.message()}")  # type: ignore
        return None

    def active_filters(self, state: CycleState) -> list[Any]:
        skip = state.skip_filter_plugins
        return [p for p in self.filter_plugins if p.name not in skip]

    def run_filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None:
        """RunFilterPlugins on one node: the first non-success status, with its plugin set."""
        skip = state.skip_filter_plugins
        for p in self.filter_plugins:
            if p.name in skip:
                continue
            s = p.filter(state, pod, node)
            if not _ok(s):
                assert s is not None
                if s.code not in (Code.UNSCHEDULABLE, Code.UNSCHEDULABLE_AND_UNRESOLVABLE, Code.PENDING):
                    return Status(Code.ERROR, f"running {p.name!r} filter plugin: {s.message()}", plugin=p.name,
                                  error=s.error)
                return s.with_plugin(p.name)
        return None

    def nominated_pods_for(self, pod: PodInfo, node_name: str) -> list[PodInfo]:
        """Pods nominated to ``node_name`` that ``pod`` must make room for (priority >= its own)."""
        nom = self.handle.nominator
        if nom is None:
            return []
        return [p for p in nom.nominated_pods_for_node(node_name) if p.uid != pod.uid and p.priority >= pod.priority]

    def run_filter_with_nominated_pods(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None:
        """RunFilterPluginsWithNominatedPods: evaluate with equal-or-higher priority nominated pods present, and if
        that passes and some were added, once more without them (affinity may depend on their absence)."""
        nominated = self.nominated_pods_for(pod, node.name)
        if not nominated:
            return self.run_filter(state, pod, node)
        st = state.clone()
        ni = node.clone()
        for p in nominated:
            ni.add_pod(p)
            s = self.run_pre_filter_add_pod(st, pod, p, ni)
            if not _ok(s):
                return s
        s = self.run_filter(st, pod, ni)
        if not _ok(s):
            return s
        return self.run_filter(state, pod, node)

    def run_post_filter(self, state: CycleState, pod: PodInfo,
                        statuses: NodeToStatus) -> tuple[PostFilterResult | None, Status | None]:
        result: PostFilterResult | None = None
        reasons: list[str] = []
        for p in self.post_filter_plugins:
            r, s = p.post_filter(state, pod, statuses)
            if _ok(s):
                return r, None
            assert s is not None
            if s.code == Code.UNSCHEDULABLE_AND_UNRESOLVABLE or s.code == Code.UNSCHEDULABLE:
                reasons.extend(s.reasons)
                if r is not None:
                    result = r
                continue
            return None, s.with_plugin(p.name)
        if not self.post_filter_plugins:
            return None, Status(Code.UNSCHEDULABLE)
        return result, Status(Code.UNSCHEDULABLE, *reasons)

    def run_pre_score(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> Status | None:
        for p in self.pre_score_plugins:
            s = p.pre_score(state, pod, nodes)
            if s is not None and s.code == Code.SKIP:
                state.skip_score_plugins.add(p.name)
                continue
            if not _ok(s):
                return Status(Code.ERROR, f"running PreScore plugin {p.name!r}: {s.message()}", plugin=p.name)  # type: ignore
        return None

    def run_score(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Weighted sum of every (normalised) score plugin; also the per-plugin weighted scores."""
        total = np.zeros(len(nodes), np.int64)
        per_plugin: dict[str, np.ndarray] = {}
        skip = state.skip_score_plugins
        for p in self.score_plugins:
            if p.name in skip:
                continue
            vec = getattr(p, "score_vector", None)
            if vec is not None:
                scores = np.asarray(vec(state, pod, nodes), np.int64)
            else:
                scores = np.fromiter((p.score(state, pod, n) for n in nodes.infos), np.int64, len(nodes))
            norm = getattr(p, "normalize_score", None)
            if norm is not None:
                scores = np.asarray(norm(state, pod, nodes, scores), np.int64)
            # In-tree plugins guarantee [0, 100] by construction; check everyone else as upstream does.
            if not getattr(p, "scores_in_range", False) and scores.size and \
                    (int(scores.max()) > MAX_NODE_SCORE or int(scores.min()) < MIN_NODE_SCORE):
                raise ValueError(f"plugin {p.name!r} returns an invalid score, should be in "
                                 f"[{MIN_NODE_SCORE}, {MAX_NODE_SCORE}]")
            weighted = scores * self.score_weights[p.name]
            per_plugin[p.name] = weighted
            total += weighted
        return total, per_plugin

    def run_reserve(self, state: CycleState, pod: PodInfo, node_name: str) -> Status | None:
        for p in self.reserve_plugins:
            s = p.reserve(state, pod, node_name)
            if not _ok(s):
                return s.with_plugin(p.name)  # type: ignore[union-attr]
        return None

    def run_unreserve(self, state: CycleState, pod: PodInfo, node_name: str) -> None:
        # Reverse order, as upstream, so each plugin undoes after those that reserved after it.
        for p in reversed(self.reserve_plugins):
            p.unreserve(state, pod, node_name)

    def run_permit(self, state: CycleState, pod: PodInfo, node_name: str) -> Status | None:
        pending: dict[str, float] = {}
        for p in self.permit_plugins:
            s, timeout = p.permit(state, pod, node_name)
            if _ok(s):
                continue
            assert s is not None
            if s.code == Code.WAIT:
                pending[p.name] = min(timeout, 15 * 60)  # upstream caps permit waits at 15 minutes
                continue
            return s.with_plugin(p.name)
        if pending:
            self.waiting_pods[pod.uid] = WaitingPod(pod, pending)
            return Status(Code.WAIT, f"one or more plugins asked to wait and no plugin rejected pod {pod.key!r}")
        return None

    async def wait_on_permit(self, pod: PodInfo) -> Status | None:
        wp = self.waiting_pods.get(pod.uid)
        if wp is None:
            return None
        try:
            return await wp.wait()
        finally:
            self.waiting_pods.pop(pod.uid, None)

    async def run_pre_bind(self, state: CycleState, pod: PodInfo, node_name: str) -> Status | None:
        for p in self.pre_bind_plugins:
            s = await p.pre_bind(state, pod, node_name)
            if not _ok(s):
                return s.with_plugin(p.name)  # type: ignore[union-attr]
        return None

    async def run_bind(self, state: CycleState, pod: PodInfo, node_name: str) -> Status | None:
        for p in self.bind_plugins:
            s = await p.bind(state, pod, node_name)
            if s is not None and s.code == Code.SKIP:
                continue
            if not _ok(s):
                return s.with_plugin(p.name)  # type: ignore[union-attr]
            return None
        return Status(Code.SKIP)

    async def run_post_bind(self, state: CycleState, pod: PodInfo, node_name: str) -> None:
        for p in self.post_bind_plugins:
            await p.post_bind(state, pod, node_name)

    # -- diagnosis ----------------------------------------------------------------------------------------------

    def diagnose(self, state: CycleState, pod: PodInfo, slots: np.ndarray) -> dict[str, Status]:
        """Per-node first failing filter status for ``slots`` (used only when no node fits, so the FitError and
        preemption get upstream's NodeToStatus). Vector plugins explain all failing nodes at once when they can."""
        cache = self.handle.cache
        remaining = np.zeros(cache.capacity, bool)
        remaining[slots] = True
        out: dict[str, Status] = {}
        names = cache.names
        infos = cache.infos
        for p in self.active_filters(state):
            fv = getattr(p, "filter_vector", None)
            if fv is not None:
                ok = fv(state, pod)
                failing = np.flatnonzero(remaining & ~ok)
                if failing.size:
                    explain = getattr(p, "explain_vector", None)
                    sts = explain(state, pod, failing) if explain is not None else None
                    if sts is None:
                        sts = [p.filter(state, pod, infos[s]) for s in failing.tolist()]
                    for s, st in zip(failing.tolist(), sts):
                        if st is None:  # vector and scalar disagree: trust the scalar verdict
                            continue
                        out[names[s]] = st if st.plugin else st.with_plugin(p.name)  # type: ignore[index]
                        remaining[s] = False
            else:
                for s in np.flatnonzero(remaining).tolist():
                    st = p.filter(state, pod, infos[s])  # type: ignore[arg-type]
                    if not _ok(st):
                        out[names[s]] = st.with_plugin(p.name)  # type: ignore[index,union-attr]
                        remaining[s] = False
        return out

    def has_filter_plugins(self) -> bool:
        return bool(self.filter_plugins)

    def has_score_plugins(self) -> bool:
        return bool(self.score_plugins)


__all__ += ["implements"]
