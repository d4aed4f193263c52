"""networking.k8s.io/v1 as a chart or an operator uses it: kubectl applies and prints Ingresses, IngressClasses and
NetworkPolicies, the official client reads them typed, bad Ingresses get upstream's 422 causes, the default
IngressClass is filled in, and an ingress controller can write an Ingress's status."""

from __future__ import annotations

import json

import httpx
import kubernetes
import pytest
from kubernetes.client import NetworkingV1Api
from kubernetes.client.exceptions import ApiException

MANIFESTS = """
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: nginx
  annotations:
    ingressclass.kubernetes.io/is-default-class: "true"
spec:
  controller: k8s.io/ingress-nginx
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
spec:
  tls:
  - hosts: [shop.example.com]
    secretName: shop-tls
  rules:
  - host: shop.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port:
              number: 80
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db
spec:
  podSelector:
    matchLabels:
      app: db
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: web
    ports:
    - port: 5432
  egress:
  - {}
"""


def test_kubectl_applies_and_prints_networking_kinds(kubectl) -> None:
    out = kubectl("apply", "-f", "-", input=MANIFESTS)
    assert out.split("\n")[:3] == ["ingressclass.networking.k8s.io/nginx created",
                                   "ingress.networking.k8s.io/web created",
                                   "networkpolicy.networking.k8s.io/db created"]
    ingress = kubectl("get", "ing", "web").split("\n")
    assert ingress[0].split() == ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
    assert ingress[1].split()[:4] == ["web", "nginx", "shop.example.com", "80,"]  # the default class was set
    assert kubectl("get", "ingressclass", "nginx").split("\n")[1].split()[:3] == ["nginx", "k8s.io/ingress-nginx",
                                                                                 "<none>"]
    assert kubectl("get", "netpol", "db").split("\n")[1].split()[:2] == ["db", "app=db"]
    policy = json.loads(kubectl("get", "networkpolicy", "db", "-o", "json"))
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 5432, "protocol": "TCP"}]
    resources = kubectl("api-resources", "--api-group=networking.k8s.io", "-o", "name").split()
    assert sorted(resources) == ["ingressclasses.networking.k8s.io", "ingresses.networking.k8s.io",
                                 "networkpolicies.networking.k8s.io"]


@pytest.fixture
def net(k8s: kubernetes.client.ApiClient) -> NetworkingV1Api:
    return NetworkingV1Api(k8s)


def _ingress(name: str, path: dict | None = None, **spec: object) -> dict:
    path = path if path is not None else {"path": "/", "pathType": "Prefix",
                                          "backend": {"service": {"name": "web", "port": {"number": 80}}}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name},
            "spec": {"rules": [{"http": {"paths": [path]}}], **spec}}


def test_bad_ingresses_get_upstreams_causes(http: httpx.Client, net: NetworkingV1Api) -> None:
    # Plain HTTP: the official client would refuse some of these bodies itself before sending them.
    ingresses = "/apis/networking.k8s.io/v1/namespaces/default/ingresses"
    cases = [
        ({"path": "/", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
         "spec.rules[0].http.paths[0].pathType", "Required value: pathType must be specified"),
        ({"path": "/", "pathType": "Glob", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
         "spec.rules[0].http.paths[0].pathType",
         'Unsupported value: "Glob": supported values: "Exact", "ImplementationSpecific", "Prefix"'),
        ({"path": "web", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
         "spec.rules[0].http.paths[0].path", 'Invalid value: "web": must be an absolute path'),
        ({"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {}}}},
         "spec.rules[0].http.paths[0].backend.service.port", "port name or number is required"),
        ({"path": "/", "pathType": "Prefix",
          "backend": {"service": {"name": "web", "port": {"name": "http", "number": 80}}}},
         "spec.rules[0].http.paths[0].backend.service.port", "cannot set both port name & port number"),
    ]
    for i, (path, field, message) in enumerate(cases):
        refused = http.post(ingresses, json=_ingress(f"bad-{i}", path))
        status = refused.json()
        assert (refused.status_code, status["reason"]) == (422, "Invalid")
        assert {"field": field} in [{"field": c["field"]} for c in status["details"]["causes"]], status
        assert any(message in c["message"] for c in status["details"]["causes"]), status
    empty = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "empty"}, "spec": {}}
    refused = http.post(ingresses, json=empty)
    assert refused.status_code == 422
    assert "either `defaultBackend` or `rules` must be specified" in refused.json()["message"]
    assert net.list_namespaced_ingress("default").items == []  # nothing refused was stored


def test_the_newest_default_class_applies_and_a_named_class_is_kept(net: NetworkingV1Api) -> None:
    assert net.create_namespaced_ingress("default", _ingress("before")).spec.ingress_class_name is None
    for name in ("old", "new"):
        net.create_ingress_class({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                                  "metadata": {"name": name, "annotations": {
                                      "ingressclass.kubernetes.io/is-default-class": "true"}},
                                  "spec": {"controller": f"example.com/{name}"}})
    # "new" is the newer of the two, or, created in the same second, the first by name: either way it applies.
    assert net.create_namespaced_ingress("default", _ingress("after")).spec.ingress_class_name == "new"
    named = net.create_namespaced_ingress("default", _ingress("named", ingressClassName="custom"))
    assert named.spec.ingress_class_name == "custom"
    legacy = _ingress("legacy")
    legacy["metadata"]["annotations"] = {"kubernetes.io/ingress.class": "traefik"}
    assert net.create_namespaced_ingress("default", legacy).spec.ingress_class_name is None
    with pytest.raises(ApiException) as refused:
        net.patch_ingress_class("old", {"spec": {"controller": "example.com/other"}})
    assert refused.value.status == 422 and "field is immutable" in refused.value.body


def test_an_ingress_controller_writes_status_and_the_spec_keeps_its_generation(net: NetworkingV1Api) -> None:
    created = net.create_namespaced_ingress("default", _ingress("lb"))
    assert created.metadata.generation == 1
    status = {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}}
    patched = net.patch_namespaced_ingress_status("lb", "default", status)
    assert patched.status.load_balancer.ingress[0].ip == "203.0.113.10" and patched.metadata.generation == 1
    # Status sent to the main resource is ignored, as upstream does for kinds with a status subresource.
    ignored = net.patch_namespaced_ingress("lb", "default", {"status": {"loadBalancer": {"ingress": []}}})
    assert ignored.status.load_balancer.ingress[0].ip == "203.0.113.10"
    changed = net.patch_namespaced_ingress("lb", "default", {"spec": {"ingressClassName": "other"}})
    assert changed.metadata.generation == 2
