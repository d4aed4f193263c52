"""The real kubectl on PATH against ccmkit's API server: the commands people type every day, checked by what kubectl
prints. kubectl is the strictest client we have (discovery, OpenAPI, server-side field validation, tables, watch
framing, patch types), so these tests are the first line of "does it behave like a real cluster"."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import kubernetes
import pytest
import yaml
from apiserver_helpers import LineReader, wait_until, watcher_count

pytestmark = pytest.mark.kubectl

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports: [{containerPort: 80}]
"""

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: demo}}
spec:
  containers:
  - name: main
    image: busybox:1.36
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def table(output: str) -> list[list[str]]:
    """kubectl's table output as rows of cells (the header row first)."""
    return [line.split() for line in output.strip().splitlines()]


def column(output: str, header: str) -> list[str]:
    """The cells of one column, found by the header's character position (cells may be empty or contain spaces)."""
    lines = output.rstrip("\n").splitlines()
    start = lines[0].index(header)
    following = [lines[0].find(" ", start + len(header))]
    end = following[0] if following[0] != -1 else None
    if end is not None:
        while end < len(lines[0]) and lines[0][end] == " ":
            end += 1
    return [line[start:end].strip() if end else line[start:].strip() for line in lines[1:]]


# ---------------------------------------------------------------------------------------------------- get


def test_get_namespaces_lists_the_initial_ones(kubectl) -> None:
    rows = table(kubectl("get", "namespaces"))
    assert rows[0][:2] == ["NAME", "STATUS"]
    assert {r[0]: r[1] for r in rows[1:]} == {
        "default": "Active", "kube-system": "Active", "kube-public": "Active", "kube-node-lease": "Active"}


def test_get_pods_nodes_and_any_kind(kubectl, tmp_path: Path) -> None:
    assert kubectl.run("get", "pods").stderr.strip() == "No resources found in default namespace."
    kubectl("create", "-f", write(tmp_path, "pod.yaml", POD.format(name="p1")))
    rows = table(kubectl("get", "pods"))
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows[1][:4] == ["p1", "0/1", "Pending", "0"]

    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {"zone": "z1"}}}
    kubectl("create", "-f", "-", input=json.dumps(node))
    rows = table(kubectl("get", "nodes", "--show-labels"))
    assert rows[0][:2] == ["NAME", "STATUS"] and rows[0][-1] == "LABELS"
    assert rows[1][0] == "node-a" and rows[1][-1] == "zone=z1"

    # Any kind, by plural, singular, short name and group-qualified name.
    for name in ("services", "service", "svc", "services.v1.", "svc/kubernetes"):
        assert "kubernetes" in kubectl("get", name, "-n", "default"), name
    assert kubectl("get", "leases.coordination.k8s.io", "-A", "-o", "name") == ""
    assert "No resources found" in kubectl.run("get", "cronjobs").stderr
    missing = kubectl.run("get", "widgets", check=False)
    assert missing.returncode != 0
    assert "the server doesn't have a resource type \"widgets\"" in missing.stderr


def test_get_all_namespaces_and_a_missing_object(kubectl) -> None:
    rows = table(kubectl("get", "services", "-A"))
    assert rows[0][:2] == ["NAMESPACE", "NAME"]
    assert ["default", "kubernetes"] == rows[1][:2]
    missing = kubectl.run("get", "configmap", "nope", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): configmaps "nope" not found'


# ---------------------------------------------------------------------------------------------------- create / apply


