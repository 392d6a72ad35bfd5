"""Kraken payloads → typed values: WS v2 messages, executions, REST trades. Pure.

Numbers are parsed as Decimal straight from the JSON text; nothing passes
through a float. A malformed message raises :class:`KrakenProtocolError`; a
malformed or margin execution inside a well-formed message is set aside as a
:class:`SkippedExecution` (a snapshot repeats it on every reconnect, so
failing the message would fail every reconnect).

Fills are booked as Kraken books them: the quote leg is the execution's
``cost`` (Kraken's value of it; ``last_price`` is only the average price of
the trade event), each fee in its own asset, and every amount at its asset's
``decimals`` from ``Assets``. Kraken sends these already at those decimals
(its examples: cost ``132.9995`` and fee ``0.3458`` in USD, 4 decimals); were
one to carry more, it is rounded half-even, the rounding Kraken documents for
nothing else either (docs/kraken.md, "Booking").
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache, partial
from typing import Final, TypeVar

import msgspec

from gateway.exchanges.kraken.assets import AssetMap
from gateway.exchanges.kraken.errors import KrakenProtocolError
from gateway.exchanges.numbers import (
    MAX_ID,
    exact_decimal,
    exact_difference,
    in_bounds,
    is_printable_id,
    loads_exact,
    rounded_to,
    time_ns,
)
from gateway.ledger import Fee, Fill, Side, Transfer

# A lookup, not Side(text): the enum's call costs a microsecond of every fill.
_SIDES: Final = {"buy": Side.BUY, "sell": Side.SELL}
EARN_SUFFIX: Final = ".F"  # auto-earn balances, spent through their base asset
_NO_DECIMALS: Final[Mapping[str, int]] = {}


@dataclass(frozen=True, slots=True)
class SkippedExecution:
    """An execution that is not booked: ``kind`` is ``malformed`` or ``margin``."""

    exec_id: str
    kind: str
    reason: str


def parse_balance(key: str, value: object) -> Decimal:
    """One balance string of ``Balance`` / ``BalanceEx``. Raises KrakenProtocolError."""
    return _decimal({f"balance of {key}": value}, f"balance of {key}")


def booked(amount: Decimal, asset: str, decimals: Mapping[str, int]) -> Decimal:
    """``amount`` at ``asset``'s decimals (half-even), if it carries more; else unchanged."""
    places = decimals.get(asset)
    return amount if places is None else rounded_to(amount, places)


def loads(text: str | bytes) -> object:
    """JSON with exact decimals. Raises KrakenProtocolError."""
    try:
        return loads_exact(text)
    except ValueError as exc:
        raise KrakenProtocolError(f"not JSON: {exc}") from None


def parse_timestamp_ns(text: object) -> int:
    """RFC 3339 (``2023-09-22T10:33:05.709993Z``) → ns since the epoch, exactly.

    Kraken's own form (microseconds, ``Z``) takes a short path: the second is
    parsed once (fills come many to a second) and the microseconds are digits.
    """
    if (
        type(text) is str and len(text) == 27 and text[19] == "." and text[26] == "Z"
        and (micros := text[20:26]).isascii() and micros.isdigit()
    ):  # fmt: skip
        return _second_ns(text[:19]) + int(micros) * 1000
    return _any_timestamp_ns(text)


@lru_cache(maxsize=4)
def _second_ns(second: str) -> int:
    return _any_timestamp_ns(f"{second}Z")


def _any_timestamp_ns(text: object) -> int:
    if not isinstance(text, str):
        raise KrakenProtocolError(f"timestamp is not a string: {text!r}")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise KrakenProtocolError(f"bad timestamp {text!r}") from None
    if moment.tzinfo is None:
        raise KrakenProtocolError(f"timestamp without a zone: {text!r}")
    return _time_ns(calendar.timegm(moment.utctimetuple())) + moment.microsecond * 1000


def _time_ns(seconds: Decimal | int) -> int:
    try:
        return time_ns(seconds)
    except ValueError as exc:
        raise KrakenProtocolError(str(exc)) from None


