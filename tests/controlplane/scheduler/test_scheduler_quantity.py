"""Resource quantity parsing, as apimachinery's resource.Quantity."""

from fractions import Fraction

import pytest

from controlplane.scheduler.quantity import (
    QuantityError,
    milli_value,
    parse_quantity,
    value,
)


@pytest.mark.parametrize("text, exact", [
    ("100m", Fraction(1, 10)),
    ("1Gi", 1 << 30),
    ("500Mi", 500 << 20),
    ("1e3", 1000),
    ("1E3", 1000),
    ("2", 2),
    ("0.5", Fraction(1, 2)),
    (".5", Fraction(1, 2)),
    ("1.", 1),
    ("1.5Gi", 3 << 29),
    ("1k", 1000),
    ("1M", 10**6),
    ("1E", 10**18),
    ("1Ei", 1 << 60),
    ("12n", Fraction(12, 10**9)),
    ("3u", Fraction(3, 10**6)),
    ("+4", 4),
    ("-4", -4),
    ("1e-3", Fraction(1, 1000)),
    (2, 2),
    (0.25, Fraction(1, 4)),
])
def test_parse_exact(text, exact):
    assert parse_quantity(text) == exact


@pytest.mark.parametrize("bad", ["", "1K", "Gi", "1Gi2", "abc", "1e", "1.2.3", "--1", "1 Gi"])
def test_rejects_malformed(bad):
    with pytest.raises(QuantityError):
        parse_quantity(bad)


@pytest.mark.parametrize("text, v, mv", [
    ("100m", 1, 100),
    ("0.0001", 1, 1),  # rounded up at both scales
    ("1", 1, 1000),
    ("2.5", 3, 2500),
    ("1Mi", 1 << 20, (1 << 20) * 1000),
    ("1e3", 1000, 10**6),
])
def test_value_and_milli_value_round_up(text, v, mv):
    assert value(text) == v
    assert milli_value(text) == mv


def test_sums_are_exact():
    assert milli_value(parse_quantity("0.1") + parse_quantity("0.2")) == 300
