"""Bad requests get the answer a real kube-apiserver gives: a Status object with the right code and reason (and, for
422, causes naming the offending field), never a 500 or a traceback. Clients branch on these codes (retry on 409,
relist on 410, give up on 422), so each one is part of the API contract."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from apiserver_helpers import status_of

CM_PATH = "/api/v1/namespaces/default/configmaps"


def configmap(name: str, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **meta}, "data": {"a": "b"}}


def causes(body: dict[str, Any]) -> list[str]:
    return [c.get("field", "") for c in body["details"]["causes"]]


def expect(response: httpx.Response, code: int, reason: str) -> dict[str, Any]:
    assert response.status_code == code, response.text
    body = status_of(response)
    assert body["reason"] == reason, body
    return body


def test_malformed_json_is_a_bad_request(http: httpx.Client) -> None:
    response = http.post(CM_PATH, content=b'{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {',
                         headers={"Content-Type": "application/json"})
    expect(response, 400, "BadRequest")


@pytest.mark.parametrize("body", [
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}},
    {"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
    {"apiVersion": "v2", "kind": "ConfigMap", "metadata": {"name": "x"}},
])
def test_wrong_kind_or_api_version_in_the_body(http: httpx.Client, body: dict[str, Any]) -> None:
    expect(http.post(CM_PATH, json=body), 400, "BadRequest")
    assert http.get(f"{CM_PATH}/x").status_code == 404


def test_kind_and_api_version_default_from_the_url(http: httpx.Client) -> None:
    # Decoding fills a missing kind/apiVersion from the endpoint, as upstream's serializer does.
    response = http.post(CM_PATH, json={"metadata": {"name": "bare"}, "data": {"a": "b"}})
    assert response.status_code == 201, response.text
    assert (response.json()["kind"], response.json()["apiVersion"]) == ("ConfigMap", "v1")


def test_name_mismatch_between_url_and_body_on_put(http: httpx.Client) -> None:
    created = http.post(CM_PATH, json=configmap("real")).json()
    body = configmap("other", resourceVersion=created["metadata"]["resourceVersion"])
    result = expect(http.put(f"{CM_PATH}/real", json=body), 400, "BadRequest")
    assert "does not match" in result["message"]


def test_namespace_mismatch_between_url_and_body(http: httpx.Client) -> None:
    expect(http.post(CM_PATH, json=configmap("x", namespace="kube-system")), 400, "BadRequest")


def test_invalid_name_is_unprocessable(http: httpx.Client) -> None:
    body = expect(http.post(CM_PATH, json=configmap("Bad_Name")), 422, "Invalid")
    assert causes(body) == ["metadata.name"]
    assert body["details"]["causes"][0]["reason"] == "FieldValueInvalid"
    assert body["details"]["name"] == "Bad_Name" and body["details"]["kind"] == "ConfigMap"
    assert body["message"].startswith('ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"')


def test_missing_name_is_unprocessable(http: httpx.Client) -> None:
    body = expect(http.post(CM_PATH, json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}), 422, "Invalid")
    assert causes(body) == ["metadata.name"] and body["details"]["causes"][0]["reason"] == "FieldValueRequired"


def test_invalid_label_value_is_unprocessable(http: httpx.Client) -> None:
    body = expect(http.post(CM_PATH, json=configmap("labelled", labels={"app": "not valid!"})), 422, "Invalid")
    assert causes(body) == ["metadata.labels"]
    body = expect(http.post(CM_PATH, json=configmap("labelled", labels={"bad key!": "x"})), 422, "Invalid")
    assert causes(body) == ["metadata.labels"]


def test_pod_without_containers_is_unprocessable(http: httpx.Client) -> None:
    body = expect(http.post("/api/v1/namespaces/default/pods", json={
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "empty"}, "spec": {"containers": []}}),
        422, "Invalid")
    assert "spec.containers" in causes(body)
    assert body["details"]["causes"][causes(body).index("spec.containers")]["reason"] == "FieldValueRequired"


def test_deployment_selector_must_match_the_template(http: httpx.Client) -> None:
    body = expect(http.post("/apis/apps/v1/namespaces/default/deployments", json={
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "mismatch"},
        "spec": {"selector": {"matchLabels": {"app": "a"}},
                 "template": {"metadata": {"labels": {"app": "b"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}), 422, "Invalid")
    assert causes(body) == ["spec.template.metadata.labels"]
    assert "`selector` does not match template `labels`" in body["message"]


@pytest.mark.parametrize("path", [
    "/api/v1/namespaces/default/widgets",
    "/apis/example.com/v1/widgets",
    "/apis/apps/v1/namespaces/default/deployments/x/bogus",
    "/api/v2/namespaces",
    "/nope",
])
def test_unknown_resource_is_not_found(http: httpx.Client, path: str) -> None:
    expect(http.get(path), 404, "NotFound")


def test_missing_object_is_not_found_with_details(http: httpx.Client) -> None:
    body = expect(http.get(f"{CM_PATH}/ghost"), 404, "NotFound")
    assert body["message"] == 'configmaps "ghost" not found'
    assert body["details"] == {"name": "ghost", "kind": "configmaps"}
    body = expect(http.get("/apis/apps/v1/namespaces/default/deployments/ghost"), 404, "NotFound")
    assert body["message"] == 'deployments.apps "ghost" not found' and body["details"]["group"] == "apps"


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", CM_PATH),
    ("PATCH", CM_PATH),
    ("POST", f"{CM_PATH}/x"),
    ("DELETE", "/api/v1/namespaces/default/pods/x/status"),
])
def test_unsupported_method_is_not_allowed(http: httpx.Client, method: str, path: str) -> None:
    http.post(CM_PATH, json=configmap("x"))
    response = http.request(method, path, json=configmap("x"),
                            headers={"Content-Type": "application/merge-patch+json"} if method == "PATCH" else None)
    expect(response, 405, "MethodNotAllowed")


def test_body_over_three_mebibytes_is_too_large(http: httpx.Client) -> None:
    big = configmap("big")
    big["data"] = {"blob": "x" * (3 * 1024 * 1024 + 10)}
    expect(http.post(CM_PATH, json=big), 413, "RequestEntityTooLarge")
    # Without a Content-Length (chunked), the limit still holds.
    payload = json.dumps(big).encode()

    def chunks():
        for i in range(0, len(payload), 65536):
            yield payload[i:i + 65536]

    expect(http.post(CM_PATH, content=chunks(), headers={"Content-Type": "application/json"}),
           413, "RequestEntityTooLarge")
    assert http.get(f"{CM_PATH}/big").status_code == 404


def test_patch_with_an_unsupported_content_type(http: httpx.Client) -> None:
    http.post(CM_PATH, json=configmap("target"))
    response = http.patch(f"{CM_PATH}/target", content=b'{"data":{"a":"c"}}',
                          headers={"Content-Type": "text/plain"})
    expect(response, 415, "UnsupportedMediaType")
    response = http.post(CM_PATH, content=b"<ConfigMap/>", headers={"Content-Type": "application/xml"})
    expect(response, 415, "UnsupportedMediaType")


@pytest.mark.parametrize("selector", ["app in (a", "app=x=y", "=x", "a b", "app notin a", "!", "x=(y)"])
def test_bad_label_selector_syntax(http: httpx.Client, selector: str) -> None:
    expect(http.get(CM_PATH, params={"labelSelector": selector}), 400, "BadRequest")


@pytest.mark.parametrize("selector", ["spec.image=x", "status.phase=Running", "metadata.uid=1", "nonsense"])
def test_unsupported_field_selector(http: httpx.Client, selector: str) -> None:
    expect(http.get(CM_PATH, params={"fieldSelector": selector}), 400, "BadRequest")


@pytest.mark.parametrize("token", ["not-a-token", "eyJmb28iOiAxfQ", "%%%", "e30"])
def test_invalid_continue_token(http: httpx.Client, token: str) -> None:
    expect(http.get(CM_PATH, params={"limit": "1", "continue": token}), 400, "BadRequest")


@pytest.mark.parametrize(("name", "value"), [("limit", "ten"), ("resourceVersion", "abc"),
                                             ("timeoutSeconds", "soon")])
def test_bad_query_values(http: httpx.Client, name: str, value: str) -> None:
    params = {name: value}
    if name == "timeoutSeconds":
        params["watch"] = "true"
    if name == "resourceVersion":
        params["watch"] = "true"
    expect(http.get(CM_PATH, params=params), 400, "BadRequest")


def test_bad_dry_run_value(http: httpx.Client) -> None:
    expect(http.post(CM_PATH, params={"dryRun": "Yes"}, json=configmap("dry")), 400, "BadRequest")
    assert http.get(f"{CM_PATH}/dry").status_code == 404
    http.post(CM_PATH, json=configmap("dry"))
    expect(http.delete(f"{CM_PATH}/dry", params={"dryRun": "true"}), 400, "BadRequest")
    assert http.get(f"{CM_PATH}/dry").status_code == 200


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", b"[1, 2, 3]"),
    ("application/json", b'"just a string"'),
    ("application/json", b"null"),
    ("application/json", b'{"apiVersion": "v1", "kind": "ConfigMap", "metadata": []}'),
    ("application/json", b'{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": 7}}'),
    ("application/json", b'{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": []}}'),
    ("application/json", b'{"apiVersion": 1, "kind": ["ConfigMap"], "metadata": {"name": "x"}}'),
    ("application/yaml", b"a: [unclosed"),
    ("application/yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bin}\nbinaryData: {b: !!binary aGk=}\n"),
    ("application/json", b"\xff\xfe garbage"),
])
def test_garbage_bodies_never_cause_a_server_error(http: httpx.Client, content_type: str, body: bytes) -> None:
    response = http.post(CM_PATH, content=body, headers={"Content-Type": content_type})
    assert 400 <= response.status_code < 500, response.text
    status_of(response)


def test_a_yaml_body_is_read_as_json_values(http: httpx.Client) -> None:
    # As upstream converts YAML to JSON: an unquoted timestamp is the string as written, a number key its text.
    body = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: yaml-values}\ndata: {when: 2026-12-07T14:00:00Z}\n"
    response = http.post(CM_PATH, content=body, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    assert http.get(f"{CM_PATH}/yaml-values").json()["data"] == {"when": "2026-12-07T14:00:00Z"}
    body = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: yaml-keys, labels: {7: seven}}\n"
    response = http.post(CM_PATH, content=body, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    assert response.json()["metadata"]["labels"] == {"7": "seven"}


@pytest.mark.parametrize(("content_type", "patch"), [
    ("application/json-patch+json", b'{"op": "add"}'),
    ("application/json-patch+json", b'[{"op": "explode", "path": "/data"}]'),
    ("application/json-patch+json", b'[{"op": "remove", "path": "/data/missing"}]'),
    ("application/json-patch+json", b'[{"op": "replace", "path": "/metadata/name", "value": "renamed"}]'),
    ("application/merge-patch+json", b"[1]"),
    ("application/merge-patch+json", b'{"metadata": {"name": "renamed"}}'),
    ("application/merge-patch+json", b'{"kind": "Secret"}'),
    ("application/strategic-merge-patch+json", b'{"data": 5}'),
    ("application/merge-patch+json", b"{not json"),
])
def test_bad_patches_never_cause_a_server_error(http: httpx.Client, content_type: str, patch: bytes) -> None:
    http.post(CM_PATH, json=configmap("patched"))
    response = http.patch(f"{CM_PATH}/patched", content=patch, headers={"Content-Type": content_type})
    assert 400 <= response.status_code < 500, response.text
    status_of(response)
    assert http.get(f"{CM_PATH}/patched").json()["data"] == {"a": "b"}


@pytest.mark.every_store
def test_stale_resource_version_in_a_patch_conflicts(http: httpx.Client) -> None:
    created = http.post(CM_PATH, json=configmap("cas")).json()
    http.patch(f"{CM_PATH}/cas", json={"data": {"a": "c"}}, headers={"Content-Type": "application/merge-patch+json"})
    response = http.patch(f"{CM_PATH}/cas", content=json.dumps({"metadata": {
        "resourceVersion": created["metadata"]["resourceVersion"]}, "data": {"a": "d"}}).encode(),
        headers={"Content-Type": "application/merge-patch+json"})
    body = expect(response, 409, "Conflict")
    assert body["details"] == {"name": "cas", "kind": "configmaps"}


@pytest.mark.parametrize(("path", "body", "field"), [
    (CM_PATH, {"metadata": {"generateName": 5}}, "metadata.generateName"),
    (CM_PATH, {"metadata": {"name": "x", "labels": {"a": 5}}}, "metadata.labels.a"),
    (CM_PATH, {"metadata": {"name": "x"}, "data": ["a"]}, "data"),
    ("/api/v1/namespaces/default/pods", {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "image": "i", "ports": [{"containerPort": "80"}]}]}}, "spec.containers[0].ports[0].containerPort"),
    ("/api/v1/namespaces/default/pods", {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "image": "i", "resources": {"requests": {"cpu": "lots"}}}]}}, "spec.containers[0].resources"),
    ("/api/v1/namespaces/default/pods", {"metadata": {"name": "p", "creationTimestamp": "yesterday"}, "spec": {
        "containers": [{"name": "c", "image": "i"}]}}, "metadata.creationTimestamp"),
    ("/apis/apps/v1/namespaces/default/deployments", {"metadata": {"name": "d"}, "spec": {"replicas": "two"}},
     "spec.replicas"),
])
def test_values_of_the_wrong_type_cannot_be_decoded(http: httpx.Client, path: str, body: dict[str, Any],
                                                    field: str) -> None:
    # Upstream decodes into typed structs before anything else runs: a wrong type is a 400, whatever
    # fieldValidation says, and never reaches validation (or a 500 from code that trusted the type).
    body = {"apiVersion": "apps/v1" if "apps" in path else "v1",
            "kind": "Deployment" if "apps" in path else ("Pod" if "pods" in path else "ConfigMap"), **body}
    result = expect(http.post(path, json=body, params={"fieldValidation": "Ignore"}), 400, "BadRequest")
    assert f'in version "v1" cannot be handled as a {body["kind"]}' in result["message"]
    assert field in result["message"]


def test_delete_options_of_the_wrong_type(http: httpx.Client) -> None:
    http.post(CM_PATH, json=configmap("kept"))
    response = http.request("DELETE", f"{CM_PATH}/kept", json={"preconditions": "uid-1"})
    expect(response, 400, "BadRequest")
    response = http.request("DELETE", f"{CM_PATH}/kept", json={"gracePeriodSeconds": "soon"})
    expect(response, 400, "BadRequest")
    assert http.get(f"{CM_PATH}/kept").status_code == 200


def test_verbs_a_kind_does_not_serve_are_not_allowed(http: httpx.Client) -> None:
    # bindings only accepts create (POST); listing, watching or deleting them is a 405, as upstream.
    expect(http.get("/api/v1/namespaces/default/bindings"), 405, "MethodNotAllowed")
    expect(http.delete("/api/v1/namespaces/default/bindings"), 405, "MethodNotAllowed")
    resources = http.get("/api/v1").json()["resources"]
    assert next(r for r in resources if r["name"] == "bindings")["verbs"] == ["create"]


POD_PATH = "/api/v1/namespaces/default/pods"


@pytest.mark.parametrize(("subresource", "content_type", "patch"), [
    ("", "application/merge-patch+json", {"spec": {"bogusField": 1}}),
    ("", "application/json-patch+json", [{"op": "add", "path": "/spec/bogusField", "value": 1}]),
    ("", "application/strategic-merge-patch+json", {"spec": {"bogusField": 1}}),
    ("/status", "application/merge-patch+json", {"status": {"bogusField": 1}}),
    ("/status", "application/json-patch+json", [{"op": "add", "path": "/status/bogusField", "value": 1}]),
])
def test_unknown_fields_a_patch_adds_are_refused_or_dropped(http: httpx.Client, subresource: str,
                                                            content_type: str, patch: Any) -> None:
    # A patch only changes part of an object; the unknown-field check must still see what the patch added there.
    name = f"pf-{'status-' if subresource else ''}{content_type.split('/')[1].split('+')[0]}"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    assert http.post(POD_PATH, json=pod).status_code == 201
    url = f"{POD_PATH}/{name}{subresource}"
    strict = http.patch(url, params={"fieldValidation": "Strict"}, content=json.dumps(patch),
                        headers={"Content-Type": content_type})
    body = expect(strict, 400, "BadRequest")
    assert "bogusField" in body["message"]
    warn = http.patch(url, params={"fieldValidation": "Warn"}, content=json.dumps(patch),
                      headers={"Content-Type": content_type})
    assert warn.status_code == 200, warn.text
    assert "bogusField" in warn.headers.get("warning", "")
    section = "status" if subresource else "spec"
    assert "bogusField" not in warn.json()[section]


def test_a_patch_with_a_mistyped_value_cannot_be_decoded(http: httpx.Client) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "typed"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    assert http.post(POD_PATH, json=pod).status_code == 201
    response = http.patch(f"{POD_PATH}/typed/status", content=json.dumps({"status": {"podIP": 7}}),
                          headers={"Content-Type": "application/merge-patch+json"})
    expect(response, 400, "BadRequest")
