"""Numbers and ids from an exchange's JSON: exact, and bounded before any arithmetic or keeping."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact, InvalidOperation
from typing import Final

import msgspec

# No amount, price or time an exchange sends is near 1e40 or 1e-40; an exponent of 1e9
# would stall whoever expands it, so anything outside is refused before it is used.
MAX_EXPONENT: Final = 40
# Nor does any carry 50 significant digits (Kraken books 10 decimals, Binance 8). A
# number of a million digits passes the exponent check (1.000…) and is kept as text in
# the journal and worked on digit by digit in every product: refused the same way.
MAX_DIGITS: Final = 50

# Arithmetic on an exchange's numbers is never done in the thread's default context: that
# keeps 28 digits, so a sum of two bounded numbers could come out rounded, and rounding a
# fill's amount to its asset's decimals raised InvalidOperation past 28 digits (one such
# fill stopped the gateway, and every start after it, as Kraken's snapshot repeats it).
# Bounded numbers lie between 1e-89 and 1e41: a sum of fewer than 1e60 of them, or any
# of them rounded to at most MAX_EXPONENT places, is exact within 200 digits.
_WIDE: Final = Context(prec=200, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, Inexact])
# The same, for the one rounding meant to be inexact (to an asset's decimals).
_WIDE_ROUNDING: Final = Context(prec=200, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation])

# When an exchange's fills and movements happen, in seconds since 1970: years 2000 to
# 2200. A time far outside would become the gateway's position, where the catch-up after
# a restart starts: a trade dated 1e40 s, and the next catch-up asks for what came after.
MIN_TIME_S: Final = 946_684_800
MAX_TIME_S: Final = 7_258_118_400

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


def exact_sum(first: Decimal, *rest: Decimal) -> Decimal:
    """The sum of bounded numbers, exactly (``a + b`` would round past 28 digits)."""
    total = first
    for number in rest:
        total = _WIDE.add(total, number)
    return total


def exact_difference(minuend: Decimal, subtrahend: Decimal) -> Decimal:
    """``minuend - subtrahend`` of bounded numbers, exactly."""
    return _WIDE.subtract(minuend, subtrahend)


def rounded_to(amount: Decimal, places: int) -> Decimal:
    """A bounded ``amount`` rounded half-even to ``places`` decimals; the amount as the
    exchange wrote it when that rounding changes nothing.

    Raises:
        ValueError: ``places`` is outside 0 to ``MAX_EXPONENT``.
    """
    if not 0 <= places <= MAX_EXPONENT:
        raise ValueError(f"{places} decimal places is not what an asset has")
    # Rounding in the wide context cannot fail, so rounding every time and comparing
    # costs less than reading the amount's exponent first (as_tuple: a tuple of digits).
    rounded = _WIDE_ROUNDING.quantize(amount, _STEPS[places])
    return amount if rounded == amount else rounded


_STEPS: Final = tuple(Decimal(1).scaleb(-places) for places in range(MAX_EXPONENT + 1))


def time_ns(seconds: Decimal | int) -> int:
    """Seconds since 1970 (exact, as Kraken's REST writes them) in whole nanoseconds.

    Raises:
        ValueError: not within years 2000 to 2200.
    """
    if not MIN_TIME_S <= seconds < MAX_TIME_S:
        raise ValueError(f"time {str(seconds)[:40]} s is not within the years 2000 to 2200")
    return int(_WIDE.scaleb(Decimal(seconds), 9))


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
