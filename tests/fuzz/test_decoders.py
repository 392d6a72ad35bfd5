"""Fuzzing every decoder at the edge: whatever bytes arrive, only the documented error.

One target per decoder: command frames (JSON lines and CBOR, then the request
parser and the reply encoder), Kraken's WS messages and REST entries, Binance's
user data events and REST answers, and the journal's records. Each property is
"answers, or raises its own error type, quickly". A short run here in ``make
test``; ``make fuzz`` sets ``HFT_FUZZ_EXAMPLES`` for a long one (the store file
as a reader sees it is fuzzed in tests/mmapstore/test_crafted_files.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from decimal import Decimal

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import CommandProtocolError
from gateway.events import Event, apply_event, decode_event, encode_event, replay_events
from gateway.exchanges.binance.errors import BinanceProtocolError
from gateway.exchanges.binance.parsing import (
    SymbolMap,
    parse_account,
    parse_my_trade,
    parse_user_event,
)
from gateway.exchanges.kraken import parsing
from gateway.exchanges.kraken.assets import AssetMap
from gateway.exchanges.kraken.errors import KrakenProtocolError
from gateway.exchanges.kraken.parsing import (
    WsMessage,
    parse_rest_ledger_entry,
    parse_rest_trade,
    parse_ws_message,
    parse_ws_message_checked,
)
from gateway.exchanges.kraken.sim.exchange import public_asset_pairs, public_assets
from gateway.journal import UnreplayableRecordError, scan_records
from gateway.ledger import Ledger, Refused
from gateway.protocol import (
    CborFrameDecoder,
    FrameError,
    Framing,
    JsonLineDecoder,
    decode_frame,
    encode_reply,
    parse_request,
)

EXAMPLES = int(os.environ.get("HFT_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
SLOW_S = 0.5  # no single input may take longer (the stall of issue 11 took seconds)

# Numbers at and just past the edge's bounds (50 digits, exponents to ±40): past the
# default decimal context's 28 digits a fill's rounding raised InvalidOperation out of
# the stream, which numbers of 8 places under a million never reached.
edge_numbers = st.builds(
    lambda sign, coefficient, exponent: Decimal(
        (sign, tuple(map(int, str(coefficient))), exponent)
    ),
    st.integers(0, 1),
    st.integers(1, 52).flatmap(lambda n: st.integers(10 ** (n - 1), 10**n - 1)),  # n digits
    st.integers(-46, 46),
)
# JSON-ish values: the shapes a hostile client or a broken exchange would send.
scalars = st.one_of(
    edge_numbers.map(str),
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.sampled_from(["1e999999999", "1e-999999999", "NaN", "-0", "١٢", "1_000", "0x10",
                     "\ud800", "1" * 5000, "allocate", "adjust", "USD", "usd", "BTC"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)
request_keys = st.sampled_from(
    ["cmd", "strategy", "currency", "amount", "index", "request_id", "ref_id", "extra"]
)
requests = st.dictionaries(request_keys, values, max_size=7)


def _quick(started: float) -> None:
    assert time.perf_counter() - started < SLOW_S, "one input took too long"


def _answer(frame: bytes | FrameError, framing: Framing) -> None:
    """What the command server does with a frame, minus the writer."""
    if isinstance(frame, FrameError):
        return
    try:
        body = decode_frame(frame, framing)
        request, _ = parse_request(body, 8)
    except CommandProtocolError as exc:
        encode_reply({"ok": False, "error": {"code": exc.code, "message": exc.message}}, framing)
        return
    assert request is not None


@FUZZ
@given(chunks=st.lists(st.binary(max_size=300), max_size=6))
def test_json_lines_decoder_on_any_bytes(chunks: list[bytes]) -> None:
    decoder = JsonLineDecoder(limit=512)
    started = time.perf_counter()
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            _answer(frame, Framing.JSON)
    decoder.at_eof()
    _quick(started)


@FUZZ
@given(body=requests)
def test_any_json_request_is_answered_or_refused(body: dict[str, object]) -> None:
    try:
        line = json.dumps(body).encode()
    except (ValueError, UnicodeEncodeError):
        return
    started = time.perf_counter()
    for frame in JsonLineDecoder().feed(line + b"\n"):
        _answer(frame, Framing.JSON)
    _quick(started)


@FUZZ
@given(body=requests, noise=st.binary(max_size=8))
def test_any_cbor_request_is_answered_or_refused(body: dict[str, object], noise: bytes) -> None:
    try:
        payload = cbor2.dumps(body) + noise
    except (ValueError, TypeError, UnicodeEncodeError, cbor2.CBOREncodeError):
        return
    started = time.perf_counter()
    decoder = CborFrameDecoder()
    for frame in decoder.feed(len(payload).to_bytes(4, "big") + payload):
        _answer(frame, Framing.CBOR)
    _quick(started)


@FUZZ
@given(data=st.binary(max_size=400))
def test_cbor_frames_on_any_bytes(data: bytes) -> None:
    decoder = CborFrameDecoder(limit=1024)
    started = time.perf_counter()
    for frame in decoder.feed(b"\x00" + data):
        _answer(frame, Framing.CBOR)
    _quick(started)


_ASSETS = AssetMap.from_rest(public_assets(), public_asset_pairs())
_WS_CHANNELS = st.sampled_from(["executions", "balances", "status", "heartbeat", None, 7])
_WS_ITEM_KEYS = st.sampled_from(
    ["exec_type", "exec_id", "symbol", "side", "last_qty", "last_price", "cost", "fees",
     "timestamp", "order_userref", "ledger_id", "ref_id", "type", "asset", "amount", "fee",
     "wallet_type", "wallet_id", "margin"]
)  # fmt: skip
ws_items = st.dictionaries(_WS_ITEM_KEYS, values, max_size=12)


@FUZZ
@given(
    channel=_WS_CHANNELS,
    kind=st.sampled_from(["snapshot", "update", None]),
    data=st.lists(ws_items, max_size=4) | values,
)
def test_kraken_ws_messages(channel: object, kind: object, data: object) -> None:
    message = {"channel": channel, "type": kind, "data": data, "sequence": 1}
    try:
        text = json.dumps(message)
    except (ValueError, UnicodeEncodeError):
        return
    started = time.perf_counter()
    _same_on_both_paths(text)
    _quick(started)


def _both_paths(text: str) -> tuple[WsMessage | str, WsMessage | str]:
    results: list[WsMessage | str] = []
    for parse in (parse_ws_message, parse_ws_message_checked):
        try:
            results.append(parse(text, _ASSETS.decimals))
        except KrakenProtocolError as exc:
            results.append(f"refused: {exc}")
    return results[0], results[1]


def _same_on_both_paths(text: str) -> None:
    fast, checked = _both_paths(text)
    assert fast == checked


_NUMBERS = st.one_of(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=8, min_value=-(10**6), max_value=10**6
    ),
    st.integers(-(10**6), 10**6),
    edge_numbers,
)
_ODD_VALUES = st.one_of(
    values,
    st.sampled_from([True, None, "", "1e999", "NaN", "-0", "12.5", 2**70, "XBT/USD", "BTC/ZZZ"]),
)
_TRADE_KEYS = ["exec_id", "symbol", "side", "last_qty", "last_price", "cost", "fees",
               "timestamp", "order_userref", "cl_ord_id", "order_id", "margin",
               "margin_borrow", "exec_type"]  # fmt: skip


@st.composite
def executions(draw: st.DrawFn) -> dict[str, object]:
    """An execution as Kraken sends it, then perhaps broken in one or two places."""
    item: dict[str, object] = {
        "order_id": draw(st.sampled_from(["OABCDE-FGHIJ-KLMNOP", None, ""])),
        "exec_id": draw(st.text("ABCDEFT0123456789-", min_size=1, max_size=20)),
        "exec_type": draw(st.sampled_from(["trade"] * 4 + ["new", "filled", "canceled"])),
        "symbol": draw(st.sampled_from(["BTC/USD", "ETH/USD", "BTC/EUR", "USDT/USD"])),
        "side": draw(st.sampled_from(["buy", "sell"])),
        "last_qty": draw(_NUMBERS),
        "last_price": draw(_NUMBERS),
        "cost": draw(_NUMBERS),
        "timestamp": draw(st.sampled_from(
            ["2026-12-02T10:33:05.709993Z", "2023-09-22T10:33:05.1Z", "2026-12-02T10:33:05+01:00"]
        )),
        "fees": draw(st.lists(
            st.fixed_dictionaries({"asset": st.sampled_from(["USD", "BTC", "EUR"]),
                                   "qty": _NUMBERS}), max_size=2,
        )),
        "cum_qty": draw(_NUMBERS),
        "avg_price": draw(_NUMBERS),
    }  # fmt: skip
    item.update(draw(st.sampled_from([{"order_userref": 7}, {"cl_ord_id": "strategy-a"}, {}])))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(_TRADE_KEYS))
        if draw(st.booleans()):
            item.pop(key, None)
        else:
            item[key] = draw(_ODD_VALUES)
    return item


@FUZZ
@given(
    items=st.lists(executions() | values, max_size=4),
    envelope=st.fixed_dictionaries(
        {"channel": st.sampled_from(["executions"] * 5 + ["balances", "status"])},
        optional={
            "type": st.sampled_from(["snapshot", "update", 3]),
            "sequence": st.sampled_from([1, 2**40, True, "7", None]),
            "method": st.sampled_from([None, "subscribe"]),
        },
    ),
)
def test_kraken_fast_and_checked_paths_agree(
    items: list[object], envelope: dict[str, object]
) -> None:
    """The typed fast path for fills gives what the item-by-item checked path gives."""
    message = {**envelope, "data": items}
    # Decimals as JSON numbers, the way Kraken writes them (not as strings).
    text = json.dumps(message, default=lambda d: f"__raw__{d}__raw__")
    text = text.replace('"__raw__', "").replace('__raw__"', "")
    _same_on_both_paths(text)


@FUZZ
@given(
    entries=st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["trade"] * 6 + ["deposit", "margin", 5])},
            optional={"ledger_id": st.text(max_size=5), "asset": st.sampled_from(["USD", "BTC"]),
                      "amount": st.sampled_from(["1.5", 2, None]), "fee": st.just("0"),
                      "timestamp": st.just("2026-12-02T10:33:05.709993Z"),
                      "wallet_type": st.sampled_from(["spot", "earn"])},
        ) | values,
        max_size=4,
    ),
    kind=st.sampled_from(["update", "snapshot", None]),
)  # fmt: skip
def test_kraken_balances_fast_and_checked_paths_agree(entries: list[object], kind: object) -> None:
    _same_on_both_paths(json.dumps({"channel": "balances", "type": kind, "data": entries}))


def test_the_fast_path_takes_a_documented_fill_and_refuses_what_it_cannot_check() -> None:
    """It is taken (no fallback) for Kraken's own examples, so the agreement above means much."""
    text = (
        '{"channel":"executions","type":"update","data":[{"order_id":"O1","exec_id":"T1",'
        '"exec_type":"trade","symbol":"BTC/USD","side":"buy","last_qty":0.01,'
        '"last_price":98765.4,"cost":987.654,"timestamp":"2026-12-02T10:33:05.709993Z",'
        '"fees":[{"asset":"USD","qty":2.5679}],"order_userref":3}],"sequence":42}'
    )
    fast = parsing.parse_fill_channels(parsing._FILL_CHANNELS.decode(text), _ASSETS.decimals)
    assert fast is not None and fast == parse_ws_message_checked(text, _ASSETS.decimals)
    assert fast.fills[0].cost == Decimal("987.654")  # type: ignore[union-attr]
    margin = text.replace('"order_userref":3', '"order_userref":3,"margin":true')
    assert parsing.parse_fill_channels(parsing._FILL_CHANNELS.decode(margin), {}) is None


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_kraken_ws_frames_of_any_text(text: str) -> None:
    with contextlib.suppress(KrakenProtocolError):
        parse_ws_message(text)


