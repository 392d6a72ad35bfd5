"""Numbers and ids from an exchange's JSON: exact, and bounded before any arithmetic or keeping."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Final

import msgspec

# No amount, price or time an exchange sends is near 1e40 or 1e-40; an exponent of 1e9
# would stall whoever expands it, so anything outside is refused before it is used.
MAX_EXPONENT: Final = 40
# Nor does any carry 50 significant digits (Kraken books 10 decimals, Binance 8). A
# number of a million digits passes the exponent check (1.000…) and is kept as text in
# the journal and worked on digit by digit in every product: refused the same way.
MAX_DIGITS: Final = 50

# msgspec hands each non-integer number's own text to Decimal: exact, and about twice as
# fast as the standard library's decoder with parse_float=Decimal. Integers past 64 bits
# are refused (json would parse a million digits in quadratic time).
_EXACT_JSON: Final = msgspec.json.Decoder(float_hook=Decimal)


# Ids (executions, orders, ledger entries) are kept: in the fill-id window (50,000) and
# in the journal, every one. The exchanges' own are ~20 characters.
MAX_ID: Final = 64


def is_printable_id(value: str) -> bool:
    """What an exchange's ids are: 1 to ``MAX_ID`` printable characters."""
    return 0 < len(value) <= MAX_ID and value.isprintable()


def loads_exact(text: str | bytes) -> object:
    """JSON with every non-integer number a Decimal parsed from its text.

    Raises:
        ValueError: not JSON (or not UTF-8), nested too deep, or an integer past 64 bits.
    """
    try:
        return _EXACT_JSON.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


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
    if not in_bounds(number):
        raise error(f"{name} is out of range: {str(value)[:40]!r}")
    return number


def in_bounds(number: Decimal) -> bool:
    """Finite, within ``MAX_EXPONENT`` and ``MAX_DIGITS``: what an exchange can mean.

    Four of these a fill. The text of a number holds every digit of its
    coefficient, so a short text is few digits: ``str`` costs a third of
    ``as_tuple``, which only a long text needs.
    """
    if not number.is_finite():
        return False
    if not number:
        return True
    if not -MAX_EXPONENT <= number.adjusted() <= MAX_EXPONENT:
        return False
    return len(str(number)) <= MAX_DIGITS or len(number.as_tuple().digits) <= MAX_DIGITS
