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
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Final

import httpx
from rich.console import Console, Group
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


def start_stack(exchange: str, root: Path, run_dir: Path, log_level: str = "warning") -> LocalStack:
    """One exchange's simulator and gateway under ``root`` (logs in ``root/<exchange>``),
    stores and state in ``root``; ready once this returns."""
    # Own sessions: a terminal's Ctrl-C reaches only this process, which then stops
    # the gateways and the simulators in order.
    stack = LocalStack(
        root / exchange, run_dir, exchange=exchange, log_level=log_level, own_session=True,
        shared=root,
    )  # fmt: skip
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


@dataclass
class _Running:
    """One exchange of the demo: its processes, its command client, what the view saw."""

    stack: LocalStack
    system: IPCCommandSystem
    reader: StoreReader
    deposit_asset: str
    allocations: int
    frames: int = 0
    invariant_held: bool = True


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal) stop the demo as Ctrl-C does. Its
    simulators and gateways run in sessions of their own (a terminal's Ctrl-C reaches
    only this process, which stops them in order), so a signal that ended this process
    by its default action left them running, orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; Ctrl-C reaches it anyway
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_demo(
    duration_s: float | None,
    console: Console | None = None,
    exchanges: Sequence[str] = (DEFAULT_EXCHANGE,),
) -> int:
    """Run the demo; with ``duration_s`` headless, printing a summary, else live until Ctrl-C
    (or SIGTERM, or SIGHUP).

    Several exchanges run side by side: a simulator and a gateway each, their
    stores and sockets in one directory, one view.
    """
    with _stopped_by_signals():
        try:
            return _run_demo(duration_s, console or Console(), exchanges)
        except KeyboardInterrupt:  # while starting: the view's loop takes it once running
            raise SystemExit(
                "gateway demo: interrupted while starting; what it had started is stopped"
            ) from None


def _run_demo(duration_s: float | None, console: Console, exchanges: Sequence[str]) -> int:
    root = Path(tempfile.mkdtemp(prefix="hft-demo-"))
    stacks: list[LocalStack] = []
    running: list[_Running] = []
    interrupted = False
    started = time.monotonic()
    try:
        for exchange in exchanges:
            stacks.append(start_stack(exchange, root, root / "run"))
        gateway = Path(sys.executable).parent / "gateway"
        flags = [f" --exchange {e}" if e != DEFAULT_EXCHANGE else "" for e in exchanges]
        console.print(
            f"demo: stores, sockets and state in {root}; from another terminal:\n"
            f"  {stacks[0].exports()}\n"
            + "".join(f"  {gateway} status{flag}\n" for flag in flags)
            + "  (or: balances --watch, cmd allocate ... --index 2)",
            highlight=False,
            soft_wrap=True,
        )
        for stack in stacks:
            system = IPCCommandSystem("demo", run_dir=stack.run_dir)
            system.start()
            allocations = allocate(stack, system)
            running.append(
                _Running(stack, system, StoreReader(stack.store), _deposit_asset(stack),
                         allocations)
            )  # fmt: skip
            stack.control(
                "trade-generator", {"rate": TRADE_RATE, "strategy_ids": [i for _, i in STRATEGIES]}
            )
        started = time.monotonic()
        interrupted = _show(running, duration_s, console, started)
        finals = {r.stack.exchange: gather(r.reader, r.system, r.stack.service) for r in running}
    except CommandError as exc:
        raise SystemExit(f"gateway demo: {exc}") from None
    finally:
        for each in running:
            with contextlib.suppress(httpx.HTTPError):
                each.stack.control("trade-generator", {"rate": 0}, timeout_s=5)
            each.system.close()
            each.reader.close()
        for stack in stacks:
            stack.stop()
    summaries = {}
    for each in running:
        final, gateway_process = finals[each.stack.exchange], each.stack.gateway
        assert gateway_process is not None
        status = final.status
        summaries[each.stack.exchange] = {
            "seconds": round(time.monotonic() - started, 1),
            "fills_applied": status.get("fills_applied"),
            "allocations_sent": each.allocations,
            "commands_applied": status.get("commands_applied"),
            "corrections": status.get("corrections"),
            "websocket_reconnects": status.get("ws_reconnects"),
            "frames_checked": each.frames,
            "invariant_held": each.invariant_held and final.invariant_ok,
            "gateway_exit": gateway_process.returncode,
            "stopped_by": "ctrl-c" if interrupted else "duration",
        }
    ok = all(s["invariant_held"] and s["gateway_exit"] == 0 for s in summaries.values())
    if len(summaries) == 1:
        console.print_json(json.dumps(next(iter(summaries.values()))))
    else:
        console.print_json(json.dumps({"invariant_held": ok, "exchanges": summaries}))
    shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


def _show(
    running: list[_Running], duration_s: float | None, console: Console, started: float
) -> bool:
    """Deposit now and then, check and draw every exchange's view; True if interrupted."""
    title = "gateway demo: Ctrl-C stops everything"
    live = Live(console=console, refresh_per_second=8, screen=False) if duration_s is None else None
    next_deposit = started + DEPOSIT_EVERY_S / 2
    if live is not None:
        live.start()
    try:
        while duration_s is None or time.monotonic() - started < duration_s:
            deposit = time.monotonic() >= next_deposit
            if deposit:
                next_deposit += DEPOSIT_EVERY_S
            panels = []
            for each in running:
                if deposit:
                    each.stack.control("deposit", {"asset": each.deposit_asset, "amount": "1000"})
                state = gather(each.reader, each.system, each.stack.service)
                each.invariant_held &= state.invariant_ok
                each.frames += 1
                panels.append(render_panel(state, f"{title} ({each.stack.exchange})",
                                           console.width))  # fmt: skip
            if live is not None:
                live.update(Group(*panels))
            time.sleep(0.2)
    except KeyboardInterrupt:
        return True
    finally:
        if live is not None:
            live.stop()
    return False
