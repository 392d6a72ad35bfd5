"""The terminal view of a gateway's balances: shared memory read-only, status over IPC.

Used by ``gateway balances`` and ``gateway demo``. It never writes: balances
come from the store through a read-only mapping, and the gateway's health
(websocket, reconciler, slot owners) from its ``status`` and ``query`` replies,
when the command socket answers.

Money is never cut: a table too wide for the terminal is split into several
(each with the currency column), and a value wider than a column wraps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from clients.command import STRATEGY_BALANCE_CMD, IPCCommandSystem
from clients.errors import CommandError
from mmapstore import Condition, StoreReader, WriterHealth

# What the view's words mean, shown beneath the tables.
LEGEND: Final = (
    "0 total: the exchange's balance · 1 available: not allocated · reconcile verified: "
    "REST agrees, suspect: rechecking a difference, corrected: one moved to available"
)
COLUMN_COST: Final = 3  # a column's padding and separator, beside its text


@dataclass
class Record:
    """One currency as the store holds it."""

    exact: tuple[Decimal, ...]
    floats: tuple[float, ...]
    sequence: int
    updated_ns: int


@dataclass
class ViewState:
    """What one frame shows, gathered without holding anything open in between."""

    exchange: str
    health: str
    pid: int
    generation: int
    heartbeat_age_s: float
    records: dict[str, Record]
    conditions: list[str] = field(default_factory=list)
    status: dict[str, object] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    invariant_ok: bool = True
    answered: bool = False  # the gateway answered on its command socket

    def as_json(self) -> dict[str, object]:
        """For ``gateway balances --json``: exact values as strings, nothing rounded."""
        return {
            "exchange": self.exchange,
            "writer": {
                "health": self.health,
                "pid": self.pid,
                "generation": self.generation,
                "heartbeat_age_s": round(self.heartbeat_age_s, 3),
                "conditions": self.conditions,
            },
            "balances": {
                currency: {
                    "slots": [f"{value:f}" for value in record.exact],
                    "sequence": record.sequence,
                    "updated_ns": record.updated_ns,
                }
                for currency, record in sorted(self.records.items())
            },
            "owners": self.owners,
            "slots_sum_to_total": self.invariant_ok,
        }


def gather(reader: StoreReader, system: IPCCommandSystem | None, service: str) -> ViewState:
    """One consistent read of every record, plus the gateway's status if it answers."""
    writer = reader.writer_status()
    records = {}
    invariant_ok = True
    for currency in reader.currencies():
        record = reader.record(currency)
        records[currency] = Record(
            record.exact_all(), record.floats, record.sequence, record.updated_ns
        )
        invariant_ok &= record.scaled[0] == sum(record.scaled[1:])
    state = ViewState(
        reader.exchange,
        writer.health.value,
        writer.pid,
        writer.generation,
        writer.heartbeat_age_s,
        records,
        conditions=[c.name for c in Condition if c in writer.conditions and c.name],
        invariant_ok=invariant_ok,
    )
    if system is not None and writer.health in (WriterHealth.LIVE, WriterHealth.STARTING):
        try:
            reply = system.send_command_blocking(
                service, STRATEGY_BALANCE_CMD, {"cmd": "status"}, timeout_s=0.5
            )
            status = reply.get("status")
            state.status = status if isinstance(status, dict) else {}
            reply = system.send_command_blocking(
                service, STRATEGY_BALANCE_CMD, {"cmd": "query"}, timeout_s=0.5
            )
            owners = reply.get("owners")
            state.owners = (
                {str(k): str(v) for k, v in owners.items()} if isinstance(owners, dict) else {}
            )
            state.answered = True
        except CommandError:
            pass
    return state


def _age(ns: object) -> str:
    if not isinstance(ns, int) or ns <= 0:
        return "never"
    seconds = max(0.0, time.time() - ns / 1e9)
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _header(state: ViewState) -> Text:
    """Health first, then the feed, the reconciler and the counters; conditions in red."""
    status = state.status
    health_style = {"live": "bold green", "starting": "bold yellow"}.get(state.health, "bold red")
    header = Text.assemble(
        (f"{state.exchange} gateway ", "bold"),
        (state.health.upper(), health_style),
        f"  pid {state.pid}  generation {state.generation}",
        f"  heartbeat {state.heartbeat_age_s:.1f} s ago",
    )
    if state.health not in ("live", "starting"):
        header.append(
            f"\nthe gateway is {state.health}: values are as it left them, not live; "
            "start it for live ones",
            style="bold red",
        )
    elif not state.answered:
        header.append(
            "\nthe gateway does not answer on its socket: values are the store's, "
            "its status is unknown",
            style="yellow",
        )
    else:
        websocket = str(status.get("websocket", "unknown"))
        header.append("\nfill stream ")
        header.append(websocket, style="green" if websocket == "live" else "bold red")
        header.append(f" (reconnects {status.get('ws_reconnects', 0)})  reconcile ")
        header.append(str(status.get("reconcile_state", "unknown")), style="cyan")
        header.append(f" (last {_age(status.get('reconcile_last_ns'))})")
        header.append(f"  corrections {status.get('corrections', 0)}")
        header.append(
            f"\nfills {status.get('fills_applied', 0)} (last {_age(status.get('last_fill_ns'))})"
            f"  transfers {status.get('transfers_applied', 0)}"
            f"  commands ok {status.get('commands_applied', 0)}"
            f" refused {status.get('commands_refused', 0)}"
        )
    if not state.records:
        header.append("\nno balances in the store yet")
    for line in _condition_lines(state):
        header.append(f"\n{line}", style="bold red")
    return header


