"""Kraken payloads → typed values: WS v2 messages, executions, REST trades. Pure.

Numbers are parsed as Decimal straight from the JSON text; nothing passes
through a float. Anything malformed raises :class:`KrakenProtocolError`.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Final

from gateway.exchanges.kraken.assets import AssetMap
from gateway.exchanges.kraken.errors import KrakenProtocolError
from gateway.ledger import Fee, Fill, Side

_JSON: Final = json.JSONDecoder(parse_float=Decimal)


def loads(text: str | bytes) -> object:
    """JSON with exact decimals. Raises KrakenProtocolError."""
    try:
        return _JSON.decode(text.decode() if isinstance(text, bytes) else text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KrakenProtocolError(f"not JSON: {exc}") from None


def parse_timestamp_ns(text: object) -> int:
    """RFC 3339 (``2023-09-22T10:33:05.709993Z``) → ns since the epoch, exactly."""
    if not isinstance(text, str):
        raise KrakenProtocolError(f"timestamp is not a string: {text!r}")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise KrakenProtocolError(f"bad timestamp {text!r}") from None
    if moment.tzinfo is None:
        raise KrakenProtocolError(f"timestamp without a zone: {text!r}")
    seconds = calendar.timegm(moment.utctimetuple())
    return seconds * 1_000_000_000 + moment.microsecond * 1000


def format_timestamp(ns: int) -> str:
    """ns since the epoch → Kraken's RFC 3339 with microseconds."""
    seconds, rest = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{rest // 1000:06d}Z"


def _decimal(item: Mapping[str, object], name: str) -> Decimal:
    value = item.get(name)
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise KrakenProtocolError(f"{name} is not a number: {value!r}") from None
    else:
        raise KrakenProtocolError(f"{name} is missing or not a number: {value!r}")
    if not number.is_finite():
        raise KrakenProtocolError(f"{name} is not finite: {value!r}")
    return number


def _str(item: Mapping[str, object], name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise KrakenProtocolError(f"{name} is missing or not a string: {value!r}")
    return value


def parse_execution(item: Mapping[str, object]) -> Fill | None:
    """One element of an ``executions`` message's ``data``; None unless it is a trade."""
    if item.get("exec_type") != "trade":
        return None
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
    fees = []
    for fee in fees_raw:
        if not isinstance(fee, dict):
            raise KrakenProtocolError("a fee is not an object")
        asset = AssetMap.split_symbol(f"{_str(fee, 'asset')}/X")[0]
        fees.append(Fee(asset, _decimal(fee, "qty")))
    userref = item.get("order_userref")
    if userref is not None and (not isinstance(userref, int) or isinstance(userref, bool)):
        raise KrakenProtocolError(f"order_userref is not an integer: {userref!r}")
    cl_ord_id = item.get("cl_ord_id")
    return Fill(
        exec_id=_str(item, "exec_id"),
        base=base,
        quote=quote,
        side=Side(side),
        qty=_decimal(item, "last_qty"),
        price=_decimal(item, "last_price"),
        fees=tuple(fees),
        userref=userref,
        timestamp_ns=parse_timestamp_ns(item.get("timestamp")),
        order_id=str(item.get("order_id") or ""),
        cl_ord_id=cl_ord_id if isinstance(cl_ord_id, str) else None,
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


@dataclass(frozen=True, slots=True)
class WsIgnored:
    """A message of a channel or kind the gateway does not use."""

    channel: str


WsMessage = WsStatus | WsHeartbeat | WsAck | WsExecutions | WsIgnored


def parse_ws_message(text: str | bytes) -> WsMessage:
    """One WS v2 frame. Raises KrakenProtocolError on anything malformed."""
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
        fills = []
        for item in data:
            if not isinstance(item, dict):
                raise KrakenProtocolError("an execution is not an object")
            fill = parse_execution(item)
            if fill is not None:
                fills.append(fill)
        sequence = message.get("sequence")
        return WsExecutions(
            message.get("type") == "snapshot",
            tuple(fills),
            sequence if isinstance(sequence, int) else None,
        )
    return WsIgnored(str(channel))


# -- REST trades ----------------------------------------------------------------------


def parse_rest_trade(
    txid: str, trade: Mapping[str, object], assets: AssetMap, userrefs: Mapping[str, int | None]
) -> Fill:
    """One ``TradesHistory`` entry → a Fill.

    REST trades name neither the fee's asset nor the order's userref: the fee
    is booked in the quote currency (Kraken's default, ``fciq``; the v2 docs say
    fees are quoted in the quote currency only), and the userref comes from
    ``QueryOrders`` of the trade's ``ordertxid`` (``userrefs``).
    """
    try:
        pair = assets.pair(_str(trade, "pair"))
    except KeyError:
        raise KrakenProtocolError(f"unknown pair {trade.get('pair')!r}") from None
    side = trade.get("type")
    if side not in ("buy", "sell"):
        raise KrakenProtocolError(f"trade type is not buy or sell: {side!r}")
    seconds = _decimal(trade, "time")
    order_id = str(trade.get("ordertxid") or "")
    fee = _decimal(trade, "fee")
    return Fill(
        exec_id=txid,
        base=pair.base,
        quote=pair.quote,
        side=Side(side),
        qty=_decimal(trade, "vol"),
        price=_decimal(trade, "price"),
        fees=(Fee(pair.quote, fee),) if fee else (),
        userref=userrefs.get(order_id),
        timestamp_ns=int(seconds * 1_000_000_000),
        order_id=order_id,
    )
