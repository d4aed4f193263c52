"""networking.k8s.io/v1: Ingress, IngressClass and NetworkPolicy.

Charts and operators ship these beside their Deployments and Services, so a cluster that refuses them cannot
install what they test. They are served as upstream serves them: validation of the fields users get wrong (path
types, backends, the rules-or-default-backend choice), defaults (a NetworkPolicy's policyTypes and port
protocols), the DefaultIngressClass admission plugin, Ingress status for an ingress controller to write, and
kubectl's columns. Nothing here routes traffic or enforces a policy; that is a controller's or a CNI's work.
"""

from __future__ import annotations

from typing import Any

from controlplane.apiserver import jsonutil
from controlplane.apiserver.errors import Cause
from controlplane.apiserver.kinds.base import Column, Strategy, Table, get_path, immutable, selector_text
from controlplane.apiserver.registry import ResourceType
from controlplane.apiserver.validation import required

GROUP = "networking.k8s.io"
# IngressClass annotation naming the class Ingresses without one get (upstream's DefaultIngressClass plugin).
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
# The annotation that named a class before spec.ingressClassName existed; an Ingress with it keeps it.
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
PATH_TYPES = ("Exact", "ImplementationSpecific", "Prefix")


def _backend_causes(backend: Any, path: str) -> list[Cause]:
    if not isinstance(backend, dict):
        return [Cause("FieldValueRequired", "Required value", path)]
    service, resource = backend.get("service"), backend.get("resource")
    if service is not None and resource is not None:
        return [Cause("FieldValueInvalid", "Invalid value: \"\": cannot set both resource and service backends",
                      path)]
    if resource is not None:
        return required(backend, "resource.kind")
    if service is None:
        return [Cause("FieldValueInvalid", "Invalid value: \"\": resource or service backend is required", path)]
    causes = []
    if not (service or {}).get("name"):
        causes.append(Cause("FieldValueRequired", "Required value", f"{path}.service.name"))
    port = (service or {}).get("port") or {}
    if port.get("name") and port.get("number"):
        causes.append(Cause("FieldValueInvalid", "Invalid value: \"\": cannot set both port name & port number",
                            f"{path}.service.port"))
    elif not port.get("name") and not port.get("number"):
        causes.append(Cause("FieldValueInvalid", "Invalid value: \"\": port name or number is required",
                            f"{path}.service.port"))
    return causes


