"""Real processes for end-to-end tests: the simulator and the gateway, and how to compare them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx

from clients.command import KRAKEN_STRATEGY_BALANCE_CMD, IPCCommandSystem
from mmapstore import StoreNotFoundError, StoreReader, store_path

CURRENCIES = {"ZUSD": "USD", "USDT": "USDT", "USDC": "USDC", "XXBT": "BTC", "XETH": "ETH"}


class KrakenStack:
    """The simulator and the gateway, each its own process, in private directories."""

    def __init__(self, root: Path, run_dir: Path) -> None:
        self.root = root
        self.run_dir = run_dir
        self.ready = root / "sim.json"
        self.sim: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.address: dict[str, str] = {}
        self.sim_args: list[str] = []
        self.env = {
            **os.environ,
            "HFT_SHM_DIR": str(root / "shm"),
            "HFT_STATE_DIR": str(root / "state"),
            "HFT_RUN_DIR": str(run_dir),
        }
        (root / "shm").mkdir()

    def _spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.log", "ab") as log:  # the child keeps its own copy
            return subprocess.Popen(
                [sys.executable, "-m", "gateway", *args],
                env=env or self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start_sim(self) -> None:
        # Strict as Kraken: the Pro tier's API counter, latency with jitter.
        self.sim = self._spawn(
            "sim", "sim", "--ready-file", str(self.ready), "--tier", "pro",
            "--latency-ms", "4", "--jitter-ms", "4", *self.sim_args,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.ready.exists():
            assert self.sim.poll() is None, self.log("sim")
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.02)
        self.address = json.loads(self.ready.read_text())

    def start_sim_again(self) -> None:
        """A new simulator (with ``sim_args`` as they are now) in place of the running one."""
        assert self.sim is not None
        self.sim.kill()
        self.sim.wait(timeout=10)
        self.ready.unlink()
        self.start_sim()

    def start_gateway(self, *extra: str) -> None:
        env = {
            **self.env,
            "KRAKEN_API_KEY": self.address["api_key"],
            "KRAKEN_API_SECRET": self.address["api_secret"],
        }
        ready = self.root / "gateway.ready"
        ready.unlink(missing_ok=True)
        self.gateway = self._spawn(
            "gateway", "run", "--rest-url", self.address["rest_url"],
            "--ws-url", self.address["ws_url"], "--kraken-tier", "pro",
            "--ready-file", str(ready), *extra, env=env,
        )  # fmt: skip
        # A catch-up paced by the API counter can take a while: ready means caught up.
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert self.gateway.poll() is None, self.log("gateway")
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.02)

    def stop_gateway(self, signum: int = signal.SIGTERM) -> int:
        assert self.gateway is not None
        self.gateway.send_signal(signum)
        return self.gateway.wait(timeout=30)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def control(self, name: str, body: dict[str, object] | None = None) -> dict[str, object]:
        response = httpx.post(f"{self.address['rest_url']}/sim/{name}", json=body or {}, timeout=10)
        result = response.json()
        assert isinstance(result, dict)
        return result

    def status(self) -> dict[str, object]:
        system = IPCCommandSystem("test", run_dir=self.run_dir)
        system.start()
        try:
            reply = system.send_command_blocking(
                "kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, {"cmd": "status"}
            )
        finally:
            system.close()
        status = reply["status"]
        assert isinstance(status, dict)
        return status

    def reader(self) -> StoreReader:
        return StoreReader(store_path("kraken", self.root / "shm"))

    def stop(self) -> None:
        for process in (self.gateway, self.sim):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)


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
