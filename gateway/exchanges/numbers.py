"""Numbers from an exchange's JSON: exact, and bounded before any arithmetic."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Final

# No amount, price or time an exchange sends is near 1e40 or 1e-40; an exponent of 1e9
# would stall whoever expands it, so anything outside is refused before it is used.
MAX_EXPONENT: Final = 40


def exact_decimal(
    item: Mapping[str, object], name: str, error: type[Exception] = ValueError
) -> Decimal:
    """``item[name]`` as a Decimal: a JSON number parsed exactly, an int, or a decimal string.

    Raises:
        error: missing, not a number, not finite, or beyond ``MAX_EXPONENT``.
    """
    value = item.get(name)
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise error(f"{name} is not a number: {value[:40]!r}") from None
    else:
        raise error(f"{name} is missing or not a number: {str(value)[:40]!r}")
    if not number.is_finite():
        raise error(f"{name} is not finite: {str(value)[:40]!r}")
    if number and not -MAX_EXPONENT <= number.adjusted() <= MAX_EXPONENT:
        raise error(f"{name} is out of range: {str(value)[:40]!r}")
    return number
