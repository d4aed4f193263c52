"""Label and field selectors, parsed from their query-string form and matched against objects.

The grammar follows apimachinery's labels.Parse (equality-based `a=b`, `a==b`, `a!=b` and set-based `a in (x,y)`,
`a notin (x)`, `a`, `!a`) and fields.ParseSelector (`a=b`, `a==b`, `a!=b`). A parse error is a 400 BadRequest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.apiserver.errors import bad_request

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")
_GT_LT_RE = re.compile(rf"^\s*({_KEY})\s*(>|<)\s*(-?\d+)\s*$")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.op
        if op == "=":
            return labels.get(self.key) == self.values[0]
        if op == "!=":
            return labels.get(self.key) != self.values[0]
        if op == "in":
            return self.key in labels and labels[self.key] in self.values
        if op == "notin":
            return labels.get(self.key) not in self.values
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        value = labels.get(self.key)
        if value is None:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if op == ">" else number < bound


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if not text or not text.strip():
            return cls()
        reqs: list[Requirement] = []
        for part in _split_top_level(text):
            if m := _SET_RE.match(part):
                values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
                reqs.append(Requirement(m.group(1), m.group(2), values))
            elif m := _EQ_RE.match(part):
                op = "=" if m.group(2) in ("=", "==") else "!="
                reqs.append(Requirement(m.group(1), op, (m.group(3),)))
            elif m := _GT_LT_RE.match(part):
                reqs.append(Requirement(m.group(1), m.group(2), (m.group(3),)))
            elif m := _EXISTS_RE.match(part):
                reqs.append(Requirement(m.group(2), "!" if m.group(1) else "exists"))
            else:
                raise bad_request(f"unable to parse requirement: {part.strip()!r}: invalid label selector")
        return cls(tuple(reqs))

    @classmethod
    def from_api(cls, selector: Mapping[str, Any] | None) -> LabelSelector:
        """A metav1.LabelSelector (matchLabels + matchExpressions) as a selector."""
        if not selector:
            return cls()
        reqs = [Requirement(k, "=", (v,)) for k, v in (selector.get("matchLabels") or {}).items()]
        ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
        for expr in selector.get("matchExpressions") or []:
            reqs.append(Requirement(expr["key"], ops[expr["operator"]], tuple(expr.get("values") or ())))
        return cls(tuple(reqs))


FieldGetter = Callable[[dict[str, Any]], str]


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    value: str
    negate: bool


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def exact(self, field: str) -> str | None:
        """The value this selector pins ``field`` to, if it has an equality requirement on it."""
        for r in self.requirements:
            if r.field == field and not r.negate:
                return r.value
        return None

    @classmethod
    def parse(cls, text: str | None, supported: Mapping[str, FieldGetter], resource: str) -> FieldSelector:
        if not text or not text.strip():
            return cls()
        reqs = []
        for part in text.split(","):
            if not part.strip():
                continue
            for op in ("!=", "==", "="):
                if op in part:
                    key, value = part.split(op, 1)
                    break
            else:
                raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
            key = key.strip()
            if key not in supported:
                raise bad_request(f'field label not supported: {key}')
            reqs.append(FieldRequirement(key, value.strip(), op == "!="))
        return cls(tuple(reqs))

    def matches(self, obj: dict[str, Any], getters: Mapping[str, FieldGetter]) -> bool:
        for r in self.requirements:
            actual = getters[r.field](obj)
            if (actual == r.value) == r.negate:
                return False
        return True
