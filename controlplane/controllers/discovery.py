"""What the API server serves, asked of its discovery documents: the controllers that must act on every kind.

The namespace controller deletes everything in a namespace and the garbage collector follows owner references of
any kind, custom resources included, so neither can work from a fixed list. Like client-go's discovery client and
RESTMapper, this reads /api/v1 and /apis/<group>/<preferred version>, keeps the resources with their verbs, and maps
an owner reference's apiVersion and kind to the resource to call.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from controlplane.client import ApiClient, Resource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiResource:
    resource: Resource
    verbs: frozenset[str]

    def can(self, *verbs: str) -> bool:
        return all(v in self.verbs for v in verbs)


@dataclass
class Discovery:
    """One snapshot of discovery. ``failed`` lists the group versions that could not be read (kept partial, as
    client-go's ErrGroupDiscoveryFailed lets callers go on with the rest)."""

    resources: list[ApiResource] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    _by_group_kind: dict[tuple[str, str], Resource] = field(default_factory=dict)
    _by_gvk: dict[tuple[str, str], Resource] = field(default_factory=dict)

    def add(self, api_resource: ApiResource, preferred: bool) -> None:
        self.resources.append(api_resource)
        r = api_resource.resource
        self._by_gvk.setdefault((r.api_version, r.kind), r)
        if preferred:
            self._by_group_kind.setdefault((r.group, r.kind), r)

    def resource_for(self, api_version: str, kind: str) -> Resource | None:
        """The resource for an apiVersion/kind pair: that exact version if served, else the group's preferred."""
        found = self._by_gvk.get((api_version, kind))
        if found is not None:
            return found
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        return self._by_group_kind.get((group, kind))

    def namespaced_deletable(self) -> list[ApiResource]:
        return [r for r in self.resources if r.resource.namespaced and r.can("list", "delete")]

    def watchable(self) -> list[ApiResource]:
        return [r for r in self.resources if r.can("list", "watch")]


async def _get(client: ApiClient, path: str) -> dict[str, Any]:
    resp = await client.raw("GET", path)
    data: dict[str, Any] = resp.json()
    return data


def _parse(body: dict[str, Any], group: str, version: str) -> list[ApiResource]:
    out = []
    for entry in body.get("resources") or []:
        name = entry.get("name") or ""
        if "/" in name:
            continue  # a subresource
        out.append(ApiResource(Resource(group, version, name, entry.get("kind") or "", bool(entry.get("namespaced"))),
                               frozenset(entry.get("verbs") or ())))
    return out


async def discover(client: ApiClient, *, preferred_only: bool = True) -> Discovery:
    """Read discovery: the core group and every named group's preferred version (or all versions)."""
    result = Discovery()
    group_versions: list[tuple[str, str, bool]] = [("", "v1", True)]
    try:
        groups = await _get(client, "/apis")
    except Exception as exc:  # noqa: BLE001 - reported through ``failed``; the core group may still work
        result.failed["/apis"] = repr(exc)
        groups = {}
    for g in groups.get("groups") or []:
        preferred = (g.get("preferredVersion") or {}).get("version")
        versions = [v.get("version") for v in g.get("versions") or [] if v.get("version")]
        for v in versions:
            if preferred_only and v != preferred:
                continue
            group_versions.append((g.get("name") or "", v, v == preferred))

    async def one(group: str, version: str) -> tuple[str, str, dict[str, Any] | Exception]:
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        try:
            return group, version, await _get(client, path)
        except Exception as exc:  # noqa: BLE001 - see above
            return group, version, exc

    bodies = await asyncio.gather(*(one(g, v) for g, v, _ in group_versions))
    preferred_of = {(g, v): p for g, v, p in group_versions}
    for group, version, body in bodies:
        gv = f"{group}/{version}" if group else version
        if isinstance(body, Exception):
            result.failed[gv] = repr(body)
            log.warning("discovery of %s failed: %r", gv, body)
            continue
        for api_resource in _parse(body, group, version):
            result.add(api_resource, preferred_of[(group, version)])
    return result
