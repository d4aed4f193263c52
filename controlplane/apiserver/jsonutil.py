"""JSON and time helpers shared by the API server: orjson in one place, and the timestamp format Kubernetes uses."""

from __future__ import annotations

import copy
import datetime as _dt
import time
from typing import Any

import orjson


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def copy_json(obj: Any) -> Any:
    """A deep copy of a JSON-shaped value: dicts, lists and scalars are copied by hand, ~3x faster than
    copy.deepcopy (no memo, no dispatch per value); anything else (a YAML timestamp, say) by copy.deepcopy."""
    t = type(obj)
    if t is dict:
        return {k: v if type(v) in _SCALARS else copy_json(v) for k, v in obj.items()}
    if t is list:
        return [v if type(v) in _SCALARS else copy_json(v) for v in obj]
    if t in _SCALARS:
        return obj
    return copy.deepcopy(obj)


_last_second: tuple[int, str] = (0, "")


def now_rfc3339() -> str:
    """RFC 3339 to the second, UTC, as metav1.Time serialises (e.g. 2026-11-25T16:52:49Z)."""
    global _last_second
    # Every write stamps a time; formatting one per second rather than one per write saves ~5 us a create.
    second = int(time.time())
    if second != _last_second[0]:
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return _last_second[1]


def parse_rfc3339(value: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
