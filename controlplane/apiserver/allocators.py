"""Service ClusterIP and NodePort allocation, done in the API server at admission as upstream does.

The allocator is seeded from the stored Services when the server starts and then kept in memory; a requested IP or
port that is taken, or outside its range, is a 422 Invalid with upstream's wording. With several API servers on one
etcd, each allocator only sees its own allocations until restart (upstream keeps a bitmap in etcd); see
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from controlplane.apiserver.errors import Cause, invalid

NODE_PORT_RANGE = (30000, 32767)


class ServiceAllocator:
    def __init__(self, service_cidr: str = "10.96.0.0/12", node_ports: tuple[int, int] = NODE_PORT_RANGE) -> None:
        self.network = ipaddress.ip_network(service_cidr)
        self.node_ports = node_ports
        self._ips: dict[str, str] = {}  # ip -> owner "ns/name"
        self._ports: dict[tuple[int, str], str] = {}  # (port, protocol) -> owner
        self._next_ip = 10  # upstream leaves the low addresses (the kubernetes Service takes .1) to static use
        self._rng = random.Random()

    @property
    def kubernetes_service_ip(self) -> str:
        return str(self.network.network_address + 1)

    def seed(self, services: list[dict[str, Any]]) -> None:
        for svc in services:
            owner = _owner(svc)
            ip = (svc.get("spec") or {}).get("clusterIP")
            if ip and ip != "None":
                self._ips[ip] = owner
            for p in (svc.get("spec") or {}).get("ports") or []:
                if p.get("nodePort"):
                    self._ports[(p["nodePort"], p.get("protocol", "TCP"))] = owner

    async def allocate_service(self, svc: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Fill in and reserve the Service's ClusterIP and node ports; all or nothing: a request that fails
        (a taken IP, a port out of range) leaves the pool exactly as it was."""
        ips, ports = dict(self._ips), dict(self._ports)
        try:
            self._allocate(svc, old)
        except Exception:
            self._ips, self._ports = ips, ports
            raise

    def _allocate(self, svc: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = svc.setdefault("spec", {})
        owner = _owner(svc)
        name = svc["metadata"].get("name", "")
        stype = spec.get("type", "ClusterIP")
        if stype == "ExternalName":
            self.release_service(svc)  # a Service turned ExternalName gives its IP and ports back
            return
        if old is None or not (old.get("spec") or {}).get("clusterIP"):
            self._allocate_ip(spec, owner, name)
        auto_node_ports = stype == "NodePort" or (stype == "LoadBalancer" and spec.get(
            "allocateLoadBalancerNodePorts", True))
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                     for p in ((old or {}).get("spec") or {}).get("ports") or []}
        seen: set[tuple[int, str]] = set()
        automatic: list[dict[str, Any]] = []
        # Requested ports first, so an automatic pick can never take a number asked for later in the list.
        for i, port in enumerate(spec.get("ports") or []):
            if not isinstance(port, dict):
                continue
            protocol = port.get("protocol", "TCP")
            if stype == "ClusterIP":
                port.pop("nodePort", None)
                continue
            wanted = port.get("nodePort")
            if not wanted and auto_node_ports:
                wanted = old_ports.get((port.get("port"), protocol))
            if not wanted:
                if auto_node_ports:
                    automatic.append(port)
                continue  # a LoadBalancer without node port allocation: none unless asked for
            field = f"spec.ports[{i}].nodePort"
            lo, hi = self.node_ports
            if not isinstance(wanted, int) or not lo <= wanted <= hi:
                raise invalid("Service", "", name, [Cause(
                    "FieldValueInvalid", f"Invalid value: {wanted}: provided port is not in the valid range. "
                    f"The range of valid ports is {lo}-{hi}", field)])
            if (wanted, protocol) in seen:
                raise invalid("Service", "", name, [Cause("FieldValueDuplicate", f"Duplicate value: {wanted}",
                                                          field)])
            holder = self._ports.get((wanted, protocol))
            if holder is not None and holder != owner:
                raise invalid("Service", "", name, [Cause(
                    "FieldValueInvalid", f"Invalid value: {wanted}: provided port is already allocated", field)])
            self._ports[(wanted, protocol)] = owner
            port["nodePort"] = wanted
            seen.add((wanted, protocol))
        for port in automatic:
            port["nodePort"] = self._free_port(port.get("protocol", "TCP"), owner)
        # Ports the update dropped go back to the pool.
        kept = {(p.get("nodePort"), p.get("protocol", "TCP")) for p in spec.get("ports") or [] if isinstance(p, dict)}
        for key, holder in list(self._ports.items()):
            if holder == owner and key not in kept:
                del self._ports[key]

    def _allocate_ip(self, spec: dict[str, Any], owner: str, name: str) -> None:
        wanted = spec.get("clusterIP")
        if wanted == "None":
            spec["clusterIPs"] = ["None"]
            return
        if wanted:
            try:
                addr = ipaddress.ip_address(wanted)
            except ValueError:
                raise invalid("Service", "", name, [Cause(
                    "FieldValueInvalid", f'Invalid value: "{wanted}": must be a valid IP address', "spec.clusterIPs[0]")])
            if addr not in self.network:
                raise invalid("Service", "", name, [Cause(
                    "FieldValueInvalid", f'Invalid value: ["{wanted}"]: failed to allocate IP {wanted}: the provided '
                    f"IP ({wanted}) is not in the valid range. The range of valid IPs is {self.network}",
                    "spec.clusterIPs")])
            holder = self._ips.get(wanted)
            if holder is not None and holder != owner:
                raise invalid("Service", "", name, [Cause(
                    "FieldValueInvalid", f'Invalid value: ["{wanted}"]: failed to allocate IP {wanted}: provided IP is '
                    "already allocated", "spec.clusterIPs")])
            self._ips[wanted] = owner
        else:
            size = self.network.num_addresses
            for _ in range(size):
                candidate = str(self.network.network_address + self._next_ip)
                self._next_ip = self._next_ip + 1 if self._next_ip + 1 < size - 1 else 2
                if candidate not in self._ips:
                    self._ips[candidate] = owner
                    wanted = candidate
                    break
            else:
                raise invalid("Service", "", name, [Cause("FieldValueInvalid", "range is full", "spec.clusterIPs")])
        spec["clusterIP"] = wanted
        spec["clusterIPs"] = [wanted]

    def _free_port(self, protocol: str, owner: str) -> int:
        lo, hi = self.node_ports
        start = self._rng.randint(lo, hi)
        for offset in range(hi - lo + 1):
            port = lo + (start - lo + offset) % (hi - lo + 1)
            if (port, protocol) not in self._ports:
                self._ports[(port, protocol)] = owner
                return port
        raise invalid("Service", "", owner, [Cause("FieldValueInvalid", "range is full", "spec.ports")])

    def release_service(self, svc: dict[str, Any]) -> None:
        owner = _owner(svc)
        for ip, holder in list(self._ips.items()):
            if holder == owner:
                del self._ips[ip]
        for key, holder in list(self._ports.items()):
            if holder == owner:
                del self._ports[key]


def _owner(svc: dict[str, Any]) -> str:
    meta = svc.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"