def format_timestamp(ns: int) -> str:
    """ns since the epoch → Kraken's RFC 3339 with microseconds."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{_second_text(seconds)}.{rest // 1000:06d}Z"


@lru_cache(maxsize=1)  # formatting the second is most of the cost; stamps come many to one
def _second_text(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _decimal(item: Mapping[str, object], name: str) -> Decimal:
    return exact_decimal(item, name, KrakenProtocolError)


def _str(item: Mapping[str, object], name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise KrakenProtocolError(f"{name} is missing or not a string: {value!r}")
    return value


def parse_execution(
    item: Mapping[str, object], decimals: Mapping[str, int] = _NO_DECIMALS
) -> Fill | SkippedExecution | None:
    """One element of an ``executions`` message's ``data``; None unless it is a trade."""
    if item.get("exec_type") != "trade":
        return None
    exec_id = str(item.get("exec_id") or "?")[:64]
    try:
        fill = _execution_fill(item, decimals)
    except KrakenProtocolError as exc:
        return SkippedExecution(exec_id, "malformed", str(exc))
    if item.get("margin") is True or item.get("margin_borrow") is True:
        return SkippedExecution(exec_id, "margin", "a margin trade does not move spot balances")
    return fill


def _execution_fill(item: Mapping[str, object], decimals: Mapping[str, int]) -> Fill:
    try:
        base, quote = AssetMap.split_symbol(_str(item, "symbol"))
    except ValueError as exc:
        raise KrakenProtocolError(str(exc)) from None
    side = item.get("side")
    if side not in ("buy", "sell"):
        raise KrakenProtocolError(f"side is not buy or sell: {side!r}")
    fees_raw = item.get("fees") or []
    if not isinstance(fees_raw, list):
        raise KrakenProtocolError("fees is not a list")
    if len(fees_raw) > MAX_FEES:
        raise KrakenProtocolError(f"{len(fees_raw)} fees, more than a trade is charged")
    fees = []
    for fee in fees_raw:
        if not isinstance(fee, dict):
            raise KrakenProtocolError("a fee is not an object")
        asset = AssetMap.split_symbol(f"{_str(fee, 'asset')}/X")[0]
        fees.append(Fee(asset, booked(_decimal(fee, "qty"), asset, decimals)))
    userref = item.get("order_userref")
    if userref is not None and (not isinstance(userref, int) or isinstance(userref, bool)):
        raise KrakenProtocolError(f"order_userref is not an integer: {userref!r}")
    return Fill(
        exec_id=_id_of(item.get("exec_id"), "exec_id"),
        base=base,
        quote=quote,
        side=Side(side),
        qty=booked(_decimal(item, "last_qty"), base, decimals),
        price=_decimal(item, "last_price"),
        fees=tuple(fees),
        userref=userref,
        timestamp_ns=parse_timestamp_ns(item.get("timestamp")),
        order_id=_id_of(order_id, "order_id") if (order_id := item.get("order_id")) else "",
        cl_ord_id=_optional_id(item.get("cl_ord_id")),
        cost=booked(_decimal(item, "cost"), quote, decimals),
    )


# -- WS v2 messages ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WsStatus:
    system: str


@dataclass(frozen=True, slots=True)
class WsHeartbeat:
    pass


@dataclass(frozen=True, slots=True)
class WsAck:
    """The answer to a method call (subscribe, ping …)."""

    method: str
    success: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class WsExecutions:
    snapshot: bool
    fills: tuple[Fill, ...]
    sequence: int | None
    skipped: tuple[SkippedExecution, ...] = ()


@dataclass(frozen=True, slots=True)
class WsBalances:
    """A ``balances`` message: the transfers among its ledger entries (none in a snapshot)."""

    snapshot: bool
    transfers: tuple[Transfer, ...]
    skipped: tuple[SkippedExecution, ...] = ()


@dataclass(frozen=True, slots=True)
class WsIgnored:
    """A message of a channel or kind the gateway does not use."""

    channel: str


WsMessage = WsStatus | WsHeartbeat | WsAck | WsExecutions | WsBalances | WsIgnored


def parse_ws_message(text: str | bytes, decimals: Mapping[str, int] = _NO_DECIMALS) -> WsMessage:
    """One WS v2 frame; ``decimals`` per asset, to book fills at. Raises KrakenProtocolError.

    The two channels that carry every fill take a typed fast path
    (:func:`parse_fill_channels`); anything it does not find well-formed, and
    every other message, takes :func:`parse_ws_message_checked`, which says
    what is wrong item by item. Both give the same result for what both take.
    """
    try:
        message = _FILL_CHANNELS.decode(text)
    except msgspec.DecodeError:
        return parse_ws_message_checked(text, decimals)
    parsed = parse_fill_channels(message, decimals)
    return parse_ws_message_checked(text, decimals) if parsed is None else parsed