def test_create_with_validation(kubectl, tmp_path: Path) -> None:
    path = write(tmp_path, "deploy.yaml", DEPLOYMENT)
    assert kubectl("create", "-f", path).strip() == "deployment.apps/web created"
    again = kubectl.run("create", "-f", path, check=False)
    assert again.returncode == 1
    assert 'Error from server (AlreadyExists): error when creating "' in again.stderr
    assert 'deployments.apps "web" already exists' in again.stderr

    bad_name = write(tmp_path, "bad.yaml", POD.format(name="Bad_Name"))
    result = kubectl.run("create", "-f", bad_name, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith('The Pod "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": ')


def test_create_rejects_unknown_fields_when_validating(kubectl, tmp_path: Path) -> None:
    # kubectl's default --validate=strict asks the server (fieldValidation=Strict) to refuse unknown fields.
    pod = yaml.safe_load(POD.format(name="strict"))
    pod["spec"]["containers"][0]["imagePolicy"] = "Always"
    path = write(tmp_path, "pod.yaml", yaml.safe_dump(pod))
    result = kubectl.run("create", "-f", path, check=False)
    assert result.returncode == 1, result.stdout
    assert "Error from server (BadRequest)" in result.stderr
    assert 'strict decoding error: unknown field "spec.containers[0].imagePolicy"' in result.stderr
    assert kubectl.run("get", "pod", "strict", check=False).returncode == 1

    # --validate=false sends fieldValidation=Ignore: the unknown field is dropped, the pod is created.
    assert kubectl("create", "-f", path, "--validate=false").strip() == "pod/strict created"
    stored = json.loads(kubectl("get", "pod", "strict", "-o", "json"))
    assert "imagePolicy" not in stored["spec"]["containers"][0]


@pytest.mark.every_store
def test_apply_creates_updates_and_is_idempotent(kubectl, tmp_path: Path) -> None:
    path = write(tmp_path, "deploy.yaml", DEPLOYMENT)
    assert kubectl("apply", "-f", path).strip() == "deployment.apps/web created"
    assert kubectl("apply", "-f", path).strip() == "deployment.apps/web unchanged"
    generation = kubectl("get", "deploy", "web", "-o", "jsonpath={.metadata.generation}")
    assert generation == "1"

    write(tmp_path, "deploy.yaml", DEPLOYMENT.replace("replicas: 2", "replicas: 3"))
    assert kubectl("apply", "-f", path).strip() == "deployment.apps/web configured"
    assert kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.metadata.generation}") == "3 2"
    applied = json.loads(kubectl("get", "deploy", "web", "-o",
                                 "jsonpath={.metadata.annotations.kubectl\\.kubernetes\\.io/last-applied-configuration}"))
    assert applied["spec"]["replicas"] == 3

    # Removing a field from the manifest removes it from the object (three-way merge with last-applied).
    manifest = yaml.safe_load(DEPLOYMENT)
    manifest["metadata"]["labels"] = {}
    write(tmp_path, "deploy.yaml", yaml.safe_dump(manifest))
    assert kubectl("apply", "-f", path).strip() == "deployment.apps/web configured"
    assert kubectl("get", "deploy", "web", "-o", "jsonpath={.metadata.labels}") == ""


def test_apply_a_multi_document_file_across_kinds(kubectl, tmp_path: Path) -> None:
    docs = textwrap.dedent("""\
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: settings, namespace: shop}
        data: {color: blue}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: front, namespace: shop}
        spec:
          selector: {app: front}
          ports: [{port: 80, targetPort: 8080}]
        """)
    path = write(tmp_path, "all.yaml", docs)
    assert kubectl("apply", "-f", path).splitlines() == [
        "namespace/shop created", "configmap/settings created", "service/front created"]
    assert kubectl("apply", "-f", path).splitlines() == [
        "namespace/shop unchanged", "configmap/settings unchanged", "service/front unchanged"]
    assert kubectl("get", "cm", "settings", "-n", "shop", "-o", "jsonpath={.data.color}") == "blue"


# ---------------------------------------------------------------------------------------------------- delete / wait


@pytest.mark.every_store
def test_delete_with_wait(kubectl, tmp_path: Path) -> None:
    kubectl("create", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "doomed"}, "data": {"a": "b"}}))
    assert kubectl("delete", "configmap", "doomed", "--wait").strip() == 'configmap "doomed" deleted'
    assert kubectl.run("get", "configmap", "doomed", check=False).returncode == 1
    missing = kubectl.run("delete", "configmap", "doomed", check=False)
    assert missing.returncode == 1
    assert 'configmaps "doomed" not found' in missing.stderr
    assert kubectl("delete", "configmap", "doomed", "--ignore-not-found").strip() == ""


