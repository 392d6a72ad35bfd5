"""``gateway demo``: the simulator, the gateway and a live view, as a newcomer's first run.

The simulator and the gateway run as their own processes (``gateway sim``,
``gateway run``), exactly as in production, in private temporary directories;
this process only allocates capital over IPC, drives the simulator's trade
generator and deposits, and draws the view from shared memory, read-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
from rich.console import Console
from rich.live import Live

from clients.command import KRAKEN_STRATEGY_BALANCE_CMD, IPCCommandSystem, kraken_strategy_balance
from clients.errors import CommandError
from gateway.view import gather, render_panel
from mmapstore import StoreReader, store_path

SERVICE: Final = "kraken_gateway"
# Slots 5..7: the README's examples (slot 2) can run beside the demo without colliding.
STRATEGIES: Final = (("alpha", 5), ("beta", 6), ("gamma", 7))
ALLOCATIONS: Final = {"USD": "20000", "USDT": "20000", "BTC": "2", "ETH": "20"}
TRADE_RATE: Final = 8.0
DEPOSIT_EVERY_S: Final = 12.0
START_TIMEOUT_S: Final = 30.0


@dataclass
class DemoStack:
    root: Path
    run_dir: Path
    sim: subprocess.Popen[bytes]
    gateway: subprocess.Popen[bytes]
    address: dict[str, str]

    def exports(self) -> str:
        """One shell line that points another terminal's gateway commands at this demo."""
        return (
            f"export HFT_SHM_DIR={self.root / 'shm'} HFT_RUN_DIR={self.run_dir} "
            f"HFT_STATE_DIR={self.root / 'state'}"
        )

    @property
    def store(self) -> Path:
        return store_path("kraken", self.root / "shm")

    def control(self, name: str, body: dict[str, object]) -> dict[str, object]:
        reply = httpx.post(f"{self.address['rest_url']}/sim/{name}", json=body, timeout=5).json()
        assert isinstance(reply, dict)
        return reply

    def stop(self) -> None:
        """SIGTERM both processes and wait: the gateway flushes, snapshots and marks stopped."""
        for process in (self.gateway, self.sim):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (self.gateway, self.sim):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_for(
    condition: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, what: str
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"gateway demo: {what} did not start; its log:\n{log.read_text()}")
        time.sleep(0.05)


def start_stack(log_level: str = "warning") -> DemoStack:
    root = Path(tempfile.mkdtemp(prefix="hft-demo-"))
    run_dir = root / "run"
    (root / "shm").mkdir()
    env = {
        **os.environ,
        "HFT_SHM_DIR": str(root / "shm"),
        "HFT_STATE_DIR": str(root / "state"),
        "HFT_RUN_DIR": str(run_dir),
    }
    ready = root / "sim.json"
    gateway_cli = [sys.executable, "-m", "gateway", "--log-level", log_level]
    with open(root / "sim.log", "ab") as log:
        # Own sessions: a terminal's Ctrl-C reaches only this process, which then stops
        # the gateway and the simulator in order.
        sim = subprocess.Popen(
            [*gateway_cli, "sim", "--ready-file", str(ready)],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    _wait_for(ready.exists, sim, root / "sim.log", "the simulator")
    address = json.loads(ready.read_text())
    env |= {"KRAKEN_API_KEY": address["api_key"], "KRAKEN_API_SECRET": address["api_secret"]}
    with open(root / "gateway.log", "ab") as log:
        gateway = subprocess.Popen(
            [
                *gateway_cli,
                "run",
                "--rest-url",
                address["rest_url"],
                "--ws-url",
                address["ws_url"],
                "--reconcile-interval",
                "5",
                "--recheck-interval",
                "1",
            ],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    _wait_for((run_dir / f"{SERVICE}.sock").exists, gateway, root / "gateway.log", "the gateway")
    return DemoStack(root, run_dir, sim, gateway, address)


def allocate(stack: DemoStack, system: IPCCommandSystem) -> int:
    """Give each strategy some capital, over IPC like a strategy would."""
    sent = 0
    for strategy, index in STRATEGIES:
        for currency, amount in ALLOCATIONS.items():
            payload = kraken_strategy_balance(
                strategy=strategy, cmd="allocate", currency=currency, index=index, amount=amount
            )
            system.send_command_blocking(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, payload)
            sent += 1
    return sent


def run_demo(duration_s: float | None, console: Console | None = None) -> int:
    """Run the demo; with ``duration_s`` headless, printing a summary, else live until Ctrl-C."""
    console = console or Console()
    stack = start_stack()
    gateway = Path(sys.executable).parent / "gateway"
    console.print(
        f"demo: store, socket and state in {stack.root}; from another terminal:\n"
        f"  {stack.exports()}\n"
        f"  {gateway} status   # or: balances --watch, cmd allocate ... --index 2",
        highlight=False,
        soft_wrap=True,
    )
    system = IPCCommandSystem("demo", run_dir=stack.run_dir)
    system.start()
    frames = 0
    invariant_held = True
    interrupted = False
    try:
        commands = allocate(stack, system)
        stack.control(
            "trade-generator", {"rate": TRADE_RATE, "userrefs": [i for _, i in STRATEGIES]}
        )
        started = time.monotonic()
        next_deposit = started + DEPOSIT_EVERY_S / 2
        with StoreReader(stack.store) as reader:
            live = (
                Live(console=console, refresh_per_second=8, screen=False)
                if duration_s is None
                else None
            )
            if live is not None:
                live.start()
            try:
                while duration_s is None or time.monotonic() - started < duration_s:
                    if time.monotonic() >= next_deposit:
                        stack.control("deposit", {"asset": "USD", "amount": "1000"})
                        next_deposit += DEPOSIT_EVERY_S
                    state = gather(reader, system, SERVICE)
                    invariant_held &= state.invariant_ok
                    frames += 1
                    if live is not None:
                        live.update(
                            render_panel(
                                state, "gateway demo: Ctrl-C stops everything", console.width
                            )
                        )
                    time.sleep(0.2)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                if live is not None:
                    live.stop()
            final = gather(reader, system, SERVICE)
    except CommandError as exc:
        raise SystemExit(f"gateway demo: {exc}") from None
    finally:
        with contextlib.suppress(httpx.HTTPError):
            stack.control("trade-generator", {"rate": 0})
        system.close()
        stack.stop()
    status = final.status
    summary = {
        "seconds": round(time.monotonic() - started, 1),
        "fills_applied": status.get("fills_applied"),
        "allocations_sent": commands,
        "commands_applied": status.get("commands_applied"),
        "corrections": status.get("corrections"),
        "websocket_reconnects": status.get("ws_reconnects"),
        "frames_checked": frames,
        "invariant_held": invariant_held and final.invariant_ok,
        "gateway_exit": stack.gateway.returncode,
        "stopped_by": "ctrl-c" if interrupted else "duration",
    }
    console.print_json(json.dumps(summary))
    shutil.rmtree(stack.root, ignore_errors=True)
    ok = summary["invariant_held"] and stack.gateway.returncode == 0
    return 0 if ok else 1
