"""KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1) loading, defaulting and validation.

The same YAML a kube-scheduler takes: profiles with their schedulerName, plugins enabled/disabled per extension
point and through multiPoint, pluginConfig args, extenders, percentageOfNodesToScore and the pod backoff bounds.
User plugin sets are merged into upstream's default profile as upstream's mergePlugins does (a re-enabled default
keeps its place, "*" disables every default of a point), so a config that works on kube-scheduler means the same
here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError", "PluginRef", "PluginSet", "Plugins", "ProfileConfig", "ExtenderConfig", "ManagedResource",
    "SchedulerConfiguration", "load_config", "parse_config", "default_configuration", "parse_duration",
    "API_VERSION", "KIND",
]

API_VERSION = "kubescheduler.config.k8s.io/v1"
KIND = "KubeSchedulerConfiguration"
DEFAULT_SCHEDULER_NAME = "default-scheduler"
DEFAULT_EXTENDER_TIMEOUT = 5.0  # upstream's DefaultExtenderTimeout

_POINTS = ("queue_sort", "pre_enqueue", "pre_filter", "filter", "post_filter", "pre_score", "score", "reserve",
           "permit", "pre_bind", "bind", "post_bind")
_YAML_POINT = {"multiPoint": "multi_point", "queueSort": "queue_sort", "preEnqueue": "pre_enqueue",
               "preFilter": "pre_filter", "filter": "filter", "postFilter": "post_filter", "preScore": "pre_score",
               "score": "score", "reserve": "reserve", "permit": "permit", "preBind": "pre_bind", "bind": "bind",
               "postBind": "post_bind"}


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending field like upstream's validation."""


@dataclass(frozen=True, slots=True)
class PluginRef:
    name: str
    weight: int = 0


@dataclass(slots=True)
class PluginSet:
    enabled: list[PluginRef] = field(default_factory=list)
    disabled: list[PluginRef] = field(default_factory=list)


@dataclass(slots=True)
class Plugins:
    multi_point: PluginSet = field(default_factory=PluginSet)
    queue_sort: PluginSet = field(default_factory=PluginSet)
    pre_enqueue: PluginSet = field(default_factory=PluginSet)
    pre_filter: PluginSet = field(default_factory=PluginSet)
    filter: PluginSet = field(default_factory=PluginSet)
    post_filter: PluginSet = field(default_factory=PluginSet)
    pre_score: PluginSet = field(default_factory=PluginSet)
    score: PluginSet = field(default_factory=PluginSet)
    reserve: PluginSet = field(default_factory=PluginSet)
    permit: PluginSet = field(default_factory=PluginSet)
    pre_bind: PluginSet = field(default_factory=PluginSet)
    bind: PluginSet = field(default_factory=PluginSet)
    post_bind: PluginSet = field(default_factory=PluginSet)


@dataclass(slots=True)
class ProfileConfig:
    scheduler_name: str = DEFAULT_SCHEDULER_NAME
    percentage_of_nodes_to_score: int | None = None
    plugins: Plugins = field(default_factory=Plugins)
    plugin_config: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ManagedResource:
    name: str
    ignored_by_scheduler: bool = False


@dataclass(slots=True)
class ExtenderConfig:
    url_prefix: str
    filter_verb: str = ""
    preempt_verb: str = ""
    prioritize_verb: str = ""
    bind_verb: str = ""
    weight: int = 1
    enable_https: bool = False
    tls_config: dict[str, Any] | None = None
    http_timeout: float = DEFAULT_EXTENDER_TIMEOUT
    node_cache_capable: bool = False
    managed_resources: list[ManagedResource] = field(default_factory=list)
    ignorable: bool = False


@dataclass(slots=True)
class SchedulerConfiguration:
    profiles: list[ProfileConfig] = field(default_factory=list)
    extenders: list[ExtenderConfig] = field(default_factory=list)
    percentage_of_nodes_to_score: int = 0
    pod_initial_backoff_seconds: float = 1.0
    pod_max_backoff_seconds: float = 10.0
    parallelism: int = 16

    def profile(self, scheduler_name: str) -> ProfileConfig:
        for p in self.profiles:
            if p.scheduler_name == scheduler_name:
                return p
        raise KeyError(scheduler_name)


