"""The Binance adapter's edge, against Binance's own documented examples (binance-spot-api-docs)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from gateway.exchanges.binance.parsing import (
    AccountPosition,
    Skipped,
    StreamTerminated,
    SymbolMap,
    UserFill,
    UserTransfer,
    loads,
    parse_account,
    parse_my_trade,
    parse_user_event,
)
from gateway.exchanges.binance.signing import sign_query, sign_ws_params, signed_query
from gateway.ledger import Fee, Ledger, Side

# rest-api.md, "SIGNED Endpoint Examples for POST /api/v3/order - HMAC Keys".
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
API_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
REST_QUERY = (
    "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
    "&recvWindow=5000&timestamp=1499827319559"
)

# user-data-stream.md, the executionReport payload (comments removed), then a trade of it.
EXECUTION_REPORT = """{"subscriptionId": 0, "event": {
 "e": "executionReport", "E": 1499405658658, "s": "ETHBTC", "c": "mUvoqJxFIILMdfAW5iGSOW",
 "S": "BUY", "o": "LIMIT", "f": "GTC", "q": "1.00000000", "p": "0.10264410",
 "P": "0.00000000", "F": "0.00000000", "g": -1, "C": "", "x": "NEW", "X": "NEW",
 "r": "NONE", "i": 4293153, "l": "0.00000000", "z": "0.00000000", "L": "0.00000000",
 "n": "0", "N": null, "T": 1499405658657, "t": -1, "v": 3, "I": 8641984, "w": true,
 "m": false, "M": false, "O": 1499405658657, "Z": "0.00000000", "Y": "0.00000000",
 "Q": "0.00000000", "W": 1499405658657, "V": "NONE"}}"""
BALANCE_UPDATE = """{"subscriptionId": 0, "event": {"e": "balanceUpdate",
 "E": 1573200697110, "a": "BTC", "d": "100.00000000", "T": 1573200697068}}"""
ACCOUNT_POSITION = """{"subscriptionId": 0, "event": {"e": "outboundAccountPosition",
 "E": 1564034571105, "u": 1564034571073,
 "B": [{"a": "ETH", "f": "10000.000000", "l": "0.000000"}]}}"""
STREAM_TERMINATED = """{"subscriptionId": 0, "event": {"e": "eventStreamTerminated",
 "E": 1728973001334}}"""
# rest-api.md: GET /api/v3/account and GET /api/v3/myTrades responses, one ETHBTC symbol of
# GET /api/v3/exchangeInfo (and BNBBTC, the trade example's symbol, in the same shape).
ACCOUNT = """{"makerCommission": 15, "takerCommission": 15, "buyerCommission": 0,
 "sellerCommission": 0, "canTrade": true, "canWithdraw": true, "canDeposit": true,
 "brokered": false, "requireSelfTradePrevention": false, "preventSor": false,
 "updateTime": 123456789, "accountType": "SPOT",
 "balances": [{"asset": "BTC", "free": "4723846.89208129", "locked": "0.00000000"},
              {"asset": "LTC", "free": "4763368.68006011", "locked": "0.00000000"}],
 "permissions": ["SPOT"], "uid": 354937868}"""
MY_TRADES = """[{"symbol": "BNBBTC", "id": 28457, "orderId": 100234, "orderListId": -1,
 "price": "4.00000100", "qty": "12.00000000", "quoteQty": "48.000012",
 "commission": "10.10000000", "commissionAsset": "BNB", "time": 1499865549590,
 "isBuyer": true, "isMaker": false, "isBestMatch": true}]"""
EXCHANGE_INFO = """{"timezone": "UTC", "serverTime": 1565246363776, "symbols": [
 {"symbol": "ETHBTC", "status": "TRADING", "baseAsset": "ETH", "baseAssetPrecision": 8,
  "quoteAsset": "BTC", "quotePrecision": 8, "quoteAssetPrecision": 8},
 {"symbol": "BNBBTC", "status": "TRADING", "baseAsset": "BNB", "baseAssetPrecision": 8,
  "quoteAsset": "BTC", "quotePrecision": 8, "quoteAssetPrecision": 8}]}"""

SYMBOLS = SymbolMap.from_exchange_info(loads(EXCHANGE_INFO))


def _event(text: str, **changes: object) -> object:
    message = loads(text)
    assert isinstance(message, dict)
    event = message["event"]
    assert isinstance(event, dict)
    event.update(changes)
    return event


def test_rest_signature_matches_binances_published_example() -> None:
    assert sign_query(REST_QUERY, SECRET) == (
        "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    )
    params = [tuple(pair.split("=")) for pair in REST_QUERY.split("&")]
    assert signed_query(params, SECRET) == (  # type: ignore[arg-type]
        f"{REST_QUERY}&signature=c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    )


@pytest.mark.parametrize(
    ("symbol", "price", "quantity", "recv", "side", "expected"),  # the second: a fullwidth symbol
    [("BTCUSDT", "52000.00", "0.01000000", 100, "SELL",
      "aa1b5712c094bc4e57c05a1a5c1fd8d88dcd628338ea863fec7b88e59fe2db24"),
     ("\uff11\uff12\uff13\uff14\uff15\uff16", "0.10000000", "1.00000000", 5000, "BUY",
      "b33892ae8e687c939f4468c6268ddd4c40ac1af18ad19a064864c47bae0752cd")],
)  # fmt: skip
def test_websocket_api_signature_matches_binances_published_examples(
    symbol: str, price: str, quantity: str, recv: int, side: str, expected: str
) -> None:
    # web-socket-api.md, "SIGNED request example (HMAC)": sorted, UTF-8, not percent-encoded.
    params: dict[str, str | int] = {
        "symbol": symbol, "side": side, "type": "LIMIT", "timeInForce": "GTC",
        "quantity": quantity, "price": price, "recvWindow": recv, "timestamp": 1645423376532,
        "apiKey": API_KEY, "signature": "------ FILL ME ------",
    }  # fmt: skip
    assert sign_ws_params(params, SECRET) == expected


def test_documented_execution_report_of_a_new_order_is_no_fill() -> None:
    assert parse_user_event(_event(EXECUTION_REPORT), SYMBOLS) is None


def test_execution_report_of_a_trade_is_booked_from_its_quote_quantity_and_commission() -> None:
    event = _event(EXECUTION_REPORT, x="TRADE", X="PARTIALLY_FILLED", l="0.50000000",
                   L="0.10264410", Y="0.05132205", n="0.00050000", N="ETH", t=70, j=3)  # fmt: skip
    parsed = parse_user_event(event, SYMBOLS)
    assert isinstance(parsed, UserFill)
    fill = parsed.fill
    assert (fill.exec_id, fill.base, fill.quote, fill.side) == ("ETHBTC-70", "ETH", "BTC", Side.BUY)
    assert (fill.qty, fill.price, fill.cost) == (
        Decimal("0.5"),
        Decimal("0.10264410"),
        Decimal("0.05132205"),
    )
    assert fill.fees == (Fee("ETH", Decimal("0.0005")),)
    assert (fill.userref, fill.order_id, fill.cl_ord_id) == (3, "4293153", "mUvoqJxFIILMdfAW5iGSOW")
    assert fill.timestamp_ns == 1499405658657 * 1_000_000
    # Booked: +0.5 - 0.0005 ETH and -0.05132205 BTC, in slot 0 and strategy slot 3.
    ledger = Ledger(8)
    ledger.apply_fill(fill)
    assert ledger.slots("ETH")[0] == ledger.slots("ETH")[3] == 4995 * 10**14
    assert ledger.slots("BTC")[3] == -5132205 * 10**10


def test_a_trade_without_strategy_id_or_with_one_out_of_range_goes_to_slot_one() -> None:
    ledger = Ledger(8)
    for n, changes in enumerate(({}, {"j": 9}, {"j": 1})):
        event = _event(EXECUTION_REPORT, x="TRADE", l="1", L="0.1", Y="0.1", t=n, **changes)
        parsed = parse_user_event(event, SYMBOLS)
        assert isinstance(parsed, UserFill)
        outcome = ledger.apply_fill(parsed.fill)
        assert outcome is not None and outcome.slot == 1


def test_documented_balance_update_is_a_transfer_known_by_asset_time_and_delta() -> None:
    parsed = parse_user_event(_event(BALANCE_UPDATE), SYMBOLS)
    assert isinstance(parsed, UserTransfer)
    transfer = parsed.transfer
    assert (transfer.currency, transfer.amount) == ("BTC", Decimal("100"))
    assert transfer.ledger_id == "BTC-1573200697068-100.00000000"
    assert transfer.timestamp_ns == 1573200697068 * 1_000_000
    again = parse_user_event(_event(BALANCE_UPDATE), SYMBOLS)
    assert isinstance(again, UserTransfer) and again.transfer.ledger_id == transfer.ledger_id


def test_documented_account_position_and_stream_end() -> None:
    position = parse_user_event(_event(ACCOUNT_POSITION), SYMBOLS)
    assert position == AccountPosition({"ETH": Decimal("10000")}, 1564034571073)
    assert parse_user_event(_event(STREAM_TERMINATED), SYMBOLS) == StreamTerminated()


def test_documented_account_gives_free_plus_locked() -> None:
    account = loads(ACCOUNT)
    assert parse_account(account) == {
        "BTC": Decimal("4723846.89208129"),
        "LTC": Decimal("4763368.68006011"),
    }
    assert isinstance(account, dict)
    account["balances"][0]["locked"] = "1.5"
    assert parse_account(account)["BTC"] == Decimal("4723848.39208129")
    # Past the default context's 28 digits the sum was rounded (found in review).
    account["balances"][0]["free"] = "123456789012345678901.12345678"
    account["balances"][0]["locked"] = "0.00000001"
    assert parse_account(account)["BTC"] == Decimal("123456789012345678901.12345679")


def test_documented_trade_list_entry_books_with_its_orders_strategy() -> None:
    (entry,) = json.loads(MY_TRADES, parse_float=Decimal)
    fill = parse_my_trade(entry, SYMBOLS, {100234: 4})
    assert (fill.exec_id, fill.base, fill.quote, fill.side) == ("BNBBTC-28457", "BNB", "BTC",
                                                               Side.BUY)  # fmt: skip
    assert (fill.qty, fill.cost, fill.userref) == (Decimal(12), Decimal("48.000012"), 4)
    assert fill.fees == (Fee("BNB", Decimal("10.1")),)
    assert parse_my_trade(entry, SYMBOLS, {}).userref is None


@pytest.mark.parametrize(
    "changes",
    [{"l": "abc"}, {"L": "1e999999999"}, {"S": "SHORT"}, {"s": "NOPE"}, {"t": "70"},
     {"T": 10**30}, {"j": "3"}, {"n": "0.1", "N": None}, {"n": "-1", "N": "ETH"}, {"l": "0"},
     {"L": "0." + "1" * 1_000_000}, {"n": "0.1", "N": "ETH" * 11}],
)  # fmt: skip
def test_a_malformed_trade_is_skipped_with_its_reason_not_raised(
    changes: dict[str, object],
) -> None:
    event = _event(EXECUTION_REPORT, x="TRADE", l="1", L="0.1", Y="0.1", t=5)
    assert isinstance(event, dict)
    event.update(changes)
    parsed = parse_user_event(event, SYMBOLS)
    assert isinstance(parsed, Skipped) and parsed.event == "executionReport" and parsed.reason


def test_events_we_do_not_book_change_nothing() -> None:
    assert parse_user_event({"e": "externalLockUpdate", "E": 1}, SYMBOLS) is None
    assert isinstance(parse_user_event([1, 2], SYMBOLS), Skipped)
