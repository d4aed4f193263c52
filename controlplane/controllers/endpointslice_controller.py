"""The EndpointSlice controller: a Service's endpoints as discovery.k8s.io/v1 EndpointSlices, which kube-proxy and
most service meshes read instead of Endpoints.

Pods matching the selector become endpoints with ready/serving/terminating conditions (terminating pods stay listed,
not ready, as upstream does since 1.22), their node, zone and a pod reference. Pods are grouped by their resolved
port numbers and cut into slices of at most ``max_endpoints_per_slice``; each slice carries the
``kubernetes.io/service-name`` and ``endpointslice.kubernetes.io/managed-by`` labels and is owned by the Service.
A Service with no endpoints keeps one empty placeholder slice, as upstream.
"""

from __future__ import annotations

import logging
from typing import Any

from controlplane.client import ApiClient, NotFound, SharedInformerFactory, namespace_index, split_key
from controlplane.client.resources import ENDPOINTSLICES, NODES, PODS, SERVICES
from controlplane.controllers import podutil
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.controllers.endpoints_controller import HEADLESS_LABEL, pod_handlers

log = logging.getLogger(__name__)

Obj = dict[str, Any]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
ZONE_LABEL = "topology.kubernetes.io/zone"


def _service_index(es: Obj) -> str | None:
    labels = es["metadata"].get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != CONTROLLER_NAME or not labels.get(SERVICE_NAME_LABEL):
        return None
    return f"{es['metadata']['namespace']}/{labels[SERVICE_NAME_LABEL]}"


def _address_type(ip: str) -> str:
    return "IPv6" if ":" in ip else "IPv4"