def _condition_lines(state: ViewState) -> list[str]:
    status = state.status
    lines = []
    if "FEED_DOWN" in state.conditions:
        lines.append("FEED_DOWN: fills are not arriving, balances may be stale")
    if "JOURNAL_DOWN" in state.conditions:
        lines.append("JOURNAL_DOWN: the journal cannot be written, commands are refused")
    if "REST_DOWN" in state.conditions:
        lines.append("REST_DOWN: the exchange's REST API fails, nothing is reconciled")
    overdrawn = status.get("overdrawn")
    if isinstance(overdrawn, dict) and overdrawn:
        where = ", ".join(f"{c} slot {', '.join(map(str, s))}" for c, s in overdrawn.items())
        lines.append(f"OVERDRAWN (below zero): {where}")
    elif "OVERDRAWN" in state.conditions:
        lines.append("OVERDRAWN: a slot is below zero")
    out_of_range = status.get("out_of_range")
    if isinstance(out_of_range, list) and out_of_range:
        names = ", ".join(map(repr, out_of_range))  # an exchange's name, shown as data
        lines.append(f"OUT_OF_RANGE (last values shown, or none): {names}")
    elif "OUT_OF_RANGE" in state.conditions:
        lines.append("OUT_OF_RANGE: a balance the store cannot hold (its last values shown)")
    return lines


def _slot_label(state: ViewState, index: int) -> str:
    name = {0: "total", 1: "available"}.get(index) or state.owners.get(str(index), "unowned")
    return f"{index} {name}"


def _cell(value: Decimal, approx: float, floats: bool) -> Text:
    cell = Text(f"{value:f}", style="red" if value < 0 else "")
    if floats:
        cell.append(f"\n≈ {approx:.10g}", style="dim")
    return cell


def _text_width(text: Text) -> int:
    return max(len(line) for line in text.plain.split("\n"))


def _chunks(widths: list[int], first: int, room: int) -> list[list[int]]:
    """Column positions packed into tables no wider than ``room``, in order."""
    chunks: list[list[int]] = [[]]
    used = first
    for position, width in enumerate(widths):
        cost = width + COLUMN_COST
        if chunks[-1] and used + cost > room:
            chunks.append([])
            used = first
        chunks[-1].append(position)
        used += cost
    return chunks


def render(state: ViewState, width: int = 80, *, floats: bool = False) -> Group:
    """The frame for a terminal ``width`` wide: header, tables of slots, legend."""
    used = sorted(
        {0, 1}
        | {int(k) for k in state.owners if k.isdigit()}
        | {i for record in state.records.values() for i, v in enumerate(record.exact) if v}
    )
    used = [i for i in used if all(i < len(r.exact) for r in state.records.values())]
    currencies = sorted(state.records)
    labels = [_slot_label(state, i) for i in used]
    widths = [
        max(
            [len(label)]
            + [
                _text_width(_cell(state.records[c].exact[i], state.records[c].floats[i], floats))
                for c in currencies
            ]
        )
        for label, i in zip(labels, used, strict=True)
    ]
    first = max([len("currency"), *map(len, currencies)]) + COLUMN_COST
    parts: list[RenderableType] = [_header(state)]
    if currencies:
        for chunk in _chunks(widths, first, width):
            table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
            table.add_column("currency", no_wrap=True)
            for position in chunk:
                table.add_column(labels[position], justify="right", overflow="fold")
            for currency in currencies:
                record = state.records[currency]
                table.add_row(
                    currency,
                    *(_cell(record.exact[used[p]], record.floats[used[p]], floats) for p in chunk),
                )
            parts.append(table)
        latest = max(r.updated_ns for r in state.records.values())
        footer = Text(f"last change {_age(latest)}  slots sum to total: ", style="dim")
        footer.append(*(("yes", "green") if state.invariant_ok else ("NO", "bold red")))
        parts.append(footer)
    return Group(*parts)


def render_panel(state: ViewState, title: str, width: int, *, floats: bool = False) -> Panel:
    """The live view: the frame in a titled box, with the legend beneath."""
    inner = width - 4  # the panel's borders and padding
    frame = render(state, inner, floats=floats)
    return Panel(
        Group(frame, Text(LEGEND, style="dim")), title=title, title_align="left", width=width
    )