def parse_ws_message_checked(
    text: str | bytes, decimals: Mapping[str, int] = _NO_DECIMALS
) -> WsMessage:
    """Any WS v2 frame, each item checked on its own. Raises KrakenProtocolError."""
    message = loads(text)
    if not isinstance(message, dict):
        raise KrakenProtocolError("a WS message is not an object")
    method = message.get("method")
    if isinstance(method, str):
        if method == "pong":
            return WsAck("pong", True, None)
        success = message.get("success")
        error = message.get("error")
        return WsAck(method, success is True, error if isinstance(error, str) else None)
    channel = message.get("channel")
    if channel == "heartbeat":
        return WsHeartbeat()
    if channel == "status":
        data = message.get("data")
        first = data[0] if isinstance(data, list) and data else {}
        system = first.get("system") if isinstance(first, dict) else None
        return WsStatus(str(system or "unknown"))
    if channel == "executions":
        data = message.get("data")
        if not isinstance(data, list):
            raise KrakenProtocolError("executions data is not a list")
        fills, skipped = _parse_each(
            data, partial(parse_execution, decimals=decimals), "an execution"
        )
        sequence = message.get("sequence")
        return WsExecutions(
            message.get("type") == "snapshot",
            fills,
            sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else None,
            skipped,
        )
    if channel == "balances":
        return _parse_balances(message, decimals)
    return WsIgnored(str(channel))


# -- the fast path for fills: typed decoding of executions and balances -------------
#
# msgspec decodes only the fields a fill needs (a Decimal straight from each number's
# text) and skips the rest unread: about a tenth of decoding every field into dicts and
# Decimals and checking them one by one. Whatever it cannot take as it is, whether an
# unexpected type, a missing field, a margin trade, a number out of range or an unknown
# symbol, goes to the checked path, which says what is wrong item by item.


class _FastFee(msgspec.Struct, frozen=True):
    asset: str
    qty: Decimal


class _FastExecution(msgspec.Struct, frozen=True):
    exec_type: str
    exec_id: str = ""
    symbol: str = ""
    side: str = ""
    last_qty: Decimal | None = None
    last_price: Decimal | None = None
    cost: Decimal | None = None
    fees: list[_FastFee] | None = None
    order_userref: int | None = None
    cl_ord_id: str | None = None
    timestamp: str = ""
    order_id: str | None = None
    margin: bool | None = None
    margin_borrow: bool | None = None


class _FastExecutions(msgspec.Struct, frozen=True, tag_field="channel", tag="executions"):
    data: list[_FastExecution]
    method: None = None  # a method call is an answer, whatever else it holds
    type: str | None = None
    sequence: int | None = None


class _FastLedgerEntry(msgspec.Struct, frozen=True):
    type: str


class _FastBalances(msgspec.Struct, frozen=True, tag_field="channel", tag="balances"):
    data: list[_FastLedgerEntry]
    method: None = None
    type: str | None = None


_FILL_CHANNELS: Final = msgspec.json.Decoder(_FastExecutions | _FastBalances)


def parse_fill_channels(
    message: _FastExecutions | _FastBalances, decimals: Mapping[str, int]
) -> WsExecutions | WsBalances | None:
    """A typed executions or balances message; None for the checked path to take."""
    if isinstance(message, _FastBalances):
        if message.type == "snapshot":
            return WsBalances(True, ())
        if all(entry.type == TRADE_ENTRY for entry in message.data):
            return WsBalances(False, ())  # the executions channel books trades
        return None
    fills = []
    for item in message.data:
        if item.exec_type != "trade":
            continue
        fill = _fast_fill(item, decimals)
        if fill is None:
            return None
        fills.append(fill)
    sequence = message.sequence
    return WsExecutions(message.type == "snapshot", tuple(fills), sequence)


def _fast_fill(item: _FastExecution, decimals: Mapping[str, int]) -> Fill | None:
    qty, price, cost = item.last_qty, item.last_price, item.cost
    if (
        qty is None or price is None or cost is None or not is_printable_id(item.exec_id)
        or (item.order_id and not is_printable_id(item.order_id)) or len(item.fees or ()) > MAX_FEES
        or item.side not in _SIDES or item.margin or item.margin_borrow
        or not (in_bounds(qty) and in_bounds(price) and in_bounds(cost))
    ):  # fmt: skip
        return None
    try:
        base, quote = AssetMap.split_symbol(item.symbol)
        fees = []
        for fee in item.fees or ():
            if not fee.asset or not in_bounds(fee.qty):
                return None
            asset = AssetMap.split_symbol(f"{fee.asset}/X")[0]
            fees.append(Fee(asset, booked(fee.qty, asset, decimals)))
        timestamp_ns = parse_timestamp_ns(item.timestamp)
    except (ValueError, KrakenProtocolError):
        return None
    return Fill(
        exec_id=item.exec_id,
        base=base,
        quote=quote,
        side=_SIDES[item.side],
        qty=booked(qty, base, decimals),
        price=price,
        fees=tuple(fees),
        userref=item.order_userref,
        timestamp_ns=timestamp_ns,
        order_id=item.order_id or "",
        cl_ord_id=_optional_id(item.cl_ord_id),
        cost=booked(cost, quote, decimals),
    )


