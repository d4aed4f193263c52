"""API failures as exceptions a caller can catch by meaning (NotFound, Conflict, Gone, ...) rather than by number.

The API server reports every failure as a ``Status`` object (kind: Status, status: Failure, code, reason, message,
details); a watch reports one inside an ERROR event. ``error_from_status`` turns either into the matching exception,
and ``error_from_response`` also copes with bodies that are not a Status (a proxy's HTML page, an empty 502).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson


class ApiError(Exception):
    """A failure answered by the API server. ``status`` is the decoded Status object."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        self.code: int = int(status.get("code") or 0)
        self.reason: str = status.get("reason") or ""
        self.message: str = status.get("message") or ""
        super().__init__(f"{self.code} {self.reason}: {self.message}" if self.reason else f"{self.code}: {self.message}")

    @property
    def details(self) -> dict[str, Any]:
        return self.status.get("details") or {}


class BadRequest(ApiError):
    """400."""


class Unauthorized(ApiError):
    """401: no or wrong credentials."""


class Forbidden(ApiError):
    """403: authenticated, but not allowed (RBAC, or a namespace being terminated)."""


class NotFound(ApiError):
    """404."""


class AlreadyExists(ApiError):
    """409 with reason AlreadyExists: a create hit an existing name.

    Deliberately not a Conflict: retry-on-conflict loops must not swallow a create that can never succeed.
    """


class Conflict(ApiError):
    """409 (any other reason): the object changed since it was read (resourceVersion mismatch); re-read and retry."""


class Gone(ApiError):
    """410: the requested resourceVersion has been compacted; a watcher must relist."""


class Expired(Gone):
    """410 with reason Expired: a list continue token or resourceVersion is too old."""


class Invalid(ApiError):
    """422: the object failed validation; ``details.causes`` says which fields."""


class TooManyRequests(ApiError):
    """429: throttled (priority and fairness, or an eviction blocked by a PodDisruptionBudget)."""

    @property
    def retry_after(self) -> float | None:
        seconds = self.details.get("retryAfterSeconds")
        return float(seconds) if seconds is not None else None


class ServerError(ApiError):
    """5xx: the server failed; the request may be retried."""


_BY_CODE: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
    429: TooManyRequests,
}

# The reasons the API server pairs with each code (metav1.StatusReason), for Status objects that carry no code.
_CODE_BY_REASON: dict[str, int] = {
    "BadRequest": 400,
    "Unauthorized": 401,
    "Forbidden": 403,
    "NotFound": 404,
    "AlreadyExists": 409,
    "Conflict": 409,
    "Gone": 410,
    "Expired": 410,
    "Invalid": 422,
    "TooManyRequests": 429,
    "InternalError": 500,
    "ServiceUnavailable": 503,
    "Timeout": 504,
    "ServerTimeout": 500,
}


def _error_class(code: int, reason: str) -> type[ApiError]:
    if code == 409:
        return AlreadyExists if reason == "AlreadyExists" else Conflict
    if code == 410:
        return Expired if reason == "Expired" else Gone
    if code >= 500:
        return ServerError
    return _BY_CODE.get(code, ApiError)


def error_from_status(status: dict[str, Any], status_code: int = 0) -> ApiError:
    """The exception for a decoded Status object; ``status_code`` (the HTTP code) fills in a missing ``code``."""
    status = dict(status)
    code = int(status.get("code") or 0) or status_code or _CODE_BY_REASON.get(status.get("reason") or "", 0)
    status["code"] = code
    return _error_class(code, status.get("reason") or "")(status)


def error_from_response(status_code: int, body: bytes | str | dict[str, Any] | None) -> ApiError:
    """The exception for a failed HTTP response, whatever its body holds."""
    if isinstance(body, dict):
        decoded: Any = body
    else:
        decoded = None
        if body:
            try:
                decoded = orjson.loads(body)
            except orjson.JSONDecodeError:
                decoded = None
    if isinstance(decoded, dict) and decoded.get("kind") == "Status":
        return error_from_status(decoded, status_code)
    # Not a Status (a proxy's error page, an empty gateway error): build the Status the API server would have sent.
    text = body if isinstance(body, str) else body.decode("utf-8", "replace") if isinstance(body, bytes) else ""
    return error_from_status(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": text.strip()[:1024] or _phrase(status_code),
            "reason": _reason_for_code(status_code),
            "code": status_code,
        }
    )


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return f"HTTP {code}"


def _reason_for_code(code: int) -> str:
    # What client-go's newUnstructuredResponseError reports for a body it could not decode.
    return {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        410: "Gone",
        422: "Invalid",
        429: "TooManyRequests",
        500: "InternalError",
        503: "ServiceUnavailable",
        504: "Timeout",
    }.get(code, "Unknown" if code < 500 else "InternalError")
