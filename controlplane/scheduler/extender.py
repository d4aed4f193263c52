"""A client for upstream's scheduler extender protocol (k8s.io/kube-scheduler/extender/v1) over async httpx.

An extender is an HTTP service the scheduler consults besides its plugins: ``filter`` (ExtenderArgs ->
ExtenderFilterResult), ``prioritize`` (ExtenderArgs -> HostPriorityList, scaled by weight), ``bind``
(ExtenderBindingArgs -> ExtenderBindingResult) and ``preempt`` (ExtenderPreemptionArgs -> ExtenderPreemptionResult).
JSON field names are the Go struct names, as kube-scheduler sends them; a nodeCacheCapable extender gets node names
only; managedResources limits which pods it is asked about; an ignorable extender's failures are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from .cache import Cache, NodeInfo
from .config import ExtenderConfig
from .podinfo import PodInfo
from .preemption import Candidate, Victims

__all__ = ["HTTPExtender", "ExtenderError", "MAX_EXTENDER_PRIORITY"]

MAX_EXTENDER_PRIORITY = 10


class ExtenderError(RuntimeError):
    """The extender answered with an error or an unexpected HTTP status."""


class HTTPExtender:
    def __init__(self, config: ExtenderConfig, *, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.url_prefix = config.url_prefix.rstrip("/")
        self.managed = {r.name for r in config.managed_resources}
        self._own_client = client is None
        if client is None:
            verify: Any = True
            tls = config.tls_config or {}
            if tls.get("insecure"):
                verify = False
            elif tls.get("caFile"):
                verify = tls["caFile"]
            cert = (tls["certFile"], tls["keyFile"]) if tls.get("certFile") and tls.get("keyFile") else None
            client = httpx.AsyncClient(timeout=config.http_timeout, verify=verify, cert=cert)
        self._client = client

    # -- properties ---------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.url_prefix

    @property
    def ignorable(self) -> bool:
        return self.config.ignorable

    @property
    def is_binder(self) -> bool:
        return bool(self.config.bind_verb)

    @property
    def is_filter(self) -> bool:
        return bool(self.config.filter_verb)

    @property
    def is_prioritizer(self) -> bool:
        return bool(self.config.prioritize_verb)

    @property
    def supports_preemption(self) -> bool:
        return bool(self.config.preempt_verb)

    def is_interested(self, pod: PodInfo) -> bool:
        """Without managedResources every pod; otherwise pods requesting or limiting one of them."""
        if not self.managed:
            return True
        spec = pod.pod.get("spec") or {}
        for c in (*(spec.get("containers") or ()), *(spec.get("initContainers") or ())):
            res = c.get("resources") or {}
            for section in ("requests", "limits"):
                if any(name in self.managed for name in (res.get(section) or {})):
                    return True
        return False

    # -- transport ----------------------------------------------------------------------------------------------

    async def _send(self, verb: str, payload: Any) -> Any:
        url = f"{self.url_prefix}/{verb}"
        try:
            resp = await self._client.post(url, json=payload)
        except httpx.HTTPError as e:
            raise ExtenderError(f"failed {verb} with extender at URL {url}: {e}") from e
        if resp.status_code != 200:
            raise ExtenderError(f"failed {verb} with extender at URL {url}, code {resp.status_code}")
        return resp.json()

    def _args(self, pod: PodInfo, nodes: Sequence[NodeInfo]) -> dict[str, Any]:
        if self.config.node_cache_capable:
            return {"Pod": pod.pod, "Nodes": None, "NodeNames": [n.name for n in nodes]}
        items = [n.node for n in nodes]
        return {"Pod": pod.pod, "Nodes": {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items},
                "NodeNames": None}

    # -- verbs --------------------------------------------------------------------------------------------------

    async def filter(self, pod: PodInfo, nodes: Sequence[NodeInfo]
                     ) -> tuple[list[NodeInfo], dict[str, str], dict[str, str]]:
        """The feasible nodes, the FailedNodes and the FailedAndUnresolvableNodes (name -> message)."""
        if not self.config.filter_verb:
            return list(nodes), {}, {}
        result = await self._send(self.config.filter_verb, self._args(pod, nodes)) or {}
        if result.get("Error"):
            raise ExtenderError(result["Error"])
        by_name = {n.name: n for n in nodes}
        if self.config.node_cache_capable and result.get("NodeNames") is not None:
            names = list(result["NodeNames"])
        elif result.get("Nodes") is not None:
            names = [(i.get("metadata") or {}).get("name", "") for i in (result["Nodes"].get("items") or [])]
        else:
            names = []
        filtered = [by_name[n] for n in names if n in by_name]
        return filtered, dict(result.get("FailedNodes") or {}), dict(result.get("FailedAndUnresolvableNodes") or {})

    async def prioritize(self, pod: PodInfo, nodes: Sequence[NodeInfo]) -> tuple[list[tuple[str, int]], int]:
        """HostPriorityList as (host, score) pairs, and this extender's weight."""
        if not self.config.prioritize_verb:
            return [(n.name, 0) for n in nodes], 0
        result = await self._send(self.config.prioritize_verb, self._args(pod, nodes)) or []
        return [(h.get("Host", ""), int(h.get("Score", 0))) for h in result], self.config.weight

    async def bind(self, pod: PodInfo, node_name: str) -> None:
        if not self.config.bind_verb:
            raise ExtenderError("unexpected empty bindVerb in extender")
        args = {"PodName": pod.name, "PodNamespace": pod.namespace, "PodUID": pod.uid, "Node": node_name}
        result = await self._send(self.config.bind_verb, args) or {}
        if result.get("Error"):
            raise ExtenderError(result["Error"])

    async def process_preemption(self, pod: PodInfo, candidates: Sequence[Candidate],
                                 cache: Cache) -> list[Candidate]:
        """Let the extender trim the candidate nodes/victims. Victims come back by UID and are resolved against
        the snapshot."""
        if not self.config.preempt_verb:
            raise ExtenderError("unexpected empty preemptVerb in extender")
        if self.config.node_cache_capable:
            args: dict[str, Any] = {"Pod": pod.pod, "NodeNameToVictims": None, "NodeNameToMetaVictims": {
                c.node_name: {"Pods": [{"UID": p.uid} for p in c.victims.pods],
                              "NumPDBViolations": c.victims.num_pdb_violations} for c in candidates}}
        else:
            args = {"Pod": pod.pod, "NodeNameToMetaVictims": None, "NodeNameToVictims": {
                c.node_name: {"Pods": [p.pod for p in c.victims.pods],
                              "NumPDBViolations": c.victims.num_pdb_violations} for c in candidates}}
        result = await self._send(self.config.preempt_verb, args) or {}
        out: list[Candidate] = []
        for node_name, meta in (result.get("NodeNameToMetaVictims") or {}).items():
            info = cache.node_info(node_name)
            if info is None:
                raise ExtenderError(f"node {node_name!r} not found")
            pods: list[PodInfo] = []
            for mp in (meta or {}).get("Pods") or ():
                pi = next((p for p in info.pods.values() if p.uid == mp.get("UID")), None)
                if pi is None:
                    raise ExtenderError(f"extender.ProcessPreemption: pod {mp.get('UID')} not found on node {node_name}")
                pods.append(pi)
            if not pods:
                if self.ignorable:
                    continue
                raise ExtenderError(f"expected at least one victim pod on node {node_name!r}")
            out.append(Candidate(node_name, Victims(pods, int((meta or {}).get("NumPDBViolations", 0)))))
        return out

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()


def extenders_from_config(configs: Sequence[ExtenderConfig], client: httpx.AsyncClient | None = None
                          ) -> list[HTTPExtender]:
    return [HTTPExtender(c, client=client) for c in configs]


__all__ += ["extenders_from_config"]