class IngressStrategy(Strategy):
    async def admit(self, ctx: Any, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """DefaultIngressClass: a new Ingress that names no class gets the one marked default, as upstream's
        admission plugin does: if several are, the newest, and of those created in the same second the first by
        name."""
        if old is not None or ctx.store is None:
            return
        spec = obj.setdefault("spec", {})
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if spec.get("ingressClassName") or LEGACY_CLASS_ANNOTATION in annotations:
            return
        defaults = []
        for kv in (await ctx.store.list("/registry/ingressclasses/")).items:
            cls = jsonutil.loads(kv.value)
            meta = cls.get("metadata") or {}
            if (meta.get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true":
                defaults.append((meta.get("creationTimestamp") or "", meta.get("name", "")))
        if defaults:
            newest = max(created for created, _ in defaults)
            spec["ingressClassName"] = min(name for created, name in defaults if created == newest)

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        spec = obj.get("spec") or {}
        causes: list[Cause] = []
        rules = spec.get("rules") or []
        if not rules and spec.get("defaultBackend") is None:
            causes.append(Cause("FieldValueInvalid", "Invalid value: \"\": either `defaultBackend` or `rules` must "
                                "be specified", "spec"))
        if spec.get("defaultBackend") is not None:
            causes += _backend_causes(spec["defaultBackend"], "spec.defaultBackend")
        for i, rule in enumerate(rules):
            http = (rule or {}).get("http")
            if http is None:
                continue
            paths = http.get("paths") or []
            if not paths:
                causes.append(Cause("FieldValueRequired", "Required value", f"spec.rules[{i}].http.paths"))
            for j, p in enumerate(paths):
                at = f"spec.rules[{i}].http.paths[{j}]"
                kind = (p or {}).get("pathType")
                if kind is None:
                    causes.append(Cause("FieldValueRequired", "Required value: pathType must be specified",
                                        f"{at}.pathType"))
                elif kind not in PATH_TYPES:
                    supported = ", ".join(f'"{t}"' for t in PATH_TYPES)
                    causes.append(Cause("FieldValueNotSupported",
                                        f'Unsupported value: "{kind}": supported values: {supported}',
                                        f"{at}.pathType"))
                elif kind in ("Exact", "Prefix") and not str((p or {}).get("path") or "").startswith("/"):
                    causes.append(Cause("FieldValueInvalid",
                                        f'Invalid value: "{(p or {}).get("path", "")}": must be an absolute path',
                                        f"{at}.path"))
                causes += _backend_causes((p or {}).get("backend"), f"{at}.backend")
        return causes


def _ingress_hosts(ing: dict[str, Any]) -> str:
    hosts = [r.get("host") for r in get_path(ing, "spec.rules") or [] if isinstance(r, dict) and r.get("host")]
    if not hosts:
        return "*"
    return ",".join(hosts[:4]) + (f" + {len(hosts) - 4} more..." if len(hosts) > 4 else "")


def _ingress_address(ing: dict[str, Any]) -> str:
    points = get_path(ing, "status.loadBalancer.ingress") or []
    return ",".join(p.get("ip") or p.get("hostname") or "" for p in points if isinstance(p, dict))


def _ingress_cells(ing: dict[str, Any]) -> list[Any]:
    return [get_path(ing, "spec.ingressClassName") or "<none>", _ingress_hosts(ing), _ingress_address(ing),
            "80, 443" if get_path(ing, "spec.tls") else "80"]


class IngressClassStrategy(Strategy):
    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        return required(obj, "spec.controller")

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        return self.validate(new) + immutable(new, old, "spec.controller")


def _parameters(cls: dict[str, Any]) -> str:
    p = get_path(cls, "spec.parameters") or {}
    if not p:
        return "<none>"
    group = p.get("apiGroup") or "k8s.io"
    return f"{p.get('kind', '')}.{group}/{p.get('name', '')}"


class NetworkPolicyStrategy(Strategy):
    def defaults(self, obj: dict[str, Any]) -> None:
        """As upstream: policyTypes from the rules present (Ingress always), TCP for ports without a protocol."""
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            return
        spec.setdefault("podSelector", {})
        if not spec.get("policyTypes"):
            spec["policyTypes"] = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
        for direction in ("ingress", "egress"):
            for rule in spec.get(direction) or []:
                for port in (rule or {}).get("ports") or []:
                    if isinstance(port, dict):
                        port.setdefault("protocol", "TCP")

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        causes = []
        for i, kind in enumerate(get_path(obj, "spec.policyTypes") or []):
            if kind not in ("Ingress", "Egress"):
                causes.append(Cause("FieldValueNotSupported",
                                    f'Unsupported value: "{kind}": supported values: "Egress", "Ingress"',
                                    f"spec.policyTypes[{i}]"))
        return causes


def resources() -> list[ResourceType]:
    return [
        ResourceType(GROUP, "v1", "Ingress", "ingresses", True, IngressStrategy(track_generation=True, table=Table(
            [Column("Class"), Column("Hosts"), Column("Address"), Column("Ports")], _ingress_cells)),
            short_names=("ing",), subresources=("status",)),
        ResourceType(GROUP, "v1", "IngressClass", "ingressclasses", False, IngressClassStrategy(table=Table(
            [Column("Controller"), Column("Parameters")],
            lambda c: [get_path(c, "spec.controller") or "", _parameters(c)]))),
        ResourceType(GROUP, "v1", "NetworkPolicy", "networkpolicies", True, NetworkPolicyStrategy(
            track_generation=True, table=Table([Column("Pod-Selector")],
                                               lambda np: [selector_text(get_path(np, "spec.podSelector"))])),
            short_names=("netpol",)),
    ]
