"""The requests each verb builds — paths, query parameters, bodies, content types — without any I/O."""

from __future__ import annotations

import orjson
import pytest

from controlplane.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    HORIZONTALPODAUTOSCALERS,
    NODES,
    PODS,
    Resource,
    resource_for,
)
from controlplane.client import protocol


def test_paths_for_core_and_named_groups() -> None:
    assert PODS.path() == "/api/v1/pods"
    assert PODS.path(None, "kube-system") == "/api/v1/namespaces/kube-system/pods"
    assert PODS.path("web-0", "default", "binding") == "/api/v1/namespaces/default/pods/web-0/binding"
    assert NODES.path("n1", "ignored-for-cluster-scope") == "/api/v1/nodes/n1"
    assert DEPLOYMENTS.path("web", "prod", "scale") == "/apis/apps/v1/namespaces/prod/deployments/web/scale"
    assert HORIZONTALPODAUTOSCALERS.api_version == "autoscaling/v2"
    assert Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False).path(
        "system:node"
    ) == "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:node"
    with pytest.raises(ValueError):
        PODS.path("web-0")  # namespaced object without a namespace
    with pytest.raises(ValueError):
        PODS.path(None, "default", "status")


def test_resource_for() -> None:
    assert resource_for("v1", "ConfigMap") is CONFIGMAPS
    assert resource_for("apps/v1", "Deployment") is DEPLOYMENTS
    assert resource_for("coordination.k8s.io/v1", "Lease").plural == "leases"
    with pytest.raises(KeyError):
        resource_for("example.com/v1", "Widget")


def test_list_params_and_selectors() -> None:
    req = protocol.list_request(
        PODS, "default", label_selector={"app": "web", "tier": "fe"}, field_selector="spec.nodeName=n1",
        limit=50, resource_version="100",
    )
    assert (req.method, req.path) == ("GET", "/api/v1/namespaces/default/pods")
    assert req.params == {"labelSelector": "app=web,tier=fe", "fieldSelector": "spec.nodeName=n1", "limit": "50",
                          "resourceVersion": "100"}
    # A continue token pins the snapshot; the server rejects a resourceVersion beside it.
    req = protocol.list_request(PODS, None, limit=50, continue_="abc", resource_version="100")
    assert req.params == {"limit": "50", "continue": "abc"}


def test_watch_params() -> None:
    req = protocol.watch_request(NODES, None, resource_version="7", timeout_seconds=5, allow_bookmarks=False)
    assert req.path == "/api/v1/nodes"
    assert req.params == {"watch": "true", "resourceVersion": "7", "timeoutSeconds": "5"}


@pytest.mark.parametrize(
    ("patch_type", "content_type", "body"),
    [
        ("merge", "application/merge-patch+json", {"data": {"a": "1"}}),
        ("json", "application/json-patch+json", [{"op": "add", "path": "/data/a", "value": "1"}]),
        ("strategic", "application/strategic-merge-patch+json", {"data": {"a": "1"}}),
        ("apply", "application/apply-patch+yaml", {"apiVersion": "v1", "kind": "ConfigMap"}),
    ],
)
def test_patch_content_types(patch_type: str, content_type: str, body: object) -> None:
    req = protocol.patch_request(
        CONFIGMAPS, "c", body, "default", patch_type=patch_type,  # type: ignore[arg-type]
        field_manager="ccmkit" if patch_type == "apply" else None,
    )
    assert (req.method, req.path, req.content_type) == ("PATCH", "/api/v1/namespaces/default/configmaps/c",
                                                        content_type)
    assert orjson.loads(req.body) == body


def test_apply_needs_a_field_manager_and_force_only_with_apply() -> None:
    with pytest.raises(ValueError):
        protocol.patch_request(CONFIGMAPS, "c", {}, "default", patch_type="apply")
    with pytest.raises(ValueError):
        protocol.patch_request(CONFIGMAPS, "c", {}, "default", patch_type="merge", force=True)
    req = protocol.patch_request(CONFIGMAPS, "c", {}, "default", patch_type="apply", field_manager="m", force=True,
                                 subresource="status")
    assert req.path.endswith("/configmaps/c/status")
    assert req.params == {"fieldManager": "m", "force": "true"}


def test_delete_options_body() -> None:
    assert protocol.delete_request(PODS, "p", "default").body is None
    opts = protocol.delete_options(propagation_policy="Foreground", grace_period_seconds=0,
                                   preconditions={"uid": "u1", "resourceVersion": "5"})
    req = protocol.delete_request(PODS, "p", "default", opts)
    assert req.content_type == "application/json"
    assert orjson.loads(req.body) == {
        "kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground", "gracePeriodSeconds": 0,
        "preconditions": {"uid": "u1", "resourceVersion": "5"},
    }
    with pytest.raises(ValueError):
        protocol.delete_options(propagation_policy="Sometimes")


def test_create_and_update() -> None:
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    req = protocol.create_request(CONFIGMAPS, obj, "default", dry_run=True, field_manager="me")
    assert (req.method, req.path, req.params) == ("POST", "/api/v1/namespaces/default/configmaps",
                                                  {"dryRun": "All", "fieldManager": "me"})
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n"}}
    req = protocol.create_request(PODS, binding, "default", subresource="binding", name="p")
    assert req.path == "/api/v1/namespaces/default/pods/p/binding"
    req = protocol.update_request(DEPLOYMENTS, {"spec": {"replicas": 3}}, "web", "prod", subresource="scale")
    assert (req.method, req.path) == ("PUT", "/apis/apps/v1/namespaces/prod/deployments/web/scale")