_REST_KEYS = st.sampled_from(
    ["pair", "type", "vol", "price", "cost", "fee", "time", "ordertxid", "margin", "posstatus",
     "refid", "asset", "amount", "balance", "aclass", "subtype"]
)  # fmt: skip


@FUZZ
@given(entry=st.dictionaries(_REST_KEYS, values, max_size=12) | values, key=st.text(max_size=70))
def test_kraken_rest_trades_and_ledger_entries(entry: object, key: str) -> None:
    started = time.perf_counter()
    with contextlib.suppress(KrakenProtocolError):
        parse_rest_trade(key, entry, _ASSETS, {})
    parse_rest_ledger_entry(key, entry, _ASSETS)  # sets a bad entry aside, never raises
    _quick(started)


_BINANCE_SYMBOLS = SymbolMap.from_exchange_info(
    {"symbols": [{"symbol": "ETHBTC", "baseAsset": "ETH", "quoteAsset": "BTC"}]}
)
_BINANCE_KEYS = st.sampled_from(
    ["e", "E", "s", "S", "x", "X", "i", "l", "L", "Y", "n", "N", "T", "t", "j", "c", "a", "d",
     "B", "f", "symbol", "id", "orderId", "price", "qty", "quoteQty", "commission",
     "commissionAsset", "time", "isBuyer", "balances", "asset", "free", "locked"]
)  # fmt: skip
_binance_events = st.fixed_dictionaries(
    {"e": st.sampled_from(["executionReport", "balanceUpdate", "outboundAccountPosition",
                           "eventStreamTerminated", "listStatus"]),
     "x": st.sampled_from(["TRADE", "NEW", None])}
).flatmap(lambda head: st.dictionaries(_BINANCE_KEYS, values, max_size=14).map(
    lambda rest: {**rest, **head}))  # fmt: skip


