"""Field ownership (`metadata.managedFields`) and server-side apply.

Every write records which manager set which fields, in upstream's FieldsV1 format (`f:` fields, `k:` list items by
merge key, `v:` set members). Server-side apply (`PATCH` with `application/apply-patch+yaml`) uses that record: the
applied configuration's fields become the applier's; a field another manager owns with a different value is a 409
conflict naming the manager, unless `force=true` takes it over; fields the applier owned before and no longer
applies are removed when nobody else owns them. Lists merge by the merge keys of `patch.py`.
"""

from __future__ import annotations

import functools
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
    if isinstance(obj, dict):
        _collect_fields(obj, prefix, status, out)
    return out


def _collect_fields(obj: dict[str, Any], prefix: Path, status: bool, out: set[Path]) -> None:
    # field_set's walk with one accumulator: every write computes the field set of the new object (and of the old
    # one on updates), so this is on the path of every create and update.
    root = not prefix
    meta = prefix == ("f:metadata",)
    for name, value in obj.items():
        if root:
            if name in IGNORED_ROOT or (name == "status" and not status):
                continue
        elif meta and name in IGNORED_METADATA:
            continue
        path = (*prefix, "f:" + name)
        if isinstance(value, dict):
            if value:
                _collect_fields(value, path, status, out)
            else:
                out.add(path)
        elif isinstance(value, list):
            key = _merge_key(name, value)
            if key is None or not value:
                out.add(path)
            elif key == "":
                out.update((*path, "v:" + jsonutil.dumps(item).decode()) for item in value)
            else:
                for item in value:
                    if isinstance(item, dict):
                        item_path = (*path, _key_element(item, key))
                        out.add(item_path)
                        _collect_fields(item, item_path, status, out)
        else:
            out.add(path)


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    """The FieldsV1 tree of ``paths``. Every list item ("k:"/"v:") node carries its ".", also when the set holds
    only fields of the item (another manager took the item itself): a "k:"/"v:" node decodes as owned either way
    (see from_fields_v1), so trees written here are what decoding and re-encoding them gives, and an update can
    keep the entries it does not change as they were stored."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for element in path:
            child = node.get(element)
            if child is None:
                child = node[element] = {".": {}} if element[0] in "kv" else {}
            node = child
    return root


def _tree_of(obj: dict[str, Any], prefix: Path = ()) -> dict[str, Any]:
    """The FieldsV1 tree of the fields of ``obj`` (found at ``prefix``; at the root, status is left out), keys in the
    order to_fields_v1 writes: ``to_fields_v1(field_set(obj))`` in one walk of the object. A create records every
    field it sets, and making the paths and then sorting them into a tree cost twice as much."""
    root = not prefix
    meta = prefix == ("f:metadata",)
    node: dict[str, Any] = {}
    for name in sorted(obj):
        if root:
            if name in IGNORED_ROOT or name == "status":
                continue
        elif meta and name in IGNORED_METADATA:
            continue
        value = obj[name]
        if isinstance(value, dict) and value:
            child = _tree_of(value, (*prefix, "f:" + name))
            if child:
                node["f:" + name] = child
        else:
            child = _leaf_tree(name, value)
            if child is not None:
                node["f:" + name] = child
    return node


def _leaf_tree(name: str, value: Any) -> dict[str, Any] | None:
    """The tree under a field holding a scalar, an empty map or a list (None: the field adds no path)."""
    if not isinstance(value, list) or not value:
        return {}
    key = _merge_key(name, value)
    if key is None:
        return {}
    if key == "":
        return {element: {".": {}} for element in sorted({"v:" + jsonutil.dumps(item).decode() for item in value})}
    items: dict[str, dict[str, Any]] = {}
    for item in value:
        if isinstance(item, dict):
            element = _key_element(item, key)
            if element in items:  # one key twice: the fields of both items, merged as to_fields_v1 merges paths
                paths: set[Path] = set()
                _collect_fields({name: value}, ("list",), True, paths)
                return to_fields_v1(paths)["list"][f"f:{name}"]
            items[element] = {".": {}, **_tree_of(item, ("k",))}
    return {element: items[element] for element in sorted(items)} or None


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
        found, node = _step(node, element)
        if not found or element[0] == "v":
            return found, node
    return True, node


def _step(node: Any, element: str) -> tuple[bool, Any]:
    """One element of a path from ``node``: (found, value); for "v:" the value is the member, found its presence."""
    kind, _, rest = element.partition(":")
    if kind == "f":
        if not isinstance(node, dict) or rest not in node:
            return False, None
        return True, node[rest]
    if kind == "k":
        if not isinstance(node, list):
            return False, None
        want = _parse_element(rest)  # read only here: the cached value itself
        for i in node:
            if isinstance(i, dict) and all(i.get(k) == v for k, v in want.items()):
                return True, i
        return False, None
    if kind == "v":
        if not isinstance(node, list):
            return False, None
        value = _parse_element(rest)
        if isinstance(value, (dict, list)):
            value = jsonutil.copy_json(value)  # handed to the caller: not the cached one
        return (value in node), value
    return False, None


@functools.lru_cache(maxsize=4096)
def _parse_element(rest: str) -> Any:
    """The JSON after "k:" or "v:" (cached: the same list items come up in every write of an object)."""
    return jsonutil.loads(rest)


_ABSENT = object()


def _differing_field_sets(new: dict[str, Any], old: dict[str, Any], status: bool) -> tuple[set[Path], set[Path]]:
    """``field_set(new)`` and ``field_set(old)``, less the paths under the fields (top level, and metadata's) that
    are the same JSON on both sides: those hold the same paths on both sides, so they change neither what is gone
    nor what changed. An update usually rewrites one part of an object (its spec, or its status), so this skips
    most of the walk."""
    new_out: set[Path] = set()
    old_out: set[Path] = set()
    for name in _union_keys(new, old):
        if name in IGNORED_ROOT or (name == "status" and not status):
            continue
        a, b = new.get(name, _ABSENT), old.get(name, _ABSENT)
        if name == "metadata" and isinstance(a, dict) and isinstance(b, dict) and a and b:  # ({} is a leaf)
            for field in _union_keys(a, b):
                if field not in IGNORED_METADATA:
                    _collect_unless_same(field, a.get(field, _ABSENT), b.get(field, _ABSENT), ("f:metadata",),
                                         status, new_out, old_out)
        else:
            _collect_unless_same(name, a, b, (), status, new_out, old_out)
    return new_out, old_out


def _union_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [*a, *(k for k in b if k not in a)]


def _collect_unless_same(name: str, a: Any, b: Any, prefix: Path, status: bool, new_out: set[Path],
                         old_out: set[Path]) -> None:
    if a is b or _same_json(a, b):
        return
    if a is not _ABSENT:
        _collect_fields({name: a}, prefix, status, new_out)
    if b is not _ABSENT:
        _collect_fields({name: b}, prefix, status, old_out)


def _same_json(a: Any, b: Any) -> bool:
    """Byte-for-byte the same JSON: stricter than ==, for which 1 == 1.0 == True although their paths differ."""
    if a is _ABSENT or b is _ABSENT or type(a) is not type(b):
        return False
    try:
        return jsonutil.dumps(a) == jsonutil.dumps(b)
    except TypeError:
        return False


class _Ambiguous(Exception):
    """The fast diff met lists whose items it cannot pair up the way path lookups would (duplicate merge keys, or
    a ``ports`` list whose merge key differs between the two sides); the general comparison answers instead."""


def _diff_fields(new: dict[str, Any], old: dict[str, Any], status: bool) -> tuple[set[Path], set[Path]]:
    """What an update changed and what it removed, as the general comparison computes them::

        changed = {p in field_set(new) whose value differs in old}   (status paths only for a status write;
                                                                      never status paths otherwise)
        gone = field_set(old) - field_set(new)

    in one walk of both objects that descends only where they differ (``==`` on a subtree is C-speed), pairing the
    items of keyed lists by merge key. A pod status update by its kubelet compares a few conditions instead of
    looking up every field of the status on both sides: ~10x less work on the write path of every status update."""
    changed: set[Path] = set()
    gone: set[Path] = set()
    ignored: set[Path] = set()  # changed paths a write of the other kind (status / not status) does not count
    for name in _union_keys(new, old):
        if name in IGNORED_ROOT or (name == "status" and not status):
            continue
        a, b = new.get(name, _ABSENT), old.get(name, _ABSENT)
        if a == b:
            continue
        into = changed if (name == "status") is status else ignored
        if name == "metadata" and isinstance(a, dict) and isinstance(b, dict) and a and b:  # ({} is a leaf)
            for field in _union_keys(a, b):
                if field not in IGNORED_METADATA:
                    x, y = a.get(field, _ABSENT), b.get(field, _ABSENT)
                    if x != y:
                        _diff_value(x, y, field, ("f:metadata",), into, gone)
        else:
            _diff_value(a, b, name, (), into, gone)
    return changed, gone


def _diff_value(a: Any, b: Any, name: str, prefix: Path, changed: set[Path], gone: set[Path]) -> None:
    """The field ``name`` under ``prefix`` holds ``a`` in the new object and ``b`` in the old (either may be
    _ABSENT); ``a != b``."""
    path = (*prefix, "f:" + name)
    if type(a) is dict and type(b) is dict and a and b:
        _diff_map(a, b, path, changed, gone)
        return
    if type(a) is list and type(b) is list and a and b:
        key = _merge_key(name, a)
        if key != _merge_key(name, b):
            raise _Ambiguous
        if key is None:  # an atomic list: one path, on both sides
            changed.add(path)
        elif key == "":
            _diff_set(a, b, path, changed, gone)
        else:
            _diff_keyed(a, b, key, path, changed, gone)
        return
    # Different shapes, or a leaf: every path of the new value differs; the old value's paths that the new one does
    # not have are gone.
    new_paths: set[Path] = set()
    if a is not _ABSENT:
        _collect_fields({name: a}, prefix, True, new_paths)
        changed |= new_paths
    if b is not _ABSENT:
        old_paths: set[Path] = set()
        _collect_fields({name: b}, prefix, True, old_paths)
        gone |= old_paths - new_paths


def _diff_map(a: dict[str, Any], b: dict[str, Any], path: Path, changed: set[Path], gone: set[Path]) -> None:
    for field in _union_keys(a, b):
        x, y = a.get(field, _ABSENT), b.get(field, _ABSENT)
        if x != y:
            _diff_value(x, y, field, path, changed, gone)


def _diff_set(a: list[Any], b: list[Any], path: Path, changed: set[Path], gone: set[Path]) -> None:
    kept: set[str] = set()
    for item in a:
        element = "v:" + jsonutil.dumps(item).decode()
        kept.add(element)
        if item not in b:
            changed.add((*path, element))
    for item in b:
        element = "v:" + jsonutil.dumps(item).decode()
        if element not in kept:
            gone.add((*path, element))


def _diff_keyed(a: list[Any], b: list[Any], key: str, path: Path, changed: set[Path], gone: set[Path]) -> None:
    olds = _items_by_key(b, key)
    news = _items_by_key(a, key)
    for element, item in news.items():
        item_path = (*path, element)
        before = olds.get(element)
        if before is None:
            changed.add(item_path)
            _collect_fields(item, item_path, True, changed)
        elif item != before:
            changed.add(item_path)
            _diff_map(item, before, item_path, changed, gone)
    for element, item in olds.items():
        if element not in news:
            item_path = (*path, element)
            gone.add(item_path)
            _collect_fields(item, item_path, True, gone)


def _items_by_key(items: list[Any], key: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    count = 0
    for item in items:
        if isinstance(item, dict):
            count += 1
            out[_key_element(item, key)] = item
    if len(out) != count:
        raise _Ambiguous  # two items with one key: a lookup finds the first, a walk would see both
    return out


def _changed_fields(old: dict[str, Any], new: dict[str, Any], paths: set[Path], status: bool) -> set[Path]:
    """The paths of ``paths`` (restricted to status, or to everything but status) whose value differs between
    ``old`` and ``new``: ``_value_at(old, p) != _value_at(new, p)``.

    Values are looked up once per prefix, and a path is unchanged as soon as one of its prefixes holds equal values
    on both sides (everything below an equal subtree is equal), so an update compares a handful of subtrees instead
    of walking every field from the root twice."""
    changed: set[Path] = set()
    olds: dict[Path, tuple[bool, Any]] = {(): (True, old)}
    news: dict[Path, tuple[bool, Any]] = {(): (True, new)}
    same: dict[Path, bool] = {}
    for path in paths:
        if (path[0] == "f:status") is not status:
            continue
        differs = True
        for i in range(1, len(path) + 1):
            prefix = path[:i]
            equal = same.get(prefix)
            if equal is None:
                a = _memo_value(old, prefix, olds)
                b = _memo_value(new, prefix, news)
                equal = same[prefix] = a == b
            if equal:
                differs = False
                break
        if differs:
            changed.add(path)
    return changed


def _memo_value(obj: Any, path: Path, memo: dict[Path, tuple[bool, Any]]) -> tuple[bool, Any]:
    """``_value_at(obj, path)``, from the memoised value of its parent path."""
    value = memo.get(path)
    if value is None:
        parent_path = path[:-1]
        parent = _memo_value(obj, parent_path, memo)
        if parent_path and parent_path[-1].partition(":")[0] == "v":
            value = parent  # _value_at stops at a "v:" element
        elif not parent[0]:
            value = (False, None)
        else:
            value = _step(parent[1], path[-1])
        memo[path] = value
    return value


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

    def to_dict(self, tree: dict[str, Any] | None = None) -> dict[str, Any]:
        """As stored; ``tree``: the FieldsV1 of ``fields``, when the caller has it already."""
        d: dict[str, Any] = {"manager": self.manager, "operation": self.operation, "apiVersion": self.api_version,
                             "time": self.time, "fieldsType": "FieldsV1",
                             "fieldsV1": to_fields_v1(self.fields) if tree is None else tree}
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
    if old is None:
        # A create records no status (status=True with no old object is not a write anything makes).
        tree = _tree_of(new) if not status else to_fields_v1(
            {p for p in field_set(new, status=True) if p[0] == "f:status"})
        if tree:
            mine = Entry(manager, "Update", new.get("apiVersion", ""), jsonutil.now_rfc3339(), set(), subresource)
            new["metadata"]["managedFields"] = [mine.to_dict(tree)]
        else:
            new["metadata"].pop("managedFields", None)
        return
    try:
        changed, gone = _diff_fields(new, old, status)
    except _Ambiguous:
        new_fields, old_fields = _differing_field_sets(new, old, status)
        changed = _changed_fields(old, new, new_fields, status)
        gone = old_fields - new_fields
    taken = gone | changed  # what every other manager loses
    identity = (manager, "Update", subresource)
    # The first element of every path another manager loses: an entry with none of them at its root (most entries,
    # on a status update: they own spec and metadata) loses nothing, without looking up each path.
    taken_heads = {p[0] for p in taken}
    kept: list[dict[str, Any]] = []
    found_mine = False
    # Each manager's entry is decoded and re-encoded only if this write changes its fields; the others (most of them,
    # on a typical update) are kept as they were stored, which is what re-encoding them would give.
    for d in (old.get("metadata") or {}).get("managedFields") or []:
        if not isinstance(d, dict):
            continue
        own = (d.get("manager", ""), d.get("operation", "Update"), d.get("subresource", "")) == identity
        tree = d.get("fieldsV1") or {}
        lost = gone if own else taken
        first_own = own and not found_mine
        found_mine = found_mine or own
        gains = first_own and bool(changed)
        if (not own and taken_heads.isdisjoint(tree)) or not any(_tree_has(tree, p) for p in lost):
            if not gains:
                if any(e != "." for e in tree):  # its decoded field set is not empty
                    kept.append(d)
                continue
            if all(_tree_has(tree, p) for p in changed):
                kept.append({**d, "time": jsonutil.now_rfc3339()})
                continue
        e = Entry.from_dict(d)
        e.fields -= lost
        if gains:
            e.fields |= changed
            e.time = jsonutil.now_rfc3339()
        if e.fields:
            kept.append(e.to_dict())
    if changed and not found_mine:
        kept.append(Entry(manager, "Update", new.get("apiVersion", ""), jsonutil.now_rfc3339(), changed,
                          subresource).to_dict())
    if kept:
        new["metadata"]["managedFields"] = kept
    else:
        new["metadata"].pop("managedFields", None)


def _tree_has(tree: dict[str, Any], path: Path) -> bool:
    """Whether ``path`` is in ``from_fields_v1(tree)``, without decoding the whole tree."""
    node: Any = tree
    for element in path:
        if element == "." or not isinstance(node, dict):
            return False
        node = node.get(element)
        if node is None:
            return False
    return not node or path[-1].startswith(("k:", "v:")) or "." in node


def apply(current: dict[str, Any] | None, applied: dict[str, Any], manager: str, force: bool, custom: bool,
          resource: str, subresource: str = "", schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Server-side apply of ``applied`` by ``manager`` onto ``current`` (None: the object is created)."""
    if not manager:
        raise ApiError(400, "BadRequest", "PATCH, fieldManager: Required value: is required for apply patch")
    status = subresource == "status"
    applied = jsonutil.copy_json(applied)
    applied.get("metadata", {}).pop("managedFields", None)
    new_fields = field_set(applied, status=status)
    if status:
        new_fields = {p for p in new_fields if p and p[0] == "f:status"}
    base = jsonutil.copy_json(current) if current is not None else {}
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
