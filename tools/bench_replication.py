"""Replication through Redis, measured beside its floors in one run (docs/replication.md).

    .venv/bin/python tools/bench_replication.py [--samples 300] [--seconds 3] [--markdown FILE]

Real processes on loopback: the Kraken simulator, a gateway with ``--replicate``,
a redis-server of its own, and a mirror with its own directories ("host B").

- **fill to visible on the mirror**: the simulator sends probe fills at 1,000/s
  (each buys 1e-8 BTC for slot 5, as in ``bench_fills.py``, and it records each
  one's send time); one reader process polls both stores, the gateway's and the
  mirror's, and notes when each first shows n fills.
- **a command's event visible on the mirror**: with fills flowing at 1,000/s, a command is
  sent to the gateway's own socket; from its ok (durable on host A) until the
  mirror's store shows it. Beside it, the same command's visibility on the
  gateway's own store (already there when the ok arrives: the floor).
- **remote command round trip**: a command through the mirror (to the gateway
  through Redis, answered once the mirror shows it) against the same command on
  the gateway's own socket.
- **throughput with replication on and off**: 8 raw clients, against a gateway
  with ``--replicate`` and one without (each with its simulator, both running),
  in alternating rounds; the median of each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_commands import raw_clients  # noqa: E402
from bench_fills import (  # noqa: E402
    PROBE_SLOT,
    SCALED_PER_FILL,
    fill_latencies_us,
    probe_body,
)

from clients.command import STRATEGY_BALANCE_CMD, IPCCommandSystem  # noqa: E402
from gateway.launcher import LocalStack  # noqa: E402
from mmapstore import StoreReader  # noqa: E402
from tests.replication.conftest import MirrorHost, RedisServer  # noqa: E402

CLIENTS = 8
POLL_S = 0.00002
SETTLE_S = 2.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} / {percentile(values, 0.99):.0f}"


def _command(system: IPCCommandSystem, amount: int, request_id: str) -> dict[str, object]:
    return system.send_command_blocking(
        "kraken_gateway",
        STRATEGY_BALANCE_CMD,
        {
            "cmd": "allocate",
            "strategy": "bench",
            "currency": "USD",
            "amount": amount,
            "index": 2,
            "request_id": request_id,
        },
    )


def reader_main(stores: list[str], expected: int, out: str, timeout_s: float) -> None:
    """Poll each store's probe slot; write, per store, (fills seen, first time seen) pairs."""
    readers = [StoreReader(path) for path in stores]
    bases = [reader.record("BTC").scaled[PROBE_SLOT] for reader in readers]
    seen: list[list[tuple[int, int]]] = [[] for _ in readers]
    last = [0 for _ in readers]
    deadline = time.monotonic() + timeout_s
    print("READY", flush=True)
    while min(last) < expected and time.monotonic() < deadline:
        for number, reader in enumerate(readers):
            count = (reader.slot("BTC", PROBE_SLOT).scaled - bases[number]) // SCALED_PER_FILL
            if count != last[number]:
                seen[number].append((count, time.time_ns()))
                last[number] = count
        time.sleep(POLL_S)  # five processes on two cores: a spinning reader would starve them
    Path(out).write_text(json.dumps(seen))


