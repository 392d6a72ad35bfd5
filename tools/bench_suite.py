"""The benchmark suite: the gateway against the alternatives, how cost grows, one report.

    .venv/bin/python tools/bench_suite.py [--smoke] [--out docs/benchmarks.md]

`make bench` runs it in full (under 10 minutes on 2 cores) and writes
``docs/benchmarks.md`` with PNG plots under ``docs/benchmarks/``; `--smoke`
runs every section at a tiny size in seconds (part of `make test`). It folds
in ``bench_read.py``, ``bench_commands.py`` and ``bench_fills.py`` rather
than measuring the same things again. Cases compared with each other run in
one process, side by side; numbers are medians (and p99) of repeated samples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from multiprocessing import shared_memory
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import cbor2
import trio

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
# The commands section measures the bare server and the gateway in rounds, each in turn:
# this machine's speed drifts by a fifth over seconds, and one run of each measured that
# drift (bench_replication.py does the same for replication off and on).
COMMAND_ROUNDS = 3
# Replay is timed over a fraction of a second: the best of a few passes, not one.
REPLAY_PASSES = 3
# Where the commands section keeps a second gateway's journal: memory, for a sync near free.
MEMORY_DIR = "/dev/shm"
IN_MEMORY = "gateway, journal in memory (not durable)"
sys.path[:0] = [str(ROOT), str(TOOLS)]

import bench_catchup  # noqa: E402
import bench_commands  # noqa: E402
import bench_fills  # noqa: E402
import bench_read  # noqa: E402

import clients as hft  # noqa: E402
from clients.command import KRAKEN_STRATEGY_BALANCE_CMD, IPCCommandSystem  # noqa: E402
from gateway.config import SNAPSHOT_EVERY_EVENTS, GatewayConfig  # noqa: E402
from gateway.events import (  # noqa: E402
    FillApplied,
    TotalsSet,
    apply_event,
    encode_event,
)
from gateway.journal import Journal, scan_records, segments_of  # noqa: E402
from gateway.launcher import LocalStack  # noqa: E402
from gateway.ledger import (  # noqa: E402
    REPLIES_KEPT,
    UNIT,
    BalanceCommand,
    CommandKind,
    Fee,
    Fill,
    Ledger,
    Side,
)
from gateway.messages import CommandReceived  # noqa: E402
from gateway.service import Running, restore_state, run_gateway  # noqa: E402
from mmapstore import StoreReader, StoreWriter, store_path  # noqa: E402

if TYPE_CHECKING:
    from tests.gateway.fake_exchange import FakeExchange

Call = Callable[[], object]


@dataclass
class Plan:
    """Sizes for a full run or a smoke run."""

    smoke: bool
    repetitions: int = 5
    seconds: float = 0.2
    currencies: tuple[int, ...] = (1, 10, 100, 1000)
    readers: tuple[int, ...] = (1, 2, 4, 8)
    writer_rates: tuple[str, ...] = ("idle", "1000/s", "full speed")
    slots: tuple[int, ...] = (8, 32, 128)
    clients: tuple[int, ...] = (1, 8, 32)
    commands_per_client: int = 1500
    fill_rates: tuple[int, ...] = (1000, 10000)
    fill_seconds: float = 4.0
    saturation_steps: tuple[int, ...] = (2000, 3000, 4000, 5000, 6000, 8000)
    memory_fills: int = 1_000_000
    memory_replies: int = REPLIES_KEPT
    catch_up_gaps: tuple[int, ...] = (100, 1000, 5000)
    catch_up_tiers: tuple[str, ...] = ("starter", "pro")
    journal_sizes: tuple[int, ...] = (SNAPSHOT_EVERY_EVENTS, 100_000, 1_000_000)

    @classmethod
    def for_run(cls, smoke: bool) -> Plan:
        if not smoke:
            return cls(smoke=False)
        return cls(
            smoke=True,
            repetitions=1,
            seconds=0.02,
            currencies=(1, 100),
            readers=(1, 2),
            writer_rates=("idle", "full speed"),
            slots=(8, 32),
            clients=(1, 2),
            commands_per_client=20,
            fill_rates=(200,),
            fill_seconds=0.5,
            saturation_steps=(),
            memory_fills=3000,
            memory_replies=300,
            catch_up_gaps=(100,),
            catch_up_tiers=("pro",),
            journal_sizes=(2000,),
        )


@dataclass
class Report:
    sections: list[str] = field(default_factory=list)
    plots: dict[str, Path] = field(default_factory=dict)
    goals: list[tuple[str, str, bool]] = field(default_factory=list)

    def table(self, title: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
        lines = [f"## {title}", ""]
        if note:
            lines += [note, ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        self.sections.append("\n".join(lines))

    def goal(self, what: str, measured: str, met: bool) -> None:
        self.goals.append((what, measured, met))


def median_p99(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def measure(cases: dict[str, tuple[Call, int]], plan: Plan) -> dict[str, list[float]]:
    """Interleave the cases over the repetitions; per-call µs samples for each."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(plan.repetitions):
        for name, (call, batch) in cases.items():
            samples[name] += bench_read.time_batches(call, plan.seconds, batch)
    return samples


def _read_usd_of(reader: StoreReader) -> Call:
    return lambda: reader.slot_float("USD", 1)


def store_with(directory: Path, currencies: int, slots: int = 8) -> Path:
    path = store_path("kraken", directory)
    with StoreWriter.open(
        path, exchange="kraken", strategy_count=slots, capacity=max(currencies, 16)
    ) as writer:
        for n in range(currencies):
            name = "USD" if n == currencies - 1 else f"C{n}"
            writer.publish_decimal(name, [Decimal(100000), Decimal(100000)] + [0] * (slots - 2))
        writer.mark_live()
    return path


# -- read path --------------------------------------------------------------------------


