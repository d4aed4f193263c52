"""Service account tokens: the TokenRequest API (`serviceaccounts/{name}/token`, what `kubectl create token` and
the official clients' `create_namespaced_service_account_token` call) and the issuer's discovery documents.

Tokens are what kube-apiserver issues: RS256 JWTs with its claims (`iss`, `sub`
`system:serviceaccount:<ns>:<name>`, `aud`, `exp`, `iat`, `nbf`, `jti` and the `kubernetes.io` claim naming the
namespace, the service account and any bound pod or secret), signed by a key this server makes on first use. The
key's public half is served as JWKS at `/openid/v1/jwks`, with `/.well-known/openid-configuration`, so a workload
that verifies tokens (as an OIDC relying party) can. This API server itself authenticates nobody, so it never
checks a token it issued; the key lives as long as the process.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from typing import Any

from controlplane.apiserver import errors, jsonutil
from controlplane.apiserver.errors import Cause

ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_EXPIRATION = 3600  # seconds, as kube-apiserver's TokenRequest defaulting
MIN_EXPIRATION = 600
MAX_EXPIRATION = 1 << 32
BOUND_KINDS = {"Pod": ("", "v1", "pods"), "Secret": ("", "v1", "secrets"), "Node": ("", "v1", "nodes")}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


class TokenIssuer:
    """Signs service account tokens with an RSA key made on first use (``cryptography`` does the RSA)."""

    def __init__(self, issuer: str = ISSUER) -> None:
        self.issuer = issuer
        self._key: Any = None
        self._kid = ""

    def _private_key(self) -> Any:
        if self._key is None:
            try:
                from cryptography.hazmat.primitives import serialization
                from cryptography.hazmat.primitives.asymmetric import rsa
            except ImportError:
                raise errors.unavailable("issuing service account tokens needs the cryptography package: "
                                         "pip install cryptography") from None
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            der = key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
            self._kid = _b64(hashlib.sha256(der).digest())  # kube-apiserver's key id: a hash of the public key
            self._key = key
        return self._key

    def sign(self, claims: dict[str, Any]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        key = self._private_key()
        signing_input = (_b64(jsonutil.dumps({"alg": "RS256", "kid": self._kid})) + "."
                         + _b64(jsonutil.dumps(claims))).encode()
        return signing_input.decode() + "." + _b64(key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))

    def jwks(self) -> dict[str, Any]:
        numbers = self._private_key().public_key().public_numbers()
        return {"keys": [{"use": "sig", "kty": "RSA", "kid": self._kid, "alg": "RS256",
                          "n": _b64(_int_bytes(numbers.n)), "e": _b64(_int_bytes(numbers.e))}]}

    def openid_configuration(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "jwks_uri": f"{self.issuer}/openid/v1/jwks",
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"]}


def _rfc3339(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def check_request(body: Any, name: str) -> dict[str, Any]:
    """The TokenRequest's spec, defaulted, or a 400/422 as upstream answers a bad one."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise errors.bad_request("TokenRequest in version \"v1\" cannot be handled as a TokenRequest: the body is "
                                 "not an object")
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if kind not in (None, "TokenRequest") or api_version not in (None, "authentication.k8s.io/v1"):
        raise errors.bad_request(f"the body of the request was in an unknown format: expected an "
                                 f"authentication.k8s.io/v1 TokenRequest, got {api_version}/{kind}")
    spec = dict(body.get("spec") or {})
    causes: list[Cause] = []
    expiration = spec.setdefault("expirationSeconds", DEFAULT_EXPIRATION)
    if not isinstance(expiration, int) or isinstance(expiration, bool):
        causes.append(Cause("FieldValueInvalid", f"Invalid value: {expiration!r}: must be an integer",
                            "spec.expirationSeconds"))
    elif expiration < MIN_EXPIRATION:
        causes.append(Cause("FieldValueInvalid", f"Invalid value: {expiration}: may not specify a duration less "
                            "than 10 minutes", "spec.expirationSeconds"))
    elif expiration > MAX_EXPIRATION:
        causes.append(Cause("FieldValueTooLong", f"Invalid value: {expiration}: may not specify a duration larger "
                            "than 2^32 seconds", "spec.expirationSeconds"))
    audiences = spec.get("audiences") or [ISSUER]
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        causes.append(Cause("FieldValueInvalid", "Invalid value: audiences must be non-empty strings",
                            "spec.audiences"))
    spec["audiences"] = audiences
    bound = spec.get("boundObjectRef")
    if bound is not None:
        if not isinstance(bound, dict) or bound.get("kind") not in BOUND_KINDS:
            supported = ", ".join(f'"{k}"' for k in sorted(BOUND_KINDS))
            got = bound.get("kind") if isinstance(bound, dict) else bound
            causes.append(Cause("FieldValueNotSupported", f'Unsupported value: "{got}": supported values: '
                                f"{supported}", "spec.boundObjectRef.kind"))
        elif not bound.get("name"):
            causes.append(Cause("FieldValueRequired", "Required value", "spec.boundObjectRef.name"))
    if causes:
        raise errors.invalid("TokenRequest", "authentication.k8s.io", name, causes)
    return spec


def issue(issuer: TokenIssuer, service_account: dict[str, Any], spec: dict[str, Any],
          bound: dict[str, Any] | None) -> dict[str, Any]:
    """The TokenRequest answer for ``service_account``: the request's spec and, in status, the signed token."""
    meta = service_account["metadata"]
    now = int(time.time())
    expires = now + int(spec["expirationSeconds"])
    private: dict[str, Any] = {"namespace": meta["namespace"],
                               "serviceaccount": {"name": meta["name"], "uid": meta["uid"]}}
    if bound is not None:
        ref = spec["boundObjectRef"]
        private[ref["kind"].lower()] = {"name": bound["metadata"]["name"], "uid": bound["metadata"]["uid"]}
    claims = {"aud": spec["audiences"], "exp": expires, "iat": now, "iss": issuer.issuer,
              "jti": str(uuid.uuid4()), "kubernetes.io": private, "nbf": now,
              "sub": f"system:serviceaccount:{meta['namespace']}:{meta['name']}"}
    return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "creationTimestamp": _rfc3339(now)},
            "spec": spec,
            "status": {"token": issuer.sign(claims), "expirationTimestamp": _rfc3339(expires)}}
