"""Field validation shared by the strategies: names, labels, annotations and the common metadata rules.

Messages follow apimachinery's validation package word for word where users are likely to grep for them, so an
error from ccmkit reads like one from a real cluster.
"""

from __future__ import annotations

import re
from typing import Any

from controlplane.apiserver.errors import Cause

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start "
    "and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end "
    "with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1035_LABEL_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, "
    "and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is "
    "'[a-z]([-a-z0-9]*[a-z0-9])?')"
)


def dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if len(value) > 253:
        errs.append("must be no more than 253 characters")
    if not _DNS1123_SUBDOMAIN.match(value):
        errs.append(DNS1123_SUBDOMAIN_MSG)
    return errs


def dns1123_label(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _DNS1123_LABEL.match(value):
        errs.append(DNS1123_LABEL_MSG)
    return errs


def dns1035_label(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _DNS1035_LABEL.match(value):
        errs.append(DNS1035_LABEL_MSG)
    return errs


def qualified_name(key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    errs = []
    if "/" in key and (not prefix or dns1123_subdomain(prefix)):
        errs.append("prefix part " + DNS1123_SUBDOMAIN_MSG)
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        errs.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
            "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        )
    return errs


def label_value(value: Any) -> list[str]:
    if not isinstance(value, str):
        return ["must be a string"]
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _LABEL_VALUE.match(value):
        errs.append(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used "
            "for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        )
    return errs


NAME_VALIDATORS = {"subdomain": dns1123_subdomain, "label": dns1123_label, "dns1035": dns1035_label}


def validate_metadata(obj: dict[str, Any], name_rule: str, namespaced: bool) -> list[Cause]:
    causes: list[Cause] = []
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [Cause("FieldValueRequired", "Required value", "metadata")]
    name = meta.get("name")
    if not name:
        causes.append(Cause("FieldValueRequired", "Required value: name or generateName is required", "metadata.name"))
    elif not isinstance(name, str):
        causes.append(Cause("FieldValueInvalid", "must be a string", "metadata.name"))
    else:
        for msg in NAME_VALIDATORS[name_rule](name):
            causes.append(Cause("FieldValueInvalid", f'Invalid value: "{name}": {msg}', "metadata.name"))
    for field in ("labels", "annotations"):
        value = meta.get(field)
        if value is None:
            continue
        if not isinstance(value, dict):
            causes.append(Cause("FieldValueInvalid", "must be a map of strings", f"metadata.{field}"))
            continue
        for key, val in value.items():
            for msg in qualified_name(key):
                causes.append(Cause("FieldValueInvalid", f'Invalid value: "{key}": {msg}', f"metadata.{field}"))
            if field == "labels":
                for msg in label_value(val):
                    causes.append(Cause("FieldValueInvalid", f'Invalid value: "{val}": {msg}', f"metadata.labels"))
            elif not isinstance(val, str):
                causes.append(Cause("FieldValueInvalid", "must be a string", f"metadata.annotations.{key}"))
    finalizers = meta.get("finalizers")
    if finalizers is not None and (
        not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers)
    ):
        causes.append(Cause("FieldValueInvalid", "must be a list of strings", "metadata.finalizers"))
    if not namespaced and meta.get("namespace"):
        causes.append(Cause("FieldValueForbidden", "Forbidden: not allowed on this type", "metadata.namespace"))
    return causes


def required(obj: dict[str, Any], path: str) -> list[Cause]:
    """A FieldValueRequired cause if the dotted ``path`` is missing or empty."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return [Cause("FieldValueRequired", "Required value", path)]
        node = node[part]
    if node in (None, "", [], {}):
        return [Cause("FieldValueRequired", "Required value", path)]
    return []
