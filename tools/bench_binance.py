"""Binance figures: a restart after a gap, from start to ready with every trade caught up.

The simulator and the gateway run as processes (``gateway sim --exchange
binance``, ``gateway run --exchange binance``), as in production.

The gateway stops, the simulator trades ``N`` orders (one to three trades
each, on four symbols), the gateway starts again; measured from its start to
its ready file (caught up, published, accepting commands), with the trades and
REST calls it needed. No latency is added (the simulator is on loopback).

    python tools/bench_binance.py [--gaps 1000,5000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.launcher import LocalStack

QUIET = ("--reconcile-interval", "3600")


def _stack() -> LocalStack:
    stack = LocalStack(
        Path(tempfile.mkdtemp(prefix="bench-binance-")),
        Path(tempfile.mkdtemp(prefix="hft-")),
        exchange="binance",
        log_level="warning",
    )
    stack.start_sim()
    return stack


def _wait_orders(stack: LocalStack, orders: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while stack.control("state")["orders"] != orders:
        assert time.monotonic() < deadline, "the simulator did not make its orders"
        time.sleep(0.05)


def catch_up(gap: int) -> dict[str, float]:
    """Restart to ready after ``gap`` orders were made while the gateway was down."""
    stack = _stack()
    try:
        stack.start_gateway(*QUIET)
        stack.stop_gateway()
        stack.control("trade-generator", {"rate": 5000, "count": gap})
        _wait_orders(stack, gap)
        trades = stack.control("state")["trades"]
        assert isinstance(trades, int)
        started = time.perf_counter()
        stack.start_gateway(*QUIET, timeout_s=600)
        seconds = time.perf_counter() - started
        status = stack.status()
        assert status["fills_caught_up"] == trades, (status["fills_caught_up"], trades)
        return {"orders": gap, "trades": trades, "seconds": seconds,
                "rest_calls": float(str(status["rest_calls"]))}  # fmt: skip
    finally:
        stack.stop()
        shutil.rmtree(stack.root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaps", default="1000,5000")
    args = parser.parse_args()
    for gap in (int(g) for g in args.gaps.split(",")):
        print(json.dumps({"catch_up": catch_up(gap)}), flush=True)


if __name__ == "__main__":
    main()
