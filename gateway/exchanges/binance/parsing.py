"""Binance's answers and user data stream events, checked at the edge and turned into our values.

Pure: no I/O. Everything here follows Binance's spot API documentation
(``rest-api.md``, ``user-data-stream.md``); the documented examples are the
tests' fixtures.

Booking, as Binance books it:
* a fill (``executionReport`` with execution type ``TRADE``, or a ``myTrades``
  entry) moves the base by its quantity and the quote by its quote quantity
  (``Y`` / ``quoteQty``), and charges its commission in its commission asset;
* a fill belongs to strategy slot k when its order carried ``strategyId`` k
  (the ledger keeps 2 <= k < strategy_count; any other goes to slot 1);
* trade ids are unique per symbol only, so a fill's id is ``<symbol>-<trade id>``;
* a ``balanceUpdate`` (a deposit, a withdrawal, a transfer between accounts)
  has no id of its own: it is known by its asset, clear time and delta.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from gateway.exchanges.binance.errors import BinanceProtocolError
from gateway.exchanges.numbers import (
    MAX_ID,
    MAX_TIME_S,
    MIN_TIME_S,
    exact_decimal,
    exact_sum,
    is_printable_id,
    loads_exact,
)
from gateway.ledger import Fee, Fill, Side, Transfer

_MAX_NAME: Final = 32  # an asset or symbol name
_SIDES: Final = {"BUY": Side.BUY, "SELL": Side.SELL}
# Milliseconds since the epoch, before any multiplication: years 2000 to 2200.
_MIN_MS: Final = MIN_TIME_S * 1000
_MAX_MS: Final = MAX_TIME_S * 1000


def loads(text: str | bytes) -> object:
    """JSON with exact decimals. Raises BinanceProtocolError."""
    try:
        return loads_exact(text)
    except ValueError as exc:
        raise BinanceProtocolError(f"not JSON: {exc}") from None


def _decimal(item: Mapping[str, object], name: str) -> Decimal:
    return exact_decimal(item, name, BinanceProtocolError)


def _name(item: Mapping[str, object], name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_NAME or not value.isalnum():
        raise BinanceProtocolError(f"{name} is not an asset or symbol name: {str(value)[:40]!r}")
    return value.upper()


def _integer(item: Mapping[str, object], name: str, *, low: int = 0, high: int = 2**63) -> int:
    value = item.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < high:
        raise BinanceProtocolError(f"{name} is not an integer in range: {str(value)[:40]!r}")
    return value


def _time_ns(item: Mapping[str, object], name: str) -> int:
    return _integer(item, name, low=_MIN_MS, high=_MAX_MS) * 1_000_000


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    base: str
    quote: str


@dataclass
class SymbolMap:
    """Symbols (``ETHBTC``) to their base and quote assets, from ``exchangeInfo``."""

    symbols: dict[str, Symbol] = field(default_factory=dict)

    @classmethod
    def from_exchange_info(cls, result: object) -> SymbolMap:
        """Build the map from ``GET /api/v3/exchangeInfo``'s answer.

        Raises:
            BinanceProtocolError: not the documented shape.
        """
        listed = result.get("symbols") if isinstance(result, dict) else None
        if not isinstance(listed, list):
            raise BinanceProtocolError("exchangeInfo has no symbols list")
        mapping = cls()
        for entry in listed:
            if not isinstance(entry, dict):
                raise BinanceProtocolError("an exchangeInfo symbol is not an object")
            symbol = Symbol(_name(entry, "symbol"), _name(entry, "baseAsset"),
                            _name(entry, "quoteAsset"))  # fmt: skip
            mapping.symbols[symbol.name] = symbol
        return mapping

    def get(self, name: str) -> Symbol:
        """Raises BinanceProtocolError for a symbol ``exchangeInfo`` did not list."""
        symbol = self.symbols.get(name)
        if symbol is None:
            raise BinanceProtocolError(f"unknown symbol {name!r}")
        return symbol


def parse_account(result: object) -> dict[str, Decimal]:
    """Each asset's total (``free`` + ``locked``) from ``GET /api/v3/account``.

    Raises:
        BinanceProtocolError: not the documented shape, or a bad number.
    """
    balances = result.get("balances") if isinstance(result, dict) else None
    if not isinstance(balances, list):
        raise BinanceProtocolError("account has no balances list")
    totals: dict[str, Decimal] = {}
    for entry in balances:
        if not isinstance(entry, dict):
            raise BinanceProtocolError("an account balance is not an object")
        asset = _name(entry, "asset")
        total = exact_sum(_decimal(entry, "free"), _decimal(entry, "locked"))
        if total < 0:
            raise BinanceProtocolError(f"negative balance of {asset}: {total}")
        totals[asset] = exact_sum(totals.get(asset, Decimal(0)), total)
    return totals


def _fees(amount: Decimal, asset: object) -> tuple[Fee, ...]:
    if not amount:
        return ()
    if not isinstance(asset, str) or not asset.isalnum() or len(asset) > _MAX_NAME:
        raise BinanceProtocolError(f"a commission without its asset: {str(asset)[:40]!r}")
    if amount < 0:
        raise BinanceProtocolError(f"a negative commission: {amount}")
    return (Fee(asset.upper(), amount),)


def _strategy(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BinanceProtocolError(f"strategyId is not an integer: {str(value)[:40]!r}")
    return value


def _fill(
    symbol: Symbol,
    trade_id: int,
    side: Side,
    qty: Decimal,
    price: Decimal,
    cost: Decimal,
    fees: tuple[Fee, ...],
    **rest: object,
) -> Fill:
    if qty <= 0 or price <= 0 or cost < 0:
        raise BinanceProtocolError(f"a trade of {qty} at {price} (quote {cost}) is not a trade")
    return Fill(
        exec_id=f"{symbol.name}-{trade_id}",
        base=symbol.base,
        quote=symbol.quote,
        side=side,
        qty=qty,
        price=price,
        fees=fees,
        cost=cost,
        **rest,  # type: ignore[arg-type]
    )


def parse_my_trade(entry: object, symbols: SymbolMap, strategies: Mapping[int, int | None]) -> Fill:
    """One ``GET /api/v3/myTrades`` entry; ``strategies`` maps its ``orderId`` to the
    order's ``strategyId`` (from the order itself: trades do not carry it).

    Raises:
        BinanceProtocolError: not the documented shape.
    """
    if not isinstance(entry, dict):
        raise BinanceProtocolError("a trade is not an object")
    symbol = symbols.get(_name(entry, "symbol"))
    order_id = _integer(entry, "orderId")
    is_buyer = entry.get("isBuyer")
    if not isinstance(is_buyer, bool):
        raise BinanceProtocolError(f"isBuyer is not a boolean: {str(is_buyer)[:40]!r}")
    return _fill(
        symbol,
        _integer(entry, "id"),
        Side.BUY if is_buyer else Side.SELL,
        _decimal(entry, "qty"),
        _decimal(entry, "price"),
        _decimal(entry, "quoteQty"),
        _fees(_decimal(entry, "commission"), entry.get("commissionAsset")),
        userref=strategies.get(order_id),
        timestamp_ns=_time_ns(entry, "time"),
        order_id=str(order_id),
    )


# -- the user data stream ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserFill:
    fill: Fill


@dataclass(frozen=True, slots=True)
class UserTransfer:
    transfer: Transfer


@dataclass(frozen=True, slots=True)
class AccountPosition:
    """``outboundAccountPosition``: the changed assets' free and locked, a cross-check.

    ``updated_ms``: the account's last update time (``u``), on Binance's clock.
    """

    totals: Mapping[str, Decimal]
    updated_ms: int


@dataclass(frozen=True, slots=True)
class StreamTerminated:
    """``eventStreamTerminated``: the subscription ended; reconnect and catch up."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """An event that is not booked (malformed, or a kind we do not book), and why."""

    event: str
    reason: str


UserEvent = UserFill | UserTransfer | AccountPosition | StreamTerminated | Skipped | None


def parse_user_event(event: object, symbols: SymbolMap) -> UserEvent:
    """One user data stream event (the ``event`` object of ``{"subscriptionId", "event"}``).

    None for events that change nothing we keep (an order's other execution types).
    A malformed event is returned as :class:`Skipped`, never raised: one bad event
    must not end the stream (the reconciler mends what it would have changed).
    """
    if not isinstance(event, dict):
        return Skipped("?", "an event that is not an object")
    kind = event.get("e")
    try:
        if kind == "executionReport":
            return _execution_report(event, symbols)
        if kind == "balanceUpdate":
            return UserTransfer(_balance_update(event))
        if kind == "outboundAccountPosition":
            return _account_position(event)
        if kind == "eventStreamTerminated":
            return StreamTerminated()
    except BinanceProtocolError as exc:
        return Skipped(str(kind)[:MAX_ID], str(exc))
    return None  # externalLockUpdate, listStatus …: nothing a balance follows


def _execution_report(event: Mapping[str, object], symbols: SymbolMap) -> UserFill | None:
    if event.get("x") != "TRADE":
        return None  # NEW, CANCELED, EXPIRED, REPLACED …: no fill in them
    side = _SIDES.get(str(event.get("S")))
    if side is None:
        raise BinanceProtocolError(f"side is not BUY or SELL: {str(event.get('S'))[:40]!r}")
    client_id = event.get("c")
    order_id = _integer(event, "i")
    fill = _fill(
        symbols.get(_name(event, "s")),
        _integer(event, "t"),
        side,
        _decimal(event, "l"),
        _decimal(event, "L"),
        _decimal(event, "Y"),
        _fees(_decimal(event, "n"), event.get("N")),
        userref=_strategy(event.get("j")),
        timestamp_ns=_time_ns(event, "T"),
        order_id=str(order_id),
        # Informational, and journalled with every fill: dropped when it is not an id.
        cl_ord_id=client_id if isinstance(client_id, str) and is_printable_id(client_id) else None,
    )
    return UserFill(fill)


def _balance_update(event: Mapping[str, object]) -> Transfer:
    asset = _name(event, "a")
    delta = _decimal(event, "d")
    cleared_ns = _time_ns(event, "T")
    if not delta:
        raise BinanceProtocolError("a balance update of zero")
    return Transfer(
        ledger_id=f"{asset}-{cleared_ns // 1_000_000}-{delta}"[:MAX_ID],
        ref_id="",
        currency=asset,
        amount=delta,
        kind="balance_update",
        timestamp_ns=cleared_ns,
    )


def _account_position(event: Mapping[str, object]) -> AccountPosition:
    balances = event.get("B")
    if not isinstance(balances, list):
        raise BinanceProtocolError("outboundAccountPosition has no balances")
    totals: dict[str, Decimal] = {}
    for entry in balances:
        if not isinstance(entry, dict):
            raise BinanceProtocolError("a position balance is not an object")
        totals[_name(entry, "a")] = exact_sum(_decimal(entry, "f"), _decimal(entry, "l"))
    return AccountPosition(totals, _integer(event, "u"))