def read_path(plan: Plan, report: Report, work: Path) -> None:
    print("read path ...", flush=True)
    os.environ["HFT_SHM_DIR"] = str(work)
    store_with(work, 5)
    manager = hft.StrategyBalanceManager(hft.Exchange.KRAKEN)
    reader = manager._reader
    assert reader is not None
    # The directory's entry, not a lookup: the floor must not put the str "USD" in
    # the reader's cache, where Currency.USD would then match it by comparison
    # (a measured row below), not by identity.
    entry = reader._by_name["USD"]
    floor_struct = struct.Struct("<d")
    mm, floor_at = reader._mm, (entry[1] + 1) * 8
    shm = shared_memory.SharedMemory(create=True, size=64)
    shm_buffer = shm.buf
    assert shm_buffer is not None
    floor_struct.pack_into(shm_buffer, 8, 100000.0)
    usd = hft.Currency.USD
    kraken, balance = hft.Exchange.KRAKEN, hft.DataType.BALANCE
    mixed = hft.StrategyBalanceManager(hft.Exchange.KRAKEN)
    mixed.get_balance("USD", 1)
    cases: dict[str, tuple[Call, int]] = {
        "floor: struct.unpack_from on the mapping": (
            lambda: floor_struct.unpack_from(mm, floor_at),
            200,
        ),
        "get_balance": (lambda: manager.get_balance(usd, 1), 200),
        # The seed's calls exactly as its examples write them, enum attributes inline
        # (each `hft.Currency.USD` is a lookup through Python 3.11's EnumType.__getattr__).
        "get_balance(hft.Currency.USD, index=1), as the seed writes it": (
            lambda: manager.get_balance(hft.Currency.USD, index=1),
            200,
        ),
        "get_balance('usd', 1)": (lambda: manager.get_balance("usd", 1), 200),
        # A reader that has also been asked for the str "USD": the enum then finds that
        # equal key by comparison, not identity.
        "get_balance(usd, 1), after get_balance('USD', 1) on the same manager": (
            lambda: mixed.get_balance(usd, 1),
            200,
        ),
        "getSingleQuoteCurrency(hft.Exchange.KRAKEN, hft.DataType.BALANCE, hft.Currency.USD)": (
            lambda: hft.getSingleQuoteCurrency(
                hft.Exchange.KRAKEN, hft.DataType.BALANCE, hft.Currency.USD
            ),
            200,
        ),
        "getSingleQuoteCurrency, enums bound once": (
            lambda: hft.getSingleQuoteCurrency(kraken, balance, usd),
            200,
        ),
        "getSingleQuoteCurrency('kraken', 'balance', 'usd')": (
            lambda: hft.getSingleQuoteCurrency("kraken", "balance", "usd"),
            200,
        ),
        "get_balances (8 slots)": (lambda: manager.get_balances(usd), 200),
        "multiprocessing.shared_memory + struct (no seqlock)": (
            lambda: floor_struct.unpack_from(shm_buffer, 8),
            200,
        ),
    }
    servers: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    redis_case = bench_read.start_redis(work)
    if redis_case is not None:
        process, get = redis_case
        servers.append(process)
        import redis  # noqa: PLC0415 - optional, as in bench_read

        client = redis.Redis(unix_socket_path=str(work / "redis.sock"))
        client.hset("balances:kraken:USD", "1", "100000")
        cases["Redis GET (Unix socket)"] = (get, 1)
        cases["Redis HGET (Unix socket)"] = (lambda: client.hget("balances:kraken:USD", "1"), 1)
    socket_server, socket_call = bench_read.start_socket_server(work)
    servers.append(socket_server)
    cases["Unix-socket request/response (bare)"] = (socket_call, 1)
    run_dir = Path(tempfile.mkdtemp(prefix="hft-"))
    gateway_root = work / "gateway"
    gateway_root.mkdir()
    gateway = bench_commands.start_gateway(gateway_root, run_dir, None)
    system = IPCCommandSystem("bench", run_dir=run_dir)
    system.start()
    query = {"cmd": "query", "currency": "USD"}
    cases["gateway `query` over its socket"] = (
        lambda: system.send_command_blocking("kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, query),
        1,
    )
    try:
        samples = measure(cases, plan)
    finally:
        system.close()
        for server in [*servers, gateway]:
            server.terminate()
            server.wait()
        shm.close()
        shm.unlink()
        manager.close()
        mixed.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    base, _ = median_p99(samples["get_balance"])
    floor, _ = median_p99(samples["floor: struct.unpack_from on the mapping"])
    rows = []
    for name, values in samples.items():
        median, p99 = median_p99(values)
        rows.append([name, f"{median:.3f}", f"{p99:.3f}", f"{median / base:.1f}x"])
    report.table(
        "Read path",
        ["case", "median µs", "p99 µs", "÷ get_balance"],
        rows,
        "Writer idle. Fast cases timed in batches of 200 calls (p99 of batch means); round "
        "trips one by one.",
    )
    if "Redis GET (Unix socket)" in samples:
        redis_median, _ = median_p99(samples["Redis GET (Unix socket)"])
        report.goal(
            "read ≥ 100x faster than Redis GET",
            f"{redis_median / base:.0f}x",
            redis_median / base >= 100,
        )
    report.goal("read within 3x of the unpack floor", f"{base / floor:.1f}x", base / floor <= 3)
    seed_quote, _ = median_p99(samples["getSingleQuoteCurrency, enums bound once"])
    report.goal(
        "getSingleQuoteCurrency ≤ 0.4 µs and within 3x of the floor (enums bound once)",
        f"{seed_quote:.3f} µs, {seed_quote / floor:.1f}x",
        seed_quote <= 0.4 and seed_quote / floor <= 3,
    )
    report.goal(
        "get_balance ≤ 0.3 µs",
        f"{base:.3f} µs",
        base <= 0.3,
    )
    names = list(samples)
    medians = [median_p99(samples[n])[0] for n in names]
    report.plots["read_path"] = bar_plot(work, "read_path", names, medians, "median µs (log)")


# -- scaling ---------------------------------------------------------------------------


def read_worker(path: str, seconds: float) -> None:
    """A reader process: time get_balance for ``seconds``; print the median µs."""
    reader = StoreReader(path)
    samples = bench_read.time_batches(lambda: reader.slot_float("USD", 1), seconds, 200)
    print(json.dumps({"median": statistics.median(samples)}), flush=True)


def write_worker(path: str, rate: float, seconds: float) -> None:
    """Rewrite USD at ``rate`` per second (0: as fast as possible) for ``seconds``."""
    # The smallest capacity, so the file the readers map is reused, never replaced.
    writer = StoreWriter.open(path, exchange="kraken", strategy_count=8, capacity=1)
    index = writer.currencies["USD"]
    writer.mark_live()
    values = [10**23, 10**23] + [0] * 6
    deadline = time.monotonic() + seconds
    interval = 1 / rate if rate else 0.0
    next_at = time.monotonic()
    print("READY", flush=True)
    while time.monotonic() < deadline:
        writer.publish(index, values)
        if interval:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    writer.close()


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)


