"""The official `kubernetes` Python client against ccmkit's API server: CRUD, selectors, pagination, watch semantics
(order, resume, 410 after compaction) and the object-level rules every kind shares (optimistic concurrency,
generation, status vs spec, finalizers, terminating namespaces, dry run, generateName, subresources).

The client is generated from the upstream OpenAPI and deserialises into typed models, so a field served in the
wrong shape fails here even when a dict-based client would not notice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import kubernetes
import pytest
from apiserver_helpers import wait_until, watcher_count
from kubernetes.client import AppsV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException

from controlplane.testing import ThreadedApiServer


def configmap(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}}, "data": data}


def pod(name: str, labels: dict[str, str] | None = None, node: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox:1.36"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "main", "image": "nginx:1.25"}]}}}}


@pytest.fixture
def core(k8s: kubernetes.client.ApiClient) -> CoreV1Api:
    return CoreV1Api(k8s)


@pytest.fixture
def apps(k8s: kubernetes.client.ApiClient) -> AppsV1Api:
    return AppsV1Api(k8s)


def error(call: Any, *args: Any, **kwargs: Any) -> ApiException:
    with pytest.raises(ApiException) as info:
        call(*args, **kwargs)
    return info.value


def reason(exc: ApiException) -> str:
    return json.loads(exc.body)["reason"]


# ---------------------------------------------------------------------------------------------------- CRUD


@pytest.mark.every_store
def test_configmap_crud(core: CoreV1Api) -> None:
    created = core.create_namespaced_config_map("default", configmap("settings", color="blue"))
    assert created.metadata.uid and created.metadata.creation_timestamp is not None
    assert created.metadata.namespace == "default"
    got = core.read_namespaced_config_map("settings", "default")
    assert got.data == {"color": "blue"} and got.metadata.resource_version == created.metadata.resource_version

    got.data["size"] = "L"
    replaced = core.replace_namespaced_config_map("settings", "default", got)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    patched = core.patch_namespaced_config_map("settings", "default", {"data": {"color": "red"}})
    assert patched.data == {"color": "red", "size": "L"}
    assert [c.metadata.name for c in core.list_namespaced_config_map("default").items] == ["settings"]

    status = core.delete_namespaced_config_map("settings", "default")  # this client version returns a plain dict
    assert status["status"] == "Success" and status["details"]["name"] == "settings"
    assert error(core.read_namespaced_config_map, "settings", "default").status == 404


@pytest.mark.every_store
def test_service_crud_allocates_and_keeps_the_cluster_ip(core: CoreV1Api) -> None:
    svc = core.create_namespaced_service("default", {
        "metadata": {"name": "front"},
        "spec": {"type": "NodePort", "selector": {"app": "front"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    ip, node_port = svc.spec.cluster_ip, svc.spec.ports[0].node_port
    assert ip.startswith("10.") and svc.spec.cluster_ips == [ip]
    assert 30000 <= node_port <= 32767
    assert svc.spec.ports[0].protocol == "TCP" and svc.spec.ports[0].target_port == 8080

    svc.spec.selector = {"app": "front-v2"}
    updated = core.replace_namespaced_service("front", "default", svc)
    assert updated.spec.cluster_ip == ip and updated.spec.selector == {"app": "front-v2"}
    changed = error(core.patch_namespaced_service, "front", "default", {"spec": {"clusterIP": "10.96.99.99"}})
    assert changed.status == 422
    core.delete_namespaced_service("front", "default")
    again = core.create_namespaced_service("default", {"metadata": {"name": "front"}, "spec": {
        "ports": [{"port": 80}], "clusterIP": ip}})
    assert again.spec.cluster_ip == ip  # released with the first Service, so free to ask for again


@pytest.mark.every_store
def test_deployment_crud(apps: AppsV1Api) -> None:
    created = apps.create_namespaced_deployment("default", deployment("web", 2))
    assert created.metadata.generation == 1
    assert created.spec.strategy.type == "RollingUpdate"  # defaulted as upstream does
    assert created.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent"
    created.spec.replicas = 3
    replaced = apps.replace_namespaced_deployment("web", "default", created)
    assert replaced.spec.replicas == 3 and replaced.metadata.generation == 2
    assert [d.metadata.name for d in apps.list_deployment_for_all_namespaces().items] == ["web"]
    apps.delete_namespaced_deployment("web", "default")
    assert apps.list_namespaced_deployment("default").items == []


def test_namespace_and_node_crud(core: CoreV1Api) -> None:
    ns = core.create_namespace({"metadata": {"name": "team-a", "labels": {"team": "a"}}})
    assert ns.status.phase == "Active" and ns.spec.finalizers == ["kubernetes"]
    assert ns.metadata.labels == {"team": "a", "kubernetes.io/metadata.name": "team-a"}
    assert "team-a" in [n.metadata.name for n in core.list_namespace().items]

    node = core.create_node({"metadata": {"name": "node-1", "labels": {"zone": "z1"}},
                             "spec": {"podCIDR": "10.244.1.0/24"}})
    assert node.metadata.name == "node-1" and node.spec.pod_cidr == "10.244.1.0/24"
    patched = core.patch_node("node-1", {"spec": {"unschedulable": True}})
    assert patched.spec.unschedulable is True
    assert [n.metadata.name for n in core.list_node(field_selector="spec.unschedulable=true").items] == ["node-1"]
    core.delete_node("node-1")
    assert core.list_node().items == []


@pytest.mark.every_store
def test_pod_crud(core: CoreV1Api) -> None:
    created = core.create_namespaced_pod("default", pod("p1", {"app": "demo"}))
    assert created.status.phase == "Pending"
    assert created.spec.restart_policy == "Always" and created.spec.dns_policy == "ClusterFirst"
    assert created.spec.service_account_name == "default"
    core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"extra": "yes"}}})
    assert core.read_namespaced_pod("p1", "default").metadata.labels == {"app": "demo", "extra": "yes"}
    image_change = core.patch_namespaced_pod("p1", "default", {"spec": {"containers": [
        {"name": "main", "image": "busybox:1.37"}]}})
    assert image_change.spec.containers[0].image == "busybox:1.37"  # the one mutable spec field
    forbidden = error(core.patch_namespaced_pod, "p1", "default", {"spec": {"restartPolicy": "Never"}})
    assert forbidden.status == 422
    # An unscheduled pod has no kubelet to wait for: deleting it removes it at once.
    deleted = core.delete_namespaced_pod("p1", "default")
    assert deleted.metadata.name == "p1"
    assert core.list_namespaced_pod("default").items == []


# ---------------------------------------------------------------------------------------------------- selectors


@pytest.mark.every_store
def test_label_selectors_equality_and_set_based(core: CoreV1Api) -> None:
    for name, labels in [("a", {"env": "prod", "tier": "web"}), ("b", {"env": "dev", "tier": "web"}),
                         ("c", {"env": "prod"}), ("d", {})]:
        core.create_namespaced_config_map("default", configmap(name, labels))

    def names(selector: str) -> list[str]:
        return sorted(c.metadata.name for c in core.list_namespaced_config_map("default",
                                                                                label_selector=selector).items)

    assert names("env=prod") == ["a", "c"]
    assert names("env==prod,tier=web") == ["a"]
    assert names("env!=prod") == ["b", "d"]
    assert names("env in (dev,qa)") == ["b"]
    assert names("env notin (dev)") == ["a", "c", "d"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c", "d"]
    assert names("env in (prod),!tier") == ["c"]


@pytest.mark.every_store
def test_field_selectors_name_node_and_phase(core: CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("on-a", node="node-a"))
    core.create_namespaced_pod("default", pod("on-b", node="node-b"))
    core.create_namespaced_pod("default", pod("nowhere"))
    core.patch_namespaced_pod_status("on-b", "default", {"status": {"phase": "Running"}})

    def names(selector: str) -> list[str]:
        return sorted(p.metadata.name for p in core.list_namespaced_pod("default", field_selector=selector).items)

    assert names("metadata.name=on-a") == ["on-a"]
    assert names("spec.nodeName=node-a") == ["on-a"]
    assert names("spec.nodeName=") == ["nowhere"]
    assert names("spec.nodeName!=node-a") == ["nowhere", "on-b"]
    assert names("status.phase=Running") == ["on-b"]
    assert names("status.phase=Pending,spec.nodeName=node-a") == ["on-a"]
    assert [p.metadata.name for p in core.list_pod_for_all_namespaces(field_selector="metadata.namespace=default",
                                                                       label_selector="").items] != []
    bad = error(core.list_namespaced_pod, "default", field_selector="spec.image=x")
    assert bad.status == 400 and reason(bad) == "BadRequest"


@pytest.mark.every_store
def test_pagination_returns_every_item_exactly_once(core: CoreV1Api) -> None:
    expected = {f"cm-{i:02d}" for i in range(23)}
    for name in sorted(expected):
        core.create_namespaced_config_map("default", configmap(name, {"page": "yes"} if name < "cm-15" else {}))
    seen: list[str] = []
    versions = set()
    token = None
    pages = 0
    while True:
        page = core.list_namespaced_config_map("default", limit=5, _continue=token)
        pages += 1
        seen += [c.metadata.name for c in page.items]
        versions.add(page.metadata.resource_version)
        assert len(page.items) <= 5
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count == 23 - len(seen)
        if pages == 2:
            # Writes between pages do not disturb the listing: pages stay on the first page's snapshot.
            core.create_namespaced_config_map("default", configmap("cm-99"))
            core.delete_namespaced_config_map("cm-22", "default")
    assert pages == 5
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
    assert len(versions) == 1  # every page reports the revision of the first

    # A filtered, paginated listing also covers each match once.
    token, filtered = None, []
    while True:
        page = core.list_namespaced_config_map("default", limit=4, label_selector="page=yes", _continue=token)
        filtered += [c.metadata.name for c in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert filtered == [f"cm-{i:02d}" for i in range(15)]


@pytest.mark.every_store
def test_a_continue_token_from_a_compacted_revision_is_gone(apiserver: ThreadedApiServer, core: CoreV1Api) -> None:
    for i in range(5):
        core.create_namespaced_config_map("default", configmap(f"page-{i}"))
    first = core.list_namespaced_config_map("default", limit=2)
    token = first.metadata._continue
    assert token and [c.metadata.name for c in first.items] == ["page-0", "page-1"]
    latest = core.create_namespaced_config_map("default", configmap("later")).metadata.resource_version
    apiserver.run(apiserver.store.compact(int(latest)))
    expired = error(core.list_namespaced_config_map, "default", limit=2, _continue=token)
    assert expired.status == 410 and reason(expired) == "Expired"
    # A new listing works, and sees the write made after the first page.
    names = [c.metadata.name for c in core.list_namespaced_config_map("default").items]
    assert names == ["later", "page-0", "page-1", "page-2", "page-3", "page-4"]


# ---------------------------------------------------------------------------------------------------- watch


def collect(stream: Iterator[dict[str, Any]], count: int, out: list[tuple[str, str, str]]) -> None:
    for event in stream:
        obj = event["raw_object"]
        out.append((event["type"], obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))
        if len(out) >= count:
            return


@pytest.mark.every_store
def test_watch_delivers_events_in_order_and_resumes(core: CoreV1Api) -> None:
    start = core.list_namespaced_config_map("default").metadata.resource_version
    w = kubernetes.watch.Watch()
    events: list[tuple[str, str, str]] = []
    reader = threading.Thread(target=collect, args=(
        w.stream(core.list_namespaced_config_map, "default", resource_version=start, timeout_seconds=30), 6, events))
    reader.start()
    core.create_namespaced_config_map("default", configmap("one"))
    core.create_namespaced_config_map("default", configmap("two"))
    core.patch_namespaced_config_map("one", "default", {"data": {"k": "v"}})
    core.delete_namespaced_config_map("two", "default")
    core.create_namespaced_config_map("default", configmap("three"))
    core.delete_namespaced_config_map("one", "default")
    reader.join(30)
    w.stop()
    assert [(t, n) for t, n, _ in events] == [("ADDED", "one"), ("ADDED", "two"), ("MODIFIED", "one"),
                                             ("DELETED", "two"), ("ADDED", "three"), ("DELETED", "one")]
    revisions = [int(rv) for _, _, rv in events]
    assert revisions == sorted(revisions) and len(set(revisions)) == 6

    # Resuming from the third event's revision replays exactly what came after it.
    resumed: list[tuple[str, str, str]] = []
    w2 = kubernetes.watch.Watch()
    collect(w2.stream(core.list_namespaced_config_map, "default", resource_version=events[2][2],
                      timeout_seconds=30), 3, resumed)
    w2.stop()
    assert resumed == events[3:]


@pytest.mark.every_store
def test_watch_without_resource_version_starts_with_the_current_state(core: CoreV1Api) -> None:
    core.create_namespaced_config_map("default", configmap("existing"))
    w = kubernetes.watch.Watch()
    events: list[tuple[str, str, str]] = []
    collect(w.stream(core.list_namespaced_config_map, "default", timeout_seconds=30), 1, events)
    w.stop()
    assert [(t, n) for t, n, _ in events] == [("ADDED", "existing")]


@pytest.mark.every_store
def test_watch_from_a_compacted_revision_is_gone(apiserver: ThreadedApiServer, core: CoreV1Api) -> None:
    # Open a watch first so the API server's watch cache is running and holds the events that follow.
    w0 = kubernetes.watch.Watch()
    warm: list[tuple[str, str, str]] = []
    reader = threading.Thread(target=collect, args=(
        w0.stream(core.list_namespaced_config_map, "default", timeout_seconds=30), 3, warm))
    reader.start()
    first = core.create_namespaced_config_map("default", configmap("old-1")).metadata.resource_version
    core.create_namespaced_config_map("default", configmap("old-2"))
    latest = core.create_namespaced_config_map("default", configmap("old-3")).metadata.resource_version
    reader.join(30)
    w0.stop()
    assert [n for _, n, _ in warm] == ["old-1", "old-2", "old-3"]

    apiserver.run(apiserver.store.compact(int(latest)))
    w = kubernetes.watch.Watch()
    with pytest.raises(ApiException) as info:
        # With timeout_seconds the client does not retry: the first ERROR event raises. Without the 410 the stream
        # would replay old-2 and old-3 and then end quietly at the timeout.
        for _ in w.stream(core.list_namespaced_config_map, "default", resource_version=first, timeout_seconds=10):
            pass
    assert info.value.status == 410
    assert "Expired" in str(info.value.reason) or "Gone" in str(info.value.reason)

    # From the compacted revision itself onwards is still fine: new events arrive.
    w2 = kubernetes.watch.Watch()
    events: list[tuple[str, str, str]] = []
    reader = threading.Thread(target=collect, args=(
        w2.stream(core.list_namespaced_config_map, "default", resource_version=latest, timeout_seconds=30), 1, events))
    reader.start()
    core.create_namespaced_config_map("default", configmap("new"))
    reader.join(30)
    w2.stop()
    assert [(t, n) for t, n, _ in events] == [("ADDED", "new")]


@pytest.mark.every_store
def test_a_watch_from_the_compacted_revision_itself_gets_what_came_after(apiserver: ThreadedApiServer,
                                                                         core: CoreV1Api) -> None:
    configmaps = apiserver.server.state.stores[("", "v1", "configmaps")]
    apiserver.run(configmaps.cacher.ensure_started())
    latest = core.create_namespaced_config_map("default", configmap("before")).metadata.resource_version
    apiserver.run(apiserver.store.compact(int(latest)))
    after = core.create_namespaced_config_map("default", configmap("after")).metadata.resource_version
    # The watch cache already holds the later event when the watch asks for it: the changes after the compacted
    # revision still exist, so this is a replay, not a 410.
    wait_until(lambda: configmaps.cacher.revision >= int(after), message="the watch cache to see the create")
    w = kubernetes.watch.Watch()
    events: list[tuple[str, str, str]] = []
    collect(w.stream(core.list_namespaced_config_map, "default", resource_version=latest, timeout_seconds=10), 1,
            events)
    w.stop()
    assert events == [("ADDED", "after", after)]


@pytest.mark.every_store
def test_a_watch_sees_each_write_exactly_as_the_writer_was_answered(apiserver: ThreadedApiServer,
                                                                     http: httpx.Client) -> None:
    path = "/api/v1/namespaces/default/pods"
    rv = http.get(path).json()["metadata"]["resourceVersion"]
    answers = []
    answers.append(http.post(path, json=pod("seen", {"app": "a"})).json())
    answers.append(http.patch(f"{path}/seen", json={"metadata": {"labels": {"app": "b"}}},
                              headers={"Content-Type": "application/merge-patch+json"}).json())
    status = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    answers.append(http.patch(f"{path}/seen/status", json=status,
                              headers={"Content-Type": "application/strategic-merge-patch+json"}).json())
    answers.append(http.post(f"{path}/seen/binding", json={"apiVersion": "v1", "kind": "Binding",
                                                          "metadata": {"name": "seen"},
                                                          "target": {"kind": "Node", "name": "n1"}}).json())
    answers[-1] = http.get(f"{path}/seen").json()  # a binding answers with a Status
    answers.append(http.put(f"{path}/seen", json={**answers[-1], "metadata": {
        **answers[-1]["metadata"], "annotations": {"x": "y"}}}).json())
    unchanged = http.put(f"{path}/seen", json=answers[-1]).json()  # no change: no event
    assert unchanged["metadata"]["resourceVersion"] == answers[-1]["metadata"]["resourceVersion"]
    with http.stream("GET", path, params={"watch": "true", "resourceVersion": rv, "timeoutSeconds": "5"}) as stream:
        events = []
        for line in stream.iter_lines():
            events.append(json.loads(line))
            if len(events) == len(answers):
                break
    assert [e["type"] for e in events] == ["ADDED"] + ["MODIFIED"] * (len(answers) - 1)
    assert [e["object"] for e in events] == answers


def test_the_watch_cache_takes_a_write_as_it_was_answered(apiserver: ThreadedApiServer, http: httpx.Client) -> None:
    # The event of a write through this server is not decoded from the store again: the cache holds the object
    # the write answered with (equal to the decoded one; the test above holds them equal on every store).
    configmaps = apiserver.server.state.stores[("", "v1", "configmaps")]
    apiserver.run(configmaps.cacher.ensure_started())
    created = http.post("/api/v1/namespaces/default/configmaps", json=configmap("shared", a="1")).json()
    revision = int(created["metadata"]["resourceVersion"])
    wait_until(lambda: configmaps.cacher.revision >= revision, message="the watch cache to see the create")
    event = next(e for e in configmaps.cacher.history if e.revision == revision)
    assert event._obj is not None and event._obj == created


@pytest.mark.every_store
def test_a_watch_from_before_the_cache_started_is_served_by_the_cache(apiserver: ThreadedApiServer,
                                                                     http: httpx.Client) -> None:
    # An informer lists, then watches from the list's revision; meanwhile other resources are written, so the
    # resource's watch cache, started by that first watch, starts after the revision the watch asks for.
    listed = http.get("/api/v1/namespaces/default/secrets").json()["metadata"]["resourceVersion"]
    http.post("/api/v1/namespaces/default/secrets", json={"metadata": {"name": "early"}})
    for i in range(3):
        http.post("/api/v1/namespaces/default/configmaps", json=configmap(f"other-{i}"))
    with http.stream("GET", "/api/v1/namespaces/default/secrets",
                     params={"watch": "true", "resourceVersion": listed, "timeoutSeconds": "5"}) as stream:
        lines = stream.iter_lines()
        first = json.loads(next(lines))
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "early")
        # Served from the cache (one store watch for every watcher of the resource), not from a store watch of
        # its own.
        assert watcher_count(apiserver, "", "v1", "secrets") == 1


@pytest.mark.every_store
def test_watch_gets_bookmarks_when_asked(core: CoreV1Api) -> None:
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    w = kubernetes.watch.Watch()
    for event in w.stream(core.list_namespaced_config_map, "default", resource_version=rv,
                          allow_watch_bookmarks=True, timeout_seconds=30):
        assert event["type"] == "BOOKMARK"
        assert int(event["raw_object"]["metadata"]["resourceVersion"]) >= int(rv)
        w.stop()
        break
    else:
        pytest.fail("no bookmark before the watch timed out")


# ---------------------------------------------------------------------------------------------------- object rules


@pytest.mark.every_store
def test_stale_update_and_duplicate_create_conflict(core: CoreV1Api) -> None:
    first = core.create_namespaced_config_map("default", configmap("shared", a="1"))
    core.patch_namespaced_config_map("shared", "default", {"data": {"a": "2"}})
    first.data = {"a": "3"}
    stale = error(core.replace_namespaced_config_map, "shared", "default", first)
    assert stale.status == 409 and reason(stale) == "Conflict"
    assert "the object has been modified" in json.loads(stale.body)["message"]
    assert core.read_namespaced_config_map("shared", "default").data == {"a": "2"}

    dup = error(core.create_namespaced_config_map, "default", configmap("shared"))
    assert dup.status == 409 and reason(dup) == "AlreadyExists"
    assert json.loads(dup.body)["message"] == 'configmaps "shared" already exists'


def test_generation_bumps_only_on_spec_changes(apps: AppsV1Api) -> None:
    apps.create_namespaced_deployment("default", deployment("gen"))
    labelled = apps.patch_namespaced_deployment("gen", "default", {"metadata": {"labels": {"x": "y"}}})
    assert labelled.metadata.generation == 1
    status = apps.patch_namespaced_deployment_status("gen", "default", {"status": {"observedGeneration": 1}})
    assert status.metadata.generation == 1
    scaled = apps.patch_namespaced_deployment("gen", "default", {"spec": {"replicas": 4}})
    assert scaled.metadata.generation == 2
    same = apps.patch_namespaced_deployment("gen", "default", {"spec": {"replicas": 4}})
    assert same.metadata.generation == 2 and same.metadata.resource_version == scaled.metadata.resource_version


def test_status_subresource_ignores_spec_and_main_resource_ignores_status(apps: AppsV1Api) -> None:
    apps.create_namespaced_deployment("default", deployment("split", 1))
    via_status = apps.patch_namespaced_deployment_status(
        "split", "default", {"spec": {"replicas": 9}, "status": {"replicas": 1, "readyReplicas": 1}})
    assert via_status.spec.replicas == 1 and via_status.status.ready_replicas == 1
    via_main = apps.patch_namespaced_deployment(
        "split", "default", {"spec": {"replicas": 2}, "status": {"readyReplicas": 7}})
    assert via_main.spec.replicas == 2 and via_main.status.ready_replicas == 1

    # The same with PUT (replace), through both endpoints.
    current = apps.read_namespaced_deployment("split", "default")
    current.spec.replicas = 5
    current.status.ready_replicas = 5
    replaced = apps.replace_namespaced_deployment_status("split", "default", current)
    assert replaced.spec.replicas == 2 and replaced.status.ready_replicas == 5


@pytest.mark.every_store
def test_finalizers_hold_an_object_until_the_last_is_removed(core: CoreV1Api) -> None:
    core.create_namespaced_config_map("default", {
        "metadata": {"name": "held", "finalizers": ["example.com/a", "example.com/b"]}})
    core.delete_namespaced_config_map("held", "default")
    held = core.read_namespaced_config_map("held", "default")
    assert held.metadata.deletion_timestamp is not None
    assert held.metadata.finalizers == ["example.com/a", "example.com/b"]
    refused = error(core.patch_namespaced_config_map, "held", "default",
                    {"metadata": {"finalizers": ["example.com/a", "example.com/b", "example.com/c"]}})
    assert refused.status == 422
    # finalizers merge as a set under a strategic merge patch, so removing one is a replace (or a JSON patch).
    held.metadata.finalizers = ["example.com/b"]
    core.replace_namespaced_config_map("held", "default", held)
    assert core.read_namespaced_config_map("held", "default").metadata.finalizers == ["example.com/b"]
    last = core.read_namespaced_config_map("held", "default")
    last.metadata.finalizers = []
    core.replace_namespaced_config_map("held", "default", last)
    assert error(core.read_namespaced_config_map, "held", "default").status == 404


@pytest.mark.every_store
def test_a_terminating_namespace_refuses_new_objects(core: CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "closing"}})
    core.create_namespaced_config_map("closing", configmap("before"))
    core.delete_namespace("closing")
    ns = core.read_namespace("closing")
    assert ns.status.phase == "Terminating" and ns.metadata.deletion_timestamp is not None
    refused = error(core.create_namespaced_config_map, "closing", configmap("after"))
    assert refused.status == 403 and reason(refused) == "Forbidden"
    assert "because it is being terminated" in json.loads(refused.body)["message"]
    # Existing objects can still be changed and deleted while the namespace drains.
    core.patch_namespaced_config_map("before", "closing", {"data": {"x": "y"}})
    core.delete_namespaced_config_map("before", "closing")
    # The namespace goes once its spec.finalizers are emptied through the finalize subresource.
    ns.spec.finalizers = []
    core.replace_namespace_finalize("closing", ns)
    assert error(core.read_namespace, "closing").status == 404
    missing = error(core.create_namespaced_config_map, "closing", configmap("later"))
    assert missing.status == 404


def test_dry_run_creates_and_deletes_nothing(core: CoreV1Api) -> None:
    before = core.list_namespaced_config_map("default").metadata.resource_version
    dry = core.create_namespaced_config_map("default", configmap("ghost"), dry_run="All")
    assert dry.metadata.name == "ghost" and dry.metadata.uid
    assert error(core.read_namespaced_config_map, "ghost", "default").status == 404
    core.create_namespaced_config_map("default", configmap("real", a="1"))
    core.patch_namespaced_config_map("real", "default", {"data": {"a": "2"}}, dry_run="All")
    core.delete_namespaced_config_map("real", "default", dry_run="All")
    assert core.read_namespaced_config_map("real", "default").data == {"a": "1"}
    assert int(core.list_namespaced_config_map("default").metadata.resource_version) == int(before) + 1


def test_generate_name(core: CoreV1Api) -> None:
    names = {core.create_namespaced_config_map("default", {"metadata": {"generateName": "job-"}}).metadata.name
             for _ in range(5)}
    assert len(names) == 5
    assert all(n.startswith("job-") and len(n) == len("job-") + 5 for n in names)
    listed = {c.metadata.name for c in core.list_namespaced_config_map("default").items}
    assert names <= listed


@pytest.mark.every_store
def test_deletecollection_with_a_label_selector(core: CoreV1Api) -> None:
    for name, labels in [("keep", {"run": "2"}), ("drop-1", {"run": "1"}), ("drop-2", {"run": "1"})]:
        core.create_namespaced_config_map("default", configmap(name, labels))
    core.delete_collection_namespaced_config_map("default", label_selector="run=1")
    assert [c.metadata.name for c in core.list_namespaced_config_map("default").items] == ["keep"]


def test_pod_binding_sets_the_node_once(core: CoreV1Api, http: httpx.Client) -> None:
    core.create_namespaced_pod("default", pod("to-bind"))
    # The subresource, as the scheduler posts it.
    response = http.post("/api/v1/namespaces/default/pods/to-bind/binding", json={
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": "to-bind"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"}})
    assert response.status_code == 201 and response.json()["status"] == "Success"
    bound = core.read_namespaced_pod("to-bind", "default")
    assert bound.spec.node_name == "node-a"
    assert [(c.type, c.status) for c in bound.status.conditions] == [("PodScheduled", "True")]
    # The client cannot deserialise the Status a bind answers with into a V1Binding (true of a real cluster too),
    # hence _preload_content=False.
    again = error(core.create_namespaced_binding, "default", {
        "metadata": {"name": "to-bind"}, "target": {"kind": "Node", "name": "node-b"}}, _preload_content=False)
    assert again.status == 409 and reason(again) == "Conflict"
    assert core.read_namespaced_pod("to-bind", "default").spec.node_name == "node-a"

    # The legacy bindings collection, which the Python client's create_namespaced_binding posts to.
    core.create_namespaced_pod("default", pod("legacy"))
    answer = core.create_namespaced_binding("default", {"metadata": {"name": "legacy"},
                                                        "target": {"kind": "Node", "name": "node-c"}},
                                            _preload_content=False)
    assert answer.status == 201 and json.loads(answer.data)["status"] == "Success"
    assert core.read_namespaced_pod("legacy", "default").spec.node_name == "node-c"


def test_scale_subresource(apps: AppsV1Api) -> None:
    apps.create_namespaced_deployment("default", deployment("scaled", 2))
    scale = apps.read_namespaced_deployment_scale("scaled", "default")
    assert (scale.kind, scale.spec.replicas, scale.status.selector) == ("Scale", 2, "app=scaled")
    scale.spec.replicas = 6
    updated = apps.replace_namespaced_deployment_scale("scaled", "default", scale)
    assert updated.spec.replicas == 6
    assert apps.read_namespaced_deployment("scaled", "default").spec.replicas == 6
    stale = error(apps.replace_namespaced_deployment_scale, "scaled", "default", scale)
    assert stale.status == 409
    patched = apps.patch_namespaced_deployment_scale("scaled", "default", {"spec": {"replicas": 1}})
    assert patched.spec.replicas == 1
    negative = error(apps.patch_namespaced_deployment_scale, "scaled", "default", {"spec": {"replicas": -1}})
    assert negative.status == 422


@pytest.mark.every_store
def test_concurrent_updates_one_wins_the_rest_conflict(core: CoreV1Api) -> None:
    base = core.create_namespaced_config_map("default", configmap("race", n="0"))
    results: list[int] = []

    def writer(i: int) -> None:
        # Every writer read the same version; compare-and-swap lets exactly one of them through.
        obj = kubernetes.client.V1ConfigMap(metadata=kubernetes.client.V1ObjectMeta(
            name="race", resource_version=base.metadata.resource_version), data={"n": str(i + 1)})
        try:
            core.replace_namespaced_config_map("race", "default", obj)
            results.append(200)
        except ApiException as exc:
            results.append(exc.status)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]  # each writes a different value
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    wait_until(lambda: len(results) == 6, message="every writer finished")
    assert sorted(results) == [200] + [409] * 5