@FUZZ
@given(event=_binance_events | values, entry=st.dictionaries(_BINANCE_KEYS, values, max_size=14))
def test_binance_events_trades_and_accounts(event: object, entry: dict[str, object]) -> None:
    # An event never raises (a bad one is Skipped); REST answers raise only their own error.
    started = time.perf_counter()
    parse_user_event(event, _BINANCE_SYMBOLS)
    with contextlib.suppress(BinanceProtocolError):
        parse_my_trade(entry, _BINANCE_SYMBOLS, {})
    with contextlib.suppress(BinanceProtocolError):
        parse_account(entry)
    with contextlib.suppress(BinanceProtocolError):
        SymbolMap.from_exchange_info(entry)
    _quick(started)


@FUZZ
@given(data=st.binary(max_size=600))
def test_journal_records_of_any_bytes(data: bytes) -> None:
    """A damaged journal: scanning stops at the damage; decoding raises ValueError-like errors."""
    scan = scan_records(data)
    ledger = Ledger(4)
    for payload in scan.records:
        try:
            event: Event = decode_event(payload)
        except (ValueError, KeyError, TypeError, cbor2.CBORDecodeError):
            continue
        try:
            apply_event(ledger, event)
        except (ValueError, KeyError, TypeError, Refused, ArithmeticError):
            continue