# -- ledger entries: transfers --------------------------------------------------------

# Booked by the executions channel (and TradesHistory), never twice from the ledger.
TRADE_ENTRY: Final = "trade"
# Margin positions do not move spot balances the way the ledger's amount says.
MARGIN_ENTRIES: Final = frozenset({"margin", "rollover", "settled"})
# Kraken charges a trade one fee (in the quote currency, or the base on request).
MAX_FEES: Final = 8


def _entry_id(entry: Mapping[str, object], name: str, *, required: bool) -> str:
    value = entry.get(name)
    if value is None and not required:
        return ""
    return _id_of(value, name)


def _id_of(value: object, name: str) -> str:
    """An id as Kraken writes them (``TXID2-ABCDE-FGHIJK``): bounded, since ids are kept
    (the fill-id window holds 50,000, and the journal every one)."""
    if not isinstance(value, str) or not is_printable_id(value):
        raise KrakenProtocolError(f"{name} is not a printable id: {str(value)[:40]!r}")
    return value


def _optional_id(value: object) -> str | None:
    """A client's order id, informational: kept when it is an id, else dropped."""
    return value if isinstance(value, str) and is_printable_id(value) else None


def _transfer(
    ledger_id: str,
    entry: Mapping[str, object],
    currency: str,
    timestamp_ns: int,
    decimals: Mapping[str, int],
) -> Transfer | SkippedExecution | None:
    """The common part of a WS and a REST ledger entry; None for a trade."""
    kind = entry.get("type")
    if not isinstance(kind, str) or not kind or len(kind) > MAX_ID:
        raise KrakenProtocolError(f"ledger entry type is not a name: {str(kind)[:40]!r}")
    if kind == TRADE_ENTRY:
        return None
    if kind in MARGIN_ENTRIES:
        return SkippedExecution(ledger_id, "margin", f"a {kind} entry does not move spot balances")
    # The entry's amount and fee are both its asset's; the balance moves by their difference.
    net = exact_difference(_decimal(entry, "amount"), _decimal(entry, "fee"))
    if not in_bounds(net):
        raise KrakenProtocolError(f"ledger entry {ledger_id}: amount less fee is out of range")
    return Transfer(
        ledger_id=ledger_id,
        ref_id=_entry_id(entry, "ref_id" if "ref_id" in entry else "refid", required=False),
        currency=currency,
        amount=booked(net, currency, decimals),
        kind=kind,
        timestamp_ns=timestamp_ns,
    )


def parse_ws_ledger_entry(
    item: Mapping[str, object], decimals: Mapping[str, int] = _NO_DECIMALS
) -> Transfer | SkippedExecution | None:
    """One ledger entry of a ``balances`` update; None for a trade (executions books it).

    Spot wallets and the auto-earn ``flex`` wallet count with the base asset (as
    ``.F`` balances do at bootstrap); other earn wallets (bonded, locked
    staking) stay with the reconciler, as their balances stay apart.
    """
    if item.get("type") == TRADE_ENTRY:
        # Every fill brings one or two; the executions channel books them, so nothing
        # else in them is read (parsing their times was a tenth of a fill's CPU).
        return None
    ledger_id = str(item.get("ledger_id") or "?")[:MAX_ID]
    try:
        ledger_id = _entry_id(item, "ledger_id", required=True)
        currency = AssetMap.split_symbol(f"{_str(item, 'asset')}/X")[0]
        wallet = (item.get("wallet_type", "spot"), item.get("wallet_id", "main"))
        parsed = _transfer(
            ledger_id, item, currency, parse_timestamp_ns(item.get("timestamp")), decimals
        )
    except (KrakenProtocolError, ValueError) as exc:
        return SkippedExecution(ledger_id, "malformed", str(exc))
    if isinstance(parsed, Transfer) and wallet[0] != "spot" and wallet != ("earn", "flex"):
        return SkippedExecution(
            ledger_id, "other-wallet", f"a {wallet[0]}/{wallet[1]} wallet is not spot funds"
        )
    return parsed


