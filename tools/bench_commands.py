"""Command-path benchmark: durable allocate round trips and throughput against the fsync floor.

    .venv/bin/python tools/bench_commands.py [--repetitions 5] [--count 2000] [--markdown FILE]

A real gateway process (the service with the test suite's fake exchange at the
edge: no network) journals to a state directory on the same disk as the floor
measurement; every acknowledged command has been fsynced. Cases interleave in
each repetition so machine noise falls on all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.command import (  # noqa: E402
    KRAKEN_STRATEGY_BALANCE_CMD,
    IPCCommandSystem,
    kraken_strategy_balance,
)

SERVICE = "kraken_gateway"
RAW_CLIENT = Path(__file__).with_name("raw_client.py")  # standard library only: quick to start
TOTALS = {"USD": "1000000000"}


@dataclass
class Series:
    name: str
    samples_us: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.samples_us)

    def p99(self) -> float:
        ordered = sorted(self.samples_us)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def fsync_floor(directory: Path, count: int) -> list[float]:
    """A bare 100-byte append + fsync, ``count`` times: the durable-write floor."""
    path = directory / "floor.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    record = b"x" * 100
    samples = []
    try:
        for _ in range(count):
            start = time.perf_counter_ns()
            os.write(fd, record)
            os.fsync(fd)
            samples.append((time.perf_counter_ns() - start) / 1000)
    finally:
        os.close(fd)
        path.unlink()
    return samples


def _payload(cmd: str, index: int, strategy: str) -> dict[str, object]:
    return kraken_strategy_balance(
        strategy=strategy, cmd=cmd, currency="USD", index=index, amount=1
    )


def blocking_round_trips(run_dir: Path, count: int) -> list[float]:
    system = IPCCommandSystem("bench-blocking", run_dir=run_dir)
    system.start()
    samples = []
    for n in range(count):
        payload = _payload("allocate" if n % 2 == 0 else "release", 2, "bench-blocking")
        start = time.perf_counter_ns()
        system.send_command_blocking(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, payload)
        samples.append((time.perf_counter_ns() - start) / 1000)
    system.close()
    return samples


async def _trio_round_trips(run_dir: Path, count: int) -> list[float]:
    system = IPCCommandSystem("bench-trio", run_dir=run_dir)
    system.start()
    samples = []
    for n in range(count):
        payload = _payload("allocate" if n % 2 == 0 else "release", 3, "bench-trio")
        start = time.perf_counter_ns()
        await system.send_command(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, payload)
        samples.append((time.perf_counter_ns() - start) / 1000)
    await system.aclose()
    return samples


async def _concurrent(run_dir: Path, clients: int, per_client: int) -> tuple[float, list[float]]:
    """``clients`` Trio tasks, each with its own connection; returns (commands/s, latencies)."""
    latencies: list[float] = []

    async def one(number: int) -> None:
        system = IPCCommandSystem(f"bench-c{number}", run_dir=run_dir)
        system.start()
        index = 4 + number % 4
        strategy = f"bench-c{index}"
        for n in range(per_client):
            payload = _payload("allocate" if n % 2 == 0 else "release", index, strategy)
            start = time.perf_counter_ns()
            await system.send_command(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, payload)
            latencies.append((time.perf_counter_ns() - start) / 1000)
        await system.aclose()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for number in range(clients):
            nursery.start_soon(one, number)
    elapsed = time.perf_counter() - start
    return clients * per_client / elapsed, latencies


def _concurrent_worker(run_dir: str, clients: int, per_client: int) -> None:
    rate, latencies = trio.run(_concurrent, Path(run_dir), clients, per_client)
    print(json.dumps({"rate": rate, "latencies": latencies}))


def concurrent_in_processes(
    run_dir: Path, processes: int, per_client: int
) -> tuple[float, list[float]]:
    """``processes`` client processes with one connection each (no shared client GIL)."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(run_dir), "1", str(per_client), str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    latencies: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        latencies.extend(json.loads(out)["latencies"])
    elapsed = time.perf_counter() - start
    return processes * per_client / elapsed, latencies


# -- raw clients and the serving floor -------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RawRun:
    rate: float
    latencies: list[float]
    server_cpu_us: float  # the server's CPU per request


