"""The core/v1 kinds: their defaults, initial status, validation, field selectors and table columns.

Defaults follow upstream's SetDefaults_* functions for the fields controllers and kubectl read; validation covers
what users get wrong in practice (names, required fields, immutable fields) rather than all of upstream's rules.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from controlplane.apiserver.errors import Cause, forbidden
from controlplane.apiserver.kinds.base import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Strategy,
    Table,
    age,
    get_path,
    immutable,
    path_getter,
    setdefault_path,
)
from controlplane.apiserver.registry import ResourceType, ScaleSpec
from controlplane.apiserver.validation import dns1123_label, required

# ---------------------------------------------------------------------------------------------------- pod spec


def default_container(c: dict[str, Any]) -> None:
    image = c.get("image") or ""
    if "imagePullPolicy" not in c:
        tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
        c["imagePullPolicy"] = "Always" if (not tagged or image.endswith(":latest")) else "IfNotPresent"
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})
    for port in c.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = c.get(probe_name)
        if isinstance(probe, dict):
            probe.setdefault("timeoutSeconds", 1)
            probe.setdefault("periodSeconds", 10)
            probe.setdefault("successThreshold", 1)
            probe.setdefault("failureThreshold", 3)
            if isinstance(probe.get("httpGet"), dict):
                probe["httpGet"].setdefault("path", "/")
                probe["httpGet"].setdefault("scheme", "HTTP")
    # Requests default to limits where only limits are given, as upstream's SetDefaults_ResourceList does.
    res = c.get("resources")
    if isinstance(res, dict) and isinstance(res.get("limits"), dict):
        requests = res.setdefault("requests", {})
        for name, value in res["limits"].items():
            requests.setdefault(name, value)


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                default_container(c)
    for vol in spec.get("volumes") or []:
        if isinstance(vol, dict):
            for src in ("configMap", "secret"):
                if isinstance(vol.get(src), dict):
                    vol[src].setdefault("defaultMode", 420)
            if isinstance(vol.get("emptyDir"), dict) is False and len(vol) == 1:
                vol["emptyDir"] = {}


def validate_pod_spec(spec: Any, path: str) -> list[Cause]:
    if not isinstance(spec, dict):
        return [Cause("FieldValueRequired", "Required value", path)]
    causes: list[Cause] = []
    containers = spec.get("containers")
    if not containers or not isinstance(containers, list):
        return [Cause("FieldValueRequired", "Required value", f"{path}.containers")]
    seen: set[str] = set()
    for key in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(key) or []):
            cpath = f"{path}.{key}[{i}]"
            if not isinstance(c, dict):
                causes.append(Cause("FieldValueInvalid", "must be an object", cpath))
                continue
            name = c.get("name")
            if not name:
                causes.append(Cause("FieldValueRequired", "Required value", f"{cpath}.name"))
            else:
                for msg in dns1123_label(str(name)):
                    causes.append(Cause("FieldValueInvalid", f'Invalid value: "{name}": {msg}', f"{cpath}.name"))
                if name in seen:
                    causes.append(Cause("FieldValueDuplicate", f'Duplicate value: "{name}"', f"{cpath}.name"))
                seen.add(name)
            if not c.get("image"):
                causes.append(Cause("FieldValueRequired", "Required value", f"{cpath}.image"))
    policy = spec.get("restartPolicy")
    if policy not in (None, "Always", "OnFailure", "Never"):
        causes.append(Cause("FieldValueNotSupported",
                            f'Unsupported value: "{policy}": supported values: "Always", "OnFailure", "Never"',
                            f"{path}.restartPolicy"))
    return causes


def qos_class(spec: dict[str, Any]) -> str:
    containers = [c for c in (spec.get("containers") or []) + (spec.get("initContainers") or []) if isinstance(c, dict)]
    requests_any = False
    guaranteed = bool(containers)
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req or lim:
            requests_any = True
        for name in ("cpu", "memory"):
            if name not in lim or req.get(name, lim.get(name)) != lim.get(name):
                guaranteed = False
    if guaranteed and requests_any:
        return "Guaranteed"
    return "Burstable" if requests_any else "BestEffort"


DEFAULT_TOLERATIONS = (
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
)


def _pod_ready(pod: dict[str, Any]) -> str:
    statuses = get_path(pod, "status.containerStatuses") or []
    total = len(get_path(pod, "spec.containers") or [])
    ready = sum(1 for s in statuses if s.get("ready"))
    return f"{ready}/{total}"


def _pod_status_reason(pod: dict[str, Any]) -> str:
    """The STATUS column as kubectl's printPod computes it, for the common cases."""
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for cs in status.get("initContainerStatuses") or []:
        state = cs.get("state") or {}
        if "terminated" in state and state["terminated"].get("exitCode", 0) != 0:
            return "Init:" + (state["terminated"].get("reason") or "Error")
        if "waiting" in state and state["waiting"].get("reason") not in (None, "PodInitializing"):
            return "Init:" + state["waiting"]["reason"]
    for cs in reversed(status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            t = state["terminated"]
            reason = t.get("reason") or (f"Signal:{t['signal']}" if t.get("signal") else f"ExitCode:{t.get('exitCode')}")
    if get_path(pod, "metadata.deletionTimestamp"):
        reason = "Terminating"
    return reason


def _pod_restarts(pod: dict[str, Any]) -> int:
    return sum(int(s.get("restartCount", 0)) for s in get_path(pod, "status.containerStatuses") or [])


def _pod_cells(pod: dict[str, Any]) -> list[Any]:
    nominated = get_path(pod, "status.nominatedNodeName") or "<none>"
    gates = get_path(pod, "spec.readinessGates") or []
    return [_pod_ready(pod), _pod_status_reason(pod), _pod_restarts(pod), get_path(pod, "status.podIP") or "<none>",
            get_path(pod, "spec.nodeName") or "<none>", nominated, "<none>" if not gates else str(len(gates))]


# Stored value -> the decoded PriorityClass: every pod create reads them all, and they rarely change.
_decoded_classes: dict[bytes, dict[str, Any]] = {}


async def _priority_classes(ctx: Any) -> list[dict[str, Any]]:
    """The PriorityClasses as stored now (read only: the decoded objects are shared between creates)."""
    listing = await ctx.store.list("/registry/priorityclasses/")
    out = []
    for kv in listing.items:
        decoded = _decoded_classes.get(kv.value)
        if decoded is None:
            if len(_decoded_classes) >= 1024:
                _decoded_classes.clear()
            decoded = _decoded_classes[kv.value] = orjson.loads(kv.value)
        out.append(decoded)
    return out


class PodStrategy(Strategy):
    async def admit(self, ctx: Any, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """The Priority admission plugin: spec.priority comes from the named PriorityClass (or the global
        default), and a name that does not exist is refused, as upstream."""
        if old is not None or ctx.store is None:
            return
        spec = obj.get("spec") or {}
        name = spec.get("priorityClassName")
        classes = await _priority_classes(ctx)
        if name:
            chosen = next((pc for pc in classes if (pc.get("metadata") or {}).get("name") == name), None)
            if chosen is None:
                raise forbidden(f'pods "{obj["metadata"].get("name", "")}" is forbidden: no PriorityClass with '
                                f"name {name} was found", "pods")
        else:
            chosen = next((pc for pc in classes if pc.get("globalDefault")), None)
            if chosen is not None:
                spec["priorityClassName"] = chosen["metadata"]["name"]
        if chosen is not None:
            spec["priority"] = chosen.get("value", 0)
            spec["preemptionPolicy"] = chosen.get("preemptionPolicy", "PreemptLowerPriority")

    def defaults(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            default_pod_spec(spec)
            spec.setdefault("serviceAccountName", "default")
            spec["serviceAccount"] = spec["serviceAccountName"]
            spec.setdefault("enableServiceLinks", True)
            spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
            spec.setdefault("priority", 0)
            tolerations = spec.setdefault("tolerations", [])
            keys = {t.get("key") for t in tolerations if isinstance(t, dict)}
            for t in DEFAULT_TOLERATIONS:
                if t["key"] not in keys:
                    tolerations.append(dict(t))

    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {"phase": "Pending", "qosClass": qos_class(obj.get("spec") or {})}

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        return validate_pod_spec(obj.get("spec"), "spec")

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        causes = self.validate(new)
        # Upstream allows only image, activeDeadlineSeconds, tolerations (additions) and a few more to change.
        new_spec, old_spec = dict(new.get("spec") or {}), dict(old.get("spec") or {})
        for spec in (new_spec, old_spec):
            spec.pop("activeDeadlineSeconds", None)
            spec.pop("tolerations", None)
            spec.pop("schedulingGates", None)
            spec["containers"] = [{k: v for k, v in c.items() if k != "image"} for c in spec.get("containers") or []]
            spec["initContainers"] = [{k: v for k, v in c.items() if k != "image"}
                                      for c in spec.get("initContainers") or []]
        if old_spec.get("nodeName") and new_spec.get("nodeName") != old_spec.get("nodeName"):
            causes.append(Cause("FieldValueForbidden", "Forbidden: pod updates may not change fields other than "
                                "`spec.containers[*].image`,`spec.initContainers[*].image`,"
                                "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing "
                                "tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it "
                                "was previously negative)", "spec"))
        elif not old_spec.get("nodeName"):
            new_spec.pop("nodeName", None)
            old_spec.pop("nodeName", None)
            if new_spec != old_spec:
                causes.append(Cause("FieldValueForbidden", "Forbidden: pod updates may not change fields other "
                                    "than `spec.containers[*].image`,`spec.initContainers[*].image`,"
                                    "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing "
                                    "tolerations)", "spec"))
        elif new_spec != old_spec:
            causes.append(Cause("FieldValueForbidden", "Forbidden: pod updates may not change fields other than "
                                "`spec.containers[*].image`,`spec.initContainers[*].image`,"
                                "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing "
                                "tolerations)", "spec"))
        return causes


POD_FIELDS = {
    name: path_getter(name)
    for name in ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                 "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName")
}

POD_TABLE = Table(
    [Column("Ready", description="The aggregate readiness state of this pod for accepting traffic."),
     Column("Status", description="The aggregate status of the containers in this pod."),
     Column("Restarts", type="string", description="The number of times the containers in this pod have been "
            "restarted and when the last container in this pod has restarted."),
     Column("IP", priority=1, description="IP address allocated to the pod."),
     Column("Node", priority=1, description="Name of the node the pod is assigned to."),
     Column("Nominated Node", priority=1, description="Name of the node where the pod is nominated."),
     Column("Readiness Gates", priority=1, description="Pod readiness gates.")],
    _pod_cells,
)

# ---------------------------------------------------------------------------------------------------- namespaces


class NamespaceStrategy(Strategy):
    def defaults(self, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if name:
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name

    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {"phase": "Active"}

    def prepare_for_create(self, obj: dict[str, Any]) -> None:
        obj["spec"] = {"finalizers": ["kubernetes"]}

    def prepare_for_update(self, new: dict[str, Any], old: dict[str, Any]) -> None:
        # spec.finalizers changes only through the finalize subresource, as upstream.
        new["spec"] = old.get("spec") or {}

    def blocks_deletion(self, obj: dict[str, Any]) -> bool:
        return bool(get_path(obj, "spec.finalizers"))

    def mark_deleting(self, obj: dict[str, Any]) -> None:
        obj.setdefault("status", {})["phase"] = "Terminating"


NAMESPACE_TABLE = Table(
    [Column("Status", description="The status of the namespace")],
    lambda ns: [get_path(ns, "status.phase") or ""],
)

# ---------------------------------------------------------------------------------------------------- services


def _service_ports(svc: dict[str, Any]) -> str:
    parts = []
    for p in get_path(svc, "spec.ports") or []:
        text = f"{p.get('port')}"
        if p.get("nodePort"):
            text += f":{p['nodePort']}"
        parts.append(f"{text}/{p.get('protocol', 'TCP')}")
    return ",".join(parts) or "<none>"


def _service_external_ip(svc: dict[str, Any]) -> str:
    spec = svc.get("spec") or {}
    ips = list(spec.get("externalIPs") or [])
    if spec.get("type") == "LoadBalancer":
        ingress = get_path(svc, "status.loadBalancer.ingress") or []
        lb = [i.get("ip") or i.get("hostname") for i in ingress]
        ips = lb + ips
        if not ips:
            return "<pending>"
    if spec.get("type") == "ExternalName":
        return spec.get("externalName", "")
    return ",".join(ips) or "<none>"


def _service_selector(svc: dict[str, Any]) -> str:
    sel = get_path(svc, "spec.selector") or {}
    return ",".join(f"{k}={v}" for k, v in sel.items()) or "<none>"


SERVICE_TABLE = Table(
    [Column("Type", description="The type of the service."),
     Column("Cluster-IP", description="The cluster IP of the service."),
     Column("External-IP", description="The external IP of the service."),
     Column("Port(s)", description="The ports of the service."),
     Column("Selector", priority=1, description="The selector of the service.")],
    lambda svc: [get_path(svc, "spec.type") or "ClusterIP", get_path(svc, "spec.clusterIP") or "<none>",
                 _service_external_ip(svc), _service_ports(svc), _service_selector(svc)],
)


class ServiceStrategy(Strategy):
    def defaults(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            return
        spec.setdefault("type", "ClusterIP")
        if spec["type"] != "ExternalName":
            spec.setdefault("sessionAffinity", "None")
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        if spec["type"] in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
        if spec["type"] == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                if "targetPort" not in port and "port" in port:
                    port["targetPort"] = port["port"]

    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {"loadBalancer": {}}

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return [Cause("FieldValueRequired", "Required value", "spec")]
        causes: list[Cause] = []
        stype = spec.get("type")
        if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            causes.append(Cause("FieldValueNotSupported", f'Unsupported value: "{stype}": supported values: '
                                '"ClusterIP", "ExternalName", "LoadBalancer", "NodePort"', "spec.type"))
        ports = spec.get("ports") or []
        if stype != "ExternalName" and not ports and spec.get("clusterIP") != "None":
            causes.append(Cause("FieldValueRequired", "Required value", "spec.ports"))
        names: set[str] = set()
        for i, p in enumerate(ports):
            if not isinstance(p, dict):
                causes.append(Cause("FieldValueInvalid", "must be an object", f"spec.ports[{i}]"))
                continue
            port = p.get("port")
            if not isinstance(port, int) or not 1 <= port <= 65535:
                causes.append(Cause("FieldValueInvalid", f"Invalid value: {port}: must be between 1 and 65535, "
                                    "inclusive", f"spec.ports[{i}].port"))
            if len(ports) > 1 and not p.get("name"):
                causes.append(Cause("FieldValueRequired", "Required value", f"spec.ports[{i}].name"))
            if p.get("name") in names:
                causes.append(Cause("FieldValueDuplicate", f'Duplicate value: "{p.get("name")}"',
                                    f"spec.ports[{i}].name"))
            names.add(p.get("name"))
            if p.get("protocol") not in ("TCP", "UDP", "SCTP"):
                causes.append(Cause("FieldValueNotSupported", f'Unsupported value: "{p.get("protocol")}": supported '
                                    'values: "SCTP", "TCP", "UDP"', f"spec.ports[{i}].protocol"))
            if p.get("nodePort") and stype == "ClusterIP":
                causes.append(Cause("FieldValueForbidden", "Forbidden: may not be used when `type` is 'ClusterIP'",
                                    f"spec.ports[{i}].nodePort"))
        return causes

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        causes = self.validate(new)
        old_ip = get_path(old, "spec.clusterIP")
        if old_ip and get_path(new, "spec.type") != "ExternalName":
            causes += immutable(new, old, "spec.clusterIP")
        return causes

    async def admit(self, ctx: Any, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if ctx.allocator is not None:
            await ctx.allocator.allocate_service(obj, old)

    async def released(self, ctx: Any, obj: dict[str, Any]) -> None:
        if ctx.allocator is not None:
            ctx.allocator.release_service(obj)


# ---------------------------------------------------------------------------------------------------- nodes


def _node_status(node: dict[str, Any]) -> str:
    ready = "Unknown"
    for cond in get_path(node, "status.conditions") or []:
        if cond.get("type") == "Ready":
            ready = "Ready" if cond.get("status") == "True" else "NotReady"
    parts = [ready]
    if get_path(node, "spec.unschedulable"):
        parts.append("SchedulingDisabled")
    return ",".join(parts)


def _node_roles(node: dict[str, Any]) -> str:
    labels = get_path(node, "metadata.labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/") and "/" in k)
    if labels.get("kubernetes.io/role"):
        roles.append(labels["kubernetes.io/role"])
    return ",".join(roles) or "<none>"


def _node_address(node: dict[str, Any], kind: str) -> str:
    for a in get_path(node, "status.addresses") or []:
        if a.get("type") == kind:
            return a.get("address", "")
    return "<none>"


NODE_TABLE = Table(
    [NAME_COLUMN,
     Column("Status", description="The status of the node"),
     Column("Roles", description="The roles of the node"),
     AGE_COLUMN,
     Column("Version", description="Kubelet Version reported by the node."),
     Column("Internal-IP", priority=1, description="List of addresses reachable to the node."),
     Column("External-IP", priority=1, description="List of addresses reachable to the node."),
     Column("OS-Image", priority=1, description="OS Image reported by the node from /etc/os-release."),
     Column("Kernel-Version", priority=1, description="Kernel Version reported by the node."),
     Column("Container-Runtime", priority=1, description="Container Runtime Version reported by the node.")],
    lambda n: [get_path(n, "metadata.name"), _node_status(n), _node_roles(n), age(n),
               get_path(n, "status.nodeInfo.kubeletVersion") or "",
               _node_address(n, "InternalIP"), _node_address(n, "ExternalIP"),
               get_path(n, "status.nodeInfo.osImage") or "<unknown>",
               get_path(n, "status.nodeInfo.kernelVersion") or "<unknown>",
               get_path(n, "status.nodeInfo.containerRuntimeVersion") or "<unknown>"],
    verbatim=True,
)


class NodeStrategy(Strategy):
    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        return obj.get("status")  # a kubelet registers its node with status filled in

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        if get_path(old, "spec.podCIDR"):
            return immutable(new, old, "spec.podCIDR")
        return []


# ---------------------------------------------------------------------------------------------------- config


CONFIGMAP_TABLE = Table([Column("Data", type="integer", description="Number of user provided data.")],
                        lambda cm: [len(cm.get("data") or {}) + len(cm.get("binaryData") or {})])


class ConfigMapStrategy(Strategy):
    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        causes = []
        for field in ("data", "binaryData"):
            value = obj.get(field)
            if value is not None and not isinstance(value, dict):
                causes.append(Cause("FieldValueInvalid", "must be a map", field))
            elif field == "data" and value:
                for k, v in value.items():
                    if not isinstance(v, str):
                        causes.append(Cause("FieldValueInvalid", "must be a string", f"data[{k}]"))
        if obj.get("immutable") is not None and not isinstance(obj.get("immutable"), bool):
            causes.append(Cause("FieldValueInvalid", "must be a boolean", "immutable"))
        return causes

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        causes = self.validate(new)
        if old.get("immutable"):
            for field in ("data", "binaryData", "immutable"):
                if new.get(field) != old.get(field):
                    causes.append(Cause("FieldValueForbidden", "Forbidden: field is immutable when `immutable` is "
                                        "set", field))
        return causes


class SecretStrategy(ConfigMapStrategy):
    def defaults(self, obj: dict[str, Any]) -> None:
        obj.setdefault("type", "Opaque")
        # stringData is write-only: merged into data, base64-encoded, as upstream's conversion does.
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict):
            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        causes = []
        data = obj.get("data")
        if data is not None and not isinstance(data, dict):
            return [Cause("FieldValueInvalid", "must be a map", "data")]
        for k, v in (data or {}).items():
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, TypeError, ValueError):
                causes.append(Cause("FieldValueInvalid", "illegal base64 data", f"data[{k}]"))
        return causes

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        return super().validate_update(new, old) + immutable(new, old, "type")


SECRET_TABLE = Table([Column("Type", description="The type of the secret"),
                      Column("Data", type="integer", description="The number of data items in the secret")],
                     lambda s: [s.get("type", ""), len(s.get("data") or {})])

# ---------------------------------------------------------------------------------------------------- events


EVENT_FIELDS = {
    name: path_getter(name)
    for name in ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                 "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                 "reason", "reportingComponent", "source", "type")
}
EVENT_FIELDS["source"] = path_getter("source.component")


def _event_object(ev: dict[str, Any]) -> str:
    io = ev.get("involvedObject") or {}
    return f"{(io.get('kind') or '').lower()}/{io.get('name', '')}"


def _last_seen(ev: dict[str, Any]) -> str:
    from controlplane.apiserver.kinds.base import human_duration
    from controlplane.apiserver.jsonutil import parse_rfc3339
    import datetime as dt
    ts = ev.get("lastTimestamp") or ev.get("eventTime") or get_path(ev, "metadata.creationTimestamp")
    if not ts:
        return "<unknown>"
    try:
        when = parse_rfc3339(ts)
    except ValueError:
        return "<invalid>"
    return human_duration(int((dt.datetime.now(dt.timezone.utc) - when).total_seconds()))


def _event_source(ev: dict[str, Any]) -> str:
    src = ev.get("source") or {}
    parts = [p for p in (src.get("component") or ev.get("reportingComponent"), src.get("host")) if p]
    return ", ".join(parts)


EVENT_TABLE = Table(
    [Column("Last Seen", description="Time when last event was observed"),
     Column("Type", description="Type of this event (Normal, Warning)"),
     Column("Reason", description="Reason is why the action was taken."),
     Column("Object", description="The object that this event is about."),
     Column("Subobject", priority=1, description="The subobject that this event is about."),
     Column("Source", priority=1, description="The component reporting this event."),
     Column("Message", description="A human-readable description of the status of this operation."),
     Column("First Seen", priority=1, description="Time when first event was observed."),
     Column("Count", priority=1, description="The number of times this event has occurred."),
     Column("Name", priority=1, format="name", description="The name of the event.")],
    lambda ev: [_last_seen(ev), ev.get("type", ""), ev.get("reason", ""), _event_object(ev),
                get_path(ev, "involvedObject.fieldPath") or "", _event_source(ev), ev.get("message", ""),
                age(ev), ev.get("count", 1), get_path(ev, "metadata.name")],
    verbatim=True,
)


# ---------------------------------------------------------------------------------------------------- storage


class PersistentVolumeStrategy(Strategy):
    def defaults(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
            spec.setdefault("volumeMode", "Filesystem")

    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {"phase": "Pending"}

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        return required(obj, "spec.capacity.storage") + required(obj, "spec.accessModes")


class PersistentVolumeClaimStrategy(Strategy):
    def defaults(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            spec.setdefault("volumeMode", "Filesystem")

    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {"phase": "Pending"}

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        return required(obj, "spec.accessModes") + required(obj, "spec.resources.requests.storage")

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        causes = self.validate(new)
        for path in ("spec.accessModes", "spec.storageClassName", "spec.selector", "spec.volumeMode"):
            if get_path(old, path) is not None:
                causes += immutable(new, old, path, "spec is immutable after creation except "
                                    "resources.requests and volumeAttributesClassName for bound claims")
        if get_path(old, "spec.volumeName"):
            causes += immutable(new, old, "spec.volumeName")
        return causes


def _access_modes(obj: dict[str, Any]) -> str:
    short = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX", "ReadWriteOncePod": "RWOP"}
    return ",".join(short.get(m, m) for m in get_path(obj, "spec.accessModes") or [])


def _claim_ref(pv: dict[str, Any]) -> str:
    ref = get_path(pv, "spec.claimRef")
    return f"{ref.get('namespace', '')}/{ref.get('name', '')}" if ref else ""


PV_TABLE = Table(
    [Column("Capacity"), Column("Access Modes"), Column("Reclaim Policy"), Column("Status"), Column("Claim"),
     Column("StorageClass"), Column("VolumeAttributesClass"), Column("Reason"),
     Column("VolumeMode", priority=1)],
    lambda pv: [get_path(pv, "spec.capacity.storage") or "", _access_modes(pv),
                get_path(pv, "spec.persistentVolumeReclaimPolicy") or "", get_path(pv, "status.phase") or "",
                _claim_ref(pv), get_path(pv, "spec.storageClassName") or "", "<unset>",
                get_path(pv, "status.reason") or "", get_path(pv, "spec.volumeMode") or ""],
)
PVC_TABLE = Table(
    [Column("Status"), Column("Volume"), Column("Capacity"), Column("Access Modes"), Column("StorageClass"),
     Column("VolumeAttributesClass"), Column("VolumeMode", priority=1)],
    lambda c: [get_path(c, "status.phase") or "", get_path(c, "spec.volumeName") or "",
               get_path(c, "status.capacity.storage") or "", _access_modes(c) if get_path(c, "status.phase") == "Bound"
               else "", get_path(c, "spec.storageClassName") or "", "<unset>", get_path(c, "spec.volumeMode") or ""],
)


def _endpoints_summary(ep: dict[str, Any]) -> str:
    items = []
    for subset in ep.get("subsets") or []:
        for addr in subset.get("addresses") or []:
            for port in subset.get("ports") or [{}]:
                items.append(f"{addr.get('ip')}:{port.get('port')}" if port else addr.get("ip"))
    if not items:
        return "<none>"
    return ",".join(items[:3]) + (f" + {len(items) - 3} more..." if len(items) > 3 else "")


def resources() -> list[ResourceType]:
    # return_deleted_object follows upstream's registries (ReturnDeletedObject): DELETE on pods, services,
    # serviceaccounts, PVs, PVCs, resourcequotas and podtemplates answers with the object, not a Status; the
    # generated clients deserialise the answer as that kind.
    return [
        ResourceType("", "v1", "Namespace", "namespaces", False, NamespaceStrategy(
            field_getters={"status.phase": path_getter("status.phase")}, table=NAMESPACE_TABLE),
            short_names=("ns",), subresources=("status", "finalize"), name_rule="label"),
        ResourceType("", "v1", "Pod", "pods", True, PodStrategy(field_getters=POD_FIELDS, table=POD_TABLE, return_deleted_object=True),
                     short_names=("po",), categories=("all",),
                     subresources=("status", "binding", "log", "exec", "eviction", "ephemeralcontainers",
                                   "portforward", "proxy", "attach", "resize")),
        ResourceType("", "v1", "Service", "services", True,
                     ServiceStrategy(table=SERVICE_TABLE, return_deleted_object=True), short_names=("svc",),
                     categories=("all",), subresources=("status", "proxy"), name_rule="dns1035"),
        ResourceType("", "v1", "Endpoints", "endpoints", True, Strategy(table=Table(
            [Column("Endpoints", description="Endpoints of the service")], lambda ep: [_endpoints_summary(ep)])),
            short_names=("ep",), singular="endpoints"),
        ResourceType("", "v1", "Node", "nodes", False, NodeStrategy(
            field_getters={"spec.unschedulable": path_getter("spec.unschedulable")}, table=NODE_TABLE),
            short_names=("no",), subresources=("status", "proxy")),
        ResourceType("", "v1", "ConfigMap", "configmaps", True, ConfigMapStrategy(table=CONFIGMAP_TABLE),
                     short_names=("cm",)),
        ResourceType("", "v1", "Secret", "secrets", True, SecretStrategy(
            field_getters={"type": path_getter("type")}, table=SECRET_TABLE)),
        ResourceType("", "v1", "Event", "events", True, Strategy(field_getters=EVENT_FIELDS, table=EVENT_TABLE),
                     short_names=("ev",)),
        ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, Strategy(table=Table(
            [Column("Secrets", type="integer")], lambda sa: [len(sa.get("secrets") or [])], ),
            return_deleted_object=True),
            short_names=("sa",), subresources=("token",)),
        ResourceType("", "v1", "PersistentVolume", "persistentvolumes", False,
                     PersistentVolumeStrategy(table=PV_TABLE, return_deleted_object=True), short_names=("pv",),
                     subresources=("status",)),
        ResourceType("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True,
                     PersistentVolumeClaimStrategy(table=PVC_TABLE, return_deleted_object=True),
                     short_names=("pvc",), subresources=("status",)),
        ResourceType("", "v1", "ResourceQuota", "resourcequotas", True, Strategy(return_deleted_object=True),
                     short_names=("quota",), subresources=("status",)),
        ResourceType("", "v1", "LimitRange", "limitranges", True, Strategy(), short_names=("limits",)),
        ResourceType("", "v1", "PodTemplate", "podtemplates", True, Strategy(return_deleted_object=True)),
        # Only POSTed, to bind the pod named in the body (pods/{name}/binding's older form); nothing is stored.
        ResourceType("", "v1", "Binding", "bindings", True, Strategy(), verbs=("create",)),
        ResourceType("", "v1", "ReplicationController", "replicationcontrollers", True, Strategy(track_generation=True),
                     short_names=("rc",), categories=("all",), subresources=("status",), scale=ScaleSpec()),
    ]