def test_delete_by_label_and_from_file(kubectl, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": name, "labels": {"batch": "one" if name != "c" else "two"}}}))
    deleted = kubectl("delete", "configmaps", "-l", "batch=one").splitlines()
    assert sorted(deleted) == ['configmap "a" deleted', 'configmap "b" deleted']
    assert kubectl("get", "cm", "-o", "name").split() == ["configmap/c"]

    path = write(tmp_path, "deploy.yaml", DEPLOYMENT)
    kubectl("apply", "-f", path)
    assert kubectl("delete", "-f", path, "--wait").strip() == 'deployment.apps "web" deleted'


@pytest.mark.every_store
def test_wait_for_delete_waits_for_the_last_finalizer(apiserver, kubectl, k8s) -> None:
    core = kubernetes.client.CoreV1Api(k8s)
    core.create_namespaced_config_map("default", {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    kubectl("delete", "configmap", "held", "--wait=false")
    waiter = kubectl.popen("wait", "--for=delete", "configmap/held", "--timeout=30s")
    # Still there (with a deletionTimestamp) while the finalizer is on it: kubectl finds it and starts watching.
    assert core.read_namespaced_config_map("held", "default").metadata.deletion_timestamp is not None
    wait_until(lambda: watcher_count(apiserver, "", "v1", "configmaps") > 0, message="kubectl wait is watching")
    assert waiter.poll() is None
    core.patch_namespaced_config_map("held", "default", {"metadata": {"finalizers": None}})
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert out.strip() == "configmap/held condition met"


def test_wait_for_condition_set_through_the_status_subresource(kubectl, k8s) -> None:
    core = kubernetes.client.CoreV1Api(k8s)
    core.create_node({"metadata": {"name": "worker-1"}})
    not_ready = kubectl.run("wait", "--for=condition=Ready", "node/worker-1", "--timeout=1s", check=False)
    assert not_ready.returncode == 1
    assert "timed out waiting for the condition" in not_ready.stderr

    waiter = kubectl.popen("wait", "--for=condition=Ready", "node/worker-1", "--timeout=30s")
    core.patch_node_status("worker-1", {"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready",
         "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert out.strip() == "node/worker-1 condition met"
    assert table(kubectl("get", "node", "worker-1"))[1][1] == "Ready"


def test_wait_for_jsonpath(kubectl, k8s) -> None:
    apps = kubernetes.client.AppsV1Api(k8s)
    apps.create_namespaced_deployment("default", yaml.safe_load(DEPLOYMENT))
    waiter = kubectl.popen("wait", "--for=jsonpath={.status.readyReplicas}=2", "deployment/web", "--timeout=30s")
    apps.patch_namespaced_deployment_status("web", "default", {"status": {"replicas": 2, "readyReplicas": 2}})
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert out.strip() == "deployment.apps/web condition met"
    assert table(kubectl("get", "deploy", "web"))[1][1] == "2/2"


# ---------------------------------------------------------------------------------------------------- watch


@pytest.mark.every_store
def test_get_watch_streams_added_modified_deleted(kubectl) -> None:
    watch = LineReader(kubectl.popen("get", "configmaps", "-w", "--output-watch-events"))
    try:
        # kubectl prints the header with the first row, so the first event comes before any output.
        kubectl("create", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "watched"}, "data": {"a": "1"}}))
        header = watch.wait_for(lambda line: line.startswith("EVENT"))
        assert header.split() == ["EVENT", "NAME", "DATA", "AGE"]
        assert watch.wait_for(lambda line: "watched" in line).split()[:3] == ["ADDED", "watched", "1"]
        kubectl("patch", "configmap", "watched", "--type=merge", "-p", '{"data":{"b":"2"}}')
        assert watch.wait_for(lambda line: "watched" in line).split()[:3] == ["MODIFIED", "watched", "2"]
        kubectl("delete", "configmap", "watched")
        assert watch.wait_for(lambda line: "watched" in line).split()[:2] == ["DELETED", "watched"]
    finally:
        watch.stop()


def test_get_watch_with_a_selector_in_json(kubectl) -> None:
    watch = LineReader(kubectl.popen("get", "pods", "-w", "-l", "app=demo", "-o", "jsonpath={.metadata.name}{\"\\n\"}"))
    try:
        kubectl("create", "-f", "-", input=json.dumps(yaml.safe_load(POD.format(name="other")) | {
            "metadata": {"name": "other", "labels": {"app": "other"}}}))
        kubectl("create", "-f", "-", input=json.dumps(yaml.safe_load(POD.format(name="mine"))))
        assert watch.wait_for(lambda line: line.strip() != "") == "mine"
    finally:
        watch.stop()
    assert "other" not in watch.lines


# ---------------------------------------------------------------------------------------------------- edits


def test_label_and_annotate(kubectl, tmp_path: Path) -> None:
    kubectl("apply", "-f", write(tmp_path, "deploy.yaml", DEPLOYMENT))
    assert kubectl("label", "deploy", "web", "tier=front").strip() == "deployment.apps/web labeled"
    assert kubectl("annotate", "deploy", "web", "owner=team-a").strip() == "deployment.apps/web annotated"
    rows = table(kubectl("get", "deploy", "web", "--show-labels"))
    assert rows[1][-1] == "app=web,tier=front"
    assert kubectl("get", "deploy", "-l", "tier=front", "-o", "name").strip() == "deployment.apps/web"
    assert kubectl("get", "deploy", "web", "-o", "jsonpath={.metadata.annotations.owner}") == "team-a"

    clash = kubectl.run("label", "deploy", "web", "tier=back", check=False)
    assert clash.returncode == 1 and "already has a value (front)" in clash.stderr
    assert kubectl("label", "deploy", "web", "tier=back", "--overwrite").strip() == "deployment.apps/web labeled"
    assert kubectl("label", "deploy", "web", "tier-").strip() == "deployment.apps/web unlabeled"
    assert kubectl("get", "deploy", "web", "-o", "jsonpath={.metadata.labels}") == '{"app":"web"}'
    assert kubectl("annotate", "deploy", "web", "owner-").strip() == "deployment.apps/web annotated"
    bad = kubectl.run("label", "deploy", "web", "tier=not valid!", check=False)
    assert bad.returncode == 1


def test_patch_merge_json_and_strategic(kubectl, tmp_path: Path) -> None:
    kubectl("apply", "-f", write(tmp_path, "deploy.yaml", DEPLOYMENT))
    assert kubectl("patch", "deploy", "web", "--type=merge", "-p", '{"spec":{"replicas":1}}').strip() == \
        "deployment.apps/web patched"
    assert kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}") == "1"

    assert kubectl("patch", "deploy", "web", "--type=json",
                   "-p", '[{"op":"replace","path":"/spec/replicas","value":4}]').strip() == "deployment.apps/web patched"
    assert kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}") == "4"
    failed = kubectl.run("patch", "deploy", "web", "--type=json",
                         "-p", '[{"op":"test","path":"/spec/replicas","value":9}]', check=False)
    assert failed.returncode == 1

    # A strategic merge patch merges the containers list by name instead of replacing it.
    kubectl("patch", "deploy", "web", "--type=strategic", "-p", json.dumps({"spec": {"template": {"spec": {
        "containers": [{"name": "sidecar", "image": "envoy:1.30"}]}}}}))
    images = kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].image}")
    assert sorted(images.split()) == ["envoy:1.30", "nginx:1.25"]
    kubectl("patch", "deploy", "web", "-p", json.dumps({"spec": {"template": {"spec": {
        "containers": [{"name": "nginx", "image": "nginx:1.26"}]}}}}))
    images = kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].image}")
    assert sorted(images.split()) == ["envoy:1.30", "nginx:1.26"]
    no_change = kubectl("patch", "deploy", "web", "--type=merge", "-p", '{"spec":{"replicas":4}}')
    assert no_change.strip() == "deployment.apps/web patched (no change)"