def raw_clients(socket_path: Path, server_pid: int, processes: int, per_client: int) -> RawRun:
    """``processes`` raw client processes, one connection each, started together once all
    are connected (the run and the server's CPU are measured from then)."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(RAW_CLIENT), str(socket_path), str(per_client), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "READY":
            raise SystemExit("a raw client did not connect")
    before = cpu_seconds(server_pid)
    start = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    latencies: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode:
            raise SystemExit(f"a raw client failed: {out[-200:]}")
        latencies.extend(json.loads(out))
    elapsed = time.perf_counter() - start
    total = processes * per_client
    cpu_us = (cpu_seconds(server_pid) - before) / total * 1e6
    return RawRun(total / elapsed, latencies, cpu_us)


async def _echo_server(path: str) -> None:
    """The floor: a Trio server that answers each line at once, as the gateway's command
    server does but with no parsing, no writer and no disk."""
    reply = b'{"ok": true}\n'

    async def answer(stream: trio.SocketStream) -> None:
        sock = stream.socket
        while await sock.recv(65536):
            await sock.send(reply)

    listener = trio.socket.socket(socket.AF_UNIX)
    await listener.bind(path)
    listener.listen(128)
    await trio.serve_listeners(answer, [trio.SocketListener(listener)])


def start_echo(directory: Path) -> tuple[subprocess.Popen[bytes], Path]:
    path = directory / "echo.sock"
    process = subprocess.Popen([sys.executable, __file__, "--echo", str(path)])
    deadline = time.monotonic() + 30
    while not path.exists():
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit("the echo server did not start")
        time.sleep(0.02)
    return process, path


def start_gateway(root: Path, run_dir: Path, cpu: int | None) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HFT_SHM_DIR": str(root / "shm"),
        "HFT_STATE_DIR": str(root / "state"),
        "HFT_RUN_DIR": str(run_dir),
    }
    (root / "shm").mkdir()
    log = open(root / "gateway.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "gateway" / "fake_gateway.py"), json.dumps(TOTALS)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    if cpu is not None:
        os.sched_setaffinity(process.pid, {cpu})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(run_dir / f"{SERVICE}.sock"))
            return process
        except OSError:
            time.sleep(0.05)
        finally:
            probe.close()
    process.kill()
    raise SystemExit(f"gateway did not start; see {root / 'gateway.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000, help="round trips per case")
    parser.add_argument("--per-client", type=int, default=2500, help="commands per client")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument(
        "--layout",
        choices=["split", "same", "free"],
        default="free",
        help="gateway on CPU 0 and clients on CPU 1 (split), both on CPU 0 (same), or unpinned",
    )
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--echo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        trio.run(_echo_server, args.echo)
        return
    if args.worker:
        run_dir, clients, per_client, _ = args.worker
        _concurrent_worker(run_dir, int(clients), int(per_client))
        return

    root = Path(tempfile.mkdtemp(prefix="bench-cmd-", dir=os.environ.get("BENCH_DIR", "/tmp")))
    run_dir = Path(tempfile.mkdtemp(prefix="hft-"))
    cpus = sorted(os.sched_getaffinity(0))
    gateway_cpu = None if args.layout == "free" or len(cpus) < 2 else cpus[0]
    if gateway_cpu is not None:
        os.sched_setaffinity(0, {cpus[0] if args.layout == "same" else cpus[1]})
    gateway = start_gateway(root, run_dir, gateway_cpu)
    floor = Series("floor: 100-byte append + fsync")
    blocking = Series("allocate round trip, 1 blocking client")
    trio_client = Series("allocate round trip, 1 Trio client")
    eight_tasks = Series("8 Trio clients, one process (latency per command)")
    eight_procs = Series("8 client processes (latency per command)")
    try:
        for repetition in range(args.repetitions):
            print(f"repetition {repetition + 1}/{args.repetitions}", flush=True)
            floor.samples_us += fsync_floor(root, args.count)
            blocking.samples_us += blocking_round_trips(run_dir, args.count)
            trio_client.samples_us += trio.run(_trio_round_trips, run_dir, args.count)
            rate, latencies = trio.run(_concurrent, run_dir, 8, args.per_client)
            eight_tasks.rates.append(rate)
            eight_tasks.samples_us += latencies
            rate, latencies = concurrent_in_processes(run_dir, 8, args.per_client)
            eight_procs.rates.append(rate)
            eight_procs.samples_us += latencies
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)

    lines = [
        f"Command: `python tools/bench_commands.py --repetitions {args.repetitions} "
        f"--count {args.count} --per-client {args.per_client} --layout {args.layout}`; "
        f"{os.cpu_count()} CPUs, state directory and floor file on the same disk, fsync on.",
        "",
        "| case | median µs | p99 µs | commands/s (median of repetitions) |",
        "|---|---:|---:|---:|",
    ]
    for series in (floor, blocking, trio_client, eight_tasks, eight_procs):
        rate_cell = f"{statistics.median(series.rates):,.0f}" if series.rates else ""
        lines.append(
            f"| {series.name} | {series.median():.0f} | {series.p99():.0f} | {rate_cell} |"
        )
    lines += [
        "",
        f"Durable allocate over the floor: blocking {blocking.median() - floor.median():+.0f} µs, "
        f"Trio {trio_client.median() - floor.median():+.0f} µs (goal: <= +200 µs).",
    ]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
