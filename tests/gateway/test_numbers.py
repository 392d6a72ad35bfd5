"""The bounds every number from an exchange passes before any arithmetic."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.exchanges.numbers import MAX_DIGITS, MAX_EXPONENT, in_bounds


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
