"""The live terminal view of a gateway's balances: shared memory read-only, status over IPC.

Used by ``gateway balances --watch`` and ``gateway demo``. It never writes:
balances come from the store through a read-only mapping, and the gateway's
health (websocket, reconciler, slot owners) from its ``status`` and ``query``
replies, when the command socket is reachable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from clients.command import KRAKEN_STRATEGY_BALANCE_CMD, IPCCommandSystem
from clients.errors import CommandError
from mmapstore import StoreReader, WriterHealth


@dataclass
class ViewState:
    """What one frame shows, gathered without holding anything open in between."""

    exchange: str
    health: str
    pid: int
    generation: int
    heartbeat_age_s: float
    records: dict[str, tuple[tuple[Decimal, ...], tuple[float, ...], int, int]]
    status: dict[str, object] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    invariant_ok: bool = True


def gather(reader: StoreReader, system: IPCCommandSystem | None, service: str) -> ViewState:
    """One consistent read of every record, plus the gateway's status if it answers."""
    writer = reader.writer_status()
    records = {}
    invariant_ok = True
    for currency in reader.currencies():
        record = reader.record(currency)
        records[currency] = (record.exact_all(), record.floats, record.sequence, record.updated_ns)
        invariant_ok &= record.scaled[0] == sum(record.scaled[1:])
    state = ViewState(
        reader.exchange,
        writer.health.value,
        writer.pid,
        writer.generation,
        writer.heartbeat_age_s,
        records,
        invariant_ok=invariant_ok,
    )
    if system is not None and writer.health in (WriterHealth.LIVE, WriterHealth.STARTING):
        try:
            reply = system.send_command_blocking(
                service, KRAKEN_STRATEGY_BALANCE_CMD, {"cmd": "status"}, timeout_s=0.5
            )
            status = reply.get("status")
            state.status = status if isinstance(status, dict) else {}
            reply = system.send_command_blocking(
                service, KRAKEN_STRATEGY_BALANCE_CMD, {"cmd": "query"}, timeout_s=0.5
            )
            owners = reply.get("owners")
            state.owners = (
                {str(k): str(v) for k, v in owners.items()} if isinstance(owners, dict) else {}
            )
        except CommandError:
            pass
    return state


def _age(ns: object) -> str:
    if not isinstance(ns, int) or ns <= 0:
        return "never"
    seconds = max(0.0, time.time() - ns / 1e9)
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def render(state: ViewState) -> Group:
    """The frame: a header line of health, then one table per currency."""
    status = state.status
    health_style = {"live": "green", "starting": "yellow"}.get(state.health, "red")
    websocket = str(status.get("websocket", "?"))
    ws_style = "green" if websocket in ("live", "fake") else "red"
    header = Text.assemble(
        (f"{state.exchange} gateway ", "bold"),
        (state.health, health_style),
        f"  pid {state.pid}  generation {state.generation}",
        f"  heartbeat {state.heartbeat_age_s:.1f} s ago",
        "\nwebsocket ",
        (websocket, ws_style),
        f" (reconnects {status.get('ws_reconnects', '?')})",
        "  reconcile ",
        (str(status.get("reconcile_state", "?")), "cyan"),
        f" {_age(status.get('reconcile_last_ns'))}",
        f"  corrections {status.get('corrections', '?')}",
        f"\nfills {status.get('fills_applied', '?')} (last {_age(status.get('last_fill_ns'))})",
        f"  commands ok {status.get('commands_applied', '?')}",
        f" refused {status.get('commands_refused', '?')}",
        "  invariant ",
        ("held", "green") if state.invariant_ok else ("BROKEN", "bold red"),
    )
    if websocket not in ("live", "fake", "?"):
        header.append("\nfills are not arriving: balances may be stale", style="bold red")
    overdrawn = status.get("overdrawn")
    if isinstance(overdrawn, dict) and overdrawn:
        where = ", ".join(f"{c} slot {', '.join(map(str, s))}" for c, s in overdrawn.items())
        header.append(f"\noverdrawn (below zero): {where}", style="bold red")
    out_of_range = status.get("out_of_range")
    if isinstance(out_of_range, list) and out_of_range:
        header.append(
            f"\nbeyond the store's range (last values shown): {', '.join(out_of_range)}",
            style="bold red",
        )
    # One row per currency, one column per slot in use: exact value, float beneath.
    used = sorted(
        {0, 1}
        | {int(k) for k in state.owners}
        | {i for exact, *_ in state.records.values() for i, v in enumerate(exact) if v}
    )
    table = Table(expand=False, show_lines=True)
    table.add_column("currency")
    for index in used:
        owner = {0: "total", 1: "available"}.get(index) or state.owners.get(str(index), "unowned")
        table.add_column(f"{index}: {owner}", justify="right")
    table.add_column("seq / updated", justify="right")
    for currency, (exact, floats, sequence, updated_ns) in sorted(state.records.items()):
        cells = []
        for index in used:
            value, approx = exact[index], floats[index]
            cell = Text(f"{value:f}", style="red" if value < 0 else "")
            cell.append(f"\n{approx:.10g}", style="dim")
            cells.append(cell)
        table.add_row(currency, *cells, f"{sequence}\n{_age(updated_ns)}")
    parts: list[object] = [header, table]
    return Group(*parts)  # type: ignore[arg-type]


def render_panel(state: ViewState, title: str) -> Panel:
    return Panel(render(state), title=title)
