"""JSON and time helpers shared by the API server: orjson in one place, and the timestamp format Kubernetes uses."""

from __future__ import annotations

import copy
import datetime as _dt
import time
from typing import Any

import orjson


def dumps(obj: Any, non_str_keys: bool = False) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS) if non_str_keys else orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def copy_json(obj: Any) -> Any:
    """A deep copy of a JSON-shaped value, through orjson (~3x faster than copying dicts by hand, ~7x faster than
    copy.deepcopy). Anything orjson would not give back as it was (a datetime from a YAML body, say) goes through
    copy.deepcopy instead."""
    try:
        return orjson.loads(orjson.dumps(obj, option=orjson.OPT_PASSTHROUGH_DATETIME))
    except TypeError:
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
