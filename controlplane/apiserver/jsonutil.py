"""JSON and time helpers shared by the API server: orjson in one place, and the timestamp format Kubernetes uses."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import orjson


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def now_rfc3339() -> str:
    """RFC 3339 to the second, UTC, as metav1.Time serialises (e.g. 2026-11-25T16:52:49Z)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
