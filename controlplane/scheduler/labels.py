"""Label selectors, node selectors, topology selectors and taint tolerations, evaluated on plain label dicts.

These are the matching rules every scheduler plugin shares (apimachinery's labels.Selector, component-helpers'
nodeaffinity, v1helper's toleration checks). Each compiled selector carries a hashable ``key`` so the snapshot can
memoise "which pod groups / which nodes does this selector match" across scheduling cycles.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Selector", "NOTHING", "EVERYTHING", "label_selector", "selector_from_set",
    "NodeSelectorRequirement", "NodeSelectorTerm", "NodeSelector", "parse_node_selector", "parse_node_selector_term",
    "match_topology_selector_terms", "toleration_key", "tolerates", "find_untolerated_taint", "taint_key",
    "NO_SCHEDULE", "PREFER_NO_SCHEDULE", "NO_EXECUTE",
]

NO_SCHEDULE = "NoSchedule"
PREFER_NO_SCHEDULE = "PreferNoSchedule"
NO_EXECUTE = "NoExecute"

_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


# ---------------------------------------------------------------------------------------------------------------
# metav1.LabelSelector
# ---------------------------------------------------------------------------------------------------------------

class Selector:
    """A compiled label selector. ``matches(labels)`` is the only hot call, so the common matchLabels-only shape
    compiles to a tuple compare loop."""

    __slots__ = ("key", "nothing", "everything", "_pairs", "_reqs")

    def __init__(self, key: tuple, pairs: tuple[tuple[str, str], ...] = (),
                 reqs: tuple[tuple[str, str, frozenset[str]], ...] = (), *, nothing: bool = False) -> None:
        self.key = key
        self.nothing = nothing
        self.everything = not nothing and not pairs and not reqs
        self._pairs = pairs
        self._reqs = reqs

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.nothing:
            return False
        if self.everything:
            return True
        if labels is None:
            labels = {}
        for k, v in self._pairs:
            if labels.get(k) != v:
                return False
        for k, op, values in self._reqs:
            present = k in labels
            if op == "In":
                if not present or labels[k] not in values:
                    return False
            elif op == "NotIn":
                if present and labels[k] in values:
                    return False
            elif op == "Exists":
                if not present:
                    return False
            elif op == "DoesNotExist":
                if present:
                    return False
            else:  # pragma: no cover - rejected at compile time
                return False
        return True

    def __repr__(self) -> str:
        return f"Selector({self.key!r})"


NOTHING = Selector(("nothing",), nothing=True)
EVERYTHING = Selector(("everything",))

_SELECTOR_CACHE: dict[tuple, Selector] = {}


def _selector_key(sel: Mapping[str, Any]) -> tuple:
    ml = sel.get("matchLabels") or {}
    exprs = sel.get("matchExpressions") or []
    return (
        tuple(sorted((str(k), str(v)) for k, v in ml.items())),
        tuple(sorted((e.get("key", ""), e.get("operator", ""), tuple(sorted(e.get("values") or ())))
                     for e in exprs)),
    )


def label_selector(sel: Mapping[str, Any] | None) -> Selector:
    """metav1.LabelSelectorAsSelector: None selects nothing, {} selects everything.

    Raises ValueError for an operator the API does not allow (callers decide whether that means "matches nothing").
    """
    if sel is None:
        return NOTHING
    key = _selector_key(sel)
    cached = _SELECTOR_CACHE.get(key)
    if cached is not None:
        return cached
    pairs, exprs = key
    reqs: list[tuple[str, str, frozenset[str]]] = []
    for k, op, values in exprs:
        if op in ("In", "NotIn"):
            if not values:
                raise ValueError(f"{op} operator for key {k!r} requires at least one value")
        elif op in ("Exists", "DoesNotExist"):
            if values:
                raise ValueError(f"{op} operator for key {k!r} must not have values")
        else:
            raise ValueError(f"{op!r} is not a valid label selector operator")
        reqs.append((k, op, frozenset(values)))
    s = Selector(("sel",) + key, pairs, tuple(reqs))
    if len(_SELECTOR_CACHE) > 4096:
        _SELECTOR_CACHE.clear()
    _SELECTOR_CACHE[key] = s
    return s


def selector_from_set(labels: Mapping[str, str] | None) -> Selector:
    """labels.SelectorFromSet: an equality selector; an empty set selects everything (as upstream)."""
    return label_selector({"matchLabels": dict(labels or {})})


# ---------------------------------------------------------------------------------------------------------------
# v1.NodeSelector (node affinity, PV node affinity)
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NodeSelectorRequirement:
    key: str
    operator: str
    values: frozenset[str]
    number: int = 0  # the single integer value of Gt / Lt

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op == "In":
            v = labels.get(self.key)
            return v is not None and v in self.values
        if op == "NotIn":
            v = labels.get(self.key)
            return v is None or v not in self.values
        if op == "Exists":
            return self.key in labels
        if op == "DoesNotExist":
            return self.key not in labels
        v = labels.get(self.key)
        if v is None or not _INT_RE.match(v):
            return False
        n = int(v)
        if not _INT64_MIN <= n <= _INT64_MAX:
            return False
        return n > self.number if op == "Gt" else n < self.number


@dataclass(frozen=True, slots=True)
class NodeSelectorTerm:
    """One ORed term: its expressions and fields are ANDed. An invalid or empty term matches nothing."""

    expressions: tuple[NodeSelectorRequirement, ...]
    fields: tuple[NodeSelectorRequirement, ...]
    valid: bool
    key: tuple = field(default=(), compare=False)

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        if not self.valid:
            return False
        for r in self.expressions:
            if not r.matches(labels):
                return False
        if self.fields:
            fields = {"metadata.name": name}
            for r in self.fields:
                if not r.matches(fields):
                    return False
        return True


def _parse_requirement(e: Mapping[str, Any], *, is_field: bool) -> NodeSelectorRequirement | None:
    key = e.get("key", "")
    op = e.get("operator", "")
    values = tuple(str(v) for v in (e.get("values") or ()))
    if is_field:
        # Only metadata.name In/NotIn exist as node field selectors.
        if key != "metadata.name" or op not in ("In", "NotIn") or not values:
            return None
        return NodeSelectorRequirement(key, op, frozenset(values))
    if op in ("In", "NotIn"):
        if not values:
            return None
        return NodeSelectorRequirement(key, op, frozenset(values))
    if op in ("Exists", "DoesNotExist"):
        if values:
            return None
        return NodeSelectorRequirement(key, op, frozenset())
    if op in ("Gt", "Lt"):
        if len(values) != 1 or not _INT_RE.match(values[0]):
            return None
        return NodeSelectorRequirement(key, op, frozenset(values), int(values[0]))
    return None


def parse_node_selector_term(term: Mapping[str, Any] | None) -> NodeSelectorTerm:
    term = term or {}
    exprs_raw = term.get("matchExpressions") or []
    fields_raw = term.get("matchFields") or []
    valid = bool(exprs_raw or fields_raw)
    exprs: list[NodeSelectorRequirement] = []
    fields: list[NodeSelectorRequirement] = []
    for e in exprs_raw:
        r = _parse_requirement(e, is_field=False)
        if r is None:
            valid = False
        else:
            exprs.append(r)
    for e in fields_raw:
        r = _parse_requirement(e, is_field=True)
        if r is None:
            valid = False
        else:
            fields.append(r)
    key = (valid, tuple((r.key, r.operator, tuple(sorted(r.values))) for r in exprs),
           tuple((r.key, r.operator, tuple(sorted(r.values))) for r in fields))
    return NodeSelectorTerm(tuple(exprs), tuple(fields), valid, key)


@dataclass(frozen=True, slots=True)
class NodeSelector:
    """v1.NodeSelector: terms are ORed; no terms selects nothing."""

    terms: tuple[NodeSelectorTerm, ...]
    key: tuple = field(default=(), compare=False)

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        for t in self.terms:
            if t.matches(labels, name):
                return True
        return False


def parse_node_selector(ns: Mapping[str, Any] | None) -> NodeSelector | None:
    if ns is None:
        return None
    terms = tuple(parse_node_selector_term(t) for t in (ns.get("nodeSelectorTerms") or []))
    return NodeSelector(terms, tuple(t.key for t in terms))


def match_topology_selector_terms(terms: Sequence[Mapping[str, Any]] | None, labels: Mapping[str, str]) -> bool:
    """v1helper.MatchTopologySelectorTerms (StorageClass allowedTopologies): no terms matches every node."""
    if not terms:
        return True
    for term in terms:
        ok = True
        for expr in term.get("matchLabelExpressions") or []:
            v = labels.get(expr.get("key", ""))
            if v is None or v not in (expr.get("values") or ()):
                ok = False
                break
        if ok:
            return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Taints and tolerations
# ---------------------------------------------------------------------------------------------------------------

def taint_key(taint: Mapping[str, Any]) -> tuple[str, str, str]:
    """What of a taint matters for scheduling; timeAdded is left out so identical taints intern together."""
    return (taint.get("key", ""), taint.get("value", "") or "", taint.get("effect", ""))


def toleration_key(tol: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (tol.get("key", "") or "", tol.get("operator", "") or "Equal", tol.get("value", "") or "",
            tol.get("effect", "") or "")


def tolerates(tol: tuple[str, str, str, str], taint: tuple[str, str, str]) -> bool:
    """v1.Toleration.ToleratesTaint on interned keys."""
    t_key, t_op, t_value, t_effect = tol
    key, value, effect = taint
    if t_effect and t_effect != effect:
        return False
    if t_key and t_key != key:
        return False
    if t_op == "Equal":
        return t_value == value
    if t_op == "Exists":
        return True
    return False


def find_untolerated_taint(taints: Iterable[tuple[str, str, str]], tolerations: Sequence[tuple[str, str, str, str]],
                           effects: tuple[str, ...] = (NO_SCHEDULE, NO_EXECUTE)) -> tuple[str, str, str] | None:
    """v1helper.FindMatchingUntoleratedTaint restricted to taints with one of ``effects``."""
    for taint in taints:
        if taint[2] not in effects:
            continue
        if not any(tolerates(t, taint) for t in tolerations):
            return taint
    return None
