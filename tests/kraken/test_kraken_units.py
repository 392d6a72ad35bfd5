"""Kraken adapter, pure parts: signing, nonces, asset codes, execution and trade parsing."""

from __future__ import annotations

import json
from datetime import UTC
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.exchanges.kraken.assets import SYMBOLS_CACHED, AssetMap, canonical_from_altname
from gateway.exchanges.kraken.errors import KrakenProtocolError
from gateway.exchanges.kraken.parsing import (
    WsAck,
    WsExecutions,
    WsHeartbeat,
    WsStatus,
    _any_timestamp_ns,
    format_timestamp,
    parse_rest_trade,
    parse_timestamp_ns,
    parse_ws_message,
    parse_ws_message_checked,
)
from gateway.exchanges.kraken.signing import NONCE_RESERVE, NonceSource, sign
from gateway.exchanges.kraken.sim.exchange import public_asset_pairs, public_assets
from gateway.ledger import UNIT, Fee, Fill, Ledger, Side

SECRET = "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg=="
NONCE = 1616492376594

# Kraken's own example message, verbatim from the reference.
KRAKEN_EXECUTION_EXAMPLE = """{"channel":"executions","type":"update","sequence":10,"data":[{
 "order_id":"OK4GJX-KSTLS-7DZZO5","order_userref":3,
 "exec_id":"TGBB7L-HT5LX-J3BZ4A","exec_type":"trade","trade_id":62887576,
 "symbol":"BTC/USD","side":"sell","last_qty":0.005,"last_price":26599.9,
 "liquidity_ind":"t","cost":132.9995,"order_type":"limit",
 "timestamp":"2023-09-22T10:33:05.709993Z","order_status":"partially_filled",
 "cum_qty":0.005,"cum_cost":132.9995,"avg_price":26599.9,
 "fee_usd_equiv":0.3458,"fees":[{"asset":"USD","qty":0.3458}]}]}"""


def test_signature_matches_krakens_published_vector() -> None:
    body = f"nonce={NONCE}&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25"
    assert sign("/0/private/AddOrder", NONCE, body, SECRET) == (
        "4/dpxb3iT4tp/ZCVEwSnEsLxx0bqyhLpdfOpc6fn7OR8+UClSV5n9E6aSS8MPtnRfp32bAb0nmbRn6H8ndwLUQ=="
    )


BALANCE_SIGN = (
    "1nH4vwR+8FHiYh1QT649xXkGd3JR3x0DWkgv3u9Ed/Qqv6KPtgQpEU4m+Emb/VgpEji3j1XNwI+HCbfXxmrTOg=="
)
TOKEN_SIGN = (
    "+mRDmY9Ks0Moc1zjv/BjfvYa98buO0x1yHChZR5onlfAzAUbfIYlLggUZzdQ0RsmXm4Sh+Q8iAIZdo2wSeHeiA=="
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/0/private/Balance", BALANCE_SIGN), ("/0/private/GetWebSocketsToken", TOKEN_SIGN)],
)
def test_signature_of_balance_and_token_requests(path: str, expected: str) -> None:
    assert sign(path, NONCE, f"nonce={NONCE}", SECRET) == expected


def test_nonces_increase_even_when_the_clock_stands_still() -> None:
    nonces = NonceSource(clock_us=lambda: 1000)
    assert [nonces.next() for _ in range(3)] == [1000, 1001, 1002]


def test_nonces_increase_across_a_restart_with_the_clock_set_back(tmp_path: Path) -> None:
    path = tmp_path / "kraken.nonce"
    first = NonceSource(path, clock_us=lambda: 5_000_000)
    issued = [first.next() for _ in range(10)]
    # The next run's clock is an hour behind: its nonces must still be larger.
    second = NonceSource(path, clock_us=lambda: 5_000_000 - 3_600_000_000)
    assert second.next() > max(issued)
    assert int(path.read_text()) >= max(issued) + NONCE_RESERVE // 2


