"""``gateway sim --exchange binance``: the command line's options turned into a simulator."""

from __future__ import annotations

import argparse
import json
import signal
from dataclasses import asdict
from decimal import Decimal
from functools import partial

import trio

from gateway.exchanges.binance.sim.exchange import SimAccount
from gateway.exchanges.binance.sim.server import BinanceSimulator, run_simulator


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; print the address (and write ``--ready-file``) once up.

    Raises:
        SystemExit: an option out of range, in one line.
    """
    balances = None
    if args.balances:
        try:
            balances = {k: Decimal(str(v)) for k, v in json.loads(args.balances).items()}
        except (ValueError, ArithmeticError, AttributeError) as exc:
            raise SystemExit(f"gateway sim: --balances must be a JSON object: {exc}") from exc
    if args.latency_ms < 0 or args.jitter_ms < 0:
        raise SystemExit("gateway sim: --latency-ms and --jitter-ms must not be negative")
    keys = {}
    if args.api_key:
        keys["api_key"] = args.api_key
    if args.api_secret:
        keys["api_secret"] = args.api_secret
    simulator = BinanceSimulator(
        SimAccount.funded(balances, **keys),
        latency_s=args.latency_ms / 1000,
        jitter_s=args.jitter_ms / 1000,
    )

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                address = await nursery.start(
                    partial(
                        run_simulator,
                        host=args.host,
                        port=args.port,
                        ws_port=args.ws_port,
                        ready_file=args.ready_file,
                    ),
                    simulator,
                )
                print(json.dumps(asdict(address)), flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return 0
