"""The Endpoints controller: a Service's Endpoints object lists the addresses of the pods its selector matches.

Ready pods go to ``addresses``, pods not (yet) ready to ``notReadyAddresses``, each with its node and a reference to
the pod; a named targetPort is resolved per pod through that pod's container ports, so pods of different versions
may serve one port name on different numbers (they then land in different subsets, as upstream repacks them).
Services without a selector are left alone: their Endpoints belong to whoever wrote them.
"""

from __future__ import annotations

import logging
from typing import Any

from controlplane.client import AlreadyExists, ApiClient, NotFound, SharedInformerFactory, namespace_index, split_key
from controlplane.client.resources import ENDPOINTS, PODS, SERVICES
from controlplane.controllers import podutil
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result

log = logging.getLogger(__name__)

Obj = dict[str, Any]

HEADLESS_LABEL = "service.kubernetes.io/headless"


def _enqueue_services_for(pod: Obj, services: Any, enqueue: Enqueue) -> None:
    ns = pod["metadata"].get("namespace")
    for svc in services.by_index("namespace", ns):
        if podutil.service_selects(svc, pod):
            enqueue(f"{ns}/{svc['metadata']['name']}")


def pod_handlers(services: Any, enqueue: Enqueue) -> dict[str, Any]:
    """Informer handlers that queue every Service selecting a pod, before and after a change."""

    def on_add(pod: Obj) -> None:
        _enqueue_services_for(pod, services, enqueue)

    def on_update(old: Obj, new: Obj) -> None:
        _enqueue_services_for(new, services, enqueue)
        if (old["metadata"].get("labels") or {}) != (new["metadata"].get("labels") or {}):
            _enqueue_services_for(old, services, enqueue)

    return {"on_add": on_add, "on_update": on_update, "on_delete": on_add}


class EndpointsController:
    name = "endpoint"

    def __init__(self, ctx: ControllerContext | None = None) -> None:
        ctx = ctx or ControllerContext()
        self.workers = int(ctx.option("concurrent_endpoint_syncs", 5))

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.services = informers.informer(SERVICES)
        self.pods = informers.informer(PODS)
        self.endpoints = informers.informer(ENDPOINTS)
        self.services.add_index("namespace", namespace_index)
        self.pods.add_index("namespace", namespace_index)

        def by_key(obj: Obj, *rest: Obj) -> None:
            obj = rest[-1] if rest else obj
            enqueue(f"{obj['metadata']['namespace']}/{obj['metadata']['name']}")

        self.services.add_handler(on_add=by_key, on_update=by_key, on_delete=by_key)
        self.pods.add_handler(**pod_handlers(self.services, enqueue))
        # Someone deleting or rewriting our Endpoints: put them back.
        self.endpoints.add_handler(on_update=by_key, on_delete=by_key)

    def desired_subsets(self, svc: Obj) -> list[Obj]:
        ns = svc["metadata"]["namespace"]
        spec = svc.get("spec") or {}
        tolerate_unready = bool(spec.get("publishNotReadyAddresses"))
        headless = spec.get("clusterIP") == "None"
        service_ports = spec.get("ports") or []
        subsets: dict[tuple[Any, ...], Obj] = {}
        for pod in self.pods.by_index("namespace", ns):
            if not podutil.service_selects(svc, pod) or not podutil.should_be_in_endpoints(pod, tolerate_unready):
                continue
            pod_spec = pod.get("spec") or {}
            address: Obj = {"ip": podutil.pod_ips(pod)[0], "targetRef": podutil.target_ref(pod)}
            if pod_spec.get("nodeName"):
                address["nodeName"] = pod_spec["nodeName"]
            if headless and pod_spec.get("hostname") and pod_spec.get("subdomain") == svc["metadata"]["name"]:
                address["hostname"] = pod_spec["hostname"]
            ports: list[Obj] = []
            for sp in service_ports:
                number = podutil.find_port(pod, sp)
                if number is None:
                    log.debug("service %s/%s: pod %s has no port %r", ns, svc["metadata"]["name"],
                              pod["metadata"]["name"], sp.get("targetPort"))
                    continue
                port: Obj = {"port": number, "protocol": sp.get("protocol") or "TCP"}
                if sp.get("name"):
                    port["name"] = sp["name"]
                if sp.get("appProtocol"):
                    port["appProtocol"] = sp["appProtocol"]
                ports.append(port)
            if service_ports and not ports:
                continue  # none of the service's ports exists on this pod
            ports.sort(key=lambda p: (p.get("name", ""), p["port"], p["protocol"]))
            group = tuple((p.get("name", ""), p["port"], p["protocol"]) for p in ports)
            subset = subsets.setdefault(group, {"ports": ports})
            ready = tolerate_unready or podutil.is_pod_ready(pod)
            subset.setdefault("addresses" if ready else "notReadyAddresses", []).append(address)
        result: list[Obj] = []
        for group in sorted(subsets):
            subset = subsets[group]
            for field in ("addresses", "notReadyAddresses"):
                if field in subset:
                    subset[field].sort(key=lambda a: (a["ip"], a["targetRef"].get("uid") or ""))
            if not subset["ports"]:
                del subset["ports"]
            result.append({k: subset[k] for k in ("addresses", "notReadyAddresses", "ports") if k in subset})
        return result

    async def reconcile(self, key: str) -> Result:
        ns, name = split_key(key)
        svc = self.services.get(key)
        current = self.endpoints.get(key)
        if svc is None:
            if current is not None:
                try:
                    await self.client.delete(ENDPOINTS, name, ns)
                except NotFound:
                    pass
            return DONE
        if not (svc.get("spec") or {}).get("selector"):
            return DONE
        subsets = self.desired_subsets(svc)
        labels = dict(svc["metadata"].get("labels") or {})
        if (svc.get("spec") or {}).get("clusterIP") == "None":
            labels[HEADLESS_LABEL] = ""
        if current is not None and (current.get("subsets") or []) == subsets and (
                current["metadata"].get("labels") or {}) == labels:
            return DONE
        if current is None:
            body: Obj = {"apiVersion": "v1", "kind": "Endpoints",
                         "metadata": {"name": name, "namespace": ns, "labels": labels}, "subsets": subsets}
            try:
                await self.client.create(ENDPOINTS, body, ns)
            except AlreadyExists:
                # The cache has not seen it yet: update the live object instead.
                live = await self.client.get(ENDPOINTS, name, ns)
                await self.client.update(ENDPOINTS, {**live, "metadata": {**live["metadata"], "labels": labels},
                                                     "subsets": subsets})
        else:
            await self.client.update(ENDPOINTS, {**current, "metadata": {**current["metadata"], "labels": labels},
                                                 "subsets": subsets})
        return DONE
