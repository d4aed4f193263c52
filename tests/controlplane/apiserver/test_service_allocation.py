"""Service ClusterIP and NodePort allocation in the API server, as a user sees it over HTTP: addresses and ports are
handed out once, requests for taken or out-of-range ones are 422 Invalid with upstream's wording, and everything
goes back to the pool when the Service (or its port) goes."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.testing import ThreadedApiServer

SERVICES = "/api/v1/namespaces/default/services"
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")


def service(name: str, *, type_: str = "ClusterIP", cluster_ip: str | None = None,
            ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                            "spec": {"type": type_, "ports": ports or [{"port": 80}], **spec}}
    if cluster_ip is not None:
        body["spec"]["clusterIP"] = cluster_ip
    return body


def create(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    resp = http.post(SERVICES, json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def rejected(http: httpx.Client, body: dict[str, Any], field: str, text: str) -> dict[str, Any]:
    resp = http.post(SERVICES, json=body)
    assert resp.status_code == 422, resp.text
    status = resp.json()
    assert (status["kind"], status["reason"]) == ("Status", "Invalid")
    causes = status["details"]["causes"]
    assert any(c["field"] == field and text in c["message"] for c in causes), causes
    assert text in status["message"]
    return status


def node_ports(svc: dict[str, Any]) -> list[int]:
    return [p["nodePort"] for p in svc["spec"]["ports"] if "nodePort" in p]


def test_cluster_ips_are_unique_and_in_range(http):
    ips = set()
    for i in range(5):
        svc = create(http, service(f"s{i}"))
        ip = svc["spec"]["clusterIP"]
        assert svc["spec"]["clusterIPs"] == [ip]
        assert ipaddress.ip_address(ip) in SERVICE_CIDR
        ips.add(ip)
    kubernetes = http.get(f"{SERVICES}/kubernetes").json()
    assert kubernetes["spec"]["clusterIP"] == "10.96.0.1"
    assert len(ips | {"10.96.0.1"}) == 6


def test_explicit_cluster_ip_conflicts_and_range(http):
    svc = create(http, service("fixed", cluster_ip="10.96.100.100"))
    assert svc["spec"]["clusterIPs"] == ["10.96.100.100"]
    rejected(http, service("copycat", cluster_ip="10.96.100.100"), "spec.clusterIPs",
             "failed to allocate IP 10.96.100.100: provided IP is already allocated")
    rejected(http, service("outside", cluster_ip="10.0.0.1"), "spec.clusterIPs",
             "the provided IP (10.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12")
    rejected(http, service("nonsense", cluster_ip="banana"), "spec.clusterIPs[0]", "must be a valid IP address")
    headless = create(http, service("headless", cluster_ip="None"))
    assert headless["spec"]["clusterIPs"] == ["None"]


def test_a_rejected_create_keeps_nothing(http):
    # The IP is fine but the node port is not: the whole create fails, and the IP must not stay reserved.
    rejected(http, service("half", type_="NodePort", cluster_ip="10.96.7.7", ports=[{"port": 80, "nodePort": 80}]),
             "spec.ports[0].nodePort", "provided port is not in the valid range")
    other = create(http, service("other", cluster_ip="10.96.7.7"))
    assert other["spec"]["clusterIP"] == "10.96.7.7"
    # And the same for a port: a create failing on its IP must not hold the port it asked for.
    rejected(http, service("greedy", type_="NodePort", cluster_ip="10.96.7.7",
                           ports=[{"port": 80, "nodePort": 31111}]), "spec.clusterIPs", "already allocated")
    taker = create(http, service("taker", type_="NodePort", ports=[{"port": 80, "nodePort": 31111}]))
    assert node_ports(taker) == [31111]


def test_node_ports_range_conflicts_and_protocols(http):
    auto = create(http, service("auto", type_="NodePort", ports=[{"name": "a", "port": 80},
                                                                 {"name": "b", "port": 81}]))
    ports = node_ports(auto)
    assert len(ports) == 2 and len(set(ports)) == 2 and all(30000 <= p <= 32767 for p in ports)

    fixed = create(http, service("fixed", type_="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    assert node_ports(fixed) == [30080]
    rejected(http, service("clash", type_="NodePort", ports=[{"port": 80, "nodePort": 30080}]),
             "spec.ports[0].nodePort", "Invalid value: 30080: provided port is already allocated")
    udp = create(http, service("udp", type_="NodePort", ports=[{"port": 53, "nodePort": 30080, "protocol": "UDP"}]))
    assert node_ports(udp) == [30080], "the same number over another protocol is another port"
    rejected(http, service("low", type_="NodePort", ports=[{"port": 80, "nodePort": 29999}]),
             "spec.ports[0].nodePort",
             "provided port is not in the valid range. The range of valid ports is 30000-32767")
    rejected(http, service("twice", type_="NodePort", ports=[{"name": "a", "port": 80, "nodePort": 30500},
                                                              {"name": "b", "port": 81, "nodePort": 30500}]),
             "spec.ports[1].nodePort", "Duplicate value: 30500")
    lb = create(http, service("lb", type_="LoadBalancer"))
    assert len(node_ports(lb)) == 1
    no_ports = create(http, service("lb-direct", type_="LoadBalancer", allocateLoadBalancerNodePorts=False,
                                    ports=[{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30900}]))
    assert node_ports(no_ports) == [30900], "no automatic ports, but an explicit one is honoured"
    rejected(http, service("after-lb", type_="NodePort", ports=[{"port": 80, "nodePort": 30900}]),
             "spec.ports[0].nodePort", "already allocated")


def test_delete_and_updates_release(http):
    svc = create(http, service("web", type_="NodePort", cluster_ip="10.96.50.50",
                               ports=[{"name": "http", "port": 80, "nodePort": 30100},
                                      {"name": "https", "port": 443, "nodePort": 30101}]))
    # Dropping a port releases its node port; the kept one keeps its number.
    svc["spec"]["ports"] = [p for p in svc["spec"]["ports"] if p["name"] == "http"]
    resp = http.put(f"{SERVICES}/web", json=svc)
    assert resp.status_code == 200, resp.text
    assert node_ports(resp.json()) == [30100]
    create(http, service("takes-30101", type_="NodePort", ports=[{"port": 80, "nodePort": 30101}]))

    # NodePort -> ClusterIP gives the node port back.
    svc = resp.json()
    svc["spec"]["type"] = "ClusterIP"
    for p in svc["spec"]["ports"]:
        p.pop("nodePort")
    svc["spec"].pop("externalTrafficPolicy", None)
    resp = http.put(f"{SERVICES}/web", json=svc)
    assert resp.status_code == 200, resp.text
    assert node_ports(resp.json()) == []
    create(http, service("takes-30100", type_="NodePort", ports=[{"port": 80, "nodePort": 30100}]))

    # Deleting the Service frees its IP.
    assert http.delete(f"{SERVICES}/web").status_code == 200
    again = create(http, service("again", cluster_ip="10.96.50.50"))
    assert again["spec"]["clusterIP"] == "10.96.50.50"


def test_allocations_survive_an_api_server_restart(tmp_path: Path):
    with ThreadedApiServer("sqlite", tmp_path) as server:
        with httpx.Client(base_url=server.url) as http:
            create(http, service("kept", type_="NodePort", cluster_ip="10.96.9.9",
                                 ports=[{"port": 80, "nodePort": 30999}]))
    with ThreadedApiServer("sqlite", tmp_path) as server:
        with httpx.Client(base_url=server.url) as http:
            rejected(http, service("ip-thief", cluster_ip="10.96.9.9"), "spec.clusterIPs", "already allocated")
            rejected(http, service("port-thief", type_="NodePort", ports=[{"port": 80, "nodePort": 30999}]),
                     "spec.ports[0].nodePort", "already allocated")


@pytest.fixture
def http(apiserver: ThreadedApiServer):  # noqa: F811 - this module's own client, with JSON by default
    with httpx.Client(base_url=apiserver.url, timeout=30) as client:
        yield client
