"""The upstream schemas of the built-in kinds, from the `kubernetes-validate` package, and what is built on them.

The package ships kube-apiserver's own OpenAPI definitions as JSON Schema, per Kubernetes release, including the
patch metadata (`x-kubernetes-patch-merge-key`, `x-kubernetes-patch-strategy`, list types). From them come: the
OpenAPI v3 component schemas (so `kubectl explain` works), unknown-field detection for `fieldValidation`
Strict/Warn, and the merge keys of strategic merge patch. The file is loaded on first use, never at start-up.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

SCHEMA_RELEASE = "v1.32.0-local"
_REF = "#/$defs/"


@functools.lru_cache(maxsize=1)
def definitions() -> dict[str, Any]:
    # find_spec locates the package without running its __init__, which imports jsonschema and some sixty other
    # modules (~0.1 s of CPU, paid by every fresh `ccmkit up` when bootstrap creates its namespaces): only the data
    # file is needed. The package is optional: without it, schemas are open.
    spec = importlib.util.find_spec("kubernetes_validate")
    if spec is None or not spec.submodule_search_locations:
        return {}
    package = Path(next(iter(spec.submodule_search_locations)))
    try:
        data = orjson.loads((package / "kubernetes-json-schema" / SCHEMA_RELEASE / "_definitions.json").read_bytes())
    except FileNotFoundError:
        return {}
    return data.get("$defs", {})


@functools.lru_cache(maxsize=1)
def _gvk_index() -> dict[tuple[str, str, str], str]:
    index = {}
    for name, schema in definitions().items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            index[(gvk.get("group", ""), gvk.get("version", ""), gvk.get("kind", ""))] = name
    return index


def definition_name(group: str, version: str, kind: str) -> str | None:
    return _gvk_index().get((group, version, kind))


def resolve(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """Follow a `$ref` (one level; definitions never chain refs)."""
    if schema is None:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF):
        return definitions().get(ref[len(_REF):])
    return schema


def schema_for(group: str, version: str, kind: str) -> dict[str, Any] | None:
    name = definition_name(group, version, kind)
    return definitions().get(name) if name else None


# ---------------------------------------------------------------------------------------------------- strict


def _is_open(schema: dict[str, Any]) -> bool:
    """Schemas that accept any field: no properties declared (RawExtension, JSON, Quantity, IntOrString, ...)."""
    return "properties" not in schema and "additionalProperties" not in schema


_JSON_TYPES: dict[type, tuple[str, ...]] = {
    str: ("string",), bool: ("boolean",), int: ("integer", "number"), float: ("number",), dict: ("object",),
    list: ("array",),
}
_GO_NAMES = {"string": "string", "boolean": "bool", "integer": "int64", "number": "float64", "object": "object",
             "array": "array"}


# What upstream's custom unmarshallers accept: resource.Quantity (its ParseQuantity grammar) and metav1.Time
# (time.RFC3339). Anything else fails decoding, so it is a 400 before validation ever runs.
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_QUANTITY_MESSAGE = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_QUANTITY_DEF = "io.k8s.apimachinery.pkg.api.resource.Quantity"


def _json_type(obj: Any) -> tuple[str, ...]:
    return _JSON_TYPES.get(type(obj), ())


def _allowed(schema: dict[str, Any]) -> list[str] | None:
    declared = schema.get("type")
    if declared is None:
        return None
    return [declared] if isinstance(declared, str) else [t for t in declared if isinstance(t, str)]


def _decode_problem(obj: Any, schema: dict[str, Any], path: str) -> str | None:
    """What Go's decoder would say about ``obj`` in a field of this schema, or None when it decodes.

    null decodes into anything (it leaves the zero value); a whole float is accepted for an integer because YAML
    and some JSON encoders write 3.0 for 3."""
    if obj is None:
        return None
    allowed = _allowed(schema)
    if allowed is None:
        alternatives = schema.get("oneOf")
        if not isinstance(alternatives, list) or not alternatives:
            return None
        # IntOrString and Quantity: one of a few scalar types.
        allowed = [t for alt in alternatives if isinstance(alt, dict) for t in (_allowed(alt) or [])]
        if not allowed:
            return None
    actual = _json_type(obj)
    fits = any(t in allowed for t in actual) or (isinstance(obj, float) and obj.is_integer() and "integer" in allowed)
    if not fits:
        seen = {"string": "string", "boolean": "bool", "integer": "number", "number": "number", "object": "object",
                "array": "array"}.get(actual[0] if actual else "", "value")
        wanted = [t for t in allowed if t != "null"]
        go = _GO_NAMES.get(wanted[0], wanted[0]) if len(wanted) == 1 else "intstr.IntOrString"
        return f"json: cannot unmarshal {seen} into Go struct field {path} of type {go}"
    if isinstance(obj, str):
        if schema is definitions().get(_QUANTITY_DEF) and not _QUANTITY.match(obj):
            return f"{path}: {_QUANTITY_MESSAGE}"
        if schema.get("format") == "date-time" and obj and not _RFC3339.match(obj):
            return f'{path}: parsing time "{obj}" as "2006-01-02T15:04:05Z07:00": cannot parse'
    return None


def drop_unknown_fields(obj: Any, schema: dict[str, Any] | None, path: str = "",
                        mistyped: list[str] | None = None, stored: Any = None) -> list[str]:
    """Remove, in place, the fields of ``obj`` the schema does not declare, as decoding into upstream's typed
    structs does; return their dotted paths for the `fieldValidation` warning or error.

    With ``mistyped``, the same walk also collects values of the wrong JSON type (a number where a string belongs),
    which upstream's decoder refuses outright whatever `fieldValidation` says; their subtrees are not descended.

    ``stored``: the value ``obj`` replaces, as it was stored. Fields (and list items, by position) equal to it
    passed this walk when they were written and are not walked again: a status update walks what it changed."""
    dropped: list[str] = []
    _check_value(_node(schema), obj, path, mistyped, dropped, True, stored)
    return dropped


def type_errors(obj: Any, schema: dict[str, Any] | None) -> list[str]:
    """The values of ``obj`` Go's decoder would refuse for their type, without changing ``obj``."""
    mistyped: list[str] = []
    _check_value(_node(schema), obj, "", mistyped, [], False)
    return mistyped


