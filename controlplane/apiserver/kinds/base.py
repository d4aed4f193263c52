"""What a kind's behaviour is made of: defaulting, status on create, validation, field selectors, table columns.

A `Strategy` mirrors upstream's rest.RESTCreateStrategy/RESTUpdateStrategy: the generic resource store calls it at
fixed points of every write. The base class is a complete, permissive strategy; a kind overrides only what differs.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from controlplane.apiserver.errors import Cause
from controlplane.apiserver.jsonutil import parse_rfc3339

if TYPE_CHECKING:
    from controlplane.apiserver.resource_store import WriteContext

FieldGetter = Callable[[dict[str, Any]], str]


def path_getter(path: str) -> FieldGetter:
    """A field-selector getter for a dotted path; missing values read as "" as upstream's field sets do."""
    parts = path.split(".")

    def get(obj: dict[str, Any]) -> str:
        node: Any = obj
        for part in parts:
            if not isinstance(node, dict):
                return ""
            node = node.get(part)
        if node is None:
            return ""
        if isinstance(node, bool):
            return "true" if node else "false"
        return str(node)

    return get


COMMON_FIELDS: dict[str, FieldGetter] = {
    "metadata.name": path_getter("metadata.name"),
    "metadata.namespace": path_getter("metadata.namespace"),
}


@dataclass
class Column:
    name: str
    type: str = "string"
    format: str = ""
    description: str = ""
    priority: int = 0  # 1 = shown only with -o wide

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "format": self.format, "description": self.description,
                "priority": self.priority}


NAME_COLUMN = Column("Name", format="name", description="Name must be unique within a namespace.")
AGE_COLUMN = Column("Age", description="CreationTimestamp is a timestamp representing the server time when this "
                    "object was created.")


def age(obj: dict[str, Any]) -> str:
    """Human age as kubectl prints it (duration.HumanDuration)."""
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    try:
        seconds = int((_dt.datetime.now(_dt.timezone.utc) - parse_rfc3339(ts)).total_seconds())
    except ValueError:
        return "<invalid>"
    return human_duration(seconds)


def human_duration(seconds: int) -> str:
    if seconds < 0:
        seconds = 0
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m{s}s" if s else f"{minutes}m"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        m = minutes % 60
        return f"{hours}h{m}m" if m else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d{h}h" if h else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // 24 // 365}y"


@dataclass
class Table:
    """A kind's columns and the function that fills a row's cells.

    By default the columns sit between NAME and AGE (wide ones after AGE), as most kinds print. With
    ``verbatim`` the kind lays out every column itself, NAME and AGE included where it wants them (nodes, events)."""

    columns: list[Column]
    cells: Callable[[dict[str, Any]], list[Any]]
    verbatim: bool = False


@dataclass
class Strategy:
    """The behaviour of one kind. Override the hooks that differ from the permissive defaults."""

    track_generation: bool = False  # metadata.generation starts at 1 and grows on every spec change
    return_deleted_object: bool = False  # DELETE answers with the object rather than a Status (pods do)
    field_getters: Mapping[str, FieldGetter] = field(default_factory=dict)
    table: Table | None = None

    def all_field_getters(self) -> dict[str, FieldGetter]:
        return {**COMMON_FIELDS, **self.field_getters}

    def defaults(self, obj: dict[str, Any]) -> None:
        """Fill in defaulted fields (SetDefaults_*), on create and on every update."""

    def from_storage(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Convert a stored object to the version this strategy serves (identity unless versions share storage)."""
        return obj

    def to_storage(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Convert an object of the served version to the storage version (a new dict, or ``obj`` unchanged)."""
        return obj

    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The status a new object starts with, for kinds with a status subresource. None drops it."""
        return None

    def prepare_for_create(self, obj: dict[str, Any]) -> None:
        """Last changes before a create is validated (beyond defaults and status)."""

    def prepare_for_update(self, new: dict[str, Any], old: dict[str, Any]) -> None:
        """Last changes before an update is validated."""

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        return []

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        return self.validate(new)

    def validate_status_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        """A write to the status subresource, where only the status changed (spec and metadata are as stored).
        The built-in kinds' validation covers what their clients write, not status, so there is nothing to check:
        upstream's status strategies validate the status alone, and never the stored spec again."""
        return []

    def blocks_deletion(self, obj: dict[str, Any]) -> bool:
        """Whether something besides metadata.finalizers keeps the object after a delete (namespaces' spec.finalizers)."""
        return False

    def mark_deleting(self, obj: dict[str, Any]) -> None:
        """Changes to make when a delete marks the object instead of removing it (namespaces go Terminating)."""

    async def admit(self, ctx: WriteContext, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Asynchronous work a write needs from the rest of the server (allocations, lookups). May raise ApiError."""

    async def released(self, ctx: WriteContext, obj: dict[str, Any]) -> None:
        """The object is gone for good: give back what `admit` allocated."""


def immutable(new: dict[str, Any], old: dict[str, Any], path: str, message: str = "field is immutable") -> list[Cause]:
    getter = path_getter(path)
    if getter(new) != getter(old):
        return [Cause("FieldValueInvalid", f"Invalid value: {message}", path)]
    return []


def selector_text(selector: dict[str, Any] | None) -> str:
    """A label selector as kubectl prints it in a column ("app=web,tier in (a,b)"), "<none>" when it is empty."""
    sel = selector or {}
    parts = [f"{k}={v}" for k, v in (sel.get("matchLabels") or {}).items()]
    for e in sel.get("matchExpressions") or []:
        parts.append(f"{e.get('key')} {e.get('operator', '').lower()} ({','.join(e.get('values') or [])})")
    return ",".join(parts) or "<none>"


def get_path(obj: dict[str, Any], path: str, default: Any = None) -> Any:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = obj
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[parts[-1]] = value


def setdefault_path(obj: dict[str, Any], path: str, value: Any) -> None:
    if get_path(obj, path) is None:
        set_path(obj, path, value)
