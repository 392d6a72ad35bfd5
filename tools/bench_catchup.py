"""Catch-up after a gap against Kraken's API counter: how close to the counter's own bound.

The gateway's real catch-up (``KrakenSession._catch_up``: TradesHistory pages,
QueryOrders lookups, the client's counter model) runs against the real
simulator over loopback sockets, with the simulator enforcing the tier's
counter and 100-150 ms of round trip. Both run in one Trio loop on a
``MockClock`` that jumps whenever everything waits, so an 870 s catch-up at
the Starter tier takes seconds of wall time and is measured in the counter's
own time. The bound: the counter starts empty, may fill to its maximum at once,
and then admits ``decay`` units a second, so the calls' total cost ``C`` needs
at least ``max(0, C - max) / decay`` seconds; the latency adds a round trip per
call that the counter cannot overlap (calls go one by one, in nonce order).

    python tools/bench_catchup.py [--gaps 100,1000,5000] [--tiers starter,pro]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from decimal import Decimal
from functools import partial
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.exchanges.kraken.ratelimit import call_cost, tier_named
from gateway.exchanges.kraken.rest import KrakenRestClient
from gateway.exchanges.kraken.session import (
    CATCH_UP_PAGE,
    QUERY_ORDERS_CHUNK,
    KrakenSession,
)
from gateway.exchanges.kraken.sim.exchange import SimExchange
from gateway.exchanges.kraken.sim.server import SimRules, Simulator, run_simulator

LATENCY_S = 0.125  # Kraken's REST round trip as seen from Europe: 100-150 ms
JITTER_S = 0.025


def counter_bound_s(tier_name: str, trades: int, orders: int) -> tuple[int, float]:
    """The catch-up's calls' total cost and the least time the counter allows for it."""
    tier = tier_named(tier_name)
    pages = max(1, -(-trades // CATCH_UP_PAGE))
    lookups = -(-orders // QUERY_ORDERS_CHUNK)
    cost = pages * call_cost("TradesHistory") + lookups * call_cost("QueryOrders")
    return cost, max(0.0, cost - tier.max_count) / tier.decay_per_s


async def _catch_up(tier_name: str, gap: int) -> dict[str, float]:
    exchange = SimExchange.funded({"USD": Decimal(10**9), "BTC": Decimal(10**6)})
    started_ns = time.time_ns()
    for n in range(gap):  # one trade per order: the most lookups a gap can need
        side = "buy" if n % 2 == 0 else "sell"
        exchange.execute("XXBTZUSD", side, Decimal("0.001"), userref=2 + n % 3,
                         now_ns=started_ns + n * 1000)  # fmt: skip
    rules = SimRules(latency_s=LATENCY_S, jitter_s=JITTER_S, tier=tier_named(tier_name))
    simulator = Simulator(exchange, rules)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(run_simulator, simulator)
        rest = KrakenRestClient(
            address.rest_url, api_key=address.api_key, api_secret=address.api_secret,
            tier=tier_named(tier_name),
        )  # fmt: skip
        async with rest:
            session = KrakenSession(rest, address.ws_url)
            await session.assets()  # the maps: fetched before any gap in operation
            began = trio.current_time()
            fills = await session._catch_up(started_ns - 10**9)
            elapsed = trio.current_time() - began
        nursery.cancel_scope.cancel()
    assert len(fills) == gap, (len(fills), gap)
    cost, bound = counter_bound_s(tier_name, gap, gap)
    calls = max(1, -(-gap // CATCH_UP_PAGE)) + -(-gap // QUERY_ORDERS_CHUNK)
    return {
        "tier": tier_name,  # type: ignore[dict-item]
        "trades": gap,
        "calls": calls,
        "cost": cost,
        "seconds": elapsed,
        "bound_s": bound,
        # The counter's bound plus a round trip per call that it does not already cover.
        "bound_with_latency_s": max(bound, calls * LATENCY_S),
        "refused": simulator.counter.refused,
    }


def run(tier_name: str, gap: int) -> dict[str, float]:
    clock = trio.testing.MockClock(autojump_threshold=0.02)
    return trio.run(partial(_catch_up, tier_name, gap), clock=clock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaps", default="100,1000,5000")
    parser.add_argument("--tiers", default="starter,pro")
    args = parser.parse_args()
    rows = []
    for tier_name in args.tiers.split(","):
        for gap in (int(g) for g in args.gaps.split(",")):
            rows.append(run(tier_name, gap))
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
