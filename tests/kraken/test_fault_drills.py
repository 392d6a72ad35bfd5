"""Fault drills with real processes: crashes, a second gateway, flapping networks, a full disk.

Each drill runs the simulator and `gateway run` as processes and checks the
end state exactly against the simulator (slot 0 per currency, each strategy
slot against its userref's trades) and against every acknowledged command.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from clients.command import KRAKEN_STRATEGY_BALANCE_CMD, IPCCommandSystem, kraken_strategy_balance
from clients.errors import CommandError, CommandRefusedError
from mmapstore import Condition, WriterHealth
from tests.kraken.stack import (
    KrakenStack,
    assert_matches_simulator,
    gateway_slots,
    settled,
    wait_until,
)

QUICK = ("--reconcile-interval", "1", "--recheck-interval", "0.5")
LOAD_SLOT = 6


class CommandLoad(threading.Thread):
    """Allocates 1 USD to slot 6 again and again, each with its own request_id.

    A request that meets a dead gateway is resent with the same id until it is
    answered, so in the end every id was applied exactly once or the test fails.
    """

    def __init__(self, stack: KrakenStack, pause_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.pause_s = pause_s
        self.acknowledged: list[str] = []
        self.unavailable = 0
        self.stopping = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        system = IPCCommandSystem("load", run_dir=self.stack.run_dir, timeout_s=2)
        system.start()
        number = 0
        try:
            while not self.stopping.is_set():
                request_id = f"load-{number}"
                payload = kraken_strategy_balance(
                    strategy="load", cmd="allocate", currency="USD", index=LOAD_SLOT, amount=1,
                    request_id=request_id,
                )  # fmt: skip
                while True:
                    try:
                        system.send_command_blocking(
                            "kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, payload
                        )
                        break
                    except CommandRefusedError as exc:
                        if exc.code != "UNAVAILABLE":
                            raise
                        self.unavailable += 1
                    except CommandError:
                        pass  # the gateway is down or restarting: same id again
                    if self.stopping.is_set():
                        return
                    time.sleep(0.05)
                self.acknowledged.append(request_id)
                number += 1
                time.sleep(self.pause_s)
        except BaseException as exc:
            self.failure = exc
        finally:
            system.close()

    def stop(self) -> list[str]:
        self.stopping.set()
        self.join(timeout=30)
        if self.failure is not None:
            raise AssertionError("the command load failed") from self.failure
        return self.acknowledged


def assert_commands_applied_once(stack: KrakenStack, acknowledged: list[str]) -> None:
    assert gateway_slots(stack)["USD"][LOAD_SLOT] == len(acknowledged)


def test_kill_9_during_trading_and_commands_then_restart(stack: KrakenStack) -> None:
    stack.start_gateway(*QUICK)
    reader = stack.reader()  # mapped before the crash, never re-opened
    load = CommandLoad(stack)
    load.start()
    # Some 200 trades missed while down: past the 50-trade snapshot, and few enough that
    # the catch-up fits in the Pro counter (test_kraken_as_it_is has the paced one).
    stack.control("trade-generator", {"rate": 50, "count": 350, "userrefs": [2, 3, 4]})
    time.sleep(2)
    assert stack.stop_gateway(signal.SIGKILL) == -signal.SIGKILL
    time.sleep(1)
    assert reader.writer_status().health is WriterHealth.DEAD
    stack.start_gateway(*QUICK)
    wait_until(lambda: stack.control("state")["orders"] == 350, 60, "the trades")
    acknowledged = load.stop()
    wait_until(lambda: settled(stack), 30, "the gateway to agree with the exchange")
    assert_matches_simulator(stack)
    assert_commands_applied_once(stack, acknowledged)
    status = reader.writer_status()
    assert status.health is WriterHealth.LIVE and status.generation == 2
    assert reader.record("USD").scaled[LOAD_SLOT] > 0
    reader.close()


def test_half_a_minute_of_flapping_websocket_failing_rest_and_a_deposit_in_an_outage(
    stack: KrakenStack,
) -> None:
    stack.start_gateway(*QUICK)
    load = CommandLoad(stack, pause_s=0.05)
    load.start()
    # A rate whose 3 s between drops the 50-trade snapshot mostly covers: at Kraken's Pro
    # counter, a REST catch-up after every drop of a busier account falls behind.
    # Half a minute, and on to the third drop (the 502s follow it): the counter falls
    # behind within the first drops, and the last catch-ups close the gap after.
    stack.control("trade-generator", {"rate": 10, "count": 300, "userrefs": [2, 3, 4]})
    started = time.monotonic()
    drops = 0
    deposited = False
    while time.monotonic() - started < 30 or drops < 3:
        # A reconnect that must catch up holds its connection through the (paced)
        # catch-up, so fewer connections are there to drop than drops were tried.
        assert time.monotonic() - started < 120, f"{drops} connections to drop in 2 minutes"
        time.sleep(3)
        drops += int(str(stack.control("drop-websockets", {})["dropped"]))
        if not deposited and time.monotonic() - started > 10:
            stack.control("deposit", {"asset": "USDT", "amount": "777.25"})  # during the outage
            deposited = True
        if drops % 4 == 1:
            stack.control("fail-rest", {"count": 4, "error": "EAPI:Rate limit exceeded"})
        elif drops % 4 == 3:
            stack.control("fail-rest", {"count": 3, "status": 502})
    stack.control("fail-rest", {"count": 0})
    wait_until(lambda: stack.control("state")["orders"] == 300, 60, "the trades")
    acknowledged = load.stop()
    wait_until(lambda: settled(stack), 90, "the gateway to agree with the exchange")
    assert_matches_simulator(stack)
    assert_commands_applied_once(stack, acknowledged)
    status = stack.status()
    assert int(str(status["ws_reconnects"])) >= drops
    # The deposit arrives as a transfer (streamed, or from a reconnect's Ledgers
    # catch-up), once; an outage is never mistaken for drift: nothing to correct.
    assert status["corrections"] == 0
    assert status["transfers_applied"] == 1
    assert "deposit 777.25" in stack.log("gateway")


def test_sigterm_during_load_exits_within_the_grace_period_and_loses_nothing(
    stack: KrakenStack,
) -> None:
    stack.start_gateway(*QUICK)
    load = CommandLoad(stack)
    load.start()
    stack.control("trade-generator", {"rate": 50, "count": 250, "userrefs": [2, 3, 4]})
    time.sleep(2)
    asked = time.monotonic()
    assert stack.stop_gateway(signal.SIGTERM) == 0
    assert time.monotonic() - asked < 5.0 + 1.0  # the grace period, and a margin to exit
    with stack.reader() as reader:
        assert reader.writer_status().health is WriterHealth.STOPPED
    assert not (stack.run_dir / "kraken_gateway.sock").exists()
    stack.start_gateway(*QUICK)
    wait_until(lambda: stack.control("state")["orders"] == 250, 60, "the trades")
    acknowledged = load.stop()
    wait_until(lambda: settled(stack), 30, "the gateway to agree with the exchange")
    assert_matches_simulator(stack)
    assert_commands_applied_once(stack, acknowledged)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True, check=False,
    )  # fmt: skip
    return mounted.returncode == 0


def test_state_directory_full_mid_run_then_space_returns(stack: KrakenStack) -> None:
    state = stack.root / "state"
    # A full disk is a 1 MiB tmpfs; mounting one needs root, which this project's machines are.
    assert os.geteuid() == 0, "the full-disk drill mounts a tmpfs and must run as root"
    assert shutil.which("mount") is not None, "mount(8) is missing"
    assert _mount_tmpfs(state, "1m"), "root could not mount a tmpfs"
    try:
        stack.start_gateway(*QUICK)
        load = CommandLoad(stack, pause_s=0.01)
        load.start()
        stack.control("trade-generator", {"rate": 50, "count": 600, "userrefs": [2, 3, 4]})
        time.sleep(1.5)
        filler = state / "filler"
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False
        )
        wait_until(lambda: "JOURNAL_DOWN" in stack.status()["conditions"], 15, "the disk to fill")  # type: ignore[operator]
        with stack.reader() as reader:
            assert Condition.JOURNAL_DOWN in reader.writer_status().conditions
            fills_before = int(str(stack.status()["fills_applied"]))
            time.sleep(2)  # fills keep arriving and are published; commands are refused
            assert int(str(stack.status()["fills_applied"])) > fills_before
            assert load.unavailable > 0
            filler.unlink()
            wait_until(lambda: Condition.JOURNAL_DOWN not in reader.writer_status().conditions,
                       15, "recovery")  # fmt: skip
        wait_until(lambda: stack.control("state")["orders"] == 600, 60, "the trades")
        acknowledged = load.stop()
        wait_until(lambda: settled(stack), 30, "the gateway to agree with the exchange")
        assert_matches_simulator(stack)
        assert_commands_applied_once(stack, acknowledged)
        # And after a restart from what the journal kept, still exact.
        assert stack.stop_gateway(signal.SIGTERM) == 0
        stack.start_gateway(*QUICK)
        wait_until(lambda: settled(stack), 30, "the restarted gateway to agree")
        assert_matches_simulator(stack)
        assert_commands_applied_once(stack, acknowledged)
    finally:
        stack.stop()
        subprocess.run(["umount", "-l", str(state)], capture_output=True, check=False)


def test_a_refused_catch_up_is_tried_again_on_a_new_connection(stack: KrakenStack) -> None:
    """Kraken refuses the TradesHistory catch-up (an error not worth retrying in place)
    twice: each connection is dropped and made again, and the gap closes once it answers.
    The catch-up runs while the connection is read ahead; its failure must reach the
    session as itself (once it came out as an exception group and stopped the gateway)."""
    stack.start_gateway(*QUICK)
    stack.control("trade-generator", {"rate": 100, "count": 10, "userrefs": [2]})
    wait_until(lambda: stack.control("state")["orders"] == 10, 30, "the first trades")
    wait_until(lambda: settled(stack), 30, "the first trades applied")
    assert stack.stop_gateway() == 0
    # More than the 50-trade snapshot holds: the restart must ask TradesHistory for the rest.
    stack.control("trade-generator", {"rate": 400, "count": 60, "userrefs": [2, 3]})
    wait_until(lambda: stack.control("state")["orders"] == 70, 30, "the trades while down")
    stack.control("fail-rest", {
        "count": 2, "error": "EGeneral:Invalid arguments", "method": "TradesHistory",
        "skip": 1,  # the start's permission probe
    })  # fmt: skip
    gateway = stack.start_gateway(*QUICK)
    wait_until(lambda: settled(stack), 60, "the gateway to agree with the exchange")
    assert_matches_simulator(stack)
    assert gateway.poll() is None
    log = stack.log("gateway")
    refused = "stream failed: KrakenAPIError: TradesHistory: EGeneral:Invalid arguments"
    assert log.count(refused) == 2
    status = stack.status()
    assert int(str(status["fills_caught_up"])) > 0 and status["corrections"] == 0