def test_scale(kubectl, tmp_path: Path) -> None:
    kubectl("apply", "-f", write(tmp_path, "deploy.yaml", DEPLOYMENT))
    assert kubectl("scale", "deploy", "web", "--replicas=5").strip() == "deployment.apps/web scaled"
    assert kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}") == "5"
    stale = kubectl.run("scale", "deploy", "web", "--replicas=1", "--current-replicas=3", check=False)
    assert stale.returncode == 1
    assert "Expected replicas to be 3, was 5" in stale.stderr
    assert kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}") == "5"


# ---------------------------------------------------------------------------------------------------- discovery / output


def test_api_resources(kubectl) -> None:
    rows = table(kubectl("api-resources"))
    assert rows[0] == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    by_name = {(r[0], r[-3]): r for r in rows[1:]}  # (name, apiVersion); SHORTNAMES may be blank
    assert by_name[("pods", "v1")] == ["pods", "po", "v1", "true", "Pod"]
    assert by_name[("deployments", "apps/v1")] == ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    assert by_name[("nodes", "v1")] == ["nodes", "no", "v1", "false", "Node"]
    namespaced = kubectl("api-resources", "--namespaced=false", "-o", "name").split()
    assert "namespaces" in namespaced and "pods" not in namespaced
    verbs = table(kubectl("api-resources", "--api-group=apps", "-o", "wide"))
    assert "VERBS" in verbs[0]
    versions = kubectl("api-versions").split()
    assert {"v1", "apps/v1", "batch/v1", "coordination.k8s.io/v1"} <= set(versions)
    assert by_name[("bindings", "v1")] == ["bindings", "v1", "true", "Binding"]