# Every write walks its body against the kind's schema, so the walk runs on a compiled form of each schema node:
# what `_decode_problem` checks is reduced to a set of Python types that certainly decode (anything else takes the
# exact, slow check, which also words the error), and children are compiled on first use. Nodes of named
# definitions are shared by every schema that references them.

_FITS: dict[str, tuple[type, ...]] = {"string": (str,), "boolean": (bool,), "integer": (int,), "number": (int, float),
                                      "object": (dict,), "array": (list,), "null": ()}


class _Node:
    __slots__ = ("extra", "extra_node", "fits", "items", "items_node", "kids", "open", "props", "schema", "skip",
                 "strings")

    def __init__(self, schema: dict[str, Any] | None) -> None:
        self.schema = schema
        self.skip = schema is None or bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        self.fits: frozenset[type] | None = None  # None: every value decodes as far as its type goes
        self.strings: re.Pattern[str] | None = None  # the grammar strings must match (Quantity, RFC 3339 times)
        self.open = True
        self.props: dict[str, Any] = {}
        self.kids: dict[str, _Node] = {}
        self.extra: Any = None
        self.extra_node: _Node | None = None
        self.items: Any = None
        self.items_node: _Node | None = None
        if schema is None or self.skip:
            return
        allowed = _allowed(schema)
        if allowed is None:
            alternatives = schema.get("oneOf")
            if isinstance(alternatives, list) and alternatives:
                allowed = [t for alt in alternatives if isinstance(alt, dict) for t in (_allowed(alt) or [])] or None
        if allowed is not None:
            # A type name outside JSON's (none in practice) leaves its values to the exact check.
            self.fits = frozenset(t for name in allowed for t in _FITS.get(name, ()))
        # Strings of these are checked against a grammar; one that matches it decodes, any other takes the exact
        # check (which words the error, and lets an empty time through as upstream does).
        self.strings = (_QUANTITY if schema is definitions().get(_QUANTITY_DEF)
                        else _RFC3339 if schema.get("format") == "date-time" else None)
        self.open = _is_open(schema)
        self.props = schema.get("properties") or {}
        self.extra = schema.get("additionalProperties")
        if isinstance(self.extra, dict):
            self.extra_node = _node(self.extra)
        items = schema.get("items")
        self.items = items if isinstance(items, dict) else None

    def child(self, key: str) -> _Node | None:
        """The node for field ``key``: declared, additional, or None when the field is unknown."""
        node = self.kids.get(key)
        if node is None:
            if key in self.props:
                node = self.kids[key] = _node(self.props[key])
            else:
                return self.extra_node
        return node

    def item_node(self) -> _Node | None:
        if self.items_node is None and self.items is not None:
            self.items_node = _node(self.items)
        return self.items_node


