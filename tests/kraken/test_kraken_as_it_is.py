"""Kraken's real behaviour, each finding of issue 10 held by a test with real processes.

The simulator runs strict (the Pro tier's API counter, latency with jitter,
partial fills at odd prices with Kraken's rounding); see ``tests/kraken/stack.py``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Context, Decimal, Inexact, localcontext
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

from clients import KRAKEN_STRATEGY_BALANCE_CMD, IPCCommandSystem, kraken_strategy_balance
from gateway.exchanges.kraken.rest import KrakenRestClient
from mmapstore import Condition, StoreReader
from tests.kraken.stack import (
    KrakenStack,
    assert_matches_simulator,
    gateway_slots,
    settled,
    sim_balances,
    wait_until,
)

QUICK = ("--reconcile-interval", "1", "--recheck-interval", "0.5")


def _kraken_now() -> str:
    """An execution's timestamp as Kraken writes it, for a fill made now. A fill dated
    before the ledger began is history its opening balances hold, and is not booked: a
    date written into the test made it fail once the clock passed it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_restart_after_a_gap_with_no_fill_seen_catches_up_every_trade(stack: KrakenStack) -> None:
    # The ledger opens, sees no fill, stops; ~175 trades happen; it must catch up all of
    # them from its epoch (not only the websocket snapshot's last 50), page after page.
    stack.start_gateway(*QUICK)
    assert stack.status()["fills_applied"] == 0
    assert stack.stop_gateway(signal.SIGTERM) == 0
    stack.control("trade-generator", {"rate": 500, "count": 100, "userrefs": [2, 3, 4]})
    wait_until(lambda: stack.control("state")["orders"] == 100, 30, "the trades")
    trades = stack.control("state")["trades"]
    assert isinstance(trades, int) and trades > 100  # partial fills: more trades than orders
    stack.start_gateway(*QUICK)
    assert stack.status()["fills_caught_up"] == trades
    wait_until(lambda: settled(stack), 30, "the gateway to agree with the exchange")
    assert_matches_simulator(stack)
    status = stack.status()
    # Booked as Kraken books them (cost at the asset's decimals): nothing to correct.
    assert status["corrections"] == 0
    # Paced by the counter model, which a restart takes up where the last process left
    # it (state_dir/kraken.counter): Kraken never has to refuse a call.
    assert stack.control("state")["rest_refused"] == 0


def test_a_start_spends_one_token_and_each_reconnect_a_fresh_one(stack: KrakenStack) -> None:
    # The permission probe's token serves the first connection: a start spends 8 of
    # Kraken's API counter, not 9 (a restart right after it at Starter waits 3 s less).
    stack.start_gateway(*QUICK)
    assert stack.control("state")["tokens_issued"] == 1
    assert int(str(stack.control("drop-websockets")["dropped"])) == 1
    wait_until(
        lambda: stack.status()["ws_reconnects"] == 1 and stack.status()["websocket"] == "live",
        30, "the reconnect",
    )  # fmt: skip
    assert stack.control("state")["tokens_issued"] == 2  # Kraken: a new token every connection


def test_odd_prices_and_partial_fills_need_no_correction(stack: KrakenStack) -> None:
    stack.start_gateway(*QUICK)
    stack.control("trade-generator", {"rate": 400, "count": 1500, "userrefs": [2, 3, 4]})
    wait_until(lambda: stack.control("state")["orders"] == 1500, 30, "the trades")
    wait_until(lambda: settled(stack), 30, "the gateway to agree with the exchange")
    assert_matches_simulator(stack)
    assert stack.status()["corrections"] == 0


def test_a_key_without_a_needed_permission_is_refused_in_one_line(stack: KrakenStack) -> None:
    stack.sim_args = ["--permissions", "funds,websocket"]
    stack.start_sim_again()
    env = {
        **stack.env,
        "KRAKEN_API_KEY": stack.address["api_key"],
        "KRAKEN_API_SECRET": stack.address["api_secret"],
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--log-level", "warning", "run",
         "--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"],
         "--kraken-tier", "pro"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gateway run: ") and "Traceback" not in done.stderr
    assert "Query closed orders & trades" in last and "Query open orders & trades" in last
    # Issue 11 finding 16: the failed first start saved nothing that binds the next one.
    state = Path(stack.env["HFT_STATE_DIR"]) / "kraken"
    assert not list(state.glob("journal-*")) and not list(state.glob("snapshot-*"))
    stack.sim_args = []
    stack.start_sim_again()
    stack.start_gateway("--strategy-count", "5")
    with StoreReader(Path(stack.env["HFT_SHM_DIR"]) / "hft.kraken.balance") as reader:
        assert reader.strategy_count == 5


