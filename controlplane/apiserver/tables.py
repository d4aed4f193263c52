"""Server-side printing: objects as a meta.k8s.io/v1 Table, which is what `kubectl get` asks for.

kubectl sends `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and prints the columns the server returns, so
the columns a kind shows live with the kind (its Strategy's `table`); this module builds the Table around them.
"""

from __future__ import annotations

from typing import Any

from controlplane.apiserver.kinds.base import AGE_COLUMN, NAME_COLUMN, Column, age
from controlplane.apiserver.registry import ResourceType

TABLE_MEDIA = "as=Table"


def wants_table(accept: str) -> bool:
    """True when the first acceptable media type asks for a meta.k8s.io Table."""
    if "Table" not in accept:  # nearly every request (and every write)
        return False
    for part in accept.split(","):
        params = {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip() for p in part.split(";")[1:] if "=" in p}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return True
    return False


def table_version(accept: str) -> str:
    for part in accept.split(","):
        if "as=Table" in part and "v=v1beta1" in part and "v=v1;" not in part:
            return "meta.k8s.io/v1beta1"
    return "meta.k8s.io/v1"


def _partial(obj: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def columns(rt: ResourceType) -> list[Column]:
    table = rt.strategy.table
    if table is None:
        return [NAME_COLUMN, AGE_COLUMN]
    if table.verbatim:
        return list(table.columns)
    main = [c for c in table.columns if c.priority == 0]
    wide = [c for c in table.columns if c.priority != 0]
    return [NAME_COLUMN, *main, AGE_COLUMN, *wide]


def row_cells(rt: ResourceType, obj: dict[str, Any]) -> list[Any]:
    name = (obj.get("metadata") or {}).get("name", "")
    table = rt.strategy.table
    if table is None:
        return [name, age(obj)]
    try:
        cells = table.cells(obj)
    except Exception:  # noqa: BLE001 - a malformed object must still print; show its name at least
        return [name] + [""] * (len(columns(rt)) - 1)
    if table.verbatim:
        return cells
    main = [c for c, col in zip(cells, table.columns, strict=False) if col.priority == 0]
    wide = [c for c, col in zip(cells, table.columns, strict=False) if col.priority != 0]
    return [name, *main, age(obj), *wide]


def to_table(rt: ResourceType, objects: list[dict[str, Any]], list_meta: dict[str, Any] | None,
             include_object: str, api_version: str = "meta.k8s.io/v1", with_columns: bool = True) -> dict[str, Any]:
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": row_cells(rt, obj)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = _partial(obj)
        rows.append(row)
    table: dict[str, Any] = {"kind": "Table", "apiVersion": api_version, "metadata": list_meta or {}}
    table["columnDefinitions"] = [c.to_dict() for c in columns(rt)] if with_columns else None
    table["rows"] = rows
    return table
