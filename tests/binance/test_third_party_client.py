"""Binance's own Python connector (binance-connector) against the simulator: it reads
balances and places market and limit orders, and the gateway books those by strategyId."""

from __future__ import annotations

from decimal import Decimal

import pytest
from binance.error import ClientError
from binance.spot import Spot

from gateway.launcher import LocalStack
from tests.binance.conftest import QUICK, settled, slots
from tests.kraken.stack import wait_until


def _client(stack: LocalStack) -> Spot:
    address = stack.address
    return Spot(
        api_key=address["api_key"], api_secret=address["api_secret"], base_url=address["rest_url"]
    )


def test_binances_connector_reads_the_account_and_trades_and_the_gateway_books_it(
    stack: LocalStack,
) -> None:
    stack.start_gateway(*QUICK)
    client = _client(stack)
    balances = {b["asset"]: Decimal(b["free"]) for b in client.account()["balances"]}
    assert balances["USDT"] == 100_000 and balances["BNB"] == 10
    listed = {s["symbol"] for s in client.exchange_info()["symbols"]}
    assert {"BTCUSDT", "ETHUSDT", "BTCUSDC", "ETHUSDC", "ETHBTC", "BNBUSDT"} <= listed

    market = client.new_order(
        symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.01", strategyId=3
    )
    assert market["status"] == "FILLED" and market["strategyId"] == 3
    assert sum(Decimal(f["qty"]) for f in market["fills"]) == Decimal("0.01")

    # A limit that crosses fills at once, at the market's price or better; one that
    # does not rests (GTC) or expires (IOC); a FOK that cannot fill whole does nothing.
    crossing = client.new_order(
        symbol="ETHUSDT", side="SELL", type="LIMIT", timeInForce="GTC", quantity="0.5",
        price="2900", strategyId=4,
    )  # fmt: skip
    assert crossing["status"] == "FILLED"
    assert all(Decimal(f["price"]) >= 2900 for f in crossing["fills"])
    resting = client.new_order(
        symbol="ETHUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="1",
        price="100", strategyId=4, newOrderRespType="RESULT",
    )  # fmt: skip
    assert resting["status"] == "NEW" and "fills" not in resting
    expired = client.new_order(
        symbol="ETHUSDT", side="BUY", type="LIMIT", timeInForce="IOC", quantity="1",
        price="100", strategyId=2,
    )  # fmt: skip
    assert expired["status"] == "EXPIRED" and expired["fills"] == []
    ack = client.new_order(symbol="BTCUSDC", side="SELL", type="MARKET", quantity="0.02",
                           newOrderRespType="ACK")  # fmt: skip
    assert set(ack) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}

    with pytest.raises(ClientError) as refused:
        client.new_order(symbol="ETHUSDT", side="BUY", type="LIMIT", quantity="1", price="1")
    assert refused.value.error_code == -1102 and "timeInForce" in refused.value.error_message
    with pytest.raises(ClientError) as refused:
        client.new_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="1000")
    assert refused.value.error_code == -2010

    trades = client.my_trades("BTCUSDT")
    assert {t["orderId"] for t in trades} == {market["orderId"]}
    # The gateway saw every fill on its stream and booked each to its strategy's slot.
    wait_until(lambda: settled(stack), 30, "the gateway to book the connector's orders")
    held = slots(stack)
    assert held["BTC"][3] == Decimal("0.01") - sum(
        Decimal(f["commission"]) for f in market["fills"] if f["commissionAsset"] == "BTC"
    )
    assert held["ETH"][4] == Decimal("-0.5") and held["ETH"][2] == 0
    assert stack.status()["corrections"] == 0