def fill_visibility(
    stack: LocalStack, mirror: MirrorHost, rate: int, seconds: float
) -> tuple[list[float], list[float]]:
    """Microseconds from the simulator's send to each store showing the fill."""
    count = int(rate * seconds)
    out = stack.root / "seen.json"
    reader = subprocess.Popen(
        [sys.executable, __file__, "--reader", str(count), str(out), str(seconds * 4 + 20),
         str(stack.store), str(mirror.store)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert reader.stdout is not None
    reader.stdout.readline()
    stack.control("trade-generator", probe_body("kraken", rate, count))
    reader.wait(timeout=seconds * 4 + 60)
    sent = stack.control("generated", {})["sent_ns"]
    assert isinstance(sent, list)
    on_gateway, on_mirror = json.loads(out.read_text())
    time.sleep(min(SETTLE_S, seconds))
    return fill_latencies_us(sent, on_gateway), fill_latencies_us(sent, on_mirror)


def visibility(
    stack: LocalStack, mirror: MirrorHost, samples: int, settle_s: float = SETTLE_S
) -> tuple[list[float], ...]:
    """Microseconds from the gateway's ok to the value on each store, fills at 1,000/s."""
    stack.control("trade-generator", {"rate": 1000, "count": 1000 * 60, "userrefs": [3, 4]})
    local = IPCCommandSystem("bench", run_dir=stack.run_dir)
    local.start()
    on_mirror: list[float] = []
    on_gateway: list[float] = []
    with StoreReader(stack.store) as gateway_store, StoreReader(mirror.store) as mirror_store:
        for n in range(samples):
            reply = _command(local, 1, f"vis-{n}")
            acked = time.perf_counter_ns()
            expected = Decimal(str(reply["balances"][2]))  # type: ignore[index]
            # Polled with a pause, not spun: on 2 cores a spinning reader would take a
            # whole core from the processes it measures.
            while gateway_store.record("USD").exact(2) != expected:
                time.sleep(POLL_S)
            on_gateway.append((time.perf_counter_ns() - acked) / 1000)
            while mirror_store.record("USD").exact(2) < expected:
                time.sleep(POLL_S)
            on_mirror.append((time.perf_counter_ns() - acked) / 1000)
            time.sleep(0.003)
    local.close()
    stack.control("trade-generator", {"rate": 0, "count": 0})
    time.sleep(settle_s)  # the fills still in flight land before the next measure
    return on_gateway, on_mirror


def round_trips(stack: LocalStack, mirror: MirrorHost, samples: int) -> tuple[list[float], ...]:
    local = IPCCommandSystem("bench-local", run_dir=stack.run_dir)
    remote = IPCCommandSystem("bench-remote", run_dir=mirror.run_dir)
    local.start()
    remote.start()
    local_us: list[float] = []
    remote_us: list[float] = []
    for n in range(samples):  # interleaved: noise falls on both alike
        for system, into, tag in ((local, local_us, "l"), (remote, remote_us, "r")):
            started = time.perf_counter_ns()
            assert _command(system, 1, f"rt-{tag}-{n}")["ok"]
            into.append((time.perf_counter_ns() - started) / 1000)
    local.close()
    remote.close()
    return local_us, remote_us


ROUNDS = 3  # of the throughput measure, each way


def throughputs(
    work: Path, replicate: str, seconds: float, rounds: int = ROUNDS
) -> tuple[list[float], list[float]]:
    """Durable commands/s of 8 raw clients, replication off and on, in alternating rounds.

    Two gateways (each with its simulator) run side by side, loaded one at a time:
    this machine's speed drifts by a fifth over seconds, so one run of each, one
    after the other, measured the drift as often as replication's cost.
    With ``replicate`` the gateway is checked to be publishing. Returns (off, on).
    """
    stacks: list[LocalStack] = []
    run_dirs: list[Path] = []
    try:
        for name, extra in (("off", []), ("on", ["--replicate", replicate])):
            run_dirs.append(Path(tempfile.mkdtemp(prefix=f"hft-{name}-")))
            stack = LocalStack(work / name, run_dirs[-1])
            stacks.append(stack)
            stack.start_sim()
            stack.start_gateway("--reconcile-interval", "0", *extra)
        on = stacks[1]
        deadline = time.monotonic() + 15
        while _replication(on)["state"] != "publishing":  # a measure of on is one that publishes
            if time.monotonic() > deadline:
                raise SystemExit(f"replication never started: {_replication(on)}")
            time.sleep(0.1)
        sends_before = int(str(_replication(on)["sends"]))
        per_client = max(200, int(seconds / rounds * 600))
        rates: tuple[list[float], list[float]] = ([], [])
        for _ in range(rounds):
            for stack, into in zip(stacks, rates, strict=True):
                assert stack.gateway is not None
                run = raw_clients(stack.socket, stack.gateway.pid, CLIENTS, per_client)
                into.append(run.rate)
                if os.environ.get("BENCH_VERBOSE"):
                    side = "on" if stack is on else "off"
                    print(f"  {side}: {run.rate:,.0f}/s, {run.server_cpu_us:.0f} µs CPU/command")
        sends = int(str(_replication(on)["sends"])) - sends_before
        assert sends > 0, _replication(on)
        return rates
    finally:
        for stack in stacks:
            stack.kill()
        for run_dir in run_dirs:
            shutil.rmtree(run_dir, ignore_errors=True)


def _replication(stack: LocalStack) -> dict[str, object]:
    replication = stack.status()["replication"]
    assert isinstance(replication, dict)
    return replication


def run(samples: int, seconds: float, rounds: int = ROUNDS) -> dict[str, list[float] | float]:
    """Every measure of this module, in one run (``rounds`` of the throughput, each way)."""
    if shutil.which("redis-server") is None:
        raise SystemExit("bench_replication: needs redis-server (apt-get install redis-server)")
    work = Path(tempfile.mkdtemp(prefix="bench-repl-"))
    redis = RedisServer(work / "redis")
    redis.start()
    run_a = Path(tempfile.mkdtemp(prefix="hft-a-"))
    run_b = Path(tempfile.mkdtemp(prefix="hft-b-"))
    stack = LocalStack(work / "a", run_a)
    mirror = MirrorHost(stack, work / "b", run_b)
    try:
        stack.start_sim()
        stack.start_gateway("--replicate", redis.url, "--reconcile-interval", "0")
        mirror.start(redis.url)
        fill_gateway, fill_mirror = fill_visibility(stack, mirror, 1000, seconds)
        on_gateway, on_mirror = visibility(stack, mirror, samples, min(SETTLE_S, seconds))
        local_rt, remote_rt = round_trips(stack, mirror, samples)
        mirror.kill()
        stack.kill()
        # A database of its own: the stream of the run before belongs to another gateway.
        database = redis.url.rsplit("/", 1)[0] + "/1"
        rates_off, rates_on = throughputs(work, database, seconds, rounds)
    finally:
        mirror.kill()
        stack.kill()
        redis.kill()
        for path in (work, run_a, run_b):
            shutil.rmtree(path, ignore_errors=True)
    return {
        "fill_gateway": fill_gateway, "fill_mirror": fill_mirror,
        "on_gateway": on_gateway, "on_mirror": on_mirror, "local_rt": local_rt,
        "remote_rt": remote_rt, "rates_on": rates_on, "rates_off": rates_off,
        "rate_on": statistics.median(rates_on), "rate_off": statistics.median(rates_off),
    }  # fmt: skip


def table_rows(result: dict[str, list[float] | float]) -> list[list[str]]:
    def lat(name: str) -> str:
        values = result[name]
        assert isinstance(values, list)
        return summary(values)

    def rates(name: str) -> str:
        values = result[name]
        assert isinstance(values, list)
        return ", ".join(f"{value:,.0f}" for value in values)

    rate_on, rate_off, rates_on = result["rate_on"], result["rate_off"], result["rates_on"]
    assert isinstance(rate_on, float) and isinstance(rate_off, float)
    assert isinstance(rates_on, list)
    rounds = len(rates_on)
    return [
        ["a fill visible, 1,000 fills/s (µs from the simulator's send, p50 / p99)",
         f"mirror: {lat('fill_mirror')}", f"gateway's own store: {lat('fill_gateway')}"],
        ["a command's event visible, fills at 1,000/s (µs from the gateway's ok, p50 / p99)",
         f"mirror: {lat('on_mirror')}", f"gateway's own store: {lat('on_gateway')}"],
        ["command round trip (µs, p50 / p99)", f"through the mirror: {lat('remote_rt')}",
         f"gateway's socket: {lat('local_rt')}"],
        [f"durable commands/s, {CLIENTS} raw clients (median of alternating rounds: {rounds})",
         f"replication on: {rate_on:,.0f} ({rates('rates_on')})",
         f"off: {rate_off:,.0f} ({rates('rates_off')}); on {(rate_on / rate_off - 1) * 100:+.1f}%"],
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reader", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        expected, out, timeout_s, *stores = args.reader
        reader_main(stores, int(expected), out, float(timeout_s))
        return
    result = run(args.samples, args.seconds)
    for row in table_rows(result):
        print(" | ".join(row))
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, float)}))


if __name__ == "__main__":
    main()
