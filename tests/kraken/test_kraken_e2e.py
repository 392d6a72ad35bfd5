"""End to end over real sockets: the simulator and `gateway run` as processes, this test reads."""

from __future__ import annotations

import signal
import time
from decimal import Decimal

import trio

from clients.command import KRAKEN_STRATEGY_BALANCE_CMD, IPCCommandSystem, kraken_strategy_balance
from gateway.exchanges.kraken.rest import KrakenRestClient
from tests.kraken.stack import (
    KrakenStack,
    assert_matches_simulator,
    gateway_slots,
    settled,
    wait_until,
)


async def test_order_with_userref_2_shows_in_slots_0_and_2_within_a_second(
    stack: KrakenStack,
) -> None:
    await trio.to_thread.run_sync(stack.start_gateway)
    async with KrakenRestClient(
        stack.address["rest_url"], api_key=stack.address["api_key"],
        api_secret=stack.address["api_secret"],
    ) as rest:  # fmt: skip
        with stack.reader() as reader:
            placed = time.monotonic()
            await rest.add_order(pair="XBTUSD", side="buy", volume="0.01", userref=2)
            with trio.fail_after(1.0):
                while reader.record("USD").scaled[2] == 0 or reader.record("BTC").scaled[2] == 0:
                    await trio.sleep(0.001)
            seen_after = time.monotonic() - placed
            btc, usd = reader.record("BTC").exact_all(), reader.record("USD").exact_all()
    assert btc[:3] == (Decimal("10.01"), Decimal(10), Decimal("0.01"))
    # 0.01 at 60000.1 is 600.001; Kraken books it at ZUSD's 4 decimals, and the 0.26 %
    # taker fee (1.5600026) rounded down to them.
    cost, fee = Decimal("600.001"), Decimal("1.56")
    assert usd[:3] == (Decimal(100000) - cost - fee, Decimal(100000), -cost - fee)
    assert seen_after < 1.0


def test_a_movement_the_stream_never_showed_is_corrected_after_two_passes(
    stack: KrakenStack,
) -> None:
    """The reconciler stays the safety net: a movement neither streamed (``silent``) nor of
    a kind the Ledgers catch-up asks for (an ``adjustment``) is found by it alone."""
    stack.start_gateway("--reconcile-interval", "1", "--recheck-interval", "0.5")
    system = IPCCommandSystem("a", run_dir=stack.run_dir)
    system.start()
    payload = kraken_strategy_balance(
        strategy="a", cmd="allocate", currency="usd", index=2, amount=250
    )
    system.send_command_blocking("kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, payload)
    system.close()
    stack.control(
        "deposit", {"asset": "USD", "amount": "1234.5", "silent": True, "kind": "adjustment"}
    )
    wait_until(lambda: gateway_slots(stack)["USD"][0] != 100000, 10, "the correction")
    usd = gateway_slots(stack)["USD"]
    assert usd[:3] == (Decimal("101234.5"), Decimal("100984.5"), Decimal(250))
    status = stack.status()
    assert status["reconcile_corrections"] == 1
    assert status["corrections"] == 1
    # It took two fill-free checks: one suspect pass, then the correcting one.
    assert int(str(status["reconcile_passes"])) >= 2
    assert "USD differs by 1234.5 on two fill-free checks" in stack.log("gateway")


def test_websocket_drops_during_trading_lose_and_double_nothing(stack: KrakenStack) -> None:
    stack.start_gateway("--reconcile-interval", "3600")
    stack.control("trade-generator", {"rate": 300, "count": 900, "userrefs": [2, 3, 4]})
    dropped = 0
    for _ in range(5):
        time.sleep(0.3)
        wait_until(lambda: stack.control("state")["subscribers"] == 1, 10, "a live stream")
        dropped += int(str(stack.control("drop-websockets")["dropped"]))
    wait_until(lambda: stack.control("state")["orders"] == 900, 30, "the trades")
    trades = stack.control("state")["trades"]  # orders fill in one trade or several
    wait_until(lambda: stack.status()["fills_applied"] == trades, 30, "every fill")
    time.sleep(0.2)
    assert_matches_simulator(stack)
    status = stack.status()
    assert status["fills_applied"] == trades
    assert dropped == 5
    assert int(str(status["ws_reconnects"])) >= dropped
    assert int(str(status["fills_duplicate"])) > 0  # the snapshots replayed trades; skipped


def test_rest_failures_during_reconcile_change_nothing_and_recover(stack: KrakenStack) -> None:
    stack.start_gateway("--reconcile-interval", "0.5", "--recheck-interval", "0.5")
    wait_until(lambda: stack.status()["reconcile_state"] == "verified", 10, "a first pass")
    before = gateway_slots(stack)
    stack.control("fail-rest", {"count": 7, "status": 503})
    wait_until(lambda: stack.status()["reconcile_rest_errors"] != 0, 30, "a failed pass")
    assert gateway_slots(stack) == before
    stack.control("fail-rest", {"count": 3, "error": "EAPI:Rate limit exceeded"})
    wait_until(lambda: stack.status()["reconcile_state"] == "verified", 60, "recovery")
    status = stack.status()
    assert status["corrections"] == 0
    assert gateway_slots(stack) == before
    assert "retry" in stack.log("gateway")


def test_gateway_restart_while_trades_continue_catches_up_exactly(stack: KrakenStack) -> None:
    quick = ("--reconcile-interval", "1", "--recheck-interval", "0.5")
    stack.start_gateway(*quick)
    stack.control("trade-generator", {"rate": 60, "count": 480, "userrefs": [2, 3, 4]})
    time.sleep(1.5)
    assert stack.stop_gateway(signal.SIGKILL) == -signal.SIGKILL
    time.sleep(2.5)  # ~150 orders while down: more trades than the 50 a snapshot holds
    stack.start_gateway(*quick)
    wait_until(lambda: stack.control("state")["orders"] == 480, 60, "the trades")
    # A fill that the bootstrap's REST answer already held, but that arrived after
    # it, shows as a drift of slots 0 and 1 until two reconcile passes mend it.
    wait_until(lambda: settled(stack), 30, "the gateway to agree with the exchange")
    assert_matches_simulator(stack)
    assert int(str(stack.status()["fills_caught_up"])) > 0  # TradesHistory closed the gap
