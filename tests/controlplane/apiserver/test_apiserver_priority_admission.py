"""Priority admission: a pod's spec.priority comes from its PriorityClass, as upstream's admission plugin sets it."""

from __future__ import annotations

import httpx

from controlplane.testing import ThreadedApiServer


def _pod(name: str, priority_class: str | None = None) -> dict:
    spec: dict = {"containers": [{"name": "c", "image": "busybox"}]}
    if priority_class:
        spec["priorityClassName"] = priority_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_priority_comes_from_the_named_class_and_unknown_names_are_refused(apiserver: ThreadedApiServer) -> None:
    pods = apiserver.url + "/api/v1/namespaces/default/pods"
    r = httpx.post(pods, json=_pod("critical", "system-node-critical"))
    assert r.status_code == 201 and r.json()["spec"]["priority"] == 2000001000
    r = httpx.post(pods, json=_pod("unknown", "no-such-class"))
    assert r.status_code == 403
    assert r.json()["reason"] == "Forbidden" and "no PriorityClass with name no-such-class" in r.json()["message"]
    assert httpx.get(pods + "/unknown").status_code == 404


def test_global_default_class_applies_to_pods_without_one(apiserver: ThreadedApiServer) -> None:
    assert httpx.post(apiserver.url + "/api/v1/namespaces/default/pods", json=_pod("before")).json()["spec"][
        "priority"] == 0
    pc = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "normal"},
          "value": 100, "globalDefault": True, "preemptionPolicy": "Never"}
    assert httpx.post(apiserver.url + "/apis/scheduling.k8s.io/v1/priorityclasses", json=pc).status_code == 201
    spec = httpx.post(apiserver.url + "/api/v1/namespaces/default/pods", json=_pod("after")).json()["spec"]
    assert (spec["priority"], spec["priorityClassName"], spec["preemptionPolicy"]) == (100, "normal", "Never")