ASSETS = {
    "XXBT": {"altname": "XBT", "decimals": 10},
    "ZUSD": {"altname": "USD", "decimals": 4},
    "USDT": {"altname": "USDT", "decimals": 8},
    "XXDG": {"altname": "XDG", "decimals": 8},
    "XTZ": {"altname": "XTZ", "decimals": 8},
    "ZEUR": {"altname": "EUR", "decimals": 4},
    "XBT.M": {"altname": "XBT.M", "decimals": 10},
    "ETH2.S": {"altname": "ETH2.S", "decimals": 10},
}
PAIRS = {
    "XXBTZUSD": {"altname": "XBTUSD", "base": "XXBT", "quote": "ZUSD"},
    "XBTUSDT": {"altname": "XBTUSDT", "base": "XXBT", "quote": "USDT"},
    "XDGEUR": {"altname": "XDGEUR", "base": "XXDG", "quote": "ZEUR"},
}


@pytest.mark.parametrize(
    ("rest_key", "canonical"),
    [
        ("XXBT", "BTC"), ("ZUSD", "USD"), ("USDT", "USDT"), ("XXDG", "DOGE"), ("ZEUR", "EUR"),
        ("XTZ", "XTZ"),  # Tezos: an X that is not a prefix
        ("XBT.M", "BTC.M"), ("ETH2.S", "ETH2.S"),  # suffixed balances stay apart
        ("XBT.F", "BTC.F"), ("USD.HOLD", "USD.HOLD"), ("DOT.S", "DOT.S"),  # not in Assets
        ("NEWCOIN", "NEWCOIN"),  # an unknown asset shows up under its own name
    ],
)  # fmt: skip
def test_asset_codes_normalise_through_the_assets_map(rest_key: str, canonical: str) -> None:
    assert AssetMap.from_rest(ASSETS, PAIRS).asset(rest_key) == canonical


def test_an_assets_decimals_outside_0_to_40_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    """Kraken's ``decimals`` round every amount of its asset: a billion places made the
    rounding fail on the asset's first fill, and -5 would round its amounts to 1e5."""
    odd = {
        **ASSETS,
        "XXBT": {"altname": "XBT", "decimals": 10**9},
        "ZUSD": {"altname": "USD", "decimals": -5},
        "USDT": {"altname": "USDT", "decimals": True},
    }
    decimals = AssetMap.from_rest(odd, PAIRS).decimals
    assert not {"BTC", "USD", "USDT"} & set(decimals) and decimals["EUR"] == 4
    assert AssetMap.from_rest(ASSETS, PAIRS).decimals["BTC"] == 10
    assert "XXBT has 1000000000 decimals; left out" in caplog.text


def test_pairs_resolve_by_key_or_altname() -> None:
    assets = AssetMap.from_rest(ASSETS, PAIRS)
    assert assets.pair("XXBTZUSD").symbol == "BTC/USD"
    assert assets.pair("XBTUSD") == assets.pair("XXBTZUSD")
    assert assets.pair("XDGEUR").symbol == "DOGE/EUR"
    assert AssetMap.split_symbol("XBT/USD") == ("BTC", "USD")
    assert canonical_from_altname("xdg") == "DOGE"


def test_symbols_are_remembered_within_a_bound_and_refusals_never() -> None:
    """Split once per symbol (a fill splits two), but a stream of made-up symbols only
    evicts: memory stays bounded, and a bad symbol is refused every time it comes."""
    for number in range(SYMBOLS_CACHED * 3):
        assert AssetMap.split_symbol(f"COIN{number}/USD") == (f"COIN{number}", "USD")
    assert AssetMap.split_symbol.cache_info().currsize <= SYMBOLS_CACHED
    for _ in range(2):
        with pytest.raises(ValueError, match="not a BASE/QUOTE symbol"):
            AssetMap.split_symbol("BTCUSD")
        with pytest.raises(KrakenProtocolError, match="not an asset or pair name"):
            AssetMap.split_symbol("BTC/" + "X" * 100)


def test_simulator_assets_normalise_like_krakens() -> None:
    assets = AssetMap.from_rest(public_assets(), public_asset_pairs())
    assert {assets.asset(k) for k in ("XXBT", "XETH", "ZUSD", "USDT", "USDC")} == {
        "BTC", "ETH", "USD", "USDT", "USDC",
    }  # fmt: skip