_DEFINITION_NODES: dict[str, _Node] = {}
_INLINE_NODES: dict[int, _Node] = {}  # roots passed in directly (a kind's definition, a CRD's schema), by identity
_NONE = _Node(None)


def _node(schema: dict[str, Any] | None) -> _Node:
    if schema is None:
        return _NONE
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF):
        name = ref[len(_REF):]
        node = _DEFINITION_NODES.get(name)
        if node is None:
            node = _DEFINITION_NODES[name] = _Node(definitions().get(name))
        return node
    node = _INLINE_NODES.get(id(schema))
    if node is None or node.schema is not schema:
        if len(_INLINE_NODES) >= 1024:  # replaced CRD schemas must not pile up
            _INLINE_NODES.clear()
        node = _INLINE_NODES[id(schema)] = _Node(schema)
    return node


def _check_value(node: _Node, obj: Any, path: str, mistyped: list[str] | None, dropped: list[str],
                 drop: bool, stored: Any = None) -> None:
    """One value at ``path`` against its node: type (with ``mistyped``), then unknown fields below it."""
    if node.skip:
        return
    if mistyped is not None and obj is not None:
        fits = node.fits
        strings = node.strings
        if ((fits is not None and type(obj) not in fits)
                or (strings is not None and type(obj) is str and strings.match(obj) is None)):
            problem = _decode_problem(obj, node.schema, path[1:] or "<root>")  # type: ignore[arg-type]
            if problem is not None:
                mistyped.append(problem)
                return
    if isinstance(obj, (dict, list)):
        _walk(node, obj, path, mistyped, dropped, drop, stored)


_ABSENT: Any = object()


def _walk(node: _Node, obj: dict[str, Any] | list[Any], path: str, mistyped: list[str] | None,
          dropped: list[str], drop: bool, stored: Any = None) -> None:
    if isinstance(obj, dict):
        if node.open:
            return
        keep_unknown = node.extra is True
        before = stored if type(stored) is dict else None
        for key in list(obj):
            child = node.child(key)
            if child is None:
                if not keep_unknown:
                    if drop:
                        del obj[key]
                    dropped.append(f"{path}.{key}")
                continue
            if child.skip:
                continue
            value = obj[key]
            previous = _ABSENT
            if before is not None:
                previous = before.get(key, _ABSENT)
                if previous == value:
                    continue
            if mistyped is not None and value is not None:
                fits = child.fits
                strings = child.strings
                if ((fits is not None and type(value) not in fits)
                        or (strings is not None and type(value) is str and strings.match(value) is None)):
                    problem = _decode_problem(value, child.schema, f"{path}.{key}"[1:])  # type: ignore[arg-type]
                    if problem is not None:
                        mistyped.append(problem)
                        continue
            if isinstance(value, (dict, list)):
                _walk(child, value, f"{path}.{key}", mistyped, dropped, drop,
                      None if previous is _ABSENT else previous)
    else:
        item = node.item_node()
        if item is None or item.skip:
            return
        before_items = stored if type(stored) is list else ()
        for i, value in enumerate(obj):
            previous = before_items[i] if i < len(before_items) else None
            if previous is not None and previous == value:
                continue
            _check_value(item, value, f"{path}[{i}]", mistyped, dropped, drop, previous)


