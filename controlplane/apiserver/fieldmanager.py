"""Field ownership (`metadata.managedFields`) and server-side apply.

Every write records which manager set which fields, in upstream's FieldsV1 format (`f:` fields, `k:` list items by
merge key, `v:` set members). Server-side apply (`PATCH` with `application/apply-patch+yaml`) uses that record: the
applied configuration's fields become the applier's; a field another manager owns with a different value is a 409
conflict naming the manager, unless `force=true` takes it over; fields the applier owned before and no longer
applies are removed when nobody else owns them. Lists merge by the merge keys of `patch.py`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from controlplane.apiserver import jsonutil
from controlplane.apiserver.errors import ApiError, Cause
from controlplane.apiserver.patch import MERGE_KEYS, _merge_key, merge_patch, strategic_merge_patch

Path = tuple[str, ...]  # each element "f:name", "k:{...}", "v:<json>" or "i:<n>"

# Metadata that belongs to the system, never to a manager.
IGNORED_METADATA = frozenset({"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                              "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink",
                              "generateName"})
IGNORED_ROOT = frozenset({"apiVersion", "kind"})


def _key_element(item: dict[str, Any], key: str) -> str:
    return "k:" + jsonutil.dumps({key: item.get(key)}).decode()


def field_set(obj: Any, prefix: Path = (), field: str = "", status: bool = False) -> set[Path]:
    """The set of field paths ``obj`` sets, as upstream's structured-merge-diff sees them."""
    out: set[Path] = set()
    if not isinstance(obj, dict):
        return out
    for name, value in obj.items():
        if not prefix:
            if name in IGNORED_ROOT or (name == "status" and not status):
                continue
        if prefix == ("f:metadata",) and name in IGNORED_METADATA:
            continue
        path = (*prefix, f"f:{name}")
        if isinstance(value, dict) and value:
            out |= field_set(value, path, name, status)
        elif isinstance(value, list):
            key = _merge_key(name, value)
            if key is None or not value:
                out.add(path)
            elif key == "":
                out |= {(*path, "v:" + jsonutil.dumps(item).decode()) for item in value}
            else:
                for item in value:
                    if isinstance(item, dict):
                        item_path = (*path, _key_element(item, key))
                        out.add(item_path)
                        out |= field_set(item, item_path, name, status)
        else:
            out.add(path)
    return out


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for element in path:
            node = node.setdefault(element, {})
        if path and (path[-1].startswith("k:") or path[-1].startswith("v:")):
            node.setdefault(".", {})
    return root


def from_fields_v1(tree: dict[str, Any], prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for element, child in (tree or {}).items():
        if element == ".":
            continue
        path = (*prefix, element)
        if not child or element.startswith(("k:", "v:")) or "." in child:
            out.add(path)
        if child:
            out |= from_fields_v1(child, path)
    return out


def _value_at(obj: Any, path: Path) -> tuple[bool, Any]:
    node = obj
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f":
            if not isinstance(node, dict) or rest not in node:
                return False, None
            node = node[rest]
        elif kind == "k":
            if not isinstance(node, list):
                return False, None
            want = jsonutil.loads(rest)
            match = [i for i in node if isinstance(i, dict) and all(i.get(k) == v for k, v in want.items())]
            if not match:
                return False, None
            node = match[0]
        elif kind == "v":
            if not isinstance(node, list):
                return False, None
            value = jsonutil.loads(rest)
            return (value in node), value
        else:
            return False, None
    return True, node


def _remove_path(obj: Any, path: Path) -> None:
    if not path:
        return
    parent_found, parent = _value_at(obj, path[:-1])
    if not parent_found:
        return
    kind, _, rest = path[-1].partition(":")
    if kind == "f" and isinstance(parent, dict):
        parent.pop(rest, None)
    elif kind == "k" and isinstance(parent, list):
        want = jsonutil.loads(rest)
        parent[:] = [i for i in parent if not (isinstance(i, dict) and all(i.get(k) == v for k, v in want.items()))]
    elif kind == "v" and isinstance(parent, list):
        value = jsonutil.loads(rest)
        parent[:] = [i for i in parent if i != value]


def _dotted(path: Path) -> str:
    parts = []
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f":
            parts.append(f".{rest}")
        elif kind == "k":
            key = jsonutil.loads(rest)
            parts.append("[" + ",".join(f"{k}={jsonutil.dumps(v).decode()}" for k, v in key.items()) + "]")
        else:
            parts.append(f"[{rest}]")
    return "".join(parts)


@dataclass
class Entry:
    manager: str
    operation: str
    api_version: str
    time: str
    fields: set[Path]
    subresource: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"manager": self.manager, "operation": self.operation, "apiVersion": self.api_version,
                             "time": self.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(self.fields)}
        if self.subresource:
            d["subresource"] = self.subresource
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        return cls(d.get("manager", ""), d.get("operation", "Update"), d.get("apiVersion", ""), d.get("time", ""),
                   from_fields_v1(d.get("fieldsV1") or {}), d.get("subresource", ""))