class EndpointSliceController:
    name = "endpointslice"

    def __init__(self, ctx: ControllerContext | None = None) -> None:
        ctx = ctx or ControllerContext()
        self.workers = int(ctx.option("concurrent_service_endpoint_syncs", 5))
        self.max_endpoints = int(ctx.option("max_endpoints_per_slice", 100))
        # Writes the informer has not shown yet, per service: slice name -> resourceVersion written, or None for a
        # deletion. Reconciling from a cache that lacks our own last write would create duplicates (upstream's
        # endpointSliceTracker guards the same way).
        self._expected: dict[str, dict[str, int | None]] = {}

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.services = informers.informer(SERVICES)
        self.pods = informers.informer(PODS)
        self.nodes = informers.informer(NODES)
        self.slices = informers.informer(ENDPOINTSLICES)
        self.services.add_index("namespace", namespace_index)
        self.pods.add_index("namespace", namespace_index)
        self.slices.add_index("service", _service_index)

        def service_changed(obj: Obj, *rest: Obj) -> None:
            obj = rest[-1] if rest else obj
            enqueue(f"{obj['metadata']['namespace']}/{obj['metadata']['name']}")

        def slice_changed(obj: Obj, *rest: Obj) -> None:
            key = _service_index(rest[-1] if rest else obj)
            if key is not None:
                enqueue(key)

        self.services.add_handler(on_add=service_changed, on_update=service_changed, on_delete=service_changed)
        self.pods.add_handler(**pod_handlers(self.services, enqueue))
        self.slices.add_handler(on_add=slice_changed, on_update=slice_changed, on_delete=slice_changed)

    def _zone(self, node_name: str | None) -> str | None:
        if not node_name:
            return None
        node = self.nodes.get(node_name)
        return ((node or {}).get("metadata", {}).get("labels") or {}).get(ZONE_LABEL)

    def desired_groups(self, svc: Obj) -> dict[tuple[Any, ...], list[Obj]]:
        """(address type, ports) -> endpoints, sorted."""
        ns = svc["metadata"]["namespace"]
        spec = svc.get("spec") or {}
        publish_unready = bool(spec.get("publishNotReadyAddresses"))
        service_ports = spec.get("ports") or []
        groups: dict[tuple[Any, ...], list[Obj]] = {}
        for pod in self.pods.by_index("namespace", ns):
            if not podutil.service_selects(svc, pod) or not podutil.should_be_in_endpoints(pod, True):
                continue
            ports: list[Obj] = []
            for sp in service_ports:
                number = podutil.find_port(pod, sp)
                if number is None:
                    continue
                port: Obj = {"name": sp.get("name") or "", "port": number, "protocol": sp.get("protocol") or "TCP"}
                if sp.get("appProtocol"):
                    port["appProtocol"] = sp["appProtocol"]
                ports.append(port)
            if service_ports and not ports:
                continue
            ports.sort(key=lambda p: (p["name"], p["port"], p["protocol"]))
            ip = podutil.pod_ips(pod)[0]
            terminating = podutil.is_terminating(pod)
            serving = publish_unready or podutil.is_pod_ready(pod)
            endpoint: Obj = {
                "addresses": [ip],
                "conditions": {"ready": serving and (publish_unready or not terminating), "serving": serving,
                               "terminating": terminating},
                "targetRef": podutil.target_ref(pod),
            }
            pod_spec = pod.get("spec") or {}
            if pod_spec.get("nodeName"):
                endpoint["nodeName"] = pod_spec["nodeName"]
                zone = self._zone(pod_spec["nodeName"])
                if zone:
                    endpoint["zone"] = zone
            if pod_spec.get("hostname") and pod_spec.get("subdomain") == svc["metadata"]["name"]:
                endpoint["hostname"] = pod_spec["hostname"]
            group = (_address_type(ip), tuple((p["name"], p["port"], p["protocol"], p.get("appProtocol"))
                                              for p in ports))
            groups.setdefault(group, []).append(endpoint)
        for endpoints in groups.values():
            endpoints.sort(key=lambda e: (e["addresses"][0], e["targetRef"].get("uid") or ""))
        return groups

    def _slice_body(self, svc: Obj, address_type: str, ports: tuple[Any, ...], endpoints: list[Obj]) -> Obj:
        meta = svc["metadata"]
        labels = {k: v for k, v in (meta.get("labels") or {}).items()
                  if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL)}
        labels[SERVICE_NAME_LABEL] = meta["name"]
        labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
        if (svc.get("spec") or {}).get("clusterIP") == "None":
            labels[HEADLESS_LABEL] = ""
        port_list = []
        for name, number, protocol, app_protocol in ports:
            port: Obj = {"name": name, "port": number, "protocol": protocol}
            if app_protocol:
                port["appProtocol"] = app_protocol
            port_list.append(port)
        return {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "generateName": f"{meta['name']}-", "namespace": meta["namespace"], "labels": labels,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": meta["name"],
                                     "uid": meta.get("uid"), "controller": True, "blockOwnerDeletion": True}],
            },
            "addressType": address_type,
            "endpoints": endpoints,
            "ports": port_list,
        }

    def _cache_is_stale(self, key: str) -> bool:
        expected = self._expected.get(key)
        if not expected:
            return False
        ns, _ = split_key(key)
        for slice_name, rv in list(expected.items()):
            cached = self.slices.get(f"{ns}/{slice_name}")
            if rv is None:
                if cached is not None:
                    return True
            elif cached is None or int(cached["metadata"].get("resourceVersion") or 0) < rv:
                return True
            del expected[slice_name]
        self._expected.pop(key, None)
        return False

    def _wrote(self, key: str, obj: Obj | None, name: str) -> None:
        rv = int(obj["metadata"]["resourceVersion"]) if obj is not None else None
        self._expected.setdefault(key, {})[name] = rv

    async def reconcile(self, key: str) -> Result:
        ns, name = split_key(key)
        if self._cache_is_stale(key):
            # Our own last write has not reached the cache; its event will queue the service again.
            return Result(requeue_after=1.0)
        svc = self.services.get(key)
        existing = sorted(self.slices.by_index("service", key), key=lambda s: s["metadata"]["name"])
        if svc is None or not (svc.get("spec") or {}).get("selector"):
            # The garbage collector would remove owned slices too; doing it here keeps this controller whole alone.
            for es in existing:
                await self._delete(key, es)
            return DONE
        svc_uid = svc["metadata"].get("uid")
        stale = [es for es in existing if not any(o.get("uid") == svc_uid
                                                  for o in es["metadata"].get("ownerReferences") or [])]
        for es in stale:  # slices of an earlier Service of the same name
            await self._delete(key, es)
        existing = [es for es in existing if es not in stale]

        desired: list[Obj] = []
        groups = self.desired_groups(svc)
        if not groups:
            groups = {("IPv4", ()): []}  # the placeholder slice
        for (address_type, ports), endpoints in sorted(groups.items(), key=lambda kv: repr(kv[0])):
            chunks = [endpoints[i:i + self.max_endpoints] for i in range(0, len(endpoints), self.max_endpoints)]
            for chunk in chunks or [[]]:
                desired.append(self._slice_body(svc, address_type, ports, chunk))

        def shape(es: Obj) -> tuple[Any, ...]:
            return (es.get("addressType"), repr(es.get("ports") or []))

        unused = list(existing)
        for body in desired:
            match = next((es for es in unused if shape(es) == shape(body)), None)
            if match is None:
                created = await self.client.create(ENDPOINTSLICES, body, ns)
                self._wrote(key, created, created["metadata"]["name"])
                continue
            unused.remove(match)
            if (match.get("endpoints") or []) == body["endpoints"] and (
                    match["metadata"].get("labels") or {}) == body["metadata"]["labels"]:
                continue
            meta = {**match["metadata"], "labels": body["metadata"]["labels"],
                    "ownerReferences": body["metadata"]["ownerReferences"]}
            updated = await self.client.update(ENDPOINTSLICES, {**match, "metadata": meta,
                                                                "endpoints": body["endpoints"],
                                                                "ports": body["ports"]})
            self._wrote(key, updated, updated["metadata"]["name"])
        for es in unused:
            await self._delete(key, es)
        return DONE

    async def _delete(self, key: str, es: Obj) -> None:
        try:
            await self.client.delete(ENDPOINTSLICES, es["metadata"]["name"], es["metadata"]["namespace"],
                                     preconditions={"uid": es["metadata"]["uid"]})
        except NotFound:
            pass
        self._wrote(key, None, es["metadata"]["name"])
