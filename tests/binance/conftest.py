"""The Binance end-to-end stack and what its tests ask of it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.launcher import LocalStack
from mmapstore import StoreReader

QUICK = ("--reconcile-interval", "1", "--recheck-interval", "0.5")
STRATEGIES = (2, 3, 4)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    run_dir = Path(tempfile.mkdtemp(prefix="hft-"))
    binance = LocalStack(tmp_path, run_dir, exchange="binance")
    binance.start_sim("--latency-ms", "2", "--jitter-ms", "2")
    yield binance
    binance.kill()
    shutil.rmtree(run_dir, ignore_errors=True)


def slots(stack: LocalStack) -> dict[str, tuple[Decimal, ...]]:
    with StoreReader(stack.store) as reader:
        return {c: reader.record(c).exact_all() for c in reader.currencies()}


def matches_simulator(stack: LocalStack) -> bool:
    """Slot 0 is the exchange's balance and each strategy slot its orders' trades, exactly."""
    state = stack.control("state")
    balances, by_strategy = state["balances"], state["by_strategy"]
    assert isinstance(balances, dict) and isinstance(by_strategy, dict)
    held = slots(stack)
    for asset, balance in balances.items():
        row = held.get(asset)
        if row is None or row[0] != Decimal(balance) or row[0] != sum(row[1:]):
            return False
        for k in STRATEGIES:
            if row[k] != Decimal(by_strategy.get(str(k), {}).get(asset, "0")):
                return False
    return True


def settled(stack: LocalStack) -> bool:
    answer = stack.status()
    return answer["reconcile_state"] == "verified" and matches_simulator(stack)