def scaling(plan: Plan, report: Report, work: Path) -> None:
    print("scaling ...", flush=True)
    rows: list[list[str]] = []
    by_currencies: list[float] = []
    # Every size in each repetition, in turn: measured one after the other, the first
    # size measured read slowest (0.54 µs against 0.30 for the rest, one run), whichever
    # it was.
    with contextlib.ExitStack() as opened:
        cases = {}
        for count in plan.currencies:
            directory = work / f"cur{count}"
            directory.mkdir()
            reader = opened.enter_context(StoreReader(store_with(directory, count)))
            cases[f"{count}"] = (_read_usd_of(reader), 200)
        samples = measure(cases, plan)
    for count in plan.currencies:
        median, p99 = median_p99(samples[f"{count}"])
        by_currencies.append(median)
        rows.append([f"{count} currencies", f"{median:.3f}", f"{p99:.3f}"])
    spread = (max(by_currencies) - min(by_currencies)) / min(by_currencies)
    report.goal(
        "read flat (within 20%) from 1 to 1,000 currencies",
        f"{spread * 100:.0f}% spread",
        spread <= 0.2,
    )
    by_readers: list[float] = []
    (work / "readers").mkdir()
    path = store_with(work / "readers", 1)
    for count in plan.readers:
        workers = [
            _spawn("--read-worker", str(path), str(plan.seconds * plan.repetitions))
            for _ in range(count)
        ]
        medians = [json.loads(w.communicate()[0])["median"] for w in workers]
        by_readers.append(statistics.median(medians))
        rows.append(
            [
                f"{count} reader processes",
                f"{statistics.median(medians):.3f}",
                f"{max(medians):.3f} (slowest)",
            ]
        )
    for label in plan.writer_rates:
        rate = {"idle": None, "1000/s": 1000.0, "full speed": 0.0}[label]
        writer = None
        if rate is not None:
            writer = _spawn(
                "--write-worker", str(path), str(rate), str(plan.seconds * plan.repetitions * 3 + 5)
            )
            assert writer.stdout is not None
            writer.stdout.readline()
        with StoreReader(path) as reader:
            median, p99 = median_p99(
                measure({"x": (lambda: reader.slot_float("USD", 1), 200)}, plan)["x"]
            )
        if writer is not None:
            writer.kill()
            writer.wait()
        rows.append([f"writer {label}", f"{median:.3f}", f"{p99:.3f}"])
    for slots in plan.slots:
        directory = work / f"slots{slots}"
        directory.mkdir()
        with StoreReader(store_with(directory, 1, slots)) as reader:
            median, p99 = median_p99(measure({"x": (lambda: reader.floats("USD"), 200)}, plan)["x"])
        rows.append([f"get_balances, {slots} slots", f"{median:.3f}", f"{p99:.3f}"])
    report.table(
        "Scaling of reads",
        ["case", "median µs", "p99 µs"],
        rows,
        "get_balance unless said otherwise.",
    )
    report.plots["read_by_currencies"] = line_plot(
        work,
        "read_by_currencies",
        list(plan.currencies),
        by_currencies,
        "currencies in the store",
        "get_balance median µs",
        log_x=True,
    )
    report.plots["read_by_readers"] = line_plot(
        work,
        "read_by_readers",
        list(plan.readers),
        by_readers,
        "reader processes",
        "get_balance median µs",
    )


# -- commands ---------------------------------------------------------------------------


