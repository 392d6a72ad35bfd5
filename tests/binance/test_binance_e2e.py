"""Binance end to end: the simulator and the gateway as processes, over real sockets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from decimal import Decimal

from clients.command import STRATEGY_BALANCE_CMD, IPCCommandSystem, strategy_balance
from clients.errors import CommandError
from gateway.launcher import LocalStack
from tests.binance.conftest import QUICK, STRATEGIES, settled, slots
from tests.kraken.stack import wait_until


def test_fills_reach_their_strategy_slots_and_a_deposit_shows_at_once(stack: LocalStack) -> None:
    stack.start_gateway(*QUICK)
    stack.control(
        "trade-generator", {"rate": 200, "count": 300, "strategy_ids": [*STRATEGIES, None, 9]}
    )
    wait_until(lambda: stack.control("state")["orders"] == 300, 30, "the orders")
    wait_until(lambda: settled(stack), 30, "the gateway to agree with Binance")
    before = slots(stack)["USDT"][0]
    deposited = time.monotonic()
    stack.control("deposit", {"asset": "USDT", "amount": "1234.5"})
    wait_until(lambda: slots(stack)["USDT"][0] == before + Decimal("1234.5"), 2, "the deposit")
    assert time.monotonic() - deposited < 2
    answer = stack.status()
    assert answer["corrections"] == 0 and answer["websocket"] == "live"
    assert answer["fills_applied"] == stack.control("state")["trades"]
    # Every outboundAccountPosition agreed with the ledger as it arrived.
    checked = answer["streamed_totals_checked"]
    assert isinstance(checked, int) and checked > 300
    assert answer["streamed_totals_differed"] == 0


def test_a_change_the_stream_never_told_shows_in_the_next_streamed_totals(
    stack: LocalStack,
) -> None:
    stack.start_gateway("--reconcile-interval", "3600")
    stack.control("trade-generator", {"rate": 100, "count": 20, "symbols": ["ETHUSDT"]})
    wait_until(lambda: stack.status()["fills_applied"] == stack.control("state")["trades"],
               30, "the first trades")  # fmt: skip
    assert stack.status()["streamed_totals_differed"] == 0
    stack.control("deposit", {"asset": "USDT", "amount": "5", "silent": True})
    stack.control("trade-generator", {"rate": 100, "count": 1, "symbols": ["ETHUSDT"]})
    wait_until(lambda: stack.status()["streamed_totals_differed"] == 1, 10,
               "the difference in the next outboundAccountPosition")  # fmt: skip
    # Said, not booked: the reconciler owns corrections.
    assert stack.status()["corrections"] == 0


def test_a_restart_after_a_gap_catches_up_every_trade_with_its_strategy(stack: LocalStack) -> None:
    stack.start_gateway(*QUICK)
    stack.control("trade-generator", {"rate": 200, "count": 50})
    wait_until(lambda: settled(stack), 30, "the first trades")
    before = stack.control("state")["trades"]
    assert isinstance(before, int)
    assert stack.stop_gateway(signal.SIGTERM) == 0
    stack.control("trade-generator", {"rate": 400, "count": 400, "seed": 11})
    wait_until(lambda: stack.control("state")["orders"] == 450, 30, "the gap's orders")
    stack.start_gateway(*QUICK)
    trades = stack.control("state")["trades"]
    assert isinstance(trades, int) and trades > 450  # orders filled in several trades
    wait_until(lambda: settled(stack), 30, "the restarted gateway to agree")
    answer = stack.status()
    # Every trade of the gap applied by this process, once (the overlap is deduplicated).
    assert answer["fills_applied"] == trades - before
    caught_up = answer["fills_caught_up"]
    assert isinstance(caught_up, int) and caught_up >= trades - before
    assert answer["corrections"] == 0


def test_fills_dated_ahead_are_booked_as_of_now_and_a_restart_loses_nothing(
    stack: LocalStack,
) -> None:
    # Binance's clock a day fast: its fills are booked as of now (the writer does it for
    # every exchange). Binance's catch-up pages by trade id from the first trade at or
    # after the ledger's position, so it found the gap even before; it still must.
    stack.start_gateway(*QUICK)
    stack.control("trade-generator", {"rate": 200, "count": 20, "dated_ahead_s": 86_400})
    wait_until(lambda: settled(stack), 30, "the trades dated a day ahead")
    before = stack.control("state")["trades"]
    assert isinstance(before, int) and stack.status()["dated_ahead"] == before
    assert stack.stop_gateway(signal.SIGTERM) == 0
    stack.control("trade-generator", {"rate": 400, "count": 200, "seed": 11})
    wait_until(lambda: stack.control("state")["orders"] == 220, 30, "the gap's orders")
    stack.start_gateway(*QUICK)
    wait_until(lambda: settled(stack), 30, "the restarted gateway to agree")
    trades = stack.control("state")["trades"]
    assert isinstance(trades, int)
    answer = stack.status()
    assert answer["fills_applied"] == trades - before and answer["corrections"] == 0


def test_dropped_connections_lose_and_double_nothing(stack: LocalStack) -> None:
    stack.start_gateway(*QUICK)
    stack.control("trade-generator", {"rate": 150, "count": 600})
    for _ in range(4):
        time.sleep(0.6)
        stack.control("drop-websockets")
    wait_until(lambda: stack.control("state")["orders"] == 600, 30, "the orders")
    wait_until(lambda: settled(stack), 40, "the gateway to agree after the drops")
    answer = stack.status()
    reconnects = answer["ws_reconnects"]
    assert isinstance(reconnects, int) and reconnects >= 1 and answer["corrections"] == 0


def test_an_ended_subscription_reconnects_and_catches_up(stack: LocalStack) -> None:
    stack.start_gateway(*QUICK)
    stack.control("trade-generator", {"rate": 150, "count": 300})
    time.sleep(0.5)
    assert stack.control("terminate-streams")["terminated"] == 1
    wait_until(lambda: stack.control("state")["orders"] == 300, 30, "the orders")
    wait_until(lambda: settled(stack), 30, "the gateway to agree after the stream ended")
    answer = stack.status()
    reconnects = answer["ws_reconnects"]
    assert isinstance(reconnects, int) and reconnects >= 1 and answer["corrections"] == 0


def test_rest_refusals_and_outages_change_nothing(stack: LocalStack) -> None:
    stack.start_gateway(*QUICK)
    stack.control("fail-rest", {"count": 3, "status": 429})
    stack.control("trade-generator", {"rate": 100, "count": 100})
    time.sleep(1)
    stack.control("fail-rest", {"count": 3, "status": 503})
    wait_until(lambda: stack.control("state")["orders"] == 100, 30, "the orders")
    wait_until(lambda: settled(stack), 30, "the gateway to agree after the faults")
    assert stack.status()["corrections"] == 0


def test_a_wrong_secret_is_refused_in_one_line_naming_the_variables(stack: LocalStack) -> None:
    env = {**stack.gateway_env(), "BINANCE_API_SECRET": "not-the-secret"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--exchange", "binance",
         "--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"]],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gateway run: ") and "BINANCE_API_KEY / BINANCE_API_SECRET" in last
    assert "-1022" in last and "Traceback" not in result.stderr


def test_simulator_ready_file_names_binances_urls(stack: LocalStack) -> None:
    ready = json.loads(stack.sim_ready.read_text())
    assert ready["rest_url"].startswith("http://127.0.0.1:")
    assert ready["ws_url"].endswith("/ws-api/v3")
    assert set(ready) == {"rest_url", "ws_url", "api_key", "api_secret"}


def test_kill_9_while_trading_and_commanding_loses_and_doubles_nothing(
    stack: LocalStack,
) -> None:
    stack.start_gateway(*QUICK)
    stack.control("trade-generator", {"rate": 200, "count": 400})
    system = IPCCommandSystem("crash", run_dir=stack.run_dir, timeout_s=2)
    system.start()
    acknowledged = 0
    try:
        for n in range(60):
            payload = strategy_balance(strategy="crash", cmd="allocate", currency="USDC",
                                       index=5, amount=1, request_id=f"crash-{n}")  # fmt: skip
            try:
                system.send_command_blocking(stack.service, STRATEGY_BALANCE_CMD, payload)
                acknowledged = n + 1
            except CommandError:
                break
            if n == 30:
                assert stack.gateway is not None
                stack.gateway.send_signal(signal.SIGKILL)
                stack.gateway.wait(timeout=10)
    finally:
        system.close()
    wait_until(lambda: stack.control("state")["orders"] == 400, 30, "the orders")
    stack.start_gateway(*QUICK)
    wait_until(lambda: settled(stack), 30, "the restarted gateway to agree")
    # Every acknowledged allocation is there exactly once (31 before the kill).
    assert acknowledged == 31
    assert slots(stack)["USDC"][5] == Decimal(acknowledged)