def definition(name: str) -> dict[str, Any] | None:
    """A definition by its upstream name, e.g. io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions."""
    return definitions().get(name)


# ---------------------------------------------------------------------------------------------------- patch metadata


def list_merge_key(schema: dict[str, Any] | None) -> str | None:
    """The merge key of a list field's schema: a field name, "" for a merged set of scalars, None when atomic."""
    schema = resolve(schema)
    if not schema:
        return None
    strategy = schema.get("x-kubernetes-patch-strategy") or ""
    if "merge" in strategy.split(","):
        return schema.get("x-kubernetes-patch-merge-key") or ""
    return None


def child(schema: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    schema = resolve(schema)
    if not schema:
        return None
    props = schema.get("properties") or {}
    if key in props:
        return props[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def items(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    schema = resolve(schema)
    if not schema:
        return None
    value = schema.get("items")
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------------------------------------- OpenAPI v3


_SCHEMA_MAPS = ("properties", "patternProperties", "definitions", "$defs")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_VALUES = ("items", "additionalProperties", "not")


def _to_openapi(schema: Any) -> Any:
    """One schema as kubernetes-validate writes it (JSON Schema) → the OpenAPI v3 dialect kube-apiserver serves.

    Only schema positions are rewritten: a property that happens to be called `$ref` or `oneOf` (JSONSchemaProps
    has both) is a name in a `properties` map, not a keyword."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _to_openapi(sub) for name, sub in value.items()}
        elif key in _SCHEMA_VALUES and isinstance(value, dict):
            out[key] = _to_openapi(value)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_to_openapi(sub) for sub in value]
        elif key == "$ref" and isinstance(value, str) and value.startswith(_REF):
            out[key] = "#/components/schemas/" + value[len(_REF):]
        elif key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            out["type"] = types[0] if len(types) == 1 else "object"
            if "null" in value:
                out["nullable"] = True
        elif key == "enum" and isinstance(value, list) and None in value:
            out[key] = [v for v in value if v is not None]
        else:
            out[key] = value
    one_of = out.get("oneOf")
    if isinstance(one_of, list) and one_of and all(isinstance(s, dict) and "type" in s for s in one_of):
        # IntOrString and Quantity: upstream marks these with an extension or a format, not a oneOf.
        out.pop("oneOf")
        if any(s["type"] == "integer" for s in one_of):
            out["x-kubernetes-int-or-string"] = True
        else:
            out["type"] = "string"
    if "$ref" in out and len(out) > 1:
        # OpenAPI 3.0 ignores siblings of $ref; kube-apiserver wraps the ref in allOf to keep its description.
        out["allOf"] = [{"$ref": out.pop("$ref")}]
    return out


def _refs(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF):
            yield ref[len(_REF):]
        for value in schema.values():
            yield from _refs(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _refs(value)


def component_schemas(names: list[str]) -> dict[str, Any]:
    """The named definitions and everything they reference, converted for OpenAPI v3."""
    defs = definitions()
    seen: set[str] = set()
    stack = [n for n in names if n in defs]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(r for r in _refs(defs[name]) if r not in seen and r in defs)
    return {name: _to_openapi(defs[name]) for name in sorted(seen)}
