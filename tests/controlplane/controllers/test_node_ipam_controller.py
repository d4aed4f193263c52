"""Node IPAM through a real API server: unique pod CIDRs, seeded from existing nodes, released on node deletion."""

from __future__ import annotations

import ipaddress

from controlplane.client import NODES


async def _cidr(client, name: str) -> str | None:
    node = await client.get(NODES, name)
    spec = node.get("spec") or {}
    if spec.get("podCIDR"):
        assert spec["podCIDRs"] == [spec["podCIDR"]]
    return spec.get("podCIDR")


async def test_nodes_get_distinct_ranges_and_a_restart_does_not_reuse_them(client, start_manager, wait_for):
    await client.create(NODES, {"metadata": {"name": "pre"}, "spec": {"podCIDR": "10.244.0.0/24",
                                                                      "podCIDRs": ["10.244.0.0/24"]}})
    first = await start_manager("nodeipam")
    for i in range(3):
        await client.create(NODES, {"metadata": {"name": f"n{i}"}})
    cidrs = [await wait_for(lambda i=i: _cidr(client, f"n{i}")) for i in range(3)]
    assert "10.244.0.0/24" not in cidrs, "a range an existing node holds is never handed out"
    assert len(set(cidrs)) == 3
    for c in cidrs:
        net = ipaddress.ip_network(c)
        assert net.prefixlen == 24 and net.subnet_of(ipaddress.ip_network("10.244.0.0/16"))

    # A new manager learns the taken ranges from the nodes themselves.
    await first.stop()
    await start_manager("nodeipam")
    await client.create(NODES, {"metadata": {"name": "late"}})
    late = await wait_for(lambda: _cidr(client, "late"))
    assert late not in cidrs + ["10.244.0.0/24"]


async def test_exhaustion_and_release(client, start_manager, wait_for):
    await start_manager("nodeipam", options={"cluster_cidr": "10.9.0.0/23", "node_cidr_mask_size": 24})
    await client.create(NODES, {"metadata": {"name": "a"}})
    await client.create(NODES, {"metadata": {"name": "b"}})
    got = {await wait_for(lambda: _cidr(client, "a")), await wait_for(lambda: _cidr(client, "b"))}
    assert got == {"10.9.0.0/24", "10.9.1.0/24"}

    await client.create(NODES, {"metadata": {"name": "c"}})
    # The range is full: c waits (retried with backoff) until a node leaves.
    assert await _cidr(client, "c") is None
    freed = await _cidr(client, "a")
    await client.delete(NODES, "a")
    assert await wait_for(lambda: _cidr(client, "c")) == freed