# Booked fill records and near misses: each part right, or any value in its place.
booked_fills = st.tuples(
    st.sampled_from(["bf"] * 7 + ["xx"]) | values,
    st.sampled_from(["T1", "T2", "T3"]) | values,
    st.integers(-1, 4) | values,  # the time: 0 and below are not dated
    st.integers(0, 4) | values,  # the slot: 0 is the total's, 4 past a 4-slot ledger
    st.lists(
        st.sampled_from(["USD", "BTC", "ETH"])
        | st.integers(-(2**70), 2**70)
        | st.binary(max_size=36)
        | values,
        max_size=6,
    )
    | values,
    st.binary(max_size=4) | values,
).map(list)


@FUZZ
@given(records=st.lists(booked_fills | st.lists(values, max_size=7) | values, max_size=6))
def test_journal_replay_inline_and_checked_paths_agree(records: list[object]) -> None:
    """Replay books a common fill record inline and sends the rest the checked way: on any
    records the two ways refuse the same one and build the same ledger before it."""
    payloads = []
    for record in records:
        with contextlib.suppress(ValueError, TypeError, cbor2.CBOREncodeError):
            payloads.append(cbor2.dumps(record))
    checked, inline = Ledger(4), Ledger(4)
    checked.applied.capacity = inline.applied.capacity = 2  # both forget ids, the same ones
    refused_at = None
    for index, payload in enumerate(payloads):
        try:
            apply_event(checked, decode_event(payload))
        except (ValueError, KeyError, TypeError, ArithmeticError, cbor2.CBORDecodeError):
            refused_at = index
            break
    started = time.perf_counter()
    try:
        replay_events(inline, payloads)
    except UnreplayableRecordError as exc:
        assert exc.index == refused_at
    else:
        assert refused_at is None
    _quick(started)
    assert inline.to_snapshot() == checked.to_snapshot()


@FUZZ
@given(body=st.dictionaries(st.sampled_from(["t", "id", "ref", "currency", "amount", "kind", "ts",
                                             "totals", "asof", "epoch", "account"]),
                            values, max_size=8))  # fmt: skip
def test_journal_events_of_any_shape(body: dict[str, object]) -> None:
    try:
        payload = cbor2.dumps(body)
    except (ValueError, TypeError, cbor2.CBOREncodeError):
        return
    try:
        event = decode_event(payload)
    except (ValueError, KeyError, TypeError, ArithmeticError, cbor2.CBORDecodeError):
        return
    # What decodes, and encodes, decodes again to the same event: replay is stable.
    try:
        again = encode_event(event)
    except (ValueError, TypeError, cbor2.CBOREncodeError):
        return
    assert decode_event(again) == event


def test_decimal_json_numbers_stay_exact() -> None:
    """The fuzzers' own premise: Kraken numbers are parsed as Decimal, not float."""
    message = parse_ws_message(
        '{"channel":"balances","type":"update","data":[{"ledger_id":"L1","ref_id":"R",'
        '"timestamp":"2023-09-22T10:33:05.710082Z","type":"deposit","asset":"USD",'
        '"amount":0.1,"fee":0.0,"wallet_type":"spot","wallet_id":"main"}]}'
    )
    assert message.transfers[0].amount == Decimal("0.1")  # type: ignore[union-attr]
