"""Kraken's documented REST examples, as data, through the adapter: what it books from each.

The bodies are the examples of Kraken's REST reference (the OpenAPI examples of
``BalanceEx``, ``Assets``, ``TradesHistory``, ``QueryOrders``; ``AssetPairs``
trimmed to the fields Kraken documents for one pair), served by an
``httpx.MockTransport``: the network edge, and nothing else, is stood in for.
"""

from __future__ import annotations

import json
from decimal import Decimal
from urllib.parse import parse_qs

import httpx
import trio

from gateway.exchanges.kraken.rest import KrakenRestClient, RetryPolicy
from gateway.exchanges.kraken.session import KrakenSession
from gateway.ledger import Side

SECRET = "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg=="

BALANCE_EX = """{"error": [], "result": {
  "ZUSD": {"balance": 25435.21, "hold_trade": 8249.76},
  "XXBT": {"balance": 1.2435, "hold_trade": 0.8423}}}"""

ASSETS = """{"error": [], "result": {
  "XXBT": {"aclass": "currency", "altname": "XBT", "decimals": 10, "display_decimals": 5,
           "collateral_value": 1, "status": "enabled"},
  "ZEUR": {"aclass": "currency", "altname": "EUR", "decimals": 4, "display_decimals": 2,
           "collateral_value": 1, "status": "enabled"},
  "ZUSD": {"aclass": "currency", "altname": "USD", "decimals": 4, "display_decimals": 2,
           "collateral_value": 1, "status": "enabled"}}}"""

ASSET_PAIRS = """{"error": [], "result": {
  "XXBTZUSD": {"altname": "XBTUSD", "wsname": "XBT/USD", "aclass_base": "currency",
               "base": "XXBT", "aclass_quote": "currency", "quote": "ZUSD", "lot": "unit",
               "cost_decimals": 5, "pair_decimals": 1, "lot_decimals": 8, "lot_multiplier": 1,
               "fee_volume_currency": "ZUSD", "ordermin": "0.0001", "costmin": "0.5",
               "tick_size": "0.1", "status": "online"}}}"""

TRADES_HISTORY = """{"error": [], "result": {"trades": {
  "THVRQM-33VKH-UCI7BS": {"ordertxid": "OQCLML-BW3P3-BUCMWZ", "postxid": "TKH2SE-M7IF5-CFI7LT",
    "pair": "XXBTZUSD", "time": 1688667796.8802, "type": "buy", "ordertype": "limit",
    "price": "30010.00000", "cost": "600.20000", "fee": "0.00000", "vol": "0.02000000",
    "margin": "0.00000", "misc": "", "trade_id": 40274859, "maker": true},
  "TCWJEG-FL4SZ-3FKGH6": {"ordertxid": "OQCLML-BW3P3-BUCMWZ", "postxid": "TKH2SE-M7IF5-CFI7LT",
    "pair": "XXBTZUSD", "time": 1688667769.6396, "type": "buy", "ordertype": "limit",
    "price": "30010.00000", "cost": "300.10000", "fee": "0.00000", "vol": "0.01000000",
    "margin": "0.00000", "misc": "", "trade_id": 39482674, "maker": true}}}}"""

# The documented QueryOrders example, with the order id of the trades above and the
# userref a strategy would set (the example's own orders carry userref 0).
QUERY_ORDERS = """{"error": [], "result": {
  "OQCLML-BW3P3-BUCMWZ": {"refid": "None", "userref": 3, "status": "closed", "reason": null,
    "opentm": 1688665496.7808, "closetm": 1688665499.1922, "starttm": 0, "expiretm": 0,
    "descr": {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "price": "30010.0",
              "price2": "0", "leverage": "none", "order": "buy 0.03000000 XBTUSD @ limit 30010.0",
              "close": ""},
    "vol": "0.03000000", "vol_exec": "0.03000000", "cost": "900.3", "fee": "0.0",
    "price": "30010.0", "stopprice": "0.00000", "limitprice": "0.00000", "misc": "",
    "oflags": "fciq", "trades": ["THVRQM-33VKH-UCI7BS", "TCWJEG-FL4SZ-3FKGH6"]}}}"""

ANSWERS = {
    "/0/private/BalanceEx": BALANCE_EX,
    "/0/public/Assets": ASSETS,
    "/0/public/AssetPairs": ASSET_PAIRS,
    "/0/private/TradesHistory": TRADES_HISTORY,
    "/0/private/QueryOrders": QUERY_ORDERS,
}


