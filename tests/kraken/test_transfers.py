"""Issue 10 finding 11: transfers from Kraken's ``balances`` channel, exactly once.

Real processes: the strict simulator streams every ledger entry (deposits,
withdrawals and the two lines of each trade) and serves ``Ledgers``; the
gateway books the non-trade ones in slots 0 and 1 at once, once per ledger id,
across reconnects and restarts, and an ``adjust`` naming the transfer's
reference moves it to the strategy's slot instead of counting it twice.
"""

from __future__ import annotations

import signal
import time
from decimal import Decimal

from clients import (
    KRAKEN_STRATEGY_BALANCE_CMD,
    CommandRefusedError,
    IPCCommandSystem,
    kraken_strategy_balance,
)
from tests.kraken.stack import KrakenStack, assert_matches_simulator, settled, wait_until

QUICK = ("--reconcile-interval", "1", "--recheck-interval", "0.5")
USD = Decimal(100000)


def _adjust(stack: KrakenStack, index: int, delta: str, **extra: str) -> dict[str, object]:
    system = IPCCommandSystem("treasury", run_dir=stack.run_dir)
    system.start()
    try:
        payload = kraken_strategy_balance(
            strategy="treasury", cmd="adjust", currency="USD", index=index, delta=delta, **extra
        )
        return system.send_command_blocking("kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, payload)
    finally:
        system.close()


def _usd(stack: KrakenStack) -> tuple[Decimal, ...]:
    with stack.reader() as reader:
        return reader.record("USD").exact_all()


def test_a_deposit_is_in_shared_memory_within_two_seconds_and_never_corrected(
    stack: KrakenStack,
) -> None:
    stack.start_gateway(*QUICK)
    wait_until(lambda: stack.control("state")["balance_subscribers"] == 1, 10, "balances")
    with stack.reader() as reader:
        sent = time.monotonic()
        stack.control("deposit", {"asset": "USD", "amount": "1234.5"})
        while reader.record("USD").exact_all()[0] == USD:
            assert time.monotonic() - sent < 2.0, "the deposit did not arrive within 2 s"
            time.sleep(0.001)
        seen_after = time.monotonic() - sent
        usd = reader.record("USD").exact_all()
    assert usd[:2] == (USD + Decimal("1234.5"), USD + Decimal("1234.5"))
    # A withdrawal with its fee: the balance moves by amount and fee together.
    stack.control("withdraw", {"asset": "USD", "amount": "100", "fee": "2.5"})
    wait_until(lambda: _usd(stack)[0] == USD + Decimal("1132"), 2, "the withdrawal")
    time.sleep(2.5)  # two reconcile passes: nothing left to correct
    status = stack.status()
    assert status["corrections"] == 0 and status["transfers_applied"] == 2
    assert seen_after < 2.0


def test_trades_on_the_balances_channel_are_not_booked_twice(stack: KrakenStack) -> None:
    stack.start_gateway(*QUICK)
    stack.control("trade-generator", {"rate": 400, "count": 300, "userrefs": [2, 3]})
    wait_until(lambda: stack.control("state")["orders"] == 300, 30, "the trades")
    wait_until(lambda: settled(stack), 30, "the gateway to agree with the exchange")
    assert_matches_simulator(stack)
    status = stack.status()
    assert status["corrections"] == 0 and status["transfers_applied"] == 0


def test_transfers_while_down_or_disconnected_are_caught_up_once(stack: KrakenStack) -> None:
    stack.start_gateway(*QUICK)
    stack.control("deposit", {"asset": "USD", "amount": "10"})
    wait_until(lambda: _usd(stack)[0] == USD + 10, 2, "the first deposit")
    # Stopped: two deposits and a withdrawal happen; a restart books each once.
    assert stack.stop_gateway(signal.SIGTERM) == 0
    for body in ({"amount": "20"}, {"amount": "30"}):
        stack.control("deposit", {"asset": "USD", **body})
    stack.control("withdraw", {"asset": "USD", "amount": "5"})
    stack.start_gateway(*QUICK)
    assert _usd(stack)[:2] == (USD + 55, USD + 55)  # the bootstrap's totals hold the gap
    # Ledgers brings the gap's entries too (remembered for adjusts, not booked again);
    # the one seen before is skipped by ledger id.
    wait_until(lambda: stack.status()["transfers_caught_up"] == 4, 10, "the Ledgers catch-up")
    assert _usd(stack)[:2] == (USD + 55, USD + 55)
    # Disconnected: entries Kraken sent while nobody listened come from Ledgers.
    stack.control("drop-websockets")
    stack.control("deposit", {"asset": "USD", "amount": "100", "silent": True})
    wait_until(lambda: _usd(stack)[0] == USD + 155, 10, "the caught-up deposit")
    time.sleep(2.5)
    status = stack.status()
    assert status["corrections"] == 0
    assert _usd(stack)[:2] == (USD + 155, USD + 155)


def test_adjust_with_the_transfers_ref_moves_it_instead_of_counting_it_twice(
    stack: KrakenStack,
) -> None:
    stack.start_gateway(*QUICK)
    # The deposit first, then the strategy's notice of it: slot 1 -> slot 2, total unchanged.
    ref = str(stack.control("deposit", {"asset": "USD", "amount": "500"})["ref_id"])
    wait_until(lambda: _usd(stack)[0] == USD + 500, 2, "the deposit")
    assert _adjust(stack, 2, "500", ref_id=ref)["ok"] is True
    assert _usd(stack)[:3] == (USD + 500, USD, Decimal(500))
    # Twice is refused; a wrong amount is refused.
    try:
        _adjust(stack, 2, "500", ref_id=ref)
        raise AssertionError("a second adjust of one transfer was accepted")
    except CommandRefusedError as exc:
        assert exc.code == "TRANSFER_CLAIMED"
    ref2 = str(stack.control("deposit", {"asset": "USD", "amount": "70"})["ref_id"])
    wait_until(lambda: _usd(stack)[0] == USD + 570, 2, "the second deposit")
    try:
        _adjust(stack, 2, "69", ref_id=ref2)
        raise AssertionError("an adjust of the wrong amount was accepted")
    except CommandRefusedError as exc:
        assert exc.code == "INVALID_AMOUNT" and "70" in exc.message
    # The notice before the deposit reaches the gateway: booked at once, never twice.
    stack.control("drop-websockets")
    ref3 = "FAHEAD-00000-000001"
    assert _adjust(stack, 3, "40", ref_id=ref3)["ok"] is True
    assert _usd(stack)[:4] == (USD + 610, USD + 70, Decimal(500), Decimal(40))
    stack.control("deposit", {"asset": "USD", "amount": "40", "ref_id": ref3})
    wait_until(lambda: stack.status()["transfers_applied"] == 3, 10, "the third deposit")
    time.sleep(2.5)
    assert _usd(stack)[:4] == (USD + 610, USD + 70, Decimal(500), Decimal(40))
    assert stack.status()["corrections"] == 0
    # Across a restart too: the claims and the seen transfers are journalled.
    assert stack.stop_gateway(signal.SIGTERM) == 0
    stack.start_gateway(*QUICK)
    try:
        _adjust(stack, 2, "500", ref_id=ref)
        raise AssertionError("a claim was forgotten across a restart")
    except CommandRefusedError as exc:
        assert exc.code == "TRANSFER_CLAIMED"
    assert _usd(stack)[:4] == (USD + 610, USD + 70, Decimal(500), Decimal(40))
