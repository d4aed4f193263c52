"""What users do daily with real clients: apply (client- and server-side), strategic merge patch, explain and
validation, tables, aggregated discovery, CRDs with an operator, describe/diff/edit/replace, watch-list.

Everything goes through the kubectl on PATH or the official `kubernetes` Python client against a real API server.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import pytest
import yaml

from controlplane.testing import ThreadedApiServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: main, image: "nginx:1.25", env: [{name: A, value: "1"}, {name: B, value: "2"}]}
"""


def wait_for(predicate: Any, timeout: float = 15, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def get_json(kubectl: Any, *args: str) -> dict[str, Any]:
    return json.loads(kubectl("get", *args, "-o", "json"))


# ------------------------------------------------------------------------------------------- apply


def test_client_side_apply_is_idempotent_and_removes_dropped_fields(kubectl: Any, tmp_path: Path) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(DEPLOYMENT)
    assert "deployment.apps/web created" in kubectl("apply", "-f", str(manifest))
    assert "deployment.apps/web unchanged" in kubectl("apply", "-f", str(manifest))
    # Drop env B and the label from the file: apply removes them from the object.
    manifest.write_text(DEPLOYMENT.replace(', {name: B, value: "2"}', "").replace("labels: {app: web}}", "}", 1))
    assert "deployment.apps/web configured" in kubectl("apply", "-f", str(manifest))
    obj = get_json(kubectl, "deployment", "web")
    assert [e["name"] for e in obj["spec"]["template"]["spec"]["containers"][0]["env"]] == ["A"]
    assert "labels" not in obj["metadata"] or "app" not in obj["metadata"]["labels"]


def test_strategic_merge_patch_merges_containers_by_name(kubectl: Any, tmp_path: Path) -> None:
    kubectl("apply", "-f", "-", input=DEPLOYMENT)
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "image": "busybox"}, {"name": "main", "env": [{"name": "C", "value": "3"}]}]}}}}
    kubectl("patch", "deployment", "web", "--type=strategic", "-p", json.dumps(patch))
    containers = get_json(kubectl, "deployment", "web")["spec"]["template"]["spec"]["containers"]
    by_name = {c["name"]: c for c in containers}
    assert set(by_name) == {"main", "sidecar"}
    assert by_name["main"]["image"] == "nginx:1.25"  # untouched by the patch
    assert [e["name"] for e in by_name["main"]["env"]] == ["A", "B", "C"]
    # $patch: delete removes one list item by its merge key.
    kubectl("patch", "deployment", "web", "-p", json.dumps({"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "$patch": "delete"}]}}}}))
    containers = get_json(kubectl, "deployment", "web")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["main"]


def test_server_side_apply_conflicts_and_force(kubectl: Any, tmp_path: Path) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(DEPLOYMENT)
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", str(manifest))
    obj = get_json(kubectl, "deployment", "web", "--show-managed-fields")
    managers = {(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]}
    assert ("kubectl", "Apply") in managers
    kubectl("scale", "deployment", "web", "--replicas=5")
    proc = kubectl.run("apply", "--server-side", "-f", str(manifest), check=False)
    assert proc.returncode != 0
    assert "conflict with" in proc.stderr and ".spec.replicas" in proc.stderr
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(manifest))
    assert get_json(kubectl, "deployment", "web")["spec"]["replicas"] == 2
    # A field dropped from the applied configuration is removed when nobody else owns it.
    manifest.write_text(DEPLOYMENT.replace(', {name: B, value: "2"}', ""))
    kubectl("apply", "--server-side", "-f", str(manifest))
    env = get_json(kubectl, "deployment", "web")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env] == ["A"]


def test_server_side_apply_creates_and_applies_status_separately(apiserver: ThreadedApiServer) -> None:
    url = apiserver.url + "/api/v1/namespaces/default/configmaps/ssa"
    headers = {"Content-Type": "application/apply-patch+yaml"}
    body = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {k: v}\n"
    r = httpx.patch(url, params={"fieldManager": "me"}, content=body, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["data"] == {"k": "v"}
    r = httpx.patch(url, content=body, headers=headers)
    assert r.status_code == 400 and "fieldManager" in r.json()["message"]
    # status of a Service applied through the status subresource by another manager leaves spec alone
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
           "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}
    surl = apiserver.url + "/api/v1/namespaces/default/services/lb"
    assert httpx.patch(surl, params={"fieldManager": "user"}, json=svc, headers=headers).status_code == 201
    status = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
              "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}
    r = httpx.patch(surl + "/status", params={"fieldManager": "ccm"}, json=status, headers=headers)
    assert r.status_code == 200, r.text
    got = httpx.get(surl).json()
    assert got["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.7"}]
    assert got["spec"]["ports"][0]["port"] == 80
    assert {"ccm", "user"} <= {m["manager"] for m in got["metadata"]["managedFields"]}


# ------------------------------------------------------------------------------------------- OpenAPI and validation


def test_explain_uses_openapi_v3(kubectl: Any) -> None:
    out = kubectl("explain", "deployment.spec.strategy")
    assert "KIND:       Deployment" in out and "rollingUpdate" in out


def test_strict_validation_rejects_unknown_fields(kubectl: Any) -> None:
    bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndta: {x: y}\n"
    proc = kubectl.run("create", "-f", "-", input=bad, check=False)
    assert proc.returncode != 0 and 'unknown field "dta"' in proc.stderr
    proc = kubectl.run("create", "-f", "-", "--validate=warn", input=bad, check=False)
    assert proc.returncode == 0 and 'unknown field "dta"' in proc.stderr
    assert "dta" not in get_json(kubectl, "configmap", "typo")  # dropped, as upstream's decoder does


def test_openapi_v2_absent_does_not_break_kubectl(apiserver: ThreadedApiServer, kubectl: Any) -> None:
    assert httpx.get(apiserver.url + "/openapi/v2").status_code == 404
    root = httpx.get(apiserver.url + "/openapi/v3").json()
    assert "apis/apps/v1" in root["paths"] and "api/v1" in root["paths"]
    assert "created" in kubectl("create", "-f", "-", input=DEPLOYMENT)


# ------------------------------------------------------------------------------------------- tables and discovery


def test_pod_table_columns_and_wide(apiserver: ThreadedApiServer, kubectl: Any) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox"}]}}
    base = apiserver.url + "/api/v1/namespaces/default/pods"
    assert httpx.post(base, json=pod).status_code == 201
    got = httpx.get(base + "/p").json()
    got["status"] = {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
        {"name": "c", "ready": True, "restartCount": 2, "image": "busybox", "imageID": "", "state": {"running": {}}}]}
    assert httpx.put(base + "/p/status", json=got).status_code == 200
    lines = kubectl("get", "pods").splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines[1].split()[:4] == ["p", "1/1", "Running", "2"]
    wide = kubectl("get", "pods", "-o", "wide").splitlines()
    assert wide[0].split()[5:7] == ["IP", "NODE"]
    assert "10.244.0.5" in wide[1] and "node-1" in wide[1]
    table = httpx.get(base, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
                      params={"includeObject": "Object"}).json()
    assert table["kind"] == "Table" and table["rows"][0]["object"]["kind"] == "Pod"


