"""``gateway sim --exchange binance``: the command line's options turned into a simulator."""

from __future__ import annotations

import argparse

from gateway.exchanges.binance.sim.exchange import SimAccount
from gateway.exchanges.binance.sim.server import BinanceSimulator, run_simulator
from gateway.exchanges.simcli import check_latency, keys, serve_until_signalled, starting_balances


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; print the address (and write ``--ready-file``) once up.

    Raises:
        SystemExit: an option out of range, in one line.
    """
    latency_s, jitter_s = check_latency(args)
    simulator = BinanceSimulator(
        SimAccount.funded(starting_balances(args), **keys(args)),
        latency_s=latency_s,
        jitter_s=jitter_s,
    )
    return serve_until_signalled(run_simulator, simulator, args)
