"""Fill-path benchmark: from the simulator sending an execution to a reader process seeing it.

    .venv/bin/python tools/bench_fills.py [--exchange kraken|binance] [--rates 1000,10000]
        [--seconds 5] [--saturation]

Three processes, as in production: the simulator (`gateway sim`), the gateway
(`gateway run` against it) and a reader that polls the shared memory. In probe
mode every fill buys exactly 1e-8 BTC for strategy slot 5, so the slot's
value tells the reader how many fills it has seen; the simulator records each
fill's send time (its execution timestamp). Latency of fill n = the first
moment the reader saw at least n fills, minus fill n's send time. Both use
the same clock (CLOCK_REALTIME on one machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Final

import httpx
import trio
from trio_websocket import open_websocket_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.exchanges.binance.signing import sign_ws_params  # noqa: E402
from gateway.exchanges.binance.sim.server import TRADE_MARK  # noqa: E402
from gateway.exchanges.kraken.parsing import parse_ws_message  # noqa: E402
from gateway.exchanges.kraken.rest import KrakenRestClient  # noqa: E402
from gateway.launcher import LocalStack  # noqa: E402
from mmapstore import StoreReader, store_path  # noqa: E402

PROBE_SLOT = 5
FLOOR_MAX_RATE = 10_000
SUSTAINED_P99_US = 20_000
UPDATE_PREFIX = '{"channel": "executions", "type": "update"'
# Each simulator's trade generator, told to make probe fills: 1e-8 BTC bought for slot 5.
PROBES: dict[str, dict[str, object]] = {
    "kraken": {"pairs": ["XXBTZUSD"], "userrefs": [PROBE_SLOT]},
    "binance": {"symbols": ["BTCUSDT"], "strategy_ids": [PROBE_SLOT]},
}
PROBE_QTY = Decimal("0.00000001")
SCALED_PER_FILL = 10**10  # 1e-8 at scale 18


def reader_main(shm: str, exchange: str, expected: int, out: str, timeout_s: float) -> None:
    """Poll the BTC record; write (fills seen, first time seen) pairs to ``out``."""
    reader = StoreReader(store_path(exchange, shm))
    seen: list[tuple[int, int]] = []
    base = reader.record("BTC").scaled[PROBE_SLOT]
    last = 0
    deadline = time.monotonic() + timeout_s
    print("READY", flush=True)
    while last < expected and time.monotonic() < deadline:
        count = (reader.slot("BTC", PROBE_SLOT).scaled - base) // SCALED_PER_FILL
        if count != last:
            seen.append((count, time.time_ns()))
            last = count
        else:
            os.sched_yield()  # two cores, three processes: give way when others need it
    Path(out).write_text(json.dumps(seen))


def fill_latencies_us(sent: list[int], seen: list[list[int]]) -> list[float]:
    """Fill n: the first time a reader saw at least n fills, minus fill n's send time (µs).

    ``seen`` holds (fills seen, time) pairs in the order the reader noted them.
    """
    latencies: list[float] = []
    position = 0
    for fill_number, sent_ns in enumerate(sent, start=1):
        while position < len(seen) and seen[position][0] < fill_number:
            position += 1
        if position == len(seen):
            break
        latencies.append((seen[position][1] - sent_ns) / 1000)
    return latencies


def probe_body(exchange: str, rate: int, count: int) -> dict[str, object]:
    return {"rate": rate, "count": count, "probe": True, "qty": str(PROBE_QTY), **PROBES[exchange]}


async def bare_client(
    exchange: str,
    address: dict[str, str],
    rate: int,
    count: int,
    authority: Path | None = None,
) -> list[int]:
    """The floor: a WS client that subscribes as the gateway does and only notes when
    each execution arrives."""
    received: list[int] = []
    context = None if authority is None else ssl.create_default_context(cafile=authority)
    async with open_websocket_url(address["ws_url"], ssl_context=context) as ws:
        if exchange == "kraken":
            async with KrakenRestClient(
                address["rest_url"], api_key=address["api_key"], api_secret=address["api_secret"]
            ) as rest:
                token = await rest.websockets_token()
            # As the gateway subscribes: open / close transitions only, no pending_new.
            params = {"channel": "executions", "token": token, "order_status": False}
            await ws.send_message(json.dumps({"method": "subscribe", "params": params}))
            while '"snapshot"' not in await ws.get_message():
                pass
            mark = UPDATE_PREFIX
        else:
            signed: dict[str, str | int] = {
                "apiKey": address["api_key"],
                "timestamp": int(time.time() * 1000),
            }
            signed["signature"] = sign_ws_params(signed, address["api_secret"])
            await ws.send_message(json.dumps(
                {"id": "s", "method": "userDataStream.subscribe.signature", "params": signed}
            ))  # fmt: skip
            while '"id": "s"' not in await ws.get_message():
                pass
            mark = TRADE_MARK
        async with httpx.AsyncClient() as http:
            await http.post(
                f"{address['rest_url']}/sim/trade-generator",
                json=probe_body(exchange, rate, count),
            )
        while len(received) < count:
            message = await ws.get_message()
            if isinstance(message, str) and mark in message:
                received.append(time.time_ns())
    return received


def run_floor(
    rate: int, seconds: float, exchange: str = "kraken", *, tls: bool = False
) -> dict[str, float]:
    stack = Stack(with_gateway=False, exchange=exchange, tls=tls)
    try:
        count = int(rate * seconds)
        received = trio.run(bare_client, exchange, stack.address, rate, count, stack.authority)
        sent = stack.control("generated", {})["sent_ns"]
        assert isinstance(sent, list)
    finally:
        stack.close()
    ordered = sorted((r - s) / 1000 for r, s in zip(received, sent, strict=False))
    return {
        "median_us": statistics.median(ordered),
        "p99_us": ordered[int(len(ordered) * 0.99)],
    }


def wake_penalty(count: int = 2000) -> tuple[float, float]:
    """The machine's cost of waking: median CPU µs of one fixed piece of the gateway's
    work (parsing a Kraken execution message) done back to back, and done each time
    right after a 1 ms sleep, as at 1,000 fills/s. A CPU left idle comes back slow
    (caches, frequency, the hypervisor), which no code of ours changes."""
    message = KRAKEN_PROBE_MESSAGE
    decimals = {"BTC": 10, "USD": 4}

    def median_cpu_us(pause_s: float) -> float:
        spent = []
        for _ in range(count):
            if pause_s:
                time.sleep(pause_s)
            started = time.thread_time_ns()
            parse_ws_message(message, decimals)
            spent.append((time.thread_time_ns() - started) / 1000)
        return statistics.median(spent)

    return median_cpu_us(0.0), median_cpu_us(0.001)


# One probe fill as the Kraken simulator streams it: the order's new, its trade, filled.
KRAKEN_PROBE_MESSAGE: Final = (
    '{"channel": "executions", "type": "update", "data": ['
    '{"order_id":"O00000-1D5C2-1B4F5E","exec_id":"L00004-1CC7B-BAE32D","exec_type":"new",'
    '"symbol":"BTC/USD","side":"buy","order_type":"market","order_qty":1E-8,'
    '"timestamp":"2026-12-03T08:10:18.726161Z","order_status":"new","order_userref":5},'
    '{"order_id":"O00000-1D5C2-1B4F5E","exec_id":"T00000-28669-D79E5C","exec_type":"trade",'
    '"trade_id":1000,"symbol":"BTC/USD","side":"buy","last_qty":1E-8,"last_price":60000.1,'
    '"liquidity_ind":"t","cost":0.0006,"order_type":"market",'
    '"timestamp":"2026-12-03T08:10:18.726161Z","order_status":"filled","cum_qty":1E-8,'
    '"cum_cost":0.0006,"avg_price":60000.0,"fee_usd_equiv":0.0000,'
    '"fees":[{"asset":"USD","qty":0.0000}],"order_userref":5},'
    '{"order_id":"O00000-1D5C2-1B4F5E","exec_id":"L00004-27403-9DC695","exec_type":"filled",'
    '"symbol":"BTC/USD","side":"buy","order_type":"market","order_qty":1E-8,'
    '"timestamp":"2026-12-03T08:10:18.726161Z","order_status":"filled","cum_qty":1E-8,'
    '"cum_cost":0.0006,"order_userref":5}], "sequence": 7}'
)


def sustained(result: dict[str, float]) -> bool:
    """Every fill delivered without the lag running away.

    Judged by latency, not by delivered-per-second: a short run's rate is
    skewed by its fixed start-up cost, while a gateway that falls behind shows
    a lag that grows with every fill.
    """
    return result["delivered"] == result["fills"] and result["p99_us"] < SUSTAINED_P99_US


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stack(LocalStack):
    """The simulator and, unless told otherwise, the gateway, in temporary directories."""

    def __init__(
        self, *, with_gateway: bool = True, exchange: str = "kraken", tls: bool = False
    ) -> None:
        super().__init__(
            Path(tempfile.mkdtemp(prefix="bench-fills-")),
            Path(tempfile.mkdtemp(prefix="hft-")),
            exchange=exchange,
            log_level="warning",
        )
        self.authority: Path | None = None
        if tls:  # wss://, as in production: a private authority the gateway is told to trust
            import trustme  # noqa: PLC0415 - a test and bench dependency, not the gateway's

            signer = trustme.CA()
            served = self.root / "server.pem"
            signer.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(served))
            self.authority = self.root / "authority.pem"
            signer.cert_pem.write_to_path(str(self.authority))
            self.env["SSL_CERT_FILE"] = str(self.authority)
            self.start_sim("--ws-tls", str(served))
        else:
            self.start_sim()
        if with_gateway:
            self.start_gateway("--reconcile-interval", "3600")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def run_rate(stack: Stack, rate: int, seconds: float) -> dict[str, float]:
    count = int(rate * seconds)
    out = stack.root / f"seen-{rate}.json"
    reader = subprocess.Popen(
        [sys.executable, __file__, "--reader", str(stack.root / "shm"), stack.exchange,
         str(count), str(out), str(seconds * 4 + 20)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert reader.stdout is not None
    reader.stdout.readline()
    assert stack.gateway is not None
    cpu_before = cpu_seconds(stack.gateway.pid)
    started = time.perf_counter()
    stack.control("trade-generator", probe_body(stack.exchange, rate, count))
    reader.wait(timeout=seconds * 4 + 60)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(stack.gateway.pid) - cpu_before
    sent = stack.control("generated", {})["sent_ns"]
    assert isinstance(sent, list)
    seen = json.loads(out.read_text())
    ordered = sorted(fill_latencies_us(sent, seen))
    delivered = seen[-1][0] if seen else 0
    return {
        "rate": rate,
        "fills": count,
        "delivered": delivered,
        "median_us": statistics.median(ordered) if ordered else float("nan"),
        "p99_us": ordered[int(len(ordered) * 0.99)] if ordered else float("nan"),
        "max_us": ordered[-1] if ordered else float("nan"),
        "achieved_per_s": delivered / elapsed if elapsed else 0.0,
        "gateway_cpu_us_per_fill": cpu / max(delivered, 1) * 1e6,
        "tail_lag_ms": (ordered[-1] if ordered else 0) / 1000,
    }


def run_deposits(stack: Stack, count: int = 40) -> dict[str, float]:
    """Deposit to visible: ``/sim/deposit`` until slot 0 shows it in shared memory.

    The simulator streams the ledger entry on ``balances`` before it answers;
    the floor is that control call's own HTTP round trip, in the same run.
    """
    visible: list[float] = []
    floor: list[float] = []
    with StoreReader(stack.store) as reader:
        for _ in range(count):
            before = reader.slot("USD", 0).scaled
            started = time.perf_counter()
            stack.control("deposit", {"asset": "USD", "amount": "1"})
            floor.append(time.perf_counter() - started)
            while reader.slot("USD", 0).scaled == before:
                if time.perf_counter() - started > 10:
                    break
                time.sleep(0.0001)
            visible.append(time.perf_counter() - started)
            time.sleep(0.02)
    visible.sort()
    floor.sort()
    return {
        "count": count,
        "median_ms": statistics.median(visible) * 1000,
        "p99_ms": visible[int(len(visible) * 0.99)] * 1000,
        "max_ms": visible[-1] * 1000,
        "floor_median_ms": statistics.median(floor) * 1000,
        "floor_p99_ms": floor[int(len(floor) * 0.99)] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--exchange", choices=sorted(PROBES), default="kraken")
    parser.add_argument("--rates", default="1000,10000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--saturation", action="store_true", help="also step up to the limit")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument(
        "--tls", action="store_true", help="the stream over wss://, as in production"
    )
    parser.add_argument("--reader", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        shm, exchange, expected, out, timeout_s = args.reader
        reader_main(shm, exchange, int(expected), out, float(timeout_s))
        return
    stack = Stack(exchange=args.exchange, tls=args.tls)
    results = []
    try:
        rates = [int(r) for r in args.rates.split(",")]
        if args.saturation:
            rates += [r for r in (2000, 3000, 5000, 7500, 15000) if r not in rates]
        for rate in sorted(rates):
            print(f"{rate} fills/s for {args.seconds} s ...", flush=True)
            result = run_rate(stack, rate, args.seconds)
            if rate <= FLOOR_MAX_RATE:
                floor = run_floor(rate, min(args.seconds, 3.0), args.exchange, tls=args.tls)
                result["floor_median_us"] = floor["median_us"]
                result["floor_p99_us"] = floor["p99_us"]
            results.append(result)
            if not sustained(result):
                print(f"{rate} fills/s is past what the gateway sustains; stopping here")
                break
            time.sleep(1)
    finally:
        stack.close()
    lines = [
        f"Command: `python tools/bench_fills.py --exchange {args.exchange} --rates {args.rates} "
        f"--seconds {args.seconds}"
        f"{' --saturation' if args.saturation else ''}{' --tls' if args.tls else ''}`; "
        f"{os.cpu_count()} CPUs; {'wss' if args.tls else 'ws'}://; simulator, "
        "gateway and reader are three processes. Latency runs from the simulator handing "
        "the execution to its socket; the floor is a bare WS client on the same simulator.",
        "",
        "| offered/s | delivered | median µs | p99 µs | max µs | floor median µs "
        "| floor p99 µs | achieved/s | gateway CPU µs/fill |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        floor_median = f"{r['floor_median_us']:,.0f}" if "floor_median_us" in r else ""
        floor_p99 = f"{r['floor_p99_us']:,.0f}" if "floor_p99_us" in r else ""
        lines.append(
            f"| {r['rate']:,.0f} | {r['delivered']:,.0f} / {r['fills']:,.0f} "
            f"| {r['median_us']:,.0f} | {r['p99_us']:,.0f} | {r['max_us']:,.0f} "
            f"| {floor_median} | {floor_p99} | {r['achieved_per_s']:,.0f} "
            f"| {r['gateway_cpu_us_per_fill']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