def test_output_formats(kubectl, tmp_path: Path) -> None:
    kubectl("apply", "-f", write(tmp_path, "deploy.yaml", DEPLOYMENT))
    as_json = json.loads(kubectl("get", "deploy", "web", "-o", "json"))
    assert (as_json["kind"], as_json["apiVersion"], as_json["metadata"]["name"]) == ("Deployment", "apps/v1", "web")
    assert int(as_json["metadata"]["resourceVersion"]) > 0
    as_list = json.loads(kubectl("get", "deploy", "-o", "json"))
    assert as_list["kind"] == "List" and [i["metadata"]["name"] for i in as_list["items"]] == ["web"]
    as_yaml = yaml.safe_load(kubectl("get", "deploy", "web", "-o", "yaml"))
    assert as_yaml["spec"]["replicas"] == 2 and as_yaml["metadata"]["uid"] == as_json["metadata"]["uid"]
    assert kubectl("get", "deploy", "web", "-o", "name").strip() == "deployment.apps/web"
    assert kubectl("get", "namespaces", "-o", "jsonpath={.items[*].metadata.name}").split() == [
        "default", "kube-node-lease", "kube-public", "kube-system"]
    assert kubectl("get", "deploy", "web", "-o",
                   "custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas").split() == [
        "NAME", "REPLICAS", "web", "2"]


def test_wide_output_of_pods_services_deployments(kubectl, k8s, tmp_path: Path) -> None:
    core = kubernetes.client.CoreV1Api(k8s)
    kubectl("create", "-f", write(tmp_path, "pod.yaml", POD.format(name="p1")))
    core.create_namespaced_binding("default", {"metadata": {"name": "p1"}, "target": {"kind": "Node", "name": "node-7"}},
                                   _preload_content=False)
    core.patch_namespaced_pod_status("p1", "default", {"status": {"podIP": "10.244.0.9", "phase": "Running"}})
    pods = kubectl("get", "pods", "-o", "wide")
    assert table(pods)[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
                              "READINESS", "GATES"]
    assert column(pods, "IP") == ["10.244.0.9"]
    assert column(pods, "NODE") == ["node-7"]
    assert column(pods, "STATUS") == ["Running"]

    kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "front"},
                                                   "spec": {"type": "NodePort", "selector": {"app": "demo"},
                                                            "ports": [{"port": 80, "targetPort": 8080}]}}))
    services = kubectl("get", "services", "-o", "wide")
    assert table(services)[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    front = next(r for r in table(services)[1:] if r[0] == "front")
    assert front[1] == "NodePort" and front[2].startswith("10.") and front[3] == "<none>"
    assert front[4].startswith("80:") and front[4].endswith("/TCP") and front[6] == "app=demo"

    kubectl("apply", "-f", write(tmp_path, "deploy.yaml", DEPLOYMENT))
    deployments = kubectl("get", "deployments", "-o", "wide")
    assert table(deployments)[0] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES",
                                     "SELECTOR"]
    assert table(deployments)[1][0] == "web" and table(deployments)[1][-3:] == ["nginx", "nginx:1.25", "app=web"]


def test_dry_run_server_creates_nothing(kubectl, tmp_path: Path) -> None:
    path = write(tmp_path, "deploy.yaml", DEPLOYMENT)
    assert kubectl("apply", "-f", path, "--dry-run=server").strip() == "deployment.apps/web created (server dry run)"
    assert kubectl.run("get", "deploy", "web", check=False).returncode == 1
    assert kubectl("create", "-f", path, "--dry-run=server").strip() == "deployment.apps/web created (server dry run)"
    assert kubectl.run("get", "deploy", "web", check=False).returncode == 1