def commands(plan: Plan, report: Report, work: Path) -> None:
    """Durable commands from raw client processes, beside two floors measured in the same
    run: the disk's (append + fsync) and serving's (a bare Trio server answering each line),
    and beside the same gateway with its journal in memory (its own work, apart from the disk)."""
    print("commands ...", flush=True)
    root = work / "commands"
    root.mkdir()
    run_dir = Path(tempfile.mkdtemp(prefix="hft-"))
    socket_path = run_dir / f"{bench_commands.SERVICE}.sock"
    # The same gateway with its journal in memory, where a sync costs next to nothing:
    # what the gateway's own work allows, apart from the disk's.
    memory_root = Path(tempfile.mkdtemp(prefix="bench-cmd-", dir=MEMORY_DIR))
    memory_run_dir = Path(tempfile.mkdtemp(prefix="hft-"))
    memory_socket_path = memory_run_dir / f"{bench_commands.SERVICE}.sock"
    processes: list[subprocess.Popen[bytes]] = []  # stopped however the section ends
    rows = []
    rates: dict[int, float] = {}
    medians: dict[int, float] = {}
    try:
        gateway = bench_commands.start_gateway(root, run_dir, None)
        processes.append(gateway)
        echo, echo_path = bench_commands.start_echo(run_dir)
        processes.append(echo)
        in_memory = bench_commands.start_gateway(memory_root, memory_run_dir, None)
        processes.append(in_memory)
        floor_median, floor_p99 = median_p99(
            bench_commands.fsync_floor(root, 300 if not plan.smoke else 20)
        )
        rows.append(
            ["floor: 100-byte append + fsync", "", f"{floor_median:.0f}", f"{floor_p99:.0f}", ""]
        )
        per_round = max(10, plan.commands_per_client // COMMAND_ROUNDS)
        for clients in plan.clients:
            servers = (
                ("floor: bare Trio server", echo_path, echo.pid),
                ("gateway", socket_path, gateway.pid),
                (IN_MEMORY, memory_socket_path, in_memory.pid),
            )
            runs: dict[str, list[bench_commands.RawRun]] = {name: [] for name, _, _ in servers}
            for _ in range(COMMAND_ROUNDS):  # alternating: the machine's drift falls on both
                for name, path, pid in servers:
                    runs[name].append(bench_commands.raw_clients(path, pid, clients, per_round))
            for name, _, _ in servers:
                rate = statistics.median(run.rate for run in runs[name])
                median, p99 = median_p99([us for run in runs[name] for us in run.latencies])
                cpu = statistics.median(run.server_cpu_us for run in runs[name])
                rounds = ", ".join(f"{run.rate:,.0f}" for run in runs[name])
                rows.append(
                    [
                        f"{name}, {clients} client(s)",
                        f"{rate:,.0f} ({rounds})",
                        f"{median:.0f}",
                        f"{p99:.0f}",
                        f"{cpu:.0f}",
                    ]
                )
                if name == "gateway":
                    rates[clients], medians[clients] = rate, median
        trio_rate, latencies = trio.run(
            bench_commands._concurrent, run_dir, 8, plan.commands_per_client
        )
        median, p99 = median_p99(latencies)
        rows.append(
            [
                "gateway, 8 IPCCommandSystem clients in one process",
                f"{trio_rate:,.0f}",
                f"{median:.0f}",
                f"{p99:.0f}",
                "",
            ]
        )
    finally:
        for process in processes:
            process.terminate()
            process.wait()
        for directory in (run_dir, memory_run_dir, memory_root):
            shutil.rmtree(directory, ignore_errors=True)
    report.table(
        "Durable commands",
        ["case", "commands/s (each round)", "median µs", "p99 µs", "server CPU µs/command"],
        rows,
        "allocate/release pairs from client processes with one connection each (a blocking "
        "socket and pre-encoded JSON lines: the clients cost next to nothing); every gateway "
        "reply follows its journal's sync. State directory and floor file on the same disk; "
        "the bare Trio server answers each line at once (no parsing, writer or disk): what "
        "serving alone costs here. The gateway with its journal in memory (`/dev/shm`, "
        "where a sync costs next to nothing) shows what its own work allows apart from the "
        "disk; its replies are not durable. Server CPU is its user + system time over the "
        f"run. {COMMAND_ROUNDS} rounds, the floor and the gateways in turn; the median "
        "round's rate and CPU, latencies over all rounds.",
    )
    if 8 in rates:
        report.goal("≥ 10,000 durable commands/s with 8 clients", f"{rates[8]:,.0f}/s",
                    rates[8] >= 10_000)  # fmt: skip
    if 32 in rates:
        report.goal("≥ 20,000 durable commands/s with 32 clients", f"{rates[32]:,.0f}/s",
                    rates[32] >= 20_000)  # fmt: skip
    if 1 in medians:
        over = medians[1] - floor_median
        report.goal("one command's round trip ≤ fsync + 150 µs", f"fsync {over:+.0f} µs",
                    over <= 150)  # fmt: skip
    report.plots["commands"] = line_plot(
        work, "commands", list(plan.clients), [rates[c] for c in plan.clients], "clients",
        "durable commands/s",
    )  # fmt: skip


# -- fills ----------------------------------------------------------------------------------


def fills(plan: Plan, report: Report, work: Path) -> None:
    print("fills ...", flush=True)
    stack = bench_fills.Stack()
    results = []
    saturation = 0
    try:
        for rate in plan.fill_rates:
            results.append(bench_fills.run_rate(stack, rate, plan.fill_seconds))
        # The saturation point: step up until the gateway no longer keeps pace.
        for rate in plan.saturation_steps:
            result = bench_fills.run_rate(stack, rate, plan.fill_seconds / 2)
            if not bench_fills.sustained(result):
                break
            saturation = rate
        deposits = bench_fills.run_deposits(stack)
    finally:
        stack.close()
    # The floor at the first rate: a bare client on the same simulator, no gateway.
    kraken_floor = bench_fills.run_floor(plan.fill_rates[0], min(plan.fill_seconds, 3.0))
    busy_us, woken_us = bench_fills.wake_penalty(200 if plan.smoke else 2000)
    # wss://, as in production, at the first rate: what TLS adds.
    secure = bench_fills.Stack(tls=True)
    try:
        over_tls = bench_fills.run_rate(secure, plan.fill_rates[0], plan.fill_seconds)
    finally:
        secure.close()
    # The second exchange at the first rate, through the same probe and reader.
    second = bench_fills.Stack(exchange="binance")
    try:
        binance = bench_fills.run_rate(second, plan.fill_rates[0], plan.fill_seconds)
        floor = bench_fills.run_floor(plan.fill_rates[0], min(plan.fill_seconds, 3.0), "binance")
    finally:
        second.close()
    report.table(
        "Fills on Binance: exchange to visible",
        ["offered/s", "delivered", "median µs", "p99 µs", "floor median µs", "floor p99 µs",
         "gateway CPU µs/fill"],
        [[f"{binance['rate']:,.0f}", f"{binance['delivered']:,.0f}",
          f"{binance['median_us']:,.0f}", f"{binance['p99_us']:,.0f}",
          f"{floor['median_us']:,.0f}", f"{floor['p99_us']:,.0f}",
          f"{binance['gateway_cpu_us_per_fill']:.0f}"]],
        "The Binance simulator's probe fills (an executionReport NEW, its TRADE and an "
        "outboundAccountPosition each) to a polling reader; the floor is a bare client "
        "subscribed as the gateway is (`tools/bench_fills.py --exchange binance`).",
    )  # fmt: skip

    def row(r: dict[str, float], transport: str, floor: dict[str, float] | None) -> list[str]:
        return [
            f"{r['rate']:,.0f}",
            transport,
            f"{r['delivered']:,.0f}",
            f"{r['median_us']:,.0f}",
            f"{r['p99_us']:,.0f}",
            f"{floor['median_us']:,.0f}" if floor else "",
            f"{floor['p99_us']:,.0f}" if floor else "",
            f"{r['achieved_per_s']:,.0f}",
            f"{r['gateway_cpu_us_per_fill']:.0f}",
        ]

    rows = [
        row(results[0], "ws://", kraken_floor),
        *(row(r, "ws://", None) for r in results[1:]),
        row(over_tls, "wss://", None),
    ]
    report.table(
        "Fills: exchange to visible",
        ["offered/s", "stream", "delivered", "median µs", "p99 µs", "floor median µs",
         "floor p99 µs", "achieved/s", "gateway CPU µs/fill"],
        rows,
        "Simulator, gateway and a polling reader as three processes (tools/bench_fills.py; "
        "`--tls` for the wss:// row, the transport of the real exchanges); the floor is a "
        "bare client subscribed as the gateway is, at the first rate. The machine's cost of "
        f"waking, in the same run: parsing one execution message takes {busy_us:.0f} µs of "
        f"CPU back to back and {woken_us:.0f} µs right after a 1 ms sleep (as at 1,000 "
        "fills/s), so a fill's CPU at 1,000/s is no guide to its CPU under load.",
    )  # fmt: skip
    first = results[0]
    if first["rate"] == 1000:
        report.goal(
            "fills at 1,000/s: median ≤ 300 µs and p99 ≤ 2 ms (ws://)",
            f"{first['median_us']:,.0f} µs / {first['p99_us']:,.0f} µs",
            first["median_us"] <= 300 and first["p99_us"] <= 2000,
        )
    busiest = max(results, key=lambda r: r["rate"])
    report.goal(
        "≤ 50 µs of gateway CPU per fill over the websocket",
        f"{busiest['gateway_cpu_us_per_fill']:.0f} µs at {busiest['rate']:,.0f}/s offered, "
        f"{first['gateway_cpu_us_per_fill']:.0f} µs at {first['rate']:,.0f}/s",
        busiest["gateway_cpu_us_per_fill"] <= 50,
    )
    if plan.saturation_steps:
        report.sections.append(
            f"Saturation: the highest offered rate sustained (every fill delivered, p99 lag "
            f"under {bench_fills.SUSTAINED_P99_US / 1000:.0f} ms), stepping "
            f"{', '.join(f'{r:,}' for r in plan.saturation_steps)} fills/s: **{saturation:,}/s**."
        )
    report.table(
        "Deposits: exchange to visible",
        ["deposits", "median ms", "p99 ms", "max ms", "floor median ms", "floor p99 ms"],
        [
            [
                f"{deposits['count']:.0f}",
                f"{deposits['median_ms']:.1f}",
                f"{deposits['p99_ms']:.1f}",
                f"{deposits['max_ms']:.1f}",
                f"{deposits['floor_median_ms']:.1f}",
                f"{deposits['floor_p99_ms']:.1f}",
            ]
        ],
        "`/sim/deposit` until slot 0 shows it: the ledger entry on Kraken's `balances` "
        "channel; the floor is the control call's own HTTP round trip (tools/bench_fills.py).",
    )
    report.goal(
        "deposit visible ≤ 2 s (p99)",
        f"{deposits['p99_ms']:.0f} ms",
        deposits["p99_ms"] <= 2000,
    )
    for r in results:
        if r["rate"] == 10000:
            # What the rule judges (every fill, the lag's p99), then the rate a short run's
            # start-up and tail pull down, which alone would read as a miss.
            limit_ms = bench_fills.SUSTAINED_P99_US / 1000
            report.goal(
                "fills sustained ≥ 10,000/s",
                f"{r['delivered']:,.0f} of {r['fills']:,.0f} offered at 10,000/s delivered, "
                f"p99 lag {r['p99_us'] / 1000:,.1f} ms (limit {limit_ms:.0f} ms); "
                f"{r['achieved_per_s']:,.0f}/s from the first send to the last seen",
                bench_fills.sustained(r),
            )


# -- catch-up after a gap ---------------------------------------------------------------


def catch_up(plan: Plan, report: Report, work: Path) -> None:
    print("catch-up ...", flush=True)
    rows = []
    for tier in plan.catch_up_tiers:
        for gap in plan.catch_up_gaps:
            result = bench_catchup.run(tier, gap)
            bound = result["bound_with_latency_s"]
            ratio = result["seconds"] / bound
            rows.append([
                tier, f"{gap:,}", f"{result['calls']:.0f}", f"{result['cost']:.0f}",
                f"{result['seconds']:.1f}", f"{result['bound_s']:.1f}", f"{bound:.1f}",
                f"{ratio:.2f}", f"{result['refused']:.0f}",
            ])  # fmt: skip
            if bound >= 10:  # a ratio of fractions of a second says nothing
                report.goal(
                    f"catch-up of {gap:,} trades at {tier} within 1.2x of the counter's bound",
                    f"{ratio:.2f}x ({result['seconds']:.0f} s against {bound:.0f} s)",
                    ratio <= 1.2,
                )
    report.table(
        "Catch-up after a gap, against Kraken's API counter",
        ["tier", "trades", "calls", "counter units", "seconds", "counter bound s",
         "bound with latency s", "ratio", "refused"],
        rows,
        "The gateway's catch-up (TradesHistory pages at 2, QueryOrders of 50 orders at 1) "
        "against the simulator enforcing the tier's counter, 125 ± 25 ms a round trip, one "
        "order per trade (the most lookups); on a MockClock, so the seconds are the "
        "counter's own. Bound: max(0, cost - maximum) / decay, and at least a round trip per "
        "call. `python tools/bench_catchup.py`.",
    )  # fmt: skip


# -- replication through Redis ---------------------------------------------------------------


def replication(plan: Plan, report: Report, work: Path) -> None:
    print("replication ...", flush=True)
    if shutil.which("redis-server") is None:
        print("  no redis-server: skipped (apt-get install redis-server)")
        return
    # Imported here: it brings coredis and the test fixtures, ~15 MB that the memory
    # worker (this same script) would otherwise count as the gateway's.
    import bench_replication  # noqa: PLC0415

    result = bench_replication.run(
        samples=20 if plan.smoke else 300,
        seconds=0.3 if plan.smoke else 3.0,
        rounds=1 if plan.smoke else bench_replication.ROUNDS,
    )
    report.table(
        "Replication through Redis",
        ["measure", "replicated", "floor"],
        bench_replication.table_rows(result),
        "A gateway with --replicate, a redis-server and a mirror with its own directories, "
        "all on loopback; the Kraken simulator trading at 1,000 fills/s during the first "
        "row. `python tools/bench_replication.py`.",
    )
    rate_on, rate_off, rates_on = result["rate_on"], result["rate_off"], result["rates_on"]
    assert isinstance(rate_on, float) and isinstance(rate_off, float)
    assert isinstance(rates_on, list)
    report.goal(
        "command throughput with replication on within 10% of off (8 clients)",
        f"{rate_on:,.0f}/s against {rate_off:,.0f}/s ({(rate_on / rate_off - 1) * 100:+.1f}%; "
        f"medians of alternating rounds: {len(rates_on)})",
        rate_on >= 0.9 * rate_off,
    )


# -- memory and recovery --------------------------------------------------------------------


def memory_worker(root: str, count: int, replies: int) -> None:
    """The real service (fake exchange at the edge) fed ``count`` fills, then ``replies``
    commands with request ids (both caches full); print RSS and CPU."""
    sys.path.insert(0, str(ROOT))
    from tests.gateway.fake_exchange import FakeExchange  # noqa: PLC0415 - tools only

    base = Path(root)
    config = GatewayConfig(
        shm_dir=base, state_root=base / "state", run_dir=base / "run", reconcile_interval_s=0
    )
    exchange = FakeExchange({"USD": "1000000000", "BTC": "1000000"})

    async def main() -> dict[str, float]:
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(run_gateway, config, exchange)
            rss_ready = _rss_mb()
            start_cpu = time.process_time()
            started = time.perf_counter()
            now = time.time_ns()
            for n in range(count):
                side = Side.BUY if n % 2 == 0 else Side.SELL
                await exchange.push_fill(
                    Fill(
                        f"T{n:09d}",
                        "BTC",
                        "USD",
                        side,
                        Decimal("0.001"),
                        Decimal("60000.5"),
                        (Fee("USD", Decimal("0.01")),),
                        userref=2 + n % 3,
                        timestamp_ns=now + n,
                    )
                )
            while running.core.stats.fills_applied < count:
                await trio.sleep(0.01)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - start_cpu
            rss_fills = _rss_mb()
            await _remember_replies(exchange, replies)
            status = Path("/proc/self/status").read_text()
            # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a worker
            # would inherit the high-water mark of the process that forked it.
            result = {
                "fills": count,
                "seconds": elapsed,
                "cpu_us_per_fill": cpu / count * 1e6,
                "rss_mb": _status_kb(status, "VmRSS") / 1024,
                "max_rss_mb": _status_kb(status, "VmHWM") / 1024,
                "fill_ids_kept": len(running.core.ledger.applied.ids),
                "replies_kept": len(running.core.ledger.replies),
                "rss_ready_mb": rss_ready,
                "rss_after_fills_mb": rss_fills,
            }
            running.stop.set()
            return result

    print(json.dumps(trio.run(main)), flush=True)


async def _remember_replies(exchange: FakeExchange, count: int) -> None:
    """``count`` allocate / release pairs' halves with request ids, as strategies send them."""
    in_flight: list[CommandReceived] = []
    for n in range(count):
        kind = CommandKind.ALLOCATE if n % 2 == 0 else CommandKind.RELEASE
        index = 5 + n // 2 % 3  # slots the fills (2..4) leave alone; each pair on one slot
        command = BalanceCommand(kind, f"strategy-{index}", "USD", index, UNIT)
        message = CommandReceived(command, f"{uuid.UUID(int=n)}")
        await exchange.push(message)
        in_flight.append(message)
        if len(in_flight) >= 256:  # as many as 256 clients waiting at once
            for sent in in_flight:
                reply = await sent.reply.wait()
                assert reply["ok"], reply
            in_flight.clear()
    for sent in in_flight:
        assert (await sent.reply.wait())["ok"]


def _rss_mb() -> float:
    return _status_kb(Path("/proc/self/status").read_text(), "VmRSS") / 1024


def _status_kb(status: str, field_name: str) -> int:
    return int(status.split(f"{field_name}:")[1].split(maxsplit=1)[0])


def startup_worker(root: str) -> None:
    """Time a gateway from nothing to ready on the state in ``root`` (fake exchange)."""
    sys.path.insert(0, str(ROOT))
    from tests.gateway.fake_exchange import FakeExchange  # noqa: PLC0415 - tools only

    base = Path(root)
    config = GatewayConfig(
        shm_dir=base, state_root=base / "state", run_dir=base / "run", reconcile_interval_s=0
    )

    async def main() -> float:
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(
                run_gateway, config, FakeExchange({"USD": "1", "BTC": "1"})
            )
            ready = time.perf_counter() - started
            running.stop.set()
        return ready

    print(json.dumps({"seconds": trio.run(main)}), flush=True)


def build_journal(root: Path, events: int, snapshot: bool) -> None:
    """A state directory of ``events`` journalled fills (and optionally a snapshot of them)."""
    ledger = Ledger(8)
    journal, _ = Journal.open(root / "state" / "kraken", lambda s: None, lambda p: None)
    first = TotalsSet({"USD": 10**9 * UNIT, "BTC": 10**6 * UNIT})
    apply_event(ledger, first)
    journal.append(encode_event(first))
    base = time.time_ns() - events * 1000
    for n in range(events):
        fill = Fill(
            f"T{n:09d}",
            "BTC",
            "USD",
            Side.BUY if n % 2 else Side.SELL,
            Decimal("0.001"),
            Decimal("60000.5"),
            (Fee("USD", Decimal("0.01")),),
            userref=2 + n % 3,
            timestamp_ns=base + n * 1000,
        )
        event = FillApplied(fill)
        outcome = apply_event(ledger, event)  # journalled as the writer does, with its booking
        journal.append(encode_event(event, outcome.fill))
        if n % 20_000 == 0:
            journal.commit()
    journal.commit()
    if snapshot:
        journal.write_snapshot(ledger.to_snapshot())
    journal.close()


# What a Kraken run imports before its first line runs: the command line, the service and
# the exchange's session (its REST and websocket stacks).
RUN_IMPORTS = "import gateway.__main__, gateway.service, gateway.exchanges.kraken.session"


def exec_to_ready(work: Path, runs: int) -> dict[str, list[float]]:
    """``gateway run`` as an operator or systemd starts it, from exec to its ready file,
    against the Kraken simulator, each run on a state directory of its own (an empty API
    counter: no pacing); beside it, each in a process of its own, the interpreter's start
    and the imports a Kraken run loads. Seconds."""
    run_dir = Path(tempfile.mkdtemp(prefix="hft-x-"))
    simulator = LocalStack(work / "sim", run_dir)
    times: dict[str, list[float]] = {"ready": [], "interpreter": [], "imports": []}
    try:
        # One key for every run: its counter unlimited, or each start would wait for
        # the ones before it (the gateways' own models start empty, in new directories).
        simulator.start_sim("--tier", "unlimited")
        for n in range(runs):  # interleaved: noise falls on the three alike
            for name, code in (("interpreter", "pass"), ("imports", RUN_IMPORTS)):
                started = time.perf_counter()
                subprocess.run([sys.executable, "-c", code], check=True)
                times[name].append(time.perf_counter() - started)
            gateway = LocalStack(work / f"run{n}", run_dir)
            gateway.address = simulator.address
            started = time.perf_counter()
            gateway.start_gateway("--reconcile-interval", "0")
            times["ready"].append(time.perf_counter() - started)
            gateway.stop()
    finally:
        simulator.kill()
        shutil.rmtree(run_dir, ignore_errors=True)
    return times


def _open_and_replay(state_root: Path) -> tuple[int, float]:
    """One restore of the journal under ``state_root``, as the service does it: events, s."""
    started = time.perf_counter()
    _, journal, restored = restore_state(GatewayConfig(state_root=state_root))
    seconds = time.perf_counter() - started
    journal.close()
    return restored.replayed, seconds


def replay_rates(report: Report, work: Path, events: int) -> None:
    """Replay on its own, in this process: events/s against reading and decoding alone."""
    state = work / f"replay-{events}"
    state.mkdir()
    build_journal(state, events, snapshot=False)
    directory = state / "state" / "kraken"
    data = b"".join(segment.read_bytes() for segment in segments_of(directory))
    floor_s = replay_s = math.inf
    replayed = 0
    for _ in range(REPLAY_PASSES):  # in turn: the machine's drift falls on both
        started = time.perf_counter()
        for record in scan_records(data).records:
            cbor2.loads(record)
        floor_s = min(floor_s, time.perf_counter() - started)
        replayed, seconds = _open_and_replay(state / "state")
        replay_s = min(replay_s, seconds)
    rate, floor = replayed / replay_s, replayed / floor_s
    report.table(
        "Replay",
        ["events", "replay events/s", "floor: read, check and decode only, events/s"],
        [[f"{replayed:,}", f"{rate:,.0f}", f"{floor:,.0f}"]],
        "The service's restore (`Journal.open` and `replay_events`) of a journal of fills "
        "(no snapshot), in one process, against scanning the same records and decoding each "
        "with cbor2; "
        f"the best of {REPLAY_PASSES} passes of each, in turn.",
    )
    report.goal("replay ≥ 300,000 events/s", f"{rate:,.0f}/s", rate >= 300_000)


def memory_and_recovery(plan: Plan, report: Report, work: Path) -> None:
    print("memory ...", flush=True)
    root = work / "memory"
    root.mkdir()
    out, _ = _spawn(
        "--memory-worker", str(root), str(plan.memory_fills), str(plan.memory_replies)
    ).communicate(timeout=1800)
    memory = json.loads(out)
    report.table(
        "Memory and CPU under fills",
        [
            "fills",
            "seconds",
            "CPU µs/fill",
            "RSS MB",
            "peak RSS MB",
            "fill ids kept",
            "replies kept",
        ],
        [
            [
                f"{memory['fills']:,}",
                f"{memory['seconds']:.1f}",
                f"{memory['cpu_us_per_fill']:.0f}",
                f"{memory['rss_mb']:.0f}",
                f"{memory['max_rss_mb']:.0f}",
                f"{memory['fill_ids_kept']:,}",
                f"{memory['replies_kept']:,}",
            ]
        ],
        "The real service in one process, fills pushed into its writer channel as fast as it takes "
        "them (no websocket): what the ledger, journal and store cost per fill; then commands with "
        "request ids until the remembered replies are full too. RSS is read with both caches full.",
    )
    if memory["fills"] >= 1_000_000:
        report.goal(
            "gateway RSS ≤ 100 MB after 1,000,000 fills, both caches full",
            f"{memory['max_rss_mb']:.0f} MB",
            memory["max_rss_mb"] <= 100,
        )
    print("startup ...", flush=True)
    rows = []
    for events in plan.journal_sizes:
        for snapshot in (False, True):
            state = work / f"journal-{events}-{snapshot}"
            state.mkdir()
            build_journal(state, events, snapshot)
            out, _ = _spawn("--startup-worker", str(state)).communicate(timeout=1800)
            seconds = json.loads(out)["seconds"]
            rows.append([f"{events:,}", "yes" if snapshot else "no", f"{seconds:.2f}"])
            if events == SNAPSHOT_EVERY_EVENTS and not snapshot:
                report.goal(
                    f"restart to ready ≤ 1 s at the worst case in operation ({events:,} events "
                    "replayed past the last snapshot)",
                    f"{seconds:.2f} s",
                    seconds <= 1,
                )
            if events == 1_000_000:
                kind = "with" if snapshot else "without"
                report.goal(
                    f"restart to ready ≤ 2 s with 1,000,000 events ({kind} a snapshot)",
                    f"{seconds:.1f} s",
                    seconds <= 2,
                )
    replay_rates(report, work, plan.journal_sizes[-1 if plan.smoke else 1])
    started = exec_to_ready(work / "exec", 1 if plan.smoke else 7)
    ready, interpreter, imports = (
        statistics.median(started[name]) for name in ("ready", "interpreter", "imports")
    )
    report.table(
        "Start from exec",
        ["measure", "seconds (median)"],
        [
            ["`gateway run` from exec to ready (Kraken simulator, a new state directory)",
             f"{ready:.2f}"],
            ["the interpreter alone (`python -c pass`)", f"{interpreter:.2f}"],
            ["the interpreter and a Kraken run's imports", f"{imports:.2f}"],
        ],
        "What a restart costs before the table above begins: an operator (or systemd) starts "
        "a process, which imports the command line, the service and the exchange's session. "
        "Those imports are nearly all of it: the start itself against the simulator on "
        "loopback (lock, restore, REST bootstrap, subscription; the simulator's counter "
        "unlimited) takes tens of milliseconds, within the noise of the imports measured "
        "apart. A restart soon after another also waits for Kraken's API counter (a start's "
        "calls cost 8-10 of it; docs/kraken.md). `gateway status` imports neither the "
        "service nor an exchange.",
    )  # fmt: skip
    report.table(
        "Startup and recovery",
        ["journalled events", "snapshot", "seconds to ready"],
        rows,
        "From start to balances published and the socket open: lock, restore (snapshot + replay), "
        f"bootstrap. The gateway writes a snapshot every {SNAPSHOT_EVERY_EVENTS:,} events and on "
        f"every clean stop, so in operation a restart replays at most {SNAPSHOT_EVERY_EVENTS:,}.",
    )


# -- plots and report ------------------------------------------------------------------------


def _pyplot() -> ModuleType:
    import matplotlib  # noqa: PLC0415 - optional: the bench extra installs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def bar_plot(work: Path, name: str, labels: list[str], values: list[float], ylabel: str) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 4.5))
    axis.barh(labels, values, color="#4477aa")
    axis.set_xscale("log")
    axis.set_xlabel(ylabel)
    for y, value in enumerate(values):
        axis.text(value, y, f" {value:.3g}", va="center", fontsize=8)
    figure.tight_layout()
    path = work / f"{name}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def line_plot(
    work: Path,
    name: str,
    xs: list[int],
    ys: list[float],
    xlabel: str,
    ylabel: str,
    *,
    log_x: bool = False,
) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(xs, ys, marker="o", color="#4477aa")
    if log_x:
        axis.set_xscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path = work / f"{name}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_report(report: Report, out: Path, plan: Plan, elapsed: float) -> None:
    images = out.parent / out.stem
    images.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python tools/bench_suite.py{' --smoke' if plan.smoke else ''}` "
        f"in {elapsed / 60:.1f} min on {os.cpu_count()} CPUs, Python {platform.python_version()}. "
        "Machines are shared and noisy: compare rows of one run, not runs.",
        "",
        "## Goals",
        "",
        "| goal | measured | |",
        "|---|---|---|",
    ]
    lines += [
        f"| {what} | {measured} | {'met' if met else '**missed**'} |"
        for what, measured, met in report.goals
    ]
    lines.append("")
    lines.append("Why the missed goals are missed, and the next steps: `docs/performance.md`.")
    for section in report.sections:
        lines += ["", section]
    lines += ["", "## Plots", ""]
    for name, path in report.plots.items():
        target = images / path.name
        shutil.copy(path, target)
        lines.append(f"![{name}]({out.stem}/{target.name})")
    out.write_text("\n".join(lines) + "\n")


SECTIONS = (read_path, scaling, commands, fills, catch_up, replication, memory_and_recovery)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="every section, tiny, in seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--section",
        action="append",
        choices=[section.__name__ for section in SECTIONS],
        help="run only this section (repeatable); the report then holds only those",
    )
    parser.add_argument("--read-worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--write-worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--startup-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The synthetic fills drive strategy slots below zero on purpose: no warning per crossing.
    logging.basicConfig(level=logging.ERROR)
    if args.read_worker:
        read_worker(args.read_worker[0], float(args.read_worker[1]))
        return
    if args.write_worker:
        write_worker(args.write_worker[0], float(args.write_worker[1]), float(args.write_worker[2]))
        return
    if args.memory_worker:
        memory_worker(args.memory_worker[0], int(args.memory_worker[1]), int(args.memory_worker[2]))
        return
    if args.startup_worker:
        startup_worker(args.startup_worker)
        return
    plan = Plan.for_run(args.smoke)
    report = Report()
    work = Path(tempfile.mkdtemp(prefix="bench-suite-"))
    started = time.monotonic()
    try:
        for section in SECTIONS:
            if args.section and section.__name__ not in args.section:
                continue
            directory = work / section.__name__
            directory.mkdir()
            section(plan, report, directory)
    finally:
        elapsed = time.monotonic() - started
    write_report(report, args.out, plan, elapsed)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out} in {elapsed:.0f} s")
    for what, measured, met in report.goals:
        print(f"  {'met   ' if met else 'MISSED'} {what}: {measured}")


if __name__ == "__main__":
    main()
