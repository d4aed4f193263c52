"""The ResourceQuota controller: keeps each quota's ``status.used`` equal to what its namespace consumes now.

For every resource named in ``spec.hard`` it computes usage the way upstream's evaluators do: object counts
(``pods``, ``services``, ``configmaps``, ``secrets``, ``persistentvolumeclaims``, ``count/<resource>[.<group>]`` for
any kind discovery knows), compute requests and limits of pods that are not terminal (``requests.cpu``/``cpu``,
``requests.memory``/``memory``, ``limits.*``, ephemeral storage), storage requested by claims (overall and per
storage class), node ports and load balancers of services. Pod quotas honour the Terminating, NotTerminating,
BestEffort, NotBestEffort and PriorityClass scopes. Objects change -> the quotas of their namespace are recomputed;
``status.hard`` mirrors ``spec.hard``. Enforcement at admission is the API server's part.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any

from controlplane.client import ApiClient, Informer, NotFound, Resource, SharedInformerFactory, namespace_index
from controlplane.client.resources import CONFIGMAPS, PERSISTENTVOLUMECLAIMS, PODS, RESOURCEQUOTAS, SECRETS, SERVICES
from controlplane.controllers import podutil
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.controllers.discovery import discover
from controlplane.scheduler.quantity import QuantityError, parse_quantity

log = logging.getLogger(__name__)

Obj = dict[str, Any]

REPLICATIONCONTROLLERS = Resource("", "v1", "replicationcontrollers", "ReplicationController", True)
COUNTED = {  # legacy object-count names -> resource
    "pods": PODS, "services": SERVICES, "configmaps": CONFIGMAPS, "secrets": SECRETS,
    "persistentvolumeclaims": PERSISTENTVOLUMECLAIMS, "replicationcontrollers": REPLICATIONCONTROLLERS,
    "resourcequotas": RESOURCEQUOTAS,
}
COMPUTE = ("cpu", "memory", "ephemeral-storage")
CLASS_SUFFIX = ".storageclass.storage.k8s.io/"

_BINARY = [("Ei", 1 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)]
_DECIMAL = [("E", 10**18), ("P", 10**15), ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)]


def format_quantity(value: Fraction, binary: bool) -> str:
    """A canonical quantity string: the largest suffix that divides the value exactly; milli for fractions."""
    if value == 0:
        return "0"
    if value.denominator != 1:
        milli = value * 1000
        if milli.denominator == 1:
            return f"{milli.numerator}m"
        return f"{-(-milli.numerator // milli.denominator)}m"  # round up, as Quantity does at milli scale
    n = value.numerator
    for suffix, size in _BINARY if binary else _DECIMAL:
        if n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


class _Sum:
    """Adds quantities, remembering whether they were written in binary (Mi, Gi) units."""

    def __init__(self) -> None:
        self.value = Fraction(0)
        self.binary: bool | None = None

    def add(self, text: Any) -> None:
        try:
            self.value += parse_quantity(text)
        except QuantityError:
            return
        is_binary = isinstance(text, str) and text.rstrip("0123456789").endswith("i")
        self.binary = is_binary if self.binary is None else self.binary and is_binary

    def text(self) -> str:
        return format_quantity(self.value, bool(self.binary))


def pod_resources(pod: Obj, kind: str) -> dict[str, Any]:
    """Effective requests or limits of a pod: max(sum of containers, any init container) + overhead."""
    spec = pod.get("spec") or {}
    total: dict[str, Fraction] = {}
    texts: dict[str, list[Any]] = {}
    for c in spec.get("containers") or []:
        for name, value in ((c.get("resources") or {}).get(kind) or {}).items():
            try:
                total[name] = total.get(name, Fraction(0)) + parse_quantity(value)
            except QuantityError:
                continue
            texts.setdefault(name, []).append(value)
    for c in spec.get("initContainers") or []:
        for name, value in ((c.get("resources") or {}).get(kind) or {}).items():
            try:
                q = parse_quantity(value)
            except QuantityError:
                continue
            if q > total.get(name, Fraction(0)):
                total[name] = q
                texts[name] = [value]
    for name, value in (spec.get("overhead") or {}).items():
        try:
            total[name] = total.get(name, Fraction(0)) + parse_quantity(value)
        except QuantityError:
            continue
    binary = {n: all(isinstance(t, str) and t.rstrip("0123456789").endswith("i") for t in ts)
              for n, ts in texts.items()}
    return {n: (v, binary.get(n, False)) for n, v in total.items()}


def _pod_counts(pod: Obj) -> bool:
    """upstream QuotaV1Pod: terminal pods, and pods past their deletion grace period, use nothing."""
    if podutil.is_terminal(pod):
        return False
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") and meta.get("deletionGracePeriodSeconds") is not None:
        try:
            deleted = dt.datetime.fromisoformat(meta["deletionTimestamp"].replace("Z", "+00:00"))
        except ValueError:
            return True
        grace = dt.timedelta(seconds=int(meta["deletionGracePeriodSeconds"]))
        if dt.datetime.now(dt.timezone.utc) > deleted + grace:
            return False
    return True


def _best_effort(pod: Obj) -> bool:
    spec = pod.get("spec") or {}
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        res = c.get("resources") or {}
        if res.get("requests") or res.get("limits"):
            return False
    return True


def _scope_matcher(quota: Obj) -> Callable[[Obj], bool]:
    spec = quota.get("spec") or {}
    tests: list[Callable[[Obj], bool]] = []
    scopes = list(spec.get("scopes") or [])
    for expr in ((spec.get("scopeSelector") or {}).get("matchExpressions") or []):
        name, op, values = expr.get("scopeName"), expr.get("operator"), set(expr.get("values") or [])
        if name == "PriorityClass":
            def priority(pod: Obj, op: str = op, values: set[str] = values) -> bool:
                pc = (pod.get("spec") or {}).get("priorityClassName") or ""
                if op == "In":
                    return pc in values
                if op == "NotIn":
                    return pc not in values
                if op == "Exists":
                    return bool(pc)
                return not pc
            tests.append(priority)
        elif op in ("Exists", None):
            scopes.append(name)
    for scope in scopes:
        if scope == "Terminating":
            tests.append(lambda p: (p.get("spec") or {}).get("activeDeadlineSeconds") is not None)
        elif scope == "NotTerminating":
            tests.append(lambda p: (p.get("spec") or {}).get("activeDeadlineSeconds") is None)
        elif scope == "BestEffort":
            tests.append(_best_effort)
        elif scope == "NotBestEffort":
            tests.append(lambda p: not _best_effort(p))
    return lambda pod: all(t(pod) for t in tests)


class ResourceQuotaController:
    name = "resourcequota"

    def __init__(self, ctx: ControllerContext | None = None) -> None:
        ctx = ctx or ControllerContext()
        self.clock = ctx.clock
        self.workers = int(ctx.option("concurrent_resource_quota_syncs", 2))
        self.sync_period = float(ctx.option("resource_quota_sync_period", 300.0))
        self._dynamic: dict[str, Informer | None] = {}  # "plural.group" -> informer (None: not served)

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.informers = informers
        self.enqueue = enqueue
        self.quotas = informers.informer(RESOURCEQUOTAS)
        self.quotas.add_index("namespace", namespace_index)

        def quota_changed(q: Obj, *rest: Obj) -> None:
            q = rest[-1] if rest else q
            enqueue(f"{q['metadata']['namespace']}/{q['metadata']['name']}")

        self.quotas.add_handler(on_add=quota_changed, on_update=quota_changed)
        self.static: dict[Resource, Informer] = {}
        for resource in (PODS, SERVICES, CONFIGMAPS, SECRETS, PERSISTENTVOLUMECLAIMS):
            self.static[resource] = self._watch(resource)

    def _watch(self, resource: Resource) -> Informer:
        informer = self.informers.informer(resource)
        informer.add_index("namespace", namespace_index)

        def changed(obj: Obj, *rest: Obj) -> None:
            self._enqueue_namespace(((rest[-1] if rest else obj).get("metadata") or {}).get("namespace"))

        informer.add_handler(on_add=changed, on_update=changed, on_delete=changed)
        return informer

    def _enqueue_namespace(self, namespace: str | None) -> None:
        if not namespace:
            return
        for q in self.quotas.by_index("namespace", namespace):
            self.enqueue(f"{namespace}/{q['metadata']['name']}")

    async def run(self) -> None:
        """A full recount now and then (--resource-quota-sync-period), for anything no event announced."""
        while True:
            await self.clock.sleep(self.sync_period)
            for key in self.quotas.keys():
                self.enqueue(key)

    async def _informer_for(self, name: str) -> Informer | None:
        """The informer for ``count/<name>``: ``pods``, ``deployments.apps``, ``widgets.example.com``."""
        plural, _, group = name.partition(".")
        for resource, informer in self.static.items():
            if resource.plural == plural and resource.group == group:
                return informer
        if name in self._dynamic:
            return self._dynamic[name]
        discovery = await discover(self.client)
        found = next((r.resource for r in discovery.resources
                      if r.resource.plural == plural and r.resource.group == group and r.resource.namespaced
                      and r.can("list", "watch")), None)
        if found is None:
            return None  # not cached: a CRD created later is found on a later sync
        informer = self._watch(found)
        self._dynamic[name] = informer
        self.informers.start_all()
        await informer.wait_for_sync(30)
        return informer

    async def reconcile(self, key: str) -> Result:
        quota = self.quotas.get(key)
        if quota is None:
            return DONE
        ns = quota["metadata"]["namespace"]
        hard = dict((quota.get("spec") or {}).get("hard") or {})
        in_scope = _scope_matcher(quota)
        pods = [p for p in self.static[PODS].by_index("namespace", ns) if _pod_counts(p) and in_scope(p)]
        used: dict[str, str] = {}
        for name in hard:
            value = await self._usage(name, ns, pods)
            if value is not None:
                used[name] = value
        status = {"hard": hard, "used": used}
        if (quota.get("status") or {}) == status:
            return DONE
        try:
            await self.client.update_status(RESOURCEQUOTAS, {**quota, "status": status})
        except NotFound:
            pass
        return DONE

    def _objects(self, resource: Resource, ns: str) -> list[Obj]:
        return self.static[resource].by_index("namespace", ns)

    async def _usage(self, name: str, ns: str, pods: list[Obj]) -> str | None:
        if name in ("pods", "count/pods"):
            return str(len(pods))
        if name.startswith("count/"):
            informer = await self._informer_for(name[len("count/"):])
            if informer is None:
                return None
            objects = informer.by_index("namespace", ns)
            if informer.resource == PODS:
                objects = pods
            return str(len(objects))
        if name in COUNTED:
            resource = COUNTED[name]
            if resource == RESOURCEQUOTAS:
                return str(len(self.quotas.by_index("namespace", ns)))
            if resource in self.static:
                return str(len(self._objects(resource, ns)))
            informer = await self._informer_for(resource.plural)
            return str(len(informer.by_index("namespace", ns))) if informer is not None else None
        kind, _, resource_name = name.rpartition(".") if name.startswith(("requests.", "limits.")) else ("", "", "")
        if name in COMPUTE:
            kind, resource_name = "requests", name
        if kind in ("requests", "limits") and resource_name in COMPUTE:
            return self._pod_sum(pods, kind, resource_name)
        if name == "requests.storage":
            return self._storage(ns, None, "storage")
        if CLASS_SUFFIX in name:
            cls, _, what = name.partition(CLASS_SUFFIX)
            if what == "requests.storage":
                return self._storage(ns, cls, "storage")
            if what == "persistentvolumeclaims":
                return self._storage(ns, cls, "count")
            return None
        if name == "services.nodeports":
            return str(sum(self._node_ports(s) for s in self._objects(SERVICES, ns)))
        if name == "services.loadbalancers":
            return str(sum(1 for s in self._objects(SERVICES, ns)
                           if (s.get("spec") or {}).get("type") == "LoadBalancer"))
        if name.startswith("requests."):
            return self._pod_sum(pods, "requests", name[len("requests."):])  # extended resources
        return None

    @staticmethod
    def _pod_sum(pods: Iterable[Obj], kind: str, resource_name: str) -> str:
        total = _Sum()
        total.binary = None
        for pod in pods:
            found = pod_resources(pod, kind).get(resource_name)
            if found is not None:
                value, binary = found
                total.value += value
                total.binary = binary if total.binary is None else total.binary and binary
        return total.text()

    def _storage(self, ns: str, cls: str | None, what: str) -> str:
        claims = [c for c in self._objects(PERSISTENTVOLUMECLAIMS, ns)
                  if cls is None or (c.get("spec") or {}).get("storageClassName") == cls]
        if what == "count":
            return str(len(claims))
        total = _Sum()
        for c in claims:
            total.add((((c.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage", "0"))
        return total.text()

    @staticmethod
    def _node_ports(svc: Obj) -> int:
        spec = svc.get("spec") or {}
        ports = spec.get("ports") or []
        if spec.get("type") == "NodePort":
            return len(ports)
        if spec.get("type") == "LoadBalancer":
            return sum(1 for p in ports if p.get("nodePort"))
        return 0