def _session(
    asked: list[tuple[str, dict[str, list[str]]]], answers: dict[str, str] = ANSWERS
) -> KrakenSession:
    def answer(request: httpx.Request) -> httpx.Response:
        asked.append((request.url.path, parse_qs(request.content.decode())))
        return httpx.Response(200, content=answers[request.url.path].encode())

    rest = KrakenRestClient(
        "https://kraken.test",
        api_key="KEY",
        api_secret=SECRET,
        retry=RetryPolicy(attempts=1, base_s=0.001, cap_s=0.001),
        transport=httpx.MockTransport(answer),
    )
    return KrakenSession(rest)


async def test_documented_balance_ex_gives_each_total_with_held_funds_included() -> None:
    session = _session([])
    async with session.rest:
        totals = await session.fetch_totals()
    # "balance" is the total; hold_trade is part of it, not on top of it.
    assert totals == {"USD": Decimal("25435.21"), "BTC": Decimal("1.2435")}


async def test_a_balance_and_its_earn_balance_are_added_exactly() -> None:
    """Found in review: ``XBT`` and ``XBT.F`` were added in Python's default context,
    which keeps 28 digits: a total past them came out rounded."""
    wide = BALANCE_EX.replace(
        '"XXBT": {"balance": 1.2435, "hold_trade": 0.8423}',
        '"XXBT": {"balance": 12345678901234567890.1234567891, "hold_trade": 0},'
        ' "XBT.F": {"balance": 0.0000000001, "hold_trade": 0}',
    )
    assert "XBT.F" in wide
    session = _session([], {**ANSWERS, "/0/private/BalanceEx": wide})
    async with session.rest:
        totals = await session.fetch_totals()
    assert totals["BTC"] == Decimal("12345678901234567890.1234567892")


async def test_documented_trades_history_is_caught_up_to_its_orders_slot() -> None:
    asked: list[tuple[str, dict[str, list[str]]]] = []
    session = _session(asked)
    with trio.fail_after(30):
        async with session.rest:
            fills = await session._catch_up(1688667000 * 10**9)
    assert [f.exec_id for f in fills] == ["TCWJEG-FL4SZ-3FKGH6", "THVRQM-33VKH-UCI7BS"]
    first, second = fills
    assert (first.base, first.quote, first.side) == ("BTC", "USD", Side.BUY)
    assert (first.qty, first.cost, first.userref) == (Decimal("0.01"), Decimal("300.1"), 3)
    assert first.fees == ()  # a maker trade without a fee books none
    assert second.cost == Decimal("600.2") and second.timestamp_ns == 1688667796880200000
    # The catch-up asked as Kraken documents: start a whole unix time, the orders by id.
    history = next(params for path, params in asked if path.endswith("TradesHistory"))
    assert history["start"] == ["1688666999"]
    orders = next(params for path, params in asked if path.endswith("QueryOrders"))
    assert orders["txid"] == ["OQCLML-BW3P3-BUCMWZ"]


async def test_entries_not_as_documented_are_set_aside_not_raised() -> None:
    """Found in review: the catch-up pages by its newest trade's time, and a time of
    "NaN" made that ``max`` raise InvalidOperation; a trade, an order or an asset that
    is not an object raised AttributeError. Either stopped the gateway, and every start
    after it caught up the same answer."""
    history = TRADES_HISTORY.replace('"time": 1688667796.8802', '"time": "NaN"').replace(
        '"TCWJEG-FL4SZ-3FKGH6": {', '"TNOOBJ-00000-000000": "junk", "TCWJEG-FL4SZ-3FKGH6": {'
    )
    orders = QUERY_ORDERS.replace('"result": {', '"result": {"ONOOBJ-00000-000000": [1], ')
    assets = ASSETS.replace('"result": {', '"result": {"XNOOBJ": 7, ')
    assert '"NaN"' in history and "TNOOBJ" in history and "ONOOBJ" in orders and "XNOOBJ" in assets
    answers = {
        **ANSWERS,
        "/0/private/TradesHistory": history,
        "/0/private/QueryOrders": orders,
        "/0/public/Assets": assets,
    }
    session = _session([], answers)
    with trio.fail_after(30):
        async with session.rest:
            fills = await session._catch_up(1688667000 * 10**9)
    assert [(f.exec_id, f.userref) for f in fills] == [("TCWJEG-FL4SZ-3FKGH6", 3)]
    assert session.skipped == {"malformed": 2}


def test_documented_examples_are_valid_json() -> None:
    for body in ANSWERS.values():
        assert json.loads(body)["error"] == []
