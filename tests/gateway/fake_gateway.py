"""Run the real gateway service in its own process, with the fake exchange at the edge.

    python fake_gateway.py '{"USD": "100000", "BTC": "10"}' [--strategy-count N]

Directories come from HFT_SHM_DIR, HFT_STATE_DIR and HFT_RUN_DIR, as for `gateway run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.__main__ import serve
from gateway.config import GatewayConfig
from tests.gateway.fake_exchange import FakeExchange


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("totals")
    parser.add_argument("--strategy-count", type=int, default=8)
    parser.add_argument("--snapshot-every", type=int, default=100_000)
    parser.add_argument("--config", type=Path, default=None, help="a TOML file, as for run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = GatewayConfig.from_env(
        file=args.config, strategy_count=args.strategy_count, snapshot_every=args.snapshot_every
    )
    trio.run(serve, config, FakeExchange(json.loads(args.totals)))


if __name__ == "__main__":
    main()
