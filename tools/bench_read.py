"""Read-path benchmark: our shared-memory reads against the floor and the alternatives.

    .venv/bin/python tools/bench_read.py [--repetitions 7] [--seconds 0.3] [--markdown FILE]

Every case runs in each repetition, interleaved, so machine noise falls on all
of them alike. Each case is run with the writer idle and again while a writer
process rewrites the very record being read, as fast as it can.

Fast cases are timed in batches of ``BATCH`` calls (a clock read costs more
than the call itself); the per-call figure is the batch time divided by the
batch size, so their p99 is a p99 of batch means. Round trips (Redis, socket)
are timed one call at a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import clients as hft
from clients.reader import forget_readers
from mmapstore import StoreWriter, store_path

BATCH = 200
STRATEGY_COUNT = 8
Call = Callable[[], object]


@dataclass
class Result:
    name: str
    writer: str
    samples_us: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_us)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples_us)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def time_batches(call: Call, seconds: float, batch: int) -> list[float]:
    """Per-call microseconds of each batch run within ``seconds``."""
    samples: list[float] = []
    clock = time.perf_counter_ns
    loop = range(batch)
    deadline = clock() + int(seconds * 1e9)
    while clock() < deadline:
        start = clock()
        for _ in loop:
            call()
        samples.append((clock() - start) / batch / 1000)
    return samples


# -- the writer process ------------------------------------------------------------------


def run_writer(path: str, seconds: float) -> None:
    """Rewrite the USD record as fast as possible (the 'writer busy' condition)."""
    writer = StoreWriter.open(path, exchange="kraken", strategy_count=STRATEGY_COUNT)
    index = writer.currencies["USD"]
    scale = writer.scale_of("USD")
    values = [0] * STRATEGY_COUNT
    deadline = time.monotonic() + seconds
    published = 0
    print("READY", flush=True)
    while time.monotonic() < deadline:
        for n in range(1000):
            values[1] = n * 10**scale
            values[0] = values[1]
            writer.publish(index, values)
        published += 1000
        writer.heartbeat()
    writer.close()
    print(published, flush=True)


def seed_store(path: Path) -> None:
    with StoreWriter.open(path, exchange="kraken", strategy_count=STRATEGY_COUNT) as writer:
        for name in ("USD", "USDT", "USDC", "BTC", "ETH"):
            writer.publish_decimal(name, [Decimal(100000), Decimal(100000)] + [0] * 6)
        writer.mark_live()


# -- the alternatives ----------------------------------------------------------------------


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], Call] | None:
    server = shutil.which("redis-server")
    try:
        import redis  # noqa: PLC0415 - optional: only the bench extra installs it
    except ImportError:
        print("redis-py not installed (pip install '.[bench]'): Redis not measured")
        return None
    if server is None:
        print("redis-server not found (apt-get install redis-server): Redis not measured")
        return None
    sock = workdir / "redis.sock"
    process = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        if sock.exists():
            break
        time.sleep(0.02)
    client = redis.Redis(unix_socket_path=str(sock))
    client.set("balance:kraken:USD:1", "100000")
    return process, lambda: client.get("balance:kraken:USD:1")


def serve_socket(path: str) -> None:
    """A minimal request/response server: 1-byte request, 8-byte float reply."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    print("READY", flush=True)
    conn, _ = listener.accept()
    reply = struct.pack("<d", 100000.0)
    while conn.recv(1):
        conn.sendall(reply)


def start_socket_server(workdir: Path) -> tuple[subprocess.Popen[str], Call]:
    path = str(workdir / "rr.sock")
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-socket", path], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    process.stdout.readline()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)

    def round_trip() -> object:
        client.send(b"q")
        return client.recv(8)

    return process, round_trip


# -- the run ---------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> list[Result]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-read-"))
    os.environ["HFT_SHM_DIR"] = str(workdir)
    path = store_path("kraken")
    seed_store(path)
    forget_readers()

    manager = hft.StrategyBalanceManager(hft.Exchange.KRAKEN, strategy_count=STRATEGY_COUNT)
    reader = manager._reader
    assert reader is not None
    # The directory's entry, not a lookup: the floor must not put the str "USD" in
    # the reader's cache, where Currency.USD would then match it by comparison
    # (a measured row below), not by identity.
    float_offset = reader._by_name["USD"]
    floor_struct = struct.Struct("<d")
    mm = reader._mm
    floor_at = (float_offset[1] + 1) * 8
    usd = hft.Currency.USD
    kraken, balance = hft.Exchange.KRAKEN, hft.DataType.BALANCE

    fast: dict[str, Call] = {
        "floor: struct.unpack_from": lambda: floor_struct.unpack_from(mm, floor_at),
        "get_balance": lambda: manager.get_balance(usd, 1),
        "get_balances (8 slots)": lambda: manager.get_balances(usd),
        "getSingleQuoteCurrency": lambda: hft.getSingleQuoteCurrency(kraken, balance, usd),
    }
    slow: dict[str, Call] = {}
    servers: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    redis_case = start_redis(workdir)
    if redis_case is not None:
        servers.append(redis_case[0])
        slow["Redis GET (Unix socket, redis-py)"] = redis_case[1]
    socket_server, socket_call = start_socket_server(workdir)
    servers.append(socket_server)
    slow["Unix-socket request/response"] = socket_call

    results: dict[tuple[str, str], Result] = {}
    try:
        for condition in ("idle", "full speed"):
            writer = None
            if condition == "full speed":
                budget = args.repetitions * (len(fast) + len(slow)) * args.seconds * 3 + 30
                writer = subprocess.Popen(
                    [sys.executable, __file__, "--writer", str(path), str(budget)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert writer.stdout is not None
                writer.stdout.readline()
            for repetition in range(args.repetitions):
                print(f"[{condition}] repetition {repetition + 1}/{args.repetitions}", flush=True)
                cases = [(n, c, BATCH) for n, c in fast.items()]
                cases += [(n, c, 1) for n, c in slow.items()]
                for name, call, batch in cases:
                    samples = time_batches(call, args.seconds, batch)
                    key = (name, condition)
                    results.setdefault(key, Result(name, condition, [])).samples_us.extend(samples)
            if writer is not None:
                writer.terminate()
                writer.wait()
            print(f"[{condition}] reader retries so far: {reader.retries}")
    finally:
        for server in servers:
            server.terminate()
            server.wait()
        manager.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return list(results.values())


def render(results: list[Result], args: argparse.Namespace) -> str:
    by_key = {(r.name, r.writer): r for r in results}
    get_idle = by_key[("get_balance", "idle")].median
    lines = [
        f"Command: `python tools/bench_read.py --repetitions {args.repetitions} "
        f"--seconds {args.seconds}`; {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}. Per-call µs; 'x get_balance' is the median divided by "
        "get_balance's idle median.",
        "",
        "| case | writer | median µs | p99 µs | x get_balance |",
        "|---|---|---:|---:|---:|",
    ]
    for result in results:
        lines.append(
            f"| {result.name} | {result.writer} | {result.median:.3f} | {result.p99:.3f} "
            f"| {result.median / get_idle:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.3, help="time per case per repetition")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--writer", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--serve-socket", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        run_writer(args.writer[0], float(args.writer[1]))
        return
    if args.serve_socket:
        serve_socket(args.serve_socket)
        return
    table = render(measure(args), args)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