def test_krakens_execution_example_parses_exactly() -> None:
    message = parse_ws_message(KRAKEN_EXECUTION_EXAMPLE)
    assert isinstance(message, WsExecutions)
    assert not message.snapshot and message.sequence == 10
    (fill,) = message.fills
    assert fill == Fill(
        exec_id="TGBB7L-HT5LX-J3BZ4A",
        base="BTC",
        quote="USD",
        side=Side.SELL,
        qty=Decimal("0.005"),
        price=Decimal("26599.9"),
        fees=(Fee("USD", Decimal("0.3458")),),
        userref=3,
        timestamp_ns=1695378785709993000,
        order_id="OK4GJX-KSTLS-7DZZO5",
        cl_ord_id=None,
        cost=Decimal("132.9995"),
    )


def test_only_trades_become_fills() -> None:
    text = KRAKEN_EXECUTION_EXAMPLE.replace('"exec_type":"trade"', '"exec_type":"filled"')
    message = parse_ws_message(text)
    assert isinstance(message, WsExecutions) and message.fills == ()


@pytest.mark.parametrize(
    ("replace", "by"),
    [('"last_qty":0.005', '"last_qty":"abc"'), ('"side":"sell"', '"side":"short"'),
     ('"symbol":"BTC/USD"', '"symbol":"BTCUSD"'), ('"timestamp":"2023', '"timestamp":"x2023'),
     ('"order_userref":3', '"order_userref":"3"')],
)  # fmt: skip
def test_malformed_execution_is_set_aside_not_fatal(replace: str, by: str) -> None:
    # A snapshot repeats a bad execution on every reconnect: failing the message
    # would fail every reconnect, so the execution is skipped and reported instead.
    message = parse_ws_message(KRAKEN_EXECUTION_EXAMPLE.replace(replace, by))
    assert isinstance(message, WsExecutions) and message.fills == ()
    assert [(s.exec_id, s.kind) for s in message.skipped] == [("TGBB7L-HT5LX-J3BZ4A", "malformed")]


@pytest.mark.parametrize("flag", ['"margin":true', '"margin_borrow":true'])
def test_margin_execution_is_not_booked_as_spot(flag: str) -> None:
    text = KRAKEN_EXECUTION_EXAMPLE.replace('"exec_type":"trade"', f'"exec_type":"trade",{flag}')
    message = parse_ws_message(text)
    assert isinstance(message, WsExecutions) and message.fills == ()
    assert [s.kind for s in message.skipped] == ["margin"]


@pytest.mark.parametrize("number", ["1e-999999999", "1e999999999", "-1E+41"])
def test_execution_numbers_out_of_range_are_set_aside(number: str) -> None:
    message = parse_ws_message(KRAKEN_EXECUTION_EXAMPLE.replace("0.005", number, 1))
    assert isinstance(message, WsExecutions)
    assert message.fills == () and [s.kind for s in message.skipped] == ["malformed"]


def test_quote_leg_is_kraken_cost_not_qty_times_price() -> None:
    # last_price is the average price of the trade event; cost is what was booked.
    text = KRAKEN_EXECUTION_EXAMPLE.replace('"cost":132.9995', '"cost":132.9991')
    message = parse_ws_message(text, {"USD": 4, "BTC": 10})
    assert isinstance(message, WsExecutions)
    ledger = _ledger()
    ledger.apply_fill(message.fills[0])
    assert ledger.slots("USD")[3] == int((Decimal("132.9991") - Decimal("0.3458")) * UNIT)


def test_amounts_with_more_digits_than_the_asset_are_booked_at_its_decimals() -> None:
    text = KRAKEN_EXECUTION_EXAMPLE.replace('"cost":132.9995', '"cost":132.99955')
    message = parse_ws_message(text, {"USD": 4, "BTC": 10})
    assert isinstance(message, WsExecutions)
    assert message.fills[0].cost == Decimal("132.9996")  # half-even at ZUSD's 4 decimals


def test_control_messages_parse() -> None:
    assert parse_ws_message('{"channel":"heartbeat"}') == WsHeartbeat()
    status = (
        '{"channel":"status","type":"update",'
        '"data":[{"system":"maintenance","connection_id":13834774380200032777}]}'
    )
    assert parse_ws_message(status) == WsStatus("maintenance")
    ack = '{"method":"subscribe","success":false,"error":"EAccount:Invalid permissions","req_id":1}'
    assert parse_ws_message(ack) == WsAck("subscribe", False, "EAccount:Invalid permissions")
    with pytest.raises(KrakenProtocolError):
        parse_ws_message("not json")


