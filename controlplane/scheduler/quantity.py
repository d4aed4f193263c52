"""Exact parsing of Kubernetes resource quantities ("100m", "1Gi", "1e3", "500Mi", "2").

The scheduler compares requests with allocatable as integers exactly as apimachinery's resource.Quantity does: CPU
in millicores, everything else in base units, both rounded up. Quantities are parsed into Fractions, never floats,
so "0.1" + "0.2" CPUs is exactly 300m and a pod that fits on a real cluster fits here.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

__all__ = ["QuantityError", "parse_quantity", "value", "milli_value", "to_int"]

_DIGITS = frozenset("0123456789")
_BINARY: dict[str, int] = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL: dict[str, Fraction] = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 10**3), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
}


class QuantityError(ValueError):
    """The string is not a Kubernetes quantity (apimachinery's ErrFormatWrong / ErrSuffix)."""


def _suffix_multiplier(suffix: str, text: str) -> Fraction | int:
    if suffix in _BINARY:
        return _BINARY[suffix]
    if suffix in _DECIMAL:
        return _DECIMAL[suffix]
    # A decimal exponent: "e3", "E-2". A bare "E" is exa and was handled above.
    if len(suffix) > 1 and suffix[0] in "eE":
        exp = suffix[1:]
        digits = exp[1:] if exp[0] in "+-" else exp
        if digits and all(c in _DIGITS for c in digits):
            return Fraction(10) ** int(exp)
    raise QuantityError(f"quantities must match the regular expression "
                        f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text!r}")


@lru_cache(maxsize=8192)
def parse_quantity(text: str | int | float) -> Fraction:
    """The exact value of a quantity. Integers and floats (from YAML written by hand) are accepted too."""
    if isinstance(text, bool):
        raise QuantityError(f"not a quantity: {text!r}")
    if isinstance(text, int):
        return Fraction(text)
    if isinstance(text, float):
        return Fraction(repr(text))
    s = text.strip() if isinstance(text, str) else str(text)
    if not s:
        raise QuantityError("quantity is empty")
    i, n, negative = 0, len(s), False
    if s[0] in "+-":
        negative = s[0] == "-"
        i = 1
    j = i
    while j < n and s[j] in _DIGITS:
        j += 1
    whole = s[i:j]
    frac = ""
    if j < n and s[j] == ".":
        k = j + 1
        while k < n and s[k] in _DIGITS:
            k += 1
        frac = s[j + 1:k]
        j = k
    if not whole and not frac:
        raise QuantityError(f"quantity has no digits: {text!r}")
    number = Fraction(int(whole or "0"))
    if frac:
        number += Fraction(int(frac), 10 ** len(frac))
    result = number * _suffix_multiplier(s[j:], s)
    return -result if negative else result


def _round_up(x: Fraction) -> int:
    # resource.Quantity rounds away from zero when asked for a coarser scale.
    return math.ceil(x) if x >= 0 else -math.ceil(-x)


def value(text: str | int | float | Fraction) -> int:
    """Quantity.Value(): the integer value, rounded up (bytes, pods, extended resources)."""
    q = text if isinstance(text, Fraction) else parse_quantity(text)
    return _round_up(q)


def milli_value(text: str | int | float | Fraction) -> int:
    """Quantity.MilliValue(): thousandths, rounded up (CPU in millicores)."""
    q = text if isinstance(text, Fraction) else parse_quantity(text)
    return _round_up(q * 1000)


def to_int(resource_name: str, quantity: str | int | float | Fraction) -> int:
    """The integer the scheduler keeps for one resource: millicores for cpu, base units otherwise."""
    return milli_value(quantity) if resource_name == "cpu" else value(quantity)
