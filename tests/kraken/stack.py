"""Real processes for end-to-end tests: the simulator and the gateway, and how to compare them."""

from __future__ import annotations

import subprocess
import time
from decimal import Decimal
from pathlib import Path

from gateway.launcher import GATEWAY_START_TIMEOUT_S, SIM_START_TIMEOUT_S, LocalStack
from mmapstore import StoreNotFoundError, StoreReader

CURRENCIES = {"ZUSD": "USD", "USDT": "USDT", "USDC": "USDC", "XXBT": "BTC", "XETH": "ETH"}


class KrakenStack(LocalStack):
    """The simulator and the gateway, each its own process, strict as Kraken is.

    ``sim_args`` are added to every start of the simulator.
    """

    def __init__(self, root: Path, run_dir: Path) -> None:
        super().__init__(root, run_dir)
        self.sim_args: list[str] = []

    def start_sim(self, *args: str, timeout_s: float = SIM_START_TIMEOUT_S) -> dict[str, str]:
        # Strict as Kraken: the Pro tier's API counter, latency with jitter.
        strict = ("--tier", "pro", "--latency-ms", "4", "--jitter-ms", "4")
        return super().start_sim(*strict, *self.sim_args, *args, timeout_s=timeout_s)

    def start_sim_again(self) -> None:
        """A new simulator (with ``sim_args`` as they are now) in place of the running one."""
        assert self.sim is not None
        self.sim.kill()
        self.sim.wait(timeout=10)
        self.start_sim()

    def start_gateway(
        self, *args: str, timeout_s: float = GATEWAY_START_TIMEOUT_S
    ) -> subprocess.Popen[bytes]:
        return super().start_gateway("--kraken-tier", "pro", *args, timeout_s=timeout_s)

    def reader(self) -> StoreReader:
        return StoreReader(self.store)


def sim_balances(stack: KrakenStack) -> dict[str, Decimal]:
    state = stack.control("state")
    balances = state["balances"]
    assert isinstance(balances, dict)
    return {CURRENCIES[k]: Decimal(v["balance"]) for k, v in balances.items()}


def gateway_slots(stack: KrakenStack) -> dict[str, tuple[Decimal, ...]]:
    with stack.reader() as reader:
        return {c: reader.record(c).exact_all() for c in reader.currencies()}


def wait_until(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (StoreNotFoundError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def assert_matches_simulator(stack: KrakenStack) -> None:
    """Slot 0 is the exchange's balance and each strategy slot its trades, exactly."""
    expected = sim_balances(stack)
    by_userref = stack.control("state")["by_userref"]
    assert isinstance(by_userref, dict)
    slots = gateway_slots(stack)
    for currency, balance in expected.items():
        assert slots[currency][0] == balance, (currency, slots[currency], balance)
        for userref in ("2", "3", "4"):
            moved = Decimal(by_userref.get(userref, {}).get(currency, "0"))
            assert slots[currency][int(userref)] == moved, (currency, userref)
        assert slots[currency][0] == sum(slots[currency][1:])


def settled(stack: KrakenStack) -> bool:
    """The gateway agrees with the exchange and the reconciler has verified it."""
    status = stack.status()
    if status["reconcile_state"] != "verified" or status["websocket"] != "live":
        return False
    slots = gateway_slots(stack)
    return all(slots[c][0] == v for c, v in sim_balances(stack).items())
