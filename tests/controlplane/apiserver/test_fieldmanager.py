"""managedFields bookkeeping: the fast paths every write takes give what the general path-set comparison gives.

`record_update` finds what a write changed by walking old and new together where they differ, and a create's
FieldsV1 is built in one walk of the object. Both replace a general computation on sets of field paths that is
still there (for lists the walk cannot pair up); these tests hold the two to the same answers, on objects as the
control plane writes them and on many random changes to them, and check the results a user sees.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import orjson
import pytest

from controlplane.apiserver import fieldmanager as fm

POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web-1", "namespace": "default", "uid": "u1", "generateName": "web-",
                 "labels": {"app": "web", "pod-template-hash": "abc"},
                 "annotations": {"note": "x"}, "finalizers": ["a/b", "c/d"],
                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs1",
                                      "controller": True, "blockOwnerDeletion": True}]},
    "spec": {"containers": [{"name": "app", "image": "nginx:1", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                             "resources": {}, "volumeMounts": [{"mountPath": "/data", "name": "data"}]}],
             "volumes": [{"name": "data", "emptyDir": {}}], "nodeName": "n1", "restartPolicy": "Always",
             "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
             "securityContext": {}, "priority": 0},
    "status": {"phase": "Running", "hostIP": "10.0.0.1", "podIPs": [{"ip": "10.1.0.1"}],
               "conditions": [{"type": t, "status": "True", "lastProbeTime": None,
                               "lastTransitionTime": "2026-12-07T14:15:28Z"}
                              for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
               "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0,
                                      "state": {"running": {"startedAt": "2026-12-07T14:15:28Z"}}}]},
}

SERVICE: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "default"},
    "spec": {"ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP", "name": "http"},
                       {"port": 443, "targetPort": 8443, "protocol": "TCP", "name": "https"}],
             "selector": {"app": "web"}, "type": "ClusterIP", "clusterIPs": ["10.96.0.10"]},
    "status": {"loadBalancer": {}},
}


def _general_diff(new: dict[str, Any], old: dict[str, Any], status: bool) -> tuple[set[Any], set[Any]]:
    new_fields, old_fields = fm._differing_field_sets(new, old, status)
    return fm._changed_fields(old, new, new_fields, status), old_fields - new_fields


def _general_tree(obj: dict[str, Any]) -> dict[str, Any]:
    return fm.to_fields_v1(fm.field_set(obj))


VALUES = ["x", "y", 1, 2, True, None, {}, [], {"a": 1}, {"a": 2, "b": "c"}, ["p", "q"], [{"name": "z"}]]


def _mutate(obj: Any, rng: random.Random, depth: int = 0) -> None:
    """One random change somewhere in ``obj``: set, add or delete a field, or add, drop or change a list item."""
    if isinstance(obj, dict):
        keys = list(obj)
        choice = rng.random()
        if keys and choice < 0.55:
            key = rng.choice(keys)
            if isinstance(obj[key], (dict, list)) and obj[key] and depth < 6 and rng.random() < 0.8:
                _mutate(obj[key], rng, depth + 1)
            else:
                obj[key] = copy.deepcopy(rng.choice(VALUES))
        elif keys and choice < 0.75:
            del obj[rng.choice(keys)]
        else:
            obj[rng.choice(["new", "name", "type", "extra", "status"])] = copy.deepcopy(rng.choice(VALUES))
    elif isinstance(obj, list):
        choice = rng.random()
        if obj and choice < 0.5:
            i = rng.randrange(len(obj))
            if isinstance(obj[i], (dict, list)) and depth < 6:
                _mutate(obj[i], rng, depth + 1)
            else:
                obj[i] = copy.deepcopy(rng.choice(VALUES))
        elif obj and choice < 0.7:
            del obj[rng.randrange(len(obj))]
        elif obj:
            obj.append(copy.deepcopy(rng.choice(obj)))  # sometimes a duplicate merge key
        else:
            obj.append(copy.deepcopy(rng.choice(VALUES)))


def _mutated(obj: dict[str, Any], rng: random.Random, least: int, most: int) -> dict[str, Any]:
    """A copy of ``obj`` with ``least`` to ``most`` random changes."""
    out = copy.deepcopy(obj)
    for _ in range(rng.randint(least, most)):
        _mutate(out, rng)
    return out


@pytest.mark.parametrize("base", [POD, SERVICE], ids=["pod", "service"])
@pytest.mark.parametrize("status", [False, True], ids=["update", "status-update"])
def test_the_walk_finds_what_the_path_sets_find(base: dict[str, Any], status: bool) -> None:
    rng = random.Random(7)
    for _ in range(1500):
        old = _mutated(base, rng, 0, 2)
        new = _mutated(old, rng, 1, 3)
        expected = _general_diff(new, old, status)
        try:
            got = fm._diff_fields(new, old, status)
        except fm._Ambiguous:
            continue  # record_update answers these with the general comparison
        assert got == expected, (orjson.dumps(old), orjson.dumps(new))


def test_lists_the_walk_cannot_pair_are_left_to_the_general_comparison() -> None:
    old = copy.deepcopy(POD)
    new = copy.deepcopy(POD)
    new["spec"]["containers"].append({"name": "app", "image": "other"})  # the merge key twice
    with pytest.raises(fm._Ambiguous):
        fm._diff_fields(new, old, False)
    new = copy.deepcopy(SERVICE)
    new["spec"]["ports"] = [{"containerPort": 80}]  # ports keyed by containerPort now, by port before
    with pytest.raises(fm._Ambiguous):
        fm._diff_fields(new, SERVICE, False)


@pytest.mark.parametrize("base", [POD, SERVICE], ids=["pod", "service"])
def test_a_create_records_the_tree_the_path_sets_give(base: dict[str, Any]) -> None:
    rng = random.Random(11)
    for _ in range(3000):
        obj = _mutated(base, rng, 0, 3)
        # Same keys in the same order: managedFields are compared as JSON by clients and by the tests above.
        assert orjson.dumps(fm._tree_of(obj)) == orjson.dumps(_general_tree(obj)), orjson.dumps(obj)


def _entry(obj: dict[str, Any], manager: str) -> dict[str, Any]:
    return next(e for e in obj["metadata"]["managedFields"] if e["manager"] == manager)


def test_a_status_update_moves_ownership_of_what_it_changed() -> None:
    created = copy.deepcopy(POD)
    del created["status"]
    fm.record_update(created, None, "kube-controller-manager")
    assert "f:status" not in _entry(created, "kube-controller-manager")["fieldsV1"]
    assert _entry(created, "kube-controller-manager")["fieldsV1"]["f:metadata"]["f:finalizers"] == {
        'v:"a/b"': {".": {}}, 'v:"c/d"': {".": {}}}

    running = copy.deepcopy(created)
    running["status"] = copy.deepcopy(POD["status"])
    fm.record_update(running, created, "kubelet", "status")
    kubelet = _entry(running, "kubelet")
    assert kubelet["subresource"] == "status"
    ready = kubelet["fieldsV1"]["f:status"]["f:conditions"]['k:{"type":"Ready"}']
    assert list(ready) == [".", "f:lastProbeTime", "f:lastTransitionTime", "f:status", "f:type"]

    # Another manager changes one condition's status: it takes that field, the kubelet keeps the rest.
    flipped = copy.deepcopy(running)
    flipped["status"]["conditions"][1]["status"] = "False"
    fm.record_update(flipped, running, "node-controller", "status")
    kubelet = _entry(flipped, "kubelet")["fieldsV1"]["f:status"]["f:conditions"]['k:{"type":"Ready"}']
    assert "f:status" not in kubelet and "f:type" in kubelet
    assert "." in kubelet  # the item stays the kubelet's: it set the item, the node controller one field of it
    assert _entry(flipped, "node-controller")["fieldsV1"] == {
        "f:status": {"f:conditions": {'k:{"type":"Ready"}': {".": {}, "f:status": {}}}}}

    # Dropping a container status removes it from its owner's fields.
    dropped = copy.deepcopy(flipped)
    dropped["status"]["containerStatuses"] = []
    fm.record_update(dropped, flipped, "kubelet", "status")
    assert _entry(dropped, "kubelet")["fieldsV1"]["f:status"]["f:containerStatuses"] == {}