def test_a_malformed_execution_in_every_snapshot_is_skipped_not_a_reconnect_loop(
    stack: KrakenStack,
) -> None:
    stack.start_gateway(*QUICK)
    bad = {"exec_type": "trade", "exec_id": "TBAD00-00000-000000", "symbol": "BTC/USD",
           "side": "sideways", "last_qty": 1, "last_price": 1, "cost": 1}  # fmt: skip
    stack.control("inject-execution", {"item": bad})
    for _ in range(3):  # each new snapshot repeats it
        wait_until(lambda: stack.control("state")["subscribers"] == 1, 10, "a live stream")
        stack.control("drop-websockets")
        wait_until(lambda: stack.status()["websocket"] == "live", 10, "the stream back")
    stack.control("trade-generator", {"rate": 200, "count": 100, "userrefs": [2]})
    wait_until(lambda: stack.control("state")["orders"] == 100, 30, "the trades")
    wait_until(lambda: settled(stack), 30, "the gateway to agree with the exchange")
    assert_matches_simulator(stack)
    status = stack.status()
    skipped = status["executions_skipped"]
    assert isinstance(skipped, dict) and skipped["malformed"] >= 4  # the update + 3 snapshots
    assert int(str(status["ws_reconnects"])) == 3
    assert "TBAD00-00000-000000 not booked (malformed)" in stack.log("gateway")


def test_a_fill_in_currencies_the_store_cannot_name_is_booked_without_stopping_the_gateway(
    stack: KrakenStack,
) -> None:
    """Found in review: a currency no store record can carry (not ASCII, or longer than 20)
    stopped the writer at its first publish, and every restart after (the journal
    replays the fill): the gateway bricked on one message from the exchange."""
    stack.start_gateway(*QUICK)
    long_fee_asset = "F" * 25
    odd = {"exec_type": "trade", "exec_id": "TODD00-00000-000000", "symbol": "ÉTH/USD",
           "side": "buy", "last_qty": "2", "last_price": "100", "cost": "200",
           "order_userref": 2, "timestamp": _kraken_now(),
           "fees": [{"asset": long_fee_asset, "qty": "0.5"}]}  # fmt: skip
    before = int(str(stack.status()["fills_applied"]))
    stack.control("inject-execution", {"item": odd})
    wait_until(lambda: stack.status()["fills_applied"] == before + 1, 10, "the fill booked")
    status = stack.status()
    assert status["out_of_range"] == [long_fee_asset, "ÉTH"]
    with stack.reader() as reader:  # its USD leg is published to the order's slot
        assert reader.slot("USD", 2).exact == Decimal(-200)
        assert "ÉTH" not in reader.currencies()
    log = stack.log("gateway")
    assert "'ÉTH': the store has no record for it" in log and "Traceback" not in log
    # The journal holds the fill: the restart replays it and starts, flagged the same.
    assert stack.stop_gateway(signal.SIGTERM) == 0
    stack.start_gateway(*QUICK)
    assert stack.status()["out_of_range"] == [long_fee_asset, "ÉTH"]
    with stack.reader() as reader:
        assert reader.slot("USD", 2).exact == Decimal(-200)
        assert reader.writer_status().conditions & Condition.OUT_OF_RANGE


def test_an_execution_of_a_million_digits_is_set_aside_and_the_next_start_reads_the_journal(
    stack: KrakenStack,
) -> None:
    """Found in review: a price of 1.2 million digits (within the exponent bound) was booked
    and journalled as a record over 1 MiB, which a restart reads as damage: after a crash,
    with any record after it, the gateway never started again."""
    stack.start_gateway(*QUICK)
    long = {"exec_type": "trade", "exec_id": "TLONG0-00000-000000", "symbol": "BTC/USD",
            "side": "buy", "last_qty": "1", "last_price": "1." + "0" * 1_200_000, "cost": "1",
            "order_userref": 2, "timestamp": _kraken_now()}  # fmt: skip
    stack.control("inject-execution", {"item": long})

    def handled() -> bool:
        status = stack.status()
        skipped = status["executions_skipped"]
        return status["fills_applied"] != 0 or (isinstance(skipped, dict) and bool(skipped))

    wait_until(handled, 10, "the execution handled")
    _allocate(stack, 1)  # a record after it in the journal
    stack.stop_gateway(signal.SIGKILL)  # a crash: no snapshot at the stop covers it
    stack.start_gateway(*QUICK)  # fails if the journal reads as damaged
    status = stack.status()
    assert status["fills_applied"] == 0 and status["journal"] == "ok"
    assert "TLONG0-00000-000000 not booked (malformed)" in stack.log("gateway")


