"""``gateway sim`` for Kraken: the command line's options turned into a running simulator."""

from __future__ import annotations

import argparse

from gateway.exchanges.kraken.ratelimit import tier_named
from gateway.exchanges.kraken.sim.exchange import SimExchange
from gateway.exchanges.kraken.sim.server import PERMISSIONS, SimRules, Simulator, run_simulator
from gateway.exchanges.simcli import check_latency, keys, serve_until_signalled, starting_balances


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; print the address (and write ``--ready-file``) once up.

    Raises:
        SystemExit: an option out of range, in one line.
    """
    balances = starting_balances(args)
    permissions = frozenset(p for p in args.permissions.split(",") if p)
    unknown = permissions - set(PERMISSIONS)
    if unknown:
        raise SystemExit(
            f"gateway sim: unknown permission(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(PERMISSIONS)}"
        )
    latency_s, jitter_s = check_latency(args)
    rules = SimRules(
        latency_s=latency_s,
        jitter_s=jitter_s,
        tier=None if args.tier == "unlimited" else tier_named(args.tier),
        permissions=permissions,
    )
    simulator = Simulator(SimExchange.funded(balances, **keys(args)), rules)
    return serve_until_signalled(run_simulator, simulator, args)
