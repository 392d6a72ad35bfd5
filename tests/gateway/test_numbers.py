"""The bounds every number from an exchange passes before any arithmetic."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.exchanges.numbers import (
    MAX_DIGITS,
    MAX_EXPONENT,
    exact_difference,
    exact_sum,
    in_bounds,
    rounded_to,
)


def _in_bounds_by_definition(number: Decimal) -> bool:
    return number.is_finite() and (
        not number
        or (
            -MAX_EXPONENT <= number.adjusted() <= MAX_EXPONENT
            and len(number.as_tuple().digits) <= MAX_DIGITS
        )
    )


@st.composite
def decimals_of_any_text(draw: st.DrawFn) -> Decimal:
    """Any sign, length and exponent, with lengths near the bound and the exponents that
    write a number in plain text (``0.000…``, longer than its digits) drawn often."""
    length = draw(st.integers(1, MAX_DIGITS + 10) | st.integers(MAX_DIGITS - 8, MAX_DIGITS + 5))
    # Trailing zeros are digits of the coefficient too (1.000 has four), as exchanges write.
    tail = draw(st.lists(st.integers(0, 9), min_size=length - 1, max_size=length - 1))
    digits = (draw(st.integers(1, 9)), *tail)
    plain = st.integers(-length - 5, 0)  # adjusted() >= -6: no exponent in the text
    exponent = draw(st.integers(-MAX_EXPONENT - 70, MAX_EXPONENT + 10) | plain)
    return Decimal((draw(st.integers(0, 1)), digits, exponent))


@settings(max_examples=400)  # 2 s, to reach the edges often (at 100, +5 digits passed)
@given(decimals_of_any_text())
def test_bounds_are_digits_and_exponent_whatever_the_text(number: Decimal) -> None:
    assert in_bounds(number) == _in_bounds_by_definition(number)


def test_bounds_at_their_edges() -> None:
    assert in_bounds(Decimal("0")) and in_bounds(Decimal("-0E+999999"))
    assert in_bounds(Decimal("1." + "0" * (MAX_DIGITS - 1)))
    assert not in_bounds(Decimal("1." + "0" * MAX_DIGITS))  # 51 digits, exponent 0
    assert in_bounds(Decimal(f"1E+{MAX_EXPONENT}")) and in_bounds(Decimal(f"-1E-{MAX_EXPONENT}"))
    assert not in_bounds(Decimal(f"1E+{MAX_EXPONENT + 1}"))
    assert not in_bounds(Decimal(f"9.9E-{MAX_EXPONENT + 1}"))
    # Plain text longer than the digits: a small number's leading zeros are not digits.
    assert in_bounds(Decimal("-0.000001" + "1" * (MAX_DIGITS - 1)))
    assert not in_bounds(Decimal("NaN")) and not in_bounds(Decimal("-Infinity"))


def bounded() -> st.SearchStrategy[Decimal]:
    return decimals_of_any_text().filter(in_bounds)


@settings(max_examples=300)
@given(st.lists(bounded(), min_size=1, max_size=6))
def test_sums_of_bounded_numbers_are_exact(numbers: list[Decimal]) -> None:
    """Found in review: ``a + b`` keeps 28 digits; a sum of Kraken's amounts or of
    Binance's free and locked came out rounded past them."""
    assert Fraction(exact_sum(*numbers)) == sum(map(Fraction, numbers))
    assert Fraction(exact_difference(numbers[0], numbers[-1])) == Fraction(numbers[0]) - Fraction(
        numbers[-1]
    )


def _rounded_by_definition(amount: Decimal, places: int) -> Decimal:
    """What ``booked`` did first: quantize only an amount with more decimals."""
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent >= -places:
        return amount
    with_room = Context(prec=1000, rounding=ROUND_HALF_EVEN)
    return amount.quantize(Decimal(1).scaleb(-places), context=with_room)


@settings(max_examples=300)
@given(bounded(), st.integers(0, MAX_EXPONENT))
def test_rounding_to_an_assets_decimals_never_fails_and_changes_no_value_it_need_not(
    amount: Decimal, places: int
) -> None:
    """Found in review: past 28 digits the rounding raised InvalidOperation out of the
    stream (the gateway stopped, and every start after). A value already at ``places``
    keeps its text (0.10 at 1 place stays 0.10)."""
    rounded = rounded_to(amount, places)
    assert rounded == _rounded_by_definition(amount, places)
    if rounded == amount:
        assert str(rounded) == str(amount)


def test_rounding_is_half_even_and_places_are_bounded() -> None:
    assert rounded_to(Decimal("1234567890123456789.12345678905"), 10) == Decimal(
        "1234567890123456789.1234567890"
    )
    assert rounded_to(Decimal("0.15"), 1) == Decimal("0.2")
    assert str(rounded_to(Decimal("0.10"), 1)) == "0.10"
    for places in (-1, MAX_EXPONENT + 1):
        with pytest.raises(ValueError, match="decimal places"):
            rounded_to(Decimal(1), places)


def test_an_exact_sum_past_any_bound_is_refused_not_rounded() -> None:
    with pytest.raises(Inexact):
        exact_sum(Decimal("1E+150"), Decimal("1E-60"))
