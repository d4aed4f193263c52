"""Node IPAM: gives every node a pod CIDR (``spec.podCIDR``/``podCIDRs``) carved from the cluster CIDR.

The CNI plugin (and ccmkit's simulated kubelets) assign pod IPs from the node's range, so two nodes must never get
the same one. Upstream's range allocator keeps a bitmap per cluster CIDR; so does this one, seeded from the ranges
existing nodes already carry before the first allocation (so a restarted manager never hands out a range twice),
and releasing a node's ranges when it is deleted. Dual-stack: one range per cluster CIDR (IPv4 /24 and IPv6 /64 by
default, as ``--node-cidr-mask-size-ipv4/-ipv6``).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from controlplane.client import ApiClient, NotFound, SharedInformerFactory
from controlplane.client.resources import NODES
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result, RetryLater

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class CidrSet:
    """The node-sized subnets of one cluster CIDR, each free or taken (upstream's cidrset)."""

    def __init__(self, cluster_cidr: str, mask_size: int) -> None:
        self.network: Network = ipaddress.ip_network(cluster_cidr, strict=False)
        if mask_size < self.network.prefixlen:
            raise ValueError(f"node CIDR mask size {mask_size} is smaller than the cluster CIDR's /"
                             f"{self.network.prefixlen}")
        if mask_size - self.network.prefixlen > 24:
            raise ValueError(f"cluster CIDR {cluster_cidr} with node mask /{mask_size} has too many subnets")
        self.mask_size = mask_size
        self.size = 1 << (mask_size - self.network.prefixlen)
        self._step = 1 << (self.network.max_prefixlen - mask_size)
        self._used: set[int] = set()
        self._next = 0

    def _index(self, cidr: str) -> int | None:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            return None
        if net.version != self.network.version or net.prefixlen != self.mask_size or not net.subnet_of(
                self.network):  # type: ignore[arg-type]
            return None
        return (int(net.network_address) - int(self.network.network_address)) // self._step

    def _cidr(self, index: int) -> str:
        addr = ipaddress.ip_address(int(self.network.network_address) + index * self._step)
        return f"{addr}/{self.mask_size}"

    def contains(self, cidr: str) -> bool:
        return self._index(cidr) is not None

    def occupy(self, cidr: str) -> bool:
        index = self._index(cidr)
        if index is None:
            return False
        self._used.add(index)
        return True

    def release(self, cidr: str) -> None:
        index = self._index(cidr)
        if index is not None:
            self._used.discard(index)

    def allocate(self) -> str:
        for offset in range(self.size):
            index = (self._next + offset) % self.size
            if index not in self._used:
                self._used.add(index)
                self._next = (index + 1) % self.size
                return self._cidr(index)
        raise RetryLater(f"CIDR allocation failed; there are no remaining CIDRs left to allocate in the "
                           f"accepted range {self.network}")

    @property
    def used(self) -> int:
        return len(self._used)


class NodeIpamController:
    name = "nodeipam"

    def __init__(self, ctx: ControllerContext | None = None) -> None:
        ctx = ctx or ControllerContext()
        self.workers = int(ctx.option("concurrent_node_ipam_syncs", 2))
        self.enabled = bool(ctx.option("allocate_node_cidrs", True))
        cidrs = ctx.option("cluster_cidr", "10.244.0.0/16")
        cidr_list = [c.strip() for c in (cidrs.split(",") if isinstance(cidrs, str) else cidrs) if c.strip()]
        single_mask = ctx.option("node_cidr_mask_size", 0)
        self.sets: list[CidrSet] = []
        for cidr in cidr_list:
            version = ipaddress.ip_network(cidr, strict=False).version
            if version == 4:
                mask = int(ctx.option("node_cidr_mask_size_ipv4", 0) or single_mask or 24)
            else:
                mask = int(ctx.option("node_cidr_mask_size_ipv6", 0) or single_mask or 64)
            self.sets.append(CidrSet(cidr, mask))
        self._seeded = False
        self._allocated: dict[str, list[str]] = {}  # node -> ranges we hold for it

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.nodes = informers.informer(NODES)

        def changed(node: dict[str, Any], *rest: dict[str, Any]) -> None:
            enqueue((rest[-1] if rest else node)["metadata"]["name"])

        def deleted(node: dict[str, Any]) -> None:
            self._release(node["metadata"]["name"], _node_cidrs(node))
            # Nodes waiting for a range (the pool was full) need not wait for their retry backoff.
            for other in self.nodes.list():
                if not _node_cidrs(other):
                    enqueue(other["metadata"]["name"])

        self.nodes.add_handler(on_add=changed, on_update=changed, on_delete=deleted)

    def _seed(self) -> None:
        # Before the first allocation: every range a node already has is taken (the informer has synced by now).
        for node in self.nodes.list():
            self._occupy(node["metadata"]["name"], _node_cidrs(node))
        self._seeded = True

    def _occupy(self, name: str, cidrs: list[str]) -> None:
        for cidr in cidrs:
            for s in self.sets:
                if s.occupy(cidr):
                    held = self._allocated.setdefault(name, [])
                    if cidr not in held:
                        held.append(cidr)

    def _release(self, name: str, cidrs: list[str]) -> None:
        for cidr in set(cidrs) | set(self._allocated.pop(name, [])):
            for s in self.sets:
                s.release(cidr)

    async def reconcile(self, key: str) -> Result:
        if not self.enabled or not self.sets:
            return DONE
        if not self._seeded:
            self._seed()
        node = self.nodes.get(key)
        if node is None:
            return DONE
        existing = _node_cidrs(node)
        if existing:
            for cidr in self._allocated.get(key, []):
                if cidr not in existing:
                    self._release_one(cidr)  # someone else set the node's ranges: ours go back to the pool
            self._allocated.pop(key, None)
            self._occupy(key, existing)
            return DONE
        held = self._allocated.get(key)
        if held:
            cidrs = list(held)  # allocated earlier, the write not yet seen (or failed): reuse, never double up
        else:
            cidrs = []
            try:
                for s in self.sets:
                    cidrs.append(s.allocate())
            except RetryLater:
                for cidr in cidrs:
                    self._release_one(cidr)
                raise
            self._allocated[key] = cidrs
        try:
            await self.client.patch(NODES, key, {"spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}},
                                    patch_type="merge")
        except NotFound:
            self._release(key, cidrs)
            return DONE
        log.info("node %s: allocated pod CIDRs %s", key, ",".join(cidrs))
        return DONE

    def _release_one(self, cidr: str) -> None:
        for s in self.sets:
            s.release(cidr)


def _node_cidrs(node: dict[str, Any]) -> list[str]:
    spec = node.get("spec") or {}
    cidrs = list(spec.get("podCIDRs") or [])
    if not cidrs and spec.get("podCIDR"):
        cidrs = [spec["podCIDR"]]
    return cidrs
