"""``gateway demo``: the simulator, the gateway and a live view, as a newcomer's first run.

The simulator and the gateway run as their own processes (``gateway sim``,
``gateway run``), exactly as in production, in private temporary directories;
this process only allocates capital over IPC, drives the simulator's trade
generator and deposits, and draws the view from shared memory, read-only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Final

import httpx
from rich.console import Console
from rich.live import Live

from clients.command import STRATEGY_BALANCE_CMD, IPCCommandSystem, strategy_balance
from clients.errors import CommandError
from gateway.exchanges.registry import DEFAULT_EXCHANGE
from gateway.launcher import LaunchError, LocalStack
from gateway.view import gather, render_panel
from mmapstore import StoreReader

# Slots 5..7: the README's examples (slot 2) can run beside the demo without colliding.
STRATEGIES: Final = (("alpha", 5), ("beta", 6), ("gamma", 7))
ALLOCATED_SHARE: Final = Decimal("0.2")  # of each currency held, to each strategy
STABLECOINS: Final = ("USD", "USDT", "USDC")  # deposits come in the first one held
TRADE_RATE: Final = 8.0
DEPOSIT_EVERY_S: Final = 12.0
START_TIMEOUT_S: Final = 30.0


def start_stack(exchange: str, log_level: str = "warning") -> LocalStack:
    """The simulator and the gateway, in a new private directory; ready once this returns."""
    root = Path(tempfile.mkdtemp(prefix="hft-demo-"))
    # Own sessions: a terminal's Ctrl-C reaches only this process, which then stops
    # the gateway and the simulator in order.
    stack = LocalStack(root, root / "run", exchange=exchange, log_level=log_level, own_session=True)
    try:
        stack.start_sim(timeout_s=START_TIMEOUT_S)
        stack.start_gateway(
            "--reconcile-interval", "5", "--recheck-interval", "1", timeout_s=START_TIMEOUT_S
        )
    except LaunchError as exc:
        stack.stop()
        raise SystemExit(f"gateway demo: {exc}") from None
    return stack


def allocate(stack: LocalStack, system: IPCCommandSystem) -> int:
    """Give each strategy a share of every currency held, over IPC like a strategy would."""
    with StoreReader(stack.store) as reader:
        held = {c: reader.slot(c, 0).exact for c in reader.currencies()}
    sent = 0
    for strategy, index in STRATEGIES:
        for currency, total in sorted(held.items()):
            amount = (total * ALLOCATED_SHARE).quantize(Decimal("0.0001"), ROUND_DOWN)
            if amount <= 0:
                continue
            payload = strategy_balance(
                strategy=strategy, cmd="allocate", currency=currency, index=index, amount=amount
            )
            system.send_command_blocking(stack.service, STRATEGY_BALANCE_CMD, payload)
            sent += 1
    return sent


def _deposit_asset(stack: LocalStack) -> str:
    with StoreReader(stack.store) as reader:
        held = set(reader.currencies())
    return next((c for c in STABLECOINS if c in held), sorted(held)[0])


def run_demo(
    duration_s: float | None, console: Console | None = None, exchange: str = DEFAULT_EXCHANGE
) -> int:
    """Run the demo; with ``duration_s`` headless, printing a summary, else live until Ctrl-C."""
    console = console or Console()
    stack = start_stack(exchange)
    flag = "" if exchange == DEFAULT_EXCHANGE else f" --exchange {exchange}"
    gateway = Path(sys.executable).parent / "gateway"
    console.print(
        f"demo: store, socket and state in {stack.root}; from another terminal:\n"
        f"  {stack.exports()}\n"
        f"  {gateway} status{flag}   # or: balances --watch, cmd allocate ... --index 2",
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
            "trade-generator", {"rate": TRADE_RATE, "strategy_ids": [i for _, i in STRATEGIES]}
        )
        started = time.monotonic()
        next_deposit = started + DEPOSIT_EVERY_S / 2
        deposit_asset = _deposit_asset(stack)
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
                        stack.control("deposit", {"asset": deposit_asset, "amount": "1000"})
                        next_deposit += DEPOSIT_EVERY_S
                    state = gather(reader, system, stack.service)
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
            final = gather(reader, system, stack.service)
    except CommandError as exc:
        raise SystemExit(f"gateway demo: {exc}") from None
    finally:
        with contextlib.suppress(httpx.HTTPError):
            stack.control("trade-generator", {"rate": 0}, timeout_s=5)
        system.close()
        stack.stop()
    status = final.status
    assert stack.gateway is not None
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
