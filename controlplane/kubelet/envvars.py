"""A container's environment as the kubelet computes it: envFrom, then env (value, fieldRef, resourceFieldRef,
configMapKeyRef, secretKeyRef), with ``$(VAR)`` expansion, and the same expansion for command and args.

It lives apart from the sync loop because its failure is a container state, not a sync error: a missing ConfigMap
or key leaves the container waiting with reason CreateContainerConfigError and upstream's message, and the next sync
tries again. ConfigMaps and Secrets are read through a getter so the kubelet can fetch them from the API server.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from controlplane.scheduler.quantity import parse_quantity

# (kind, namespace, name) -> the object, or None when it does not exist.
ObjectGetter = Callable[[str, str, str], Awaitable[dict[str, Any] | None]]

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_LABEL_PATH = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ContainerConfigError(Exception):
    """The container cannot be configured yet (reason CreateContainerConfigError); the message is upstream's."""

    reason = "CreateContainerConfigError"


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, undefined ones stay as written, and $$ is a
    literal $ (so $$(VAR) stays $(VAR))."""
    if "$" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:
                out.append(text[i:])
                break
            name = text[i + 2:end]
            out.append(env.get(name, f"$({name})"))
            i = end + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def field_ref(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    if m := _LABEL_PATH.match(path):
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise ContainerConfigError(f'unsupported fieldPath: "{path}"')


def resource_field_ref(pod: Mapping[str, Any], container: Mapping[str, Any], ref: Mapping[str, Any],
                       node_allocatable: Mapping[str, str]) -> str:
    """limits.* default to the node's allocatable when the container sets none (as upstream); requests.* to 0."""
    target = container
    if ref.get("containerName"):
        spec = pod.get("spec") or {}
        target = next((c for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
                       if c.get("name") == ref["containerName"]), container)
    kind, _, resource = str(ref.get("resource", "")).partition(".")
    if kind not in ("limits", "requests") or not resource:
        raise ContainerConfigError(f'unsupported resource: "{ref.get("resource")}"')
    resources = (target.get("resources") or {}).get(kind) or {}
    raw = resources.get(resource)
    if raw is None:
        raw = node_allocatable.get(resource, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1") or 1
    return str(math.ceil(parse_quantity(raw) / divisor))


def _decode(kind: str, value: str) -> str:
    return base64.b64decode(value).decode(errors="replace") if kind == "Secret" else value


async def _source(getter: ObjectGetter, kind: str, namespace: str, name: str,
                  optional: bool) -> dict[str, Any] | None:
    obj = await getter(kind, namespace, name)
    if obj is None and not optional:
        raise ContainerConfigError(f'{kind.lower()} "{name}" not found')
    return obj


async def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], getter: ObjectGetter, *,
                        pod_ip: str, host_ip: str, node_allocatable: Mapping[str, str]) -> dict[str, str]:
    """The environment, in definition order (later definitions win, as in upstream's makeEnvironmentVariables)."""
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(key)
            if not ref:
                continue
            obj = await _source(getter, kind, namespace, ref.get("name", ""), bool(ref.get("optional")))
            if obj is None:
                continue
            for k, v in (obj.get("data") or {}).items():
                name = prefix + k
                if _ENV_NAME.match(name):  # upstream skips invalid names (and records an event)
                    env[name] = _decode(kind, v)
    for var in container.get("env") or []:
        name = var.get("name", "")
        if "value" in var or "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        vf = var["valueFrom"] or {}
        if "fieldRef" in vf:
            env[name] = field_ref(pod, vf["fieldRef"].get("fieldPath", ""), pod_ip, host_ip)
        elif "resourceFieldRef" in vf:
            env[name] = resource_field_ref(pod, container, vf["resourceFieldRef"], node_allocatable)
        else:
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                ref = vf.get(key)
                if not ref:
                    continue
                optional = bool(ref.get("optional"))
                obj = await _source(getter, kind, namespace, ref.get("name", ""), optional)
                if obj is None:
                    break
                data = obj.get("data") or {}
                if ref.get("key") not in data:
                    if optional:
                        break
                    raise ContainerConfigError(f"couldn't find key {ref.get('key')} in {kind} "
                                               f"{namespace}/{ref.get('name')}")
                env[name] = _decode(kind, data[ref["key"]])
                break
    return env


def expand_command(container: Mapping[str, Any], env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    return ([expand(str(a), env) for a in container.get("command") or []],
            [expand(str(a), env) for a in container.get("args") or []])