def test_amounts_past_28_digits_are_booked_exactly_and_stop_nothing(stack: KrakenStack) -> None:
    """Found in review: arithmetic on Kraken's numbers ran in Python's default context,
    which keeps 28 digits. A deposit less its fee came out rounded; a fill's quantity
    rounded to its asset's decimals past 28 digits raised InvalidOperation out of the
    stream and stopped the gateway, and every start after it (the snapshot repeats it).
    Both amounts fit the store (10 decimals, below 1.7e20 coins)."""
    stack.start_gateway(*QUICK)
    btc_before = sim_balances(stack)["BTC"]
    deposit, fee = Decimal("12345678901234567890.1234567891"), Decimal("0.0000000001")
    stack.control("deposit", {"asset": "BTC", "amount": str(deposit), "fee": str(fee)})
    with localcontext(Context(prec=100, traps=[Inexact])):
        btc_after = btc_before + deposit - fee
    assert sim_balances(stack)["BTC"] == btc_after  # the simulator books exactly too
    wait_until(lambda: gateway_slots(stack)["BTC"][0] != btc_before, 10, "the deposit")
    assert gateway_slots(stack)["BTC"][:2] == (btc_after, btc_after)

    wide = {"exec_type": "trade", "exec_id": "TWIDE0-00000-000000", "symbol": "BTC/USD",
            "side": "buy", "last_qty": "1234567890123456789.12345678905", "last_price": "1",
            "cost": "1", "order_userref": 2, "timestamp": _kraken_now()}  # fmt: skip
    stack.control("inject-execution", {"item": wide})
    booked = Decimal("1234567890123456789.1234567890")  # half-even at BTC's 10 decimals
    wait_until(lambda: stack.status()["fills_applied"] == 1, 10, "the fill booked")
    assert gateway_slots(stack)["BTC"][2] == booked
    stack.stop_gateway(signal.SIGKILL)
    stack.start_gateway(*QUICK)  # the snapshot holds the fill again: known, not booked twice
    assert gateway_slots(stack)["BTC"][2] == booked
    status = stack.status()
    assert status["journal"] == "ok" and status["executions_skipped"] == {}
    assert "Traceback" not in stack.log("gateway")


def test_a_fill_dated_ahead_does_not_move_the_catch_up_past_the_trades_made_meanwhile(
    stack: KrakenStack,
) -> None:
    """A fill dated 2150 (inside the parse window) became the ledger's position: after a
    restart the catch-up started past every trade made while down, and the snapshot's
    last 50 were all the gateway saw of them. Now it is booked as of now."""
    stack.start_gateway(*QUICK)
    ahead = {"exec_type": "trade", "exec_id": "TAHEAD-00000-000000", "symbol": "BTC/USD",
             "side": "buy", "last_qty": "0.0001", "last_price": "1", "cost": "0.0001",
             "order_userref": 5, "timestamp": "2150-01-01T00:00:00.000000Z"}  # fmt: skip
    stack.control("inject-execution", {"item": ahead})  # in every snapshot from now on
    wait_until(lambda: stack.status()["fills_applied"] == 1, 10, "the fill dated 2150")
    assert stack.status()["dated_ahead"] == 1
    assert stack.stop_gateway(signal.SIGTERM) == 0
    stack.control("trade-generator", {"rate": 500, "count": 100, "userrefs": [2, 3, 4]})
    wait_until(lambda: stack.control("state")["orders"] == 100, 30, "the trades while down")
    stack.start_gateway(*QUICK)
    # The simulator never booked the injected fill: the reconciler mends slots 0 and 1.
    wait_until(lambda: settled(stack), 60, "the gateway to agree with the exchange")
    assert_matches_simulator(stack)  # every trade made while down, in its strategy's slot
    assert int(str(stack.status()["fills_caught_up"])) > 50
    assert "fill TAHEAD-00000-000000 is dated 2150-01-01 00:00:00+00:00" in stack.log("gateway")


def test_a_pair_listed_after_start_is_learnt_by_the_catch_up(stack: KrakenStack) -> None:
    stack.start_gateway(*QUICK)
    stack.control(
        "list-pair",
        {"key": "XETHXXBT", "altname": "ETHXBT", "base": "XETH", "quote": "XXBT",
         "price": "0.05001"},
    )  # fmt: skip
    # Keep the stream down a while (its token fails) while the new pair trades: the
    # reconnect must catch up over REST, with a pair its maps do not know yet.
    stack.control("fail-rest", {"count": 6, "status": 502})
    stack.control("drop-websockets")
    stack.control(
        "trade-generator",
        {"rate": 500, "count": 120, "userrefs": [3], "pairs": ["XETHXXBT", "XXBTZUSD"]},
    )
    wait_until(lambda: stack.control("state")["orders"] == 120, 30, "the trades")
    wait_until(lambda: settled(stack), 60, "the gateway to agree with the exchange")
    assert_matches_simulator(stack)
    status = stack.status()
    assert status["executions_skipped"] == {} and int(str(status["fills_caught_up"])) > 0
    assert "asset and pair maps refreshed" in stack.log("gateway")