def _entries(obj: dict[str, Any]) -> list[Entry]:
    return [Entry.from_dict(d) for d in (obj.get("metadata") or {}).get("managedFields") or []
            if isinstance(d, dict)]


def _store_entries(obj: dict[str, Any], entries: list[Entry]) -> None:
    kept = [e.to_dict() for e in entries if e.fields]
    if kept:
        obj["metadata"]["managedFields"] = kept
    else:
        obj["metadata"].pop("managedFields", None)


def record_update(new: dict[str, Any], old: dict[str, Any] | None, manager: str | None,
                  subresource: str = "") -> None:
    """After a create/update/patch: the fields this write changed now belong to ``manager`` (operation Update)."""
    if not manager:
        if old is not None:
            new["metadata"]["managedFields"] = (old.get("metadata") or {}).get("managedFields") or []
            if not new["metadata"]["managedFields"]:
                new["metadata"].pop("managedFields")
        return
    status = subresource == "status"
    new_fields = field_set(new, status=status)
    if old is None:
        changed = new_fields
        entries: list[Entry] = []
    else:
        entries = _entries(old)
        changed = {p for p in new_fields if _value_at(old, p) != _value_at(new, p)}
        gone = field_set(old, status=status) - new_fields
        for e in entries:
            e.fields -= gone
    if status:
        changed = {p for p in changed if p and p[0] == "f:status"}
    else:
        changed = {p for p in changed if not p or p[0] != "f:status"}
    for e in entries:
        if (e.manager, e.operation, e.subresource) != (manager, "Update", subresource):
            e.fields -= changed
    mine = next((e for e in entries if (e.manager, e.operation, e.subresource) == (manager, "Update", subresource)),
                None)
    if changed:
        if mine is None:
            mine = Entry(manager, "Update", new.get("apiVersion", ""), jsonutil.now_rfc3339(), set(), subresource)
            entries.append(mine)
        mine.fields |= changed
        mine.time = jsonutil.now_rfc3339()
    _store_entries(new, entries)


def apply(current: dict[str, Any] | None, applied: dict[str, Any], manager: str, force: bool, custom: bool,
          resource: str, subresource: str = "", schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Server-side apply of ``applied`` by ``manager`` onto ``current`` (None: the object is created)."""
    if not manager:
        raise ApiError(400, "BadRequest", "PATCH, fieldManager: Required value: is required for apply patch")
    status = subresource == "status"
    applied = copy.deepcopy(applied)
    applied.get("metadata", {}).pop("managedFields", None)
    new_fields = field_set(applied, status=status)
    if status:
        new_fields = {p for p in new_fields if p and p[0] == "f:status"}
    base = copy.deepcopy(current) if current is not None else {}
    entries = _entries(base) if current is not None else []
    mine = next((e for e in entries if (e.manager, e.operation, e.subresource) == (manager, "Apply", subresource)),
                None)
    conflicts: list[tuple[str, Path]] = []
    for e in entries:
        if e is mine:
            continue
        for path in e.fields & new_fields:
            if path[-1].startswith(("k:", "v:")):
                continue  # list membership is shared, not contested
            if _value_at(base, path) != _value_at(applied, path):
                conflicts.append((e.manager, path))
    if conflicts and not force:
        causes = [Cause("FieldManagerConflict", f'conflict with "{m}"', _dotted(p)) for m, p in sorted(conflicts)]
        lines = "\n".join(f'- {c.message}: {c.field}' for c in causes)
        raise ApiError(409, "Conflict", f"Apply failed with {len(causes)} conflict{'s' if len(causes) > 1 else ''}:"
                       f"\n{lines}", name=(applied.get("metadata") or {}).get("name", ""), kind=resource,
                       causes=causes)
    taken = {p for _, p in conflicts}
    for e in entries:
        if e is not mine:
            e.fields -= taken
    others = set().union(*(e.fields for e in entries if e is not mine)) if entries else set()
    if mine is not None:
        removed: list[Path] = []
        for path in sorted(mine.fields - new_fields - others, key=len):
            if any(path[:len(r)] == r for r in removed):
                continue  # inside a list item or map already removed whole
            _remove_path(base, path)
            removed.append(path)
    merged = merge_patch(base, applied) if custom else strategic_merge_patch(base, _without_nulls(applied), schema)
    if mine is None:
        mine = Entry(manager, "Apply", applied.get("apiVersion", ""), "", set(), subresource)
        entries.append(mine)
    mine.fields = new_fields
    mine.time = jsonutil.now_rfc3339()
    merged.setdefault("metadata", {})
    _store_entries(merged, entries)
    return merged


def _without_nulls(obj: Any) -> Any:
    """Apply configurations do not delete by null the way patches do: a null is simply not applied."""
    if isinstance(obj, dict):
        return {k: _without_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_without_nulls(v) for v in obj]
    return obj


__all__ = ["MERGE_KEYS", "apply", "field_set", "record_update"]