def test_timestamps_round_trip_at_microseconds() -> None:
    ns = parse_timestamp_ns("2023-09-22T10:33:05.709993Z")
    assert format_timestamp(ns) == "2023-09-22T10:33:05.709993Z"


_STAMP_CHARS = st.sampled_from("0123456789-:.TZ +٣x")


@given(
    st.one_of(
        st.datetimes(timezones=st.just(UTC)).map(
            lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        ),
        st.text(_STAMP_CHARS, min_size=27, max_size=27),
        st.builds(
            lambda second, tail: second + tail,
            st.just("2023-09-22T10:33:05"),
            st.text(_STAMP_CHARS, min_size=8, max_size=8),
        ),
    )
)
def test_kraken_timestamps_take_the_short_path_to_the_same_answer(text: str) -> None:
    """Kraken's own form is parsed by its second, once; anything else as RFC 3339 is."""
    try:
        expected: int | None = _any_timestamp_ns(text)
    except KrakenProtocolError:
        expected = None
    try:
        assert parse_timestamp_ns(text) == expected
    except KrakenProtocolError:
        assert expected is None


def _ledger() -> Ledger:
    ledger = Ledger(8)
    ledger.set_totals({"USD": 100000 * UNIT, "BTC": 10 * UNIT, "ETH": 100 * UNIT})
    return ledger


def test_parsed_sell_books_both_currencies_and_the_quote_fee() -> None:
    message = parse_ws_message(KRAKEN_EXECUTION_EXAMPLE)
    assert isinstance(message, WsExecutions)
    ledger = _ledger()
    ledger.apply_fill(message.fills[0])
    usd, btc = ledger.slots("USD"), ledger.slots("BTC")
    assert btc[0] == 10 * UNIT - 5 * UNIT // 1000 and btc[3] == -5 * UNIT // 1000
    proceeds = int((Decimal("132.9995") - Decimal("0.3458")) * UNIT)
    assert usd[0] == 100000 * UNIT + proceeds and usd[3] == proceeds


def test_parsed_buy_with_fee_in_base_books_the_fee_in_base() -> None:
    text = KRAKEN_EXECUTION_EXAMPLE.replace('"side":"sell"', '"side":"buy"').replace(
        '"fees":[{"asset":"USD","qty":0.3458}]', '"fees":[{"asset":"BTC","qty":0.00001}]'
    )
    message = parse_ws_message(text)
    assert isinstance(message, WsExecutions)
    ledger = _ledger()
    ledger.apply_fill(message.fills[0])
    assert ledger.slots("BTC")[3] == int(Decimal("0.00499") * UNIT)
    assert ledger.slots("USD")[3] == -int(Decimal("132.9995") * UNIT)
    ledger.check_invariant()


def test_rest_trade_parses_with_userref_from_its_order() -> None:
    assets = AssetMap.from_rest(ASSETS, PAIRS)
    trade = {
        "ordertxid": "OQCLML-BW3P3-BUCMWZ", "pair": "XXBTZUSD", "time": Decimal("1688667796.8802"),
        "type": "buy", "price": "30010.00000", "cost": "600.20000", "fee": "0.00000",
        "vol": "0.02000000",
    }  # fmt: skip
    fill = parse_rest_trade("TCWJEG-FL4SZ-3FKGH6", trade, assets, {"OQCLML-BW3P3-BUCMWZ": 4})
    assert isinstance(fill, Fill) and fill.cost == Decimal("600.2")
    assert (fill.base, fill.quote, fill.side, fill.userref) == ("BTC", "USD", Side.BUY, 4)
    assert fill.qty == Decimal("0.02") and fill.price == Decimal("30010")
    assert fill.fees == () and fill.timestamp_ns == 1688667796880200000


