"""Failures decode into the exception a caller catches by meaning, from Status bodies and from anything else."""

from __future__ import annotations

import orjson
import pytest

from controlplane.client import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    Expired,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    ServerError,
    TooManyRequests,
    Unauthorized,
    error_from_response,
    error_from_status,
)


def status(code: int, reason: str, message: str = "it failed", **extra: object) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code, **extra}


@pytest.mark.parametrize(
    ("code", "reason", "exc"),
    [
        (400, "BadRequest", BadRequest),
        (401, "Unauthorized", Unauthorized),
        (403, "Forbidden", Forbidden),
        (404, "NotFound", NotFound),
        (409, "AlreadyExists", AlreadyExists),
        (409, "Conflict", Conflict),
        (410, "Gone", Gone),
        (410, "Expired", Expired),
        (422, "Invalid", Invalid),
        (429, "TooManyRequests", TooManyRequests),
        (500, "InternalError", ServerError),
        (503, "ServiceUnavailable", ServerError),
        (504, "Timeout", ServerError),
        (405, "MethodNotAllowed", ApiError),
    ],
)
def test_status_body_decodes_to_its_exception(code: int, reason: str, exc: type[ApiError]) -> None:
    body = orjson.dumps(status(code, reason, f'configmaps "x" {reason}'))
    err = error_from_response(code, body)
    assert type(err) is exc
    assert (err.code, err.reason, err.message) == (code, reason, f'configmaps "x" {reason}')
    assert err.status["kind"] == "Status"
    assert reason in str(err)


def test_already_exists_is_not_a_conflict() -> None:
    # Retry-on-conflict loops catch Conflict; a duplicate create must not be retried forever.
    assert not issubclass(AlreadyExists, Conflict)
    assert issubclass(Expired, Gone)


def test_details_and_retry_after() -> None:
    err = error_from_status(status(429, "TooManyRequests", details={"retryAfterSeconds": 3}))
    assert isinstance(err, TooManyRequests)
    assert err.retry_after == 3.0
    invalid = error_from_status(
        status(422, "Invalid", details={"name": "x", "kind": "ConfigMap",
                                         "causes": [{"field": "metadata.name", "reason": "FieldValueInvalid"}]})
    )
    assert invalid.details["causes"][0]["field"] == "metadata.name"


def test_status_without_code_takes_the_http_code() -> None:
    err = error_from_response(404, orjson.dumps({"kind": "Status", "status": "Failure", "reason": "NotFound"}))
    assert isinstance(err, NotFound) and err.code == 404


def test_status_without_any_code_falls_back_to_its_reason() -> None:
    err = error_from_status({"kind": "Status", "status": "Failure", "reason": "Expired", "message": "old"})
    assert isinstance(err, Expired) and err.code == 410


@pytest.mark.parametrize(
    ("code", "body", "exc", "message"),
    [
        (502, b"<html><body>Bad Gateway</body></html>", ServerError, "<html><body>Bad Gateway</body></html>"),
        (503, b"", ServerError, "Service Unavailable"),
        (404, b'{"error": "no route"}', NotFound, '{"error": "no route"}'),
        (403, "forbidden by proxy", Forbidden, "forbidden by proxy"),
        (418, None, ApiError, "I'm a Teapot"),
    ],
)
def test_non_status_bodies_become_a_synthetic_status(code: int, body: object, exc: type, message: str) -> None:
    err = error_from_response(code, body)  # type: ignore[arg-type]
    assert type(err) is exc
    assert err.code == code
    assert err.message == message
    assert err.status["kind"] == "Status" and err.status["status"] == "Failure"