def parse_rest_ledger_entry(
    ledger_id: str, entry: object, assets: AssetMap
) -> Transfer | SkippedExecution | None:
    """One ``Ledgers`` entry, as :func:`parse_ws_ledger_entry` books its WS twin."""
    try:
        if not isinstance(entry, dict):
            raise KrakenProtocolError("a ledger entry is not an object")
        ledger_id = _entry_id({"ledger_id": ledger_id}, "ledger_id", required=True)
        key = _str(entry, "asset")
        currency = assets.asset(key)
        if currency.endswith(EARN_SUFFIX):
            currency = currency.removesuffix(EARN_SUFFIX)
        elif "." in currency:
            return SkippedExecution(ledger_id, "other-wallet", f"{key} is not spot funds")
        return _transfer(
            ledger_id, entry, currency, _time_ns(_decimal(entry, "time")), assets.decimals
        )
    except KrakenProtocolError as exc:
        return SkippedExecution(ledger_id[:MAX_ID], "malformed", str(exc))


_Parsed = TypeVar("_Parsed")


def _parse_each(
    data: list[object],
    parse: Callable[[Mapping[str, object]], _Parsed | SkippedExecution | None],
    what: str,
) -> tuple[tuple[_Parsed, ...], tuple[SkippedExecution, ...]]:
    """Each item of a channel's data parsed: what it books, and what it skips and why."""
    parsed: list[_Parsed] = []
    skipped: list[SkippedExecution] = []
    for item in data:
        if not isinstance(item, dict):
            skipped.append(SkippedExecution("?", "malformed", f"{what} is not an object"))
            continue
        result = parse(item)
        if isinstance(result, SkippedExecution):
            skipped.append(result)
        elif result is not None:
            parsed.append(result)
    return tuple(parsed), tuple(skipped)


def _parse_balances(message: Mapping[str, object], decimals: Mapping[str, int]) -> WsBalances:
    data = message.get("data")
    if not isinstance(data, list):
        raise KrakenProtocolError("balances data is not a list")
    if message.get("type") == "snapshot":
        # Balances, not entries: the REST bootstrap and the reconciler own totals.
        return WsBalances(True, ())
    transfers, skipped = _parse_each(
        data, partial(parse_ws_ledger_entry, decimals=decimals), "a ledger entry"
    )
    return WsBalances(False, transfers, skipped)


# -- REST trades ----------------------------------------------------------------------


def parse_rest_trade(
    txid: str, trade: object, assets: AssetMap, userrefs: Mapping[str, int | None]
) -> Fill | SkippedExecution:
    """One ``TradesHistory`` entry → a Fill (or a margin trade, set aside).

    REST trades name neither the fee's asset nor the order's userref: the fee
    is booked in the quote currency (Kraken's default, ``fciq``; the v2 docs say
    fees are quoted in the quote currency only), and the userref comes from
    ``QueryOrders`` of the trade's ``ordertxid`` (``userrefs``).

    Raises:
        KrakenProtocolError: a malformed trade or an unknown pair.
    """
    if not isinstance(trade, dict):
        raise KrakenProtocolError("a trade is not an object")
    try:
        pair = assets.pair(_str(trade, "pair"))
    except KeyError:
        raise KrakenProtocolError(f"unknown pair {trade.get('pair')!r}") from None
    side = trade.get("type")
    if side not in ("buy", "sell"):
        raise KrakenProtocolError(f"trade type is not buy or sell: {side!r}")
    if "posstatus" in trade or ("margin" in trade and _decimal(trade, "margin") != 0):
        return SkippedExecution(
            txid[:MAX_ID], "margin", "a margin trade does not move spot balances"
        )
    timestamp_ns = _time_ns(_decimal(trade, "time"))
    ordertxid = trade.get("ordertxid")
    order_id = _id_of(ordertxid, "ordertxid") if ordertxid else ""
    decimals = assets.decimals
    fee = booked(_decimal(trade, "fee"), pair.quote, decimals)
    return Fill(
        exec_id=_id_of(txid, "txid"),
        base=pair.base,
        quote=pair.quote,
        side=Side(side),
        qty=booked(_decimal(trade, "vol"), pair.base, decimals),
        price=_decimal(trade, "price"),
        fees=(Fee(pair.quote, fee),) if fee else (),
        userref=userrefs.get(order_id),
        timestamp_ns=timestamp_ns,
        order_id=order_id,
        cost=booked(_decimal(trade, "cost"), pair.quote, decimals),
    )