@pytest.mark.parametrize("time", [Decimal("1E+40"), Decimal("946684799.9"), "7258118400"])
def test_a_trade_dated_outside_the_years_2000_to_2200_is_refused(time: object) -> None:
    """Found in review: a REST trade dated 1e40 s became the gateway's position, and the
    catch-up after the next restart asked Kraken for trades after it (none came)."""
    trade = {"ordertxid": "OQCLML-BW3P3-BUCMWZ", "pair": "XXBTZUSD", "time": time,
             "type": "buy", "price": "1", "cost": "1", "fee": "0", "vol": "1"}  # fmt: skip
    with pytest.raises(KrakenProtocolError, match="not within the years 2000 to 2200"):
        parse_rest_trade("TCWJEG-FL4SZ-3FKGH6", trade, AssetMap.from_rest(ASSETS, PAIRS), {})
    execution = KRAKEN_EXECUTION_EXAMPLE.replace('"timestamp":"2023-', '"timestamp":"9999-')
    assert execution != KRAKEN_EXECUTION_EXAMPLE
    message = parse_ws_message(execution)
    assert isinstance(message, WsExecutions) and message.fills == ()
    assert [s.kind for s in message.skipped] == ["malformed"]


@pytest.mark.parametrize(
    "exec_type", ["pending_new", "new", "amended", "filled", "canceled", "expired", "restated"]
)
def test_order_status_events_are_not_fills(exec_type: str) -> None:
    # Every exec_type Kraken streams besides "trade" reports an order's state; the ones
    # that end an order carry cumulative fields that must not be booked again.
    item = (
        KRAKEN_EXECUTION_EXAMPLE.replace('"exec_type":"trade"', f'"exec_type":"{exec_type}"')
        .replace('"order_status":"partially_filled"', '"order_status":"canceled"')
        .replace('"order_type":"limit"', '"order_type":"limit","reason":"User requested"')
    )
    message = parse_ws_message(item)
    assert isinstance(message, WsExecutions) and message.fills == () and message.skipped == ()


def _example_with(**changes: object) -> str:
    message = json.loads(KRAKEN_EXECUTION_EXAMPLE)
    message["data"][0].update(changes)
    return json.dumps(message)


@pytest.mark.parametrize(
    "changes",
    [
        {"exec_id": "T" * 65},
        {"exec_id": "TGBB7L\nHT5LX"},
        {"order_id": "O" * 100_000},
        {"last_price": "1." + "0" * 60},  # within the exponent bound, not the digits'
        {"cost": "1.2" + "3" * 55},
        {"symbol": "B" * 40 + "/USD"},
        {"fees": [{"asset": "U" * 33, "qty": "0.1"}]},
        {"fees": [{"asset": "USD", "qty": "0.01"}] * 9},
    ],
    ids=[
        "long-id",
        "id-with-newline",
        "long-order",
        "digits",
        "digits-cost",
        "long-symbol",
        "long-fee-asset",
        "nine-fees",
    ],
)
def test_an_execution_beyond_krakens_bounds_is_malformed_on_both_paths(
    changes: dict[str, object],
) -> None:
    """Found in review: ids, names and digits were unbounded, and each is kept (the fill-id
    window, the journal: a record over 1 MiB reads back as damage and stops the start)."""
    text = _example_with(**changes)
    for parse in (parse_ws_message, parse_ws_message_checked):
        message = parse(text)
        assert isinstance(message, WsExecutions) and message.fills == ()
        assert [s.kind for s in message.skipped] == ["malformed"]
        assert all(len(s.exec_id) <= 64 for s in message.skipped)


def test_a_client_order_id_beyond_bounds_is_dropped_not_the_fill() -> None:
    for parse in (parse_ws_message, parse_ws_message_checked):
        message = parse(_example_with(cl_ord_id="C" * 65))
        assert isinstance(message, WsExecutions) and len(message.fills) == 1
        assert message.fills[0].cl_ord_id is None


def test_asset_maps_leave_out_what_is_not_a_name() -> None:
    assets = {**public_assets(), "X" * 40: {"altname": "X" * 40, "decimals": 8}}
    pairs = {**public_asset_pairs(), "P" * 40: {"base": "XXBT", "quote": "ZUSD"}}
    mapping = AssetMap.from_rest(assets, pairs)
    assert "X" * 40 not in mapping.assets and "P" * 40 not in mapping.pairs
    assert mapping.asset("XXBT") == "BTC"
    with pytest.raises(KrakenProtocolError, match="not an asset or pair name"):
        mapping.asset("Z" * 33)