def test_service_and_deployment_columns(kubectl: Any) -> None:
    kubectl("create", "-f", "-", input=DEPLOYMENT)
    svc = ("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n"
           "  ports: [{port: 80, nodePort: 30080}]\n")
    kubectl("create", "-f", "-", input=svc)
    lines = kubectl("get", "svc", "web").splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert lines[1].split()[1] == "NodePort" and "80:30080/TCP" in lines[1]
    lines = kubectl("get", "deploy", "web").splitlines()
    assert lines[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert lines[1].split()[:2] == ["web", "0/2"]


def test_aggregated_discovery(apiserver: ThreadedApiServer) -> None:
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    r = httpx.get(apiserver.url + "/apis", headers={"Accept": accept})
    assert r.headers["content-type"].startswith("application/json;g=apidiscovery.k8s.io;v=v2")
    groups = {g["metadata"]["name"]: g for g in r.json()["items"]}
    deployments = [res for res in groups["apps"]["versions"][0]["resources"] if res["resource"] == "deployments"]
    assert deployments[0]["responseKind"]["kind"] == "Deployment"
    assert {s["subresource"] for s in deployments[0]["subresources"]} == {"status", "scale"}
    legacy = httpx.get(apiserver.url + "/apis").json()
    assert legacy["kind"] == "APIGroupList"


# ------------------------------------------------------------------------------------------- CRDs


def crd_manifest(scope: str = "Namespaced", versions: tuple[str, ...] = ("v1",)) -> dict[str, Any]:
    crd = yaml.safe_load((EXAMPLES / "widget-crd.yaml").read_text())
    crd["spec"]["scope"] = scope
    base = crd["spec"]["versions"][0]
    crd["spec"]["versions"] = [dict(base, name=v, storage=(i == 0)) for i, v in enumerate(versions)]
    return crd


def test_crd_lifecycle_with_kubectl(kubectl: Any) -> None:
    kubectl("apply", "-f", str(EXAMPLES / "widget-crd.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=10s")
    kubectl("apply", "--validate=false", "-f", "-", input="apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\n"
                                     "spec: {size: small, junk: 1}\n")
    lines = kubectl("get", "wd").splitlines()  # short name from the CRD
    assert lines[0].split() == ["NAME", "SIZE", "REPLICAS", "PHASE", "AGE"]
    assert lines[1].split()[:3] == ["w1", "small", "1"]  # replicas defaulted from the schema
    w1 = get_json(kubectl, "widget", "w1")
    assert "junk" not in w1["spec"] and w1["metadata"]["generation"] == 1  # pruned
    proc = kubectl.run("apply", "-f", "-", check=False,
                       input="apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: huge}\n")
    assert proc.returncode != 0 and 'Unsupported value: "huge"' in proc.stderr
    kubectl("scale", "widget", "w1", "--replicas=3")
    assert get_json(kubectl, "widget", "w1")["spec"]["replicas"] == 3
    assert "Widget" in kubectl("explain", "widgets.spec")
    kubectl("delete", "crd", "widgets.example.com", "--wait", "--timeout=20s")
    proc = kubectl.run("get", "widgets", check=False)
    assert proc.returncode != 0


def test_crd_cluster_scope_multiple_versions_and_status(apiserver: ThreadedApiServer) -> None:
    crd = crd_manifest("Cluster", ("v1", "v1beta1"))
    r = httpx.post(apiserver.url + "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
    assert r.status_code == 201, r.text
    base = apiserver.url + "/apis/example.com/v1/widgets"
    wait_for(lambda: httpx.get(base).status_code == 200, timeout=5)
    w = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "c1"}, "spec": {"size": "large"},
         "status": {"phase": "ignored on create"}}
    created = httpx.post(base, json=w).json()
    assert "status" not in created and "namespace" not in created["metadata"]
    beta = httpx.get(apiserver.url + "/apis/example.com/v1beta1/widgets/c1").json()
    assert beta["apiVersion"] == "example.com/v1beta1" and beta["spec"]["size"] == "large"
    created["status"] = {"phase": "Ready"}
    created["spec"]["size"] = "small"
    after = httpx.put(base + "/c1/status", json=created).json()
    assert after["status"]["phase"] == "Ready" and after["spec"]["size"] == "large"  # spec ignored on /status
    assert after["metadata"]["generation"] == 1


def test_example_operator_reconciles_widgets(apiserver: ThreadedApiServer) -> None:
    import sys
    sys.path.insert(0, str(EXAMPLES))
    try:
        from widget_operator import WidgetOperator
    finally:
        sys.path.remove(str(EXAMPLES))
    from controlplane.client import ApiClient

    crd = yaml.safe_load((EXAMPLES / "widget-crd.yaml").read_text())
    assert httpx.post(apiserver.url + "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                      json=crd).status_code == 201
    base = apiserver.url + "/apis/example.com/v1/namespaces/default/widgets"
    wait_for(lambda: httpx.get(base).status_code == 200, timeout=5)

    async def scenario() -> None:
        async with ApiClient(apiserver.url) as client:
            operator = WidgetOperator(client)
            await operator.start()
            try:
                await client.create(_widgets(), {"apiVersion": "example.com/v1", "kind": "Widget",
                                                 "metadata": {"name": "w"}, "spec": {"size": "large"}}, "default")
                await _eventually(lambda: _cm_size(apiserver, "w-config") == "large")
                await _eventually(lambda: httpx.get(base + "/w").json().get("status", {}).get("phase") == "Ready")
                # Change the widget: the ConfigMap follows (level-based).
                await client.patch(_widgets(), "w", {"spec": {"size": "small"}}, "default", patch_type="merge")
                await _eventually(lambda: _cm_size(apiserver, "w-config") == "small")
                # Delete the ConfigMap behind its back: it comes back.
                httpx.delete(apiserver.url + "/api/v1/namespaces/default/configmaps/w-config")
                await _eventually(lambda: _cm_size(apiserver, "w-config") == "small")
            finally:
                await operator.stop()

    asyncio.run(scenario())  # the test's own loop; the API server runs on its own in another thread


def _widgets() -> Any:
    from controlplane.client import Resource
    return Resource("example.com", "v1", "widgets", "Widget", namespaced=True)


def _cm_size(apiserver: ThreadedApiServer, name: str) -> str | None:
    r = httpx.get(apiserver.url + f"/api/v1/namespaces/default/configmaps/{name}")
    return r.json().get("data", {}).get("size") if r.status_code == 200 else None


async def _eventually(predicate: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------------- kubectl verbs


def test_describe_diff_edit_replace_and_server_dry_run(kubectl: Any, tmp_path: Path) -> None:
    kubectl("apply", "-f", "-", input=DEPLOYMENT)
    described = kubectl("describe", "deployment", "web")
    assert "Replicas:" in described and "nginx:1.25" in described
    changed = tmp_path / "web.yaml"
    changed.write_text(DEPLOYMENT.replace("nginx:1.25", "nginx:1.26"))
    diff = kubectl.run("diff", "-f", str(changed), check=False)
    assert diff.returncode == 1  # kubectl diff exits 1 when there are differences
    assert any(line.startswith("+") and "nginx:1.26" in line for line in diff.stdout.splitlines())
    assert "(server dry run)" in kubectl("apply", "-f", str(changed), "--dry-run=server")
    assert get_json(kubectl, "deployment", "web")["spec"]["template"]["spec"]["containers"][0]["image"] \
        == "nginx:1.25"
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/replicas: 2/replicas: 4/' \"$1\"\n")
    editor.chmod(editor.stat().st_mode | stat.S_IEXEC)
    kubectl.env["KUBE_EDITOR"] = str(editor)
    assert "edited" in kubectl("edit", "deployment", "web")
    assert get_json(kubectl, "deployment", "web")["spec"]["replicas"] == 4
    current = yaml.safe_load(kubectl("get", "deployment", "web", "-o", "yaml"))
    current["spec"]["replicas"] = 1
    assert "replaced" in kubectl("replace", "-f", "-", input=yaml.safe_dump(current))
    assert get_json(kubectl, "deployment", "web")["spec"]["replicas"] == 1


def test_events_sort_by_and_describe_shows_events(apiserver: ThreadedApiServer, kubectl: Any) -> None:
    kubectl("create", "-f", "-", input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    uid = get_json(kubectl, "configmap", "c")["metadata"]["uid"]
    for i, ts in enumerate(["2026-01-01T00:00:02Z", "2026-01-01T00:00:01Z"]):
        ev = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"e{i}"}, "reason": f"R{i}",
              "message": f"m{i}", "type": "Normal", "lastTimestamp": ts, "firstTimestamp": ts, "count": 1,
              "involvedObject": {"kind": "ConfigMap", "name": "c", "namespace": "default", "uid": uid,
                                 "apiVersion": "v1"}, "source": {"component": "test"}}
        assert httpx.post(apiserver.url + "/api/v1/namespaces/default/events", json=ev).status_code == 201
    lines = kubectl("get", "events", "--sort-by=.lastTimestamp").splitlines()
    assert lines[0].split()[:2] == ["LAST", "SEEN"]
    assert "R1" in lines[1] and "R0" in lines[2]
    described = kubectl("describe", "configmap", "c")
    assert "R0" in described and "R1" in described


def test_python_dynamic_client_and_create_from_yaml(apiserver: ThreadedApiServer, tmp_path: Path) -> None:
    from kubernetes import dynamic, utils
    config = kubernetes.client.Configuration()
    config.host = apiserver.url
    with kubernetes.client.ApiClient(config) as api:
        manifest = tmp_path / "all.yaml"
        manifest.write_text(DEPLOYMENT + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\n"
                            "data: {a: b}\n")
        created = utils.create_from_yaml(api, str(manifest), namespace="default")
        assert len(created) == 2
        client = dynamic.DynamicClient(api)
        deployments = client.resources.get(api_version="apps/v1", kind="Deployment")
        web = deployments.get(name="web", namespace="default")
        assert web.spec.replicas == 2
        deployments.patch(name="web", namespace="default", body={"spec": {"replicas": 3}},
                          content_type="application/merge-patch+json")
        assert deployments.get(name="web", namespace="default").spec.replicas == 3
        cms = client.resources.get(api_version="v1", kind="ConfigMap")
        names = {item.metadata.name for item in cms.get(namespace="default").items}
        assert "cfg" in names


def test_watch_list_initial_events_then_bookmark(apiserver: ThreadedApiServer) -> None:
    for i in range(3):
        httpx.post(apiserver.url + "/api/v1/namespaces/default/configmaps",
                   json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"w{i}"}})
    params = {"watch": "true", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
              "allowWatchBookmarks": "true", "timeoutSeconds": "2"}
    events = []
    with httpx.stream("GET", apiserver.url + "/api/v1/namespaces/default/configmaps", params=params) as r:
        for line in r.iter_lines():
            if line:
                events.append(json.loads(line))
            if events and events[-1]["type"] == "BOOKMARK":
                break
    assert [e["type"] for e in events[:3]] == ["ADDED"] * 3
    assert events[3]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    # Without the required companions the request is refused, never silently ignored.
    r = httpx.get(apiserver.url + "/api/v1/configmaps", params={"watch": "true", "sendInitialEvents": "true"})
    assert r.status_code == 422

