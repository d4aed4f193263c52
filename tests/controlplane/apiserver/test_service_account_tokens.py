"""TokenRequest (serviceaccounts/{name}/token): `kubectl create token` and the official client get RS256 tokens
with kube-apiserver's claims, verifiable against the JWKS the server publishes; bad requests get upstream's errors."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import kubernetes
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from kubernetes.client import CoreV1Api

from controlplane.testing import ThreadedApiServer


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verified_claims(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The token's claims, after checking its RS256 signature against the published key (as a relying party)."""
    head, body, signature = token.split(".")
    header = json.loads(_unb64(head))
    [key] = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    assert (header["alg"], key["kty"], key["alg"]) == ("RS256", "RSA", "RS256")
    public = rsa.RSAPublicNumbers(int.from_bytes(_unb64(key["e"]), "big"),
                                  int.from_bytes(_unb64(key["n"]), "big")).public_key()
    public.verify(_unb64(signature), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())  # raises if bad
    return json.loads(_unb64(body))


def test_kubectl_create_token_gives_a_verifiable_token(kubectl, apiserver: ThreadedApiServer) -> None:
    kubectl("create", "serviceaccount", "builder")
    uid = json.loads(kubectl("get", "serviceaccount", "builder", "-o", "json"))["metadata"]["uid"]
    token = kubectl("create", "token", "builder", "--duration=1h", "--audience=api").strip()
    discovery = httpx.get(apiserver.url + "/.well-known/openid-configuration").json()
    jwks = httpx.get(apiserver.url + "/openid/v1/jwks").json()
    claims = verified_claims(token, jwks)
    assert claims["sub"] == "system:serviceaccount:default:builder"
    assert claims["aud"] == ["api"] and claims["iss"] == discovery["issuer"]
    assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] == claims["iat"]
    assert claims["kubernetes.io"] == {"namespace": "default", "serviceaccount": {"name": "builder", "uid": uid}}
    tampered = token.rsplit(".", 1)[0] + "." + base64.urlsafe_b64encode(b"x" * 256).rstrip(b"=").decode()
    with pytest.raises(InvalidSignature):
        verified_claims(tampered, jwks)


@pytest.fixture
def core(k8s: kubernetes.client.ApiClient) -> CoreV1Api:
    return CoreV1Api(k8s)


def _request(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}


def test_a_token_bound_to_a_pod_names_it_and_defaults_apply(core: CoreV1Api, apiserver: ThreadedApiServer) -> None:
    core.create_namespaced_service_account("default", {"metadata": {"name": "app"}})
    pod = core.create_namespaced_pod("default", {"metadata": {"name": "web"},
                                                 "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    answer = core.create_namespaced_service_account_token("app", "default", _request(
        boundObjectRef={"apiVersion": "v1", "kind": "Pod", "name": "web"}))
    assert answer.spec.expiration_seconds == 3600  # the default
    assert answer.spec.bound_object_ref.uid == pod.metadata.uid
    jwks = httpx.get(apiserver.url + "/openid/v1/jwks").json()
    claims = verified_claims(answer.status.token, jwks)
    assert claims["aud"] == ["https://kubernetes.default.svc.cluster.local"]  # the API server's audience
    assert claims["kubernetes.io"]["pod"] == {"name": "web", "uid": pod.metadata.uid}


def test_bad_token_requests_get_upstreams_errors(core: CoreV1Api, http: httpx.Client) -> None:
    core.create_namespaced_service_account("default", {"metadata": {"name": "app"}})
    path = "/api/v1/namespaces/default/serviceaccounts/{}/token"
    missing = http.post(path.format("nobody"), json=_request())
    assert (missing.status_code, missing.json()["reason"]) == (404, "NotFound")
    short = http.post(path.format("app"), json=_request(expirationSeconds=60))
    assert short.status_code == 422
    assert short.json()["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "spec.expirationSeconds",
                                                  "message": "Invalid value: 60: may not specify a duration less "
                                                             "than 10 minutes"}]
    kind = http.post(path.format("app"), json=_request(boundObjectRef={"kind": "ConfigMap", "name": "x"}))
    assert kind.status_code == 422 and "spec.boundObjectRef.kind" in kind.json()["message"]
    gone = http.post(path.format("app"), json=_request(boundObjectRef={"kind": "Pod", "name": "nowhere"}))
    assert gone.status_code == 404 and gone.json()["message"] == 'pods "nowhere" not found'
    http.post("/api/v1/namespaces/default/pods", json={"metadata": {"name": "web"},
                                                       "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    stale = http.post(path.format("app"), json=_request(boundObjectRef={"kind": "Pod", "name": "web", "uid": "old"}))
    assert stale.status_code == 409 and "does not match the UID in record" in stale.json()["message"]
    assert http.get(path.format("app")).status_code == 405  # create is the only verb