_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """A metav1.Duration ("30s", "1m30s", "500ms") or a plain number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    s = str(value).strip()
    if s in ("0", ""):
        return 0.0
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ConfigError(f"invalid duration {value!r}")
    return sign * total


def _plugin_set(raw: Mapping[str, Any] | None, path: str) -> PluginSet:
    raw = raw or {}
    out = PluginSet()
    for which in ("enabled", "disabled"):
        for i, p in enumerate(raw.get(which) or []):
            if not isinstance(p, Mapping) or not p.get("name"):
                raise ConfigError(f"{path}.{which}[{i}].name: Required value")
            w = p.get("weight")
            if w is not None and (not isinstance(w, int) or w < 0):
                raise ConfigError(f"{path}.{which}[{i}].weight: Invalid value: {w!r}: must be a non-negative integer")
            getattr(out, which).append(PluginRef(str(p["name"]), int(w or 0)))
    return out


def default_plugins() -> Plugins:
    from .plugins import DEFAULT_MULTI_POINT

    p = Plugins()
    p.multi_point.enabled = [PluginRef(n, w) for n, w in DEFAULT_MULTI_POINT]
    return p


def _merge_set(default: PluginSet, custom: PluginSet) -> PluginSet:
    """mergePluginSet: defaults minus disabled (all with "*"), re-configured defaults keep their position, then the
    remaining custom plugins in their order."""
    disabled = [PluginRef(p.name) for p in custom.disabled] + [PluginRef(p.name) for p in default.disabled]
    disabled_names = {p.name for p in disabled}
    custom_idx = {p.name: (i, p) for i, p in enumerate(custom.enabled)}
    replaced: set[int] = set()
    enabled: list[PluginRef] = []
    if "*" not in disabled_names:
        for d in default.enabled:
            if d.name in disabled_names:
                continue
            if d.name in custom_idx:
                i, p = custom_idx[d.name]
                enabled.append(p)
                replaced.add(i)
            else:
                enabled.append(d)
    for i, p in enumerate(custom.enabled):
        if i not in replaced:
            enabled.append(p)
    return PluginSet(enabled, disabled)


def _merge_plugins(default: Plugins, custom: Plugins | None) -> Plugins:
    if custom is None:
        return default
    out = Plugins()
    for point in ("multi_point",) + _POINTS:
        setattr(out, point, _merge_set(getattr(default, point), getattr(custom, point)))
    return out


def _profile(raw: Mapping[str, Any], idx: int) -> ProfileConfig:
    path = f"profiles[{idx}]"
    name = raw.get("schedulerName") or DEFAULT_SCHEDULER_NAME
    pct = raw.get("percentageOfNodesToScore")
    if pct is not None and not (isinstance(pct, int) and 0 <= pct <= 100):
        raise ConfigError(f"{path}.percentageOfNodesToScore: Invalid value: {pct!r}: not in valid range [0-100]")
    custom: Plugins | None = None
    if raw.get("plugins") is not None:
        custom = Plugins()
        for key, val in (raw.get("plugins") or {}).items():
            point = _YAML_POINT.get(key)
            if point is None:
                raise ConfigError(f"{path}.plugins.{key}: unknown extension point")
            setattr(custom, point, _plugin_set(val, f"{path}.plugins.{key}"))
    plugins = _merge_plugins(default_plugins(), custom)
    plugin_config: dict[str, dict[str, Any]] = {}
    for i, pc in enumerate(raw.get("pluginConfig") or []):
        pname = (pc or {}).get("name")
        if not pname:
            raise ConfigError(f"{path}.pluginConfig[{i}].name: Required value")
        if pname in plugin_config:
            raise ConfigError(f"{path}.pluginConfig[{i}]: Duplicate value: {pname!r}")
        args = dict((pc or {}).get("args") or {})
        args.pop("apiVersion", None)
        args.pop("kind", None)
        plugin_config[pname] = args
    return ProfileConfig(name, pct, plugins, plugin_config)


def _extender(raw: Mapping[str, Any], idx: int) -> ExtenderConfig:
    path = f"extenders[{idx}]"
    url = raw.get("urlPrefix")
    if not url:
        raise ConfigError(f"{path}.urlPrefix: Required value")
    weight = raw.get("weight", 1 if raw.get("prioritizeVerb") else 0)
    if raw.get("prioritizeVerb") and (not isinstance(weight, int) or weight <= 0):
        raise ConfigError(f"{path}.weight: Invalid value: {weight!r}: must have a positive weight applied to it")
    managed = []
    for i, m in enumerate(raw.get("managedResources") or []):
        n = (m or {}).get("name")
        if not n:
            raise ConfigError(f"{path}.managedResources[{i}].name: Required value")
        managed.append(ManagedResource(n, bool(m.get("ignoredByScheduler", False))))
    timeout = parse_duration(raw["httpTimeout"]) if raw.get("httpTimeout") not in (None, "", 0) \
        else DEFAULT_EXTENDER_TIMEOUT
    return ExtenderConfig(
        url_prefix=str(url), filter_verb=raw.get("filterVerb") or "", preempt_verb=raw.get("preemptVerb") or "",
        prioritize_verb=raw.get("prioritizeVerb") or "", bind_verb=raw.get("bindVerb") or "",
        weight=int(weight or 0), enable_https=bool(raw.get("enableHTTPS", False)), tls_config=raw.get("tlsConfig"),
        http_timeout=timeout, node_cache_capable=bool(raw.get("nodeCacheCapable", False)),
        managed_resources=managed, ignorable=bool(raw.get("ignorable", False)))


def parse_config(raw: Mapping[str, Any] | None) -> SchedulerConfiguration:
    """Build, default and validate a configuration from its decoded YAML/JSON document."""
    raw = dict(raw or {})
    api = raw.get("apiVersion")
    if api is not None and api != API_VERSION:
        raise ConfigError(f"apiVersion {api!r} is not supported (want {API_VERSION})")
    kind = raw.get("kind")
    if kind is not None and kind != KIND:
        raise ConfigError(f"kind {kind!r} is not supported (want {KIND})")
    cfg = SchedulerConfiguration()
    pct = raw.get("percentageOfNodesToScore", 0)
    if pct is None:
        pct = 0
    if not isinstance(pct, int) or not 0 <= pct <= 100:
        raise ConfigError(f"percentageOfNodesToScore: Invalid value: {pct!r}: not in valid range [0-100]")
    cfg.percentage_of_nodes_to_score = pct
    init = raw.get("podInitialBackoffSeconds", 1)
    mx = raw.get("podMaxBackoffSeconds", 10)
    if not isinstance(init, (int, float)) or init <= 0:
        raise ConfigError(f"podInitialBackoffSeconds: Invalid value: {init!r}: must be greater than 0")
    if not isinstance(mx, (int, float)) or mx < init:
        raise ConfigError(f"podMaxBackoffSeconds: Invalid value: {mx!r}: must be greater than or equal to "
                          f"PodInitialBackoffSeconds")
    cfg.pod_initial_backoff_seconds = float(init)
    cfg.pod_max_backoff_seconds = float(mx)
    par = raw.get("parallelism", 16)
    if not isinstance(par, int) or par <= 0:
        raise ConfigError(f"parallelism: Invalid value: {par!r}: should be an integer greater than 0")
    cfg.parallelism = par
    profiles_raw = raw.get("profiles") or [{}]
    names: set[str] = set()
    for i, p in enumerate(profiles_raw):
        prof = _profile(p or {}, i)
        if prof.scheduler_name in names:
            raise ConfigError(f"profiles[{i}].schedulerName: Duplicate value: {prof.scheduler_name!r}")
        names.add(prof.scheduler_name)
        cfg.profiles.append(prof)
    sorts = {tuple(r.name for r in _effective(p.plugins, "queue_sort")) for p in cfg.profiles}
    if len(sorts) > 1:
        raise ConfigError("profiles[1].plugins.queueSort: Invalid value: queueSort must be the same for all profiles")
    binders = 0
    for i, e in enumerate(raw.get("extenders") or []):
        ext = _extender(e or {}, i)
        if ext.bind_verb:
            binders += 1
        cfg.extenders.append(ext)
    if binders > 1:
        raise ConfigError(f"extenders: Invalid value: found {binders} extenders implementing bind")
    return cfg


def _effective(plugins: Plugins, point: str) -> list[PluginRef]:
    """The plugins a point would run, by name only (for cross-profile checks); implementation checks come later."""
    from .framework import implements
    from .plugins import REGISTRY

    ps: PluginSet = getattr(plugins, point)
    disabled = {p.name for p in ps.disabled}
    out = list(ps.enabled)
    if "*" in disabled:
        return out
    for p in plugins.multi_point.enabled:
        factory = REGISTRY.get(p.name)
        if factory is None or p.name in disabled or any(x.name == p.name for x in out):
            continue
        if implements(factory, point):
            out.append(p)
    return out


def load_config(source: str | Path) -> SchedulerConfiguration:
    """Load a configuration from a YAML file path or a YAML string."""
    text: str
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and Path(source).is_file()):
        text = Path(source).read_text()
    else:
        text = str(source)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}") from e
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError("configuration must be a mapping")
    return parse_config(raw)


def default_configuration() -> SchedulerConfiguration:
    return parse_config({"apiVersion": API_VERSION, "kind": KIND})