def _allocate(stack: KrakenStack, amount: int) -> None:
    system = IPCCommandSystem("test", run_dir=stack.run_dir)
    system.start()
    try:
        payload = kraken_strategy_balance(
            strategy="s", cmd="allocate", currency="USD", index=2, amount=amount
        )
        reply = system.send_command_blocking("kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, payload)
    finally:
        system.close()
    assert reply["ok"] is True


def _usd(stack: KrakenStack) -> tuple[object, ...]:
    with StoreReader(Path(stack.env["HFT_SHM_DIR"]) / "hft.kraken.balance") as reader:
        return reader.record("USD").exact_all()


def _run_refused(stack: KrakenStack, *extra: str) -> str:
    """Start a gateway that must refuse; its last stderr line."""
    env = {
        **stack.env,
        "KRAKEN_API_KEY": stack.address["api_key"],
        "KRAKEN_API_SECRET": stack.address["api_secret"],
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--log-level", "warning", "run",
         "--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"],
         "--kraken-tier", "pro", *extra],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_state_of_one_account_is_refused_for_another(stack: KrakenStack) -> None:
    """Issue 11 finding 15: a new key (here a new simulator) never takes the old slots."""
    stack.start_gateway(*QUICK)
    _allocate(stack, 100)
    assert stack.stop_gateway(signal.SIGTERM) == 0
    stack.sim_args = ["--balances", '{"USD": 50}']
    stack.start_sim_again()  # another account: another key, USD 50
    last = _run_refused(stack)
    assert last.startswith("gateway run: ") and "holds the slots of kraken@" in last
    assert "--rebind-account" in last and "--fresh-state" in last
    # An explicit fresh start sets the old state aside (kept) and starts with empty slots.
    stack.start_gateway(*QUICK, "--fresh-state")
    state_root = Path(stack.env["HFT_STATE_DIR"])
    assert [p.name.startswith("kraken.set-aside-") for p in state_root.iterdir()].count(True) == 1
    usd = _usd(stack)
    assert usd[0] == usd[1] == 50 and all(v == 0 for v in usd[2:])
    _allocate(stack, 10)
    assert stack.stop_gateway(signal.SIGTERM) == 0
    # The same account with a rotated key: --rebind-account keeps the slots.
    stack.sim_args = ["--balances", '{"USD": 50}']
    stack.start_sim_again()
    assert "holds the slots of" in _run_refused(stack)
    stack.start_gateway(*QUICK, "--rebind-account")
    assert _usd(stack)[2] == 10
    assert stack.stop_gateway(signal.SIGTERM) == 0
    stack.start_gateway(*QUICK)  # bound to the new key now: a plain start works
    assert _usd(stack)[2] == 10


async def _executions_seen(stack: KrakenStack, params: dict[str, object], orders: int) -> list[str]:
    """Every exec_type a subscriber with ``params`` gets while ``orders`` orders trade."""
    async with KrakenRestClient(
        stack.address["rest_url"],
        api_key=stack.address["api_key"],
        api_secret=stack.address["api_secret"],
    ) as rest:
        token = await rest.websockets_token()
    seen: list[str] = []
    async with open_websocket_url(stack.address["ws_url"]) as ws:
        subscribe = {"channel": "executions", "token": token, **params}
        await ws.send_message(json.dumps({"method": "subscribe", "params": subscribe}))
        while '"snapshot"' not in await ws.get_message():
            pass
        body = {"rate": 200, "count": orders, "userrefs": [2], "seed": 3}
        await trio.to_thread.run_sync(stack.control, "trade-generator", body)
        with trio.move_on_after(5):
            while seen.count("new") < orders:
                message = json.loads(await ws.get_message())
                seen += [item["exec_type"] for item in message.get("data", [])]
    return seen


async def test_simulator_streams_an_orders_whole_life_as_kraken_does(stack: KrakenStack) -> None:
    # Kraken's default (order_status true) streams every transition; the gateway asks
    # for open / close transitions only. Fills are the "trade" events alone either way
    # (test_odd_prices_and_partial_fills_need_no_correction runs the gateway through
    # canceled and expired orders that traded in part).
    everything = await _executions_seen(stack, {}, 60)
    assert {"pending_new", "new", "amended", "trade", "filled", "canceled", "expired"} <= set(
        everything
    )
    assert everything.count("pending_new") == everything.count("new") == 60
    transitions = await _executions_seen(stack, {"order_status": False}, 60)
    assert {"new", "trade", "filled", "canceled", "expired"} <= set(transitions)
    assert not {"pending_new", "amended"} & set(transitions)
