"""The strategies' read API: the seed's names, values and every documented error."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

import clients as hft
from clients import StrategyBalanceManager
from clients.reader import forget_readers
from mmapstore import StoreWriter, WriterHealth, store_path
from mmapstore._layout import H_WRITER_PID


@pytest.fixture(autouse=True)
def shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the API at a test directory, as HFT_SHM_DIR does for a user."""
    monkeypatch.setenv("HFT_SHM_DIR", str(tmp_path))
    forget_readers()
    yield tmp_path
    forget_readers()


@pytest.fixture
def writer(shm: Path) -> Iterator[StoreWriter]:
    with StoreWriter.open(store_path("kraken"), exchange="kraken", strategy_count=8) as w:
        w.publish_decimal("USDC", ["1000.5", "700.25", "200", "100.25", 0, 0, 0, 0])
        w.publish_decimal("USDT", ["5000", "5000", 0, 0, 0, 0, 0, 0])
        w.mark_live()
        yield w


def test_seed_single_quote_example(writer: StoreWriter) -> None:
    usdt_balance = hft.getSingleQuoteCurrency(
        hft.Exchange.KRAKEN, hft.DataType.BALANCE, hft.Currency.USDT
    )
    assert usdt_balance.mid == 5000.0
    assert usdt_balance.exact == Decimal(5000)
    assert usdt_balance.currency == "USDT"
    assert usdt_balance.sequence == 1
    assert usdt_balance.updated_ns > 0
    assert hft.get_single_quote_currency("kraken", "balance", "usdt") == usdt_balance


def test_seed_quote_follows_every_change_and_a_new_store(writer: StoreWriter, shm: Path) -> None:
    # The seed's call answers from its last read while the record's sequence holds:
    # each change, and a store re-created by a new gateway, must show at once.
    def usdt() -> hft.SingleQuote:
        return hft.getSingleQuoteCurrency(hft.Exchange.KRAKEN, hft.DataType.BALANCE, "usdt")

    first = usdt()
    assert usdt() is first  # nothing changed: the same quote
    for n in range(1, 50):
        writer.publish_decimal("USDT", [f"5000.{n}", f"5000.{n}", 0, 0, 0, 0, 0, 0])
        assert usdt().exact == Decimal(f"5000.{n}") and usdt().sequence == 1 + n
    writer.close()
    with StoreWriter.open(store_path("kraken"), exchange="kraken", strategy_count=9) as again:
        for _ in range(50):  # the very sequence the last read had, in another file
            again.publish_decimal("USDT", ["7", "7", 0, 0, 0, 0, 0, 0, 0])
        again.mark_live()
        assert usdt().mid == 7.0 and usdt().sequence == 50


def test_seed_strategy_balance_example(writer: StoreWriter) -> None:
    manager = StrategyBalanceManager(hft.Exchange.KRAKEN, strategy_count=8)
    total = manager.get_balance(hft.Currency.USDC, index=0)
    available = manager.get_balance(hft.Currency.USDC, index=1)
    strategy_a = manager.get_balance(hft.Currency.USDC, index=2)
    strategy_b = manager.get_balance(hft.Currency.USDC, index=3)
    assert (total, available, strategy_a, strategy_b) == (1000.5, 700.25, 200.0, 100.25)
    assert manager.get_balance_exact("usdc", index=3) == Decimal("100.25")
    assert manager.get_balances("UsDc") == (1000.5, 700.25, 200.0, 100.25, 0, 0, 0, 0)
    exact = manager.get_balances_exact(hft.Currency.USDC)
    assert exact[0] == sum(exact[1:])


def test_currency_names_are_case_insensitive_strings_or_enums(writer: StoreWriter) -> None:
    manager = StrategyBalanceManager("KRAKEN")
    values = {manager.get_balance(c, 1) for c in ("usdc", "USDC", "Usdc", hft.Currency.USDC)}
    assert values == {700.25}
    assert hft.Currency("usdc") is hft.Currency.USDC


def test_manager_with_fewer_slots_sees_only_its_slots(writer: StoreWriter) -> None:
    manager = StrategyBalanceManager(hft.Exchange.KRAKEN, strategy_count=4)
    assert manager.get_balances("USDC") == (1000.5, 700.25, 200.0, 100.25)
    with pytest.raises(hft.SlotIndexError, match=r"0\.\.3"):
        manager.get_balance("USDC", index=4)


def test_gateway_not_running_is_a_clear_error_then_works_without_restart(shm: Path) -> None:
    manager = StrategyBalanceManager(hft.Exchange.KRAKEN)
    with pytest.raises(hft.GatewayNotRunningError, match="gateway is not running"):
        manager.get_balance("USD")
    with pytest.raises(hft.GatewayNotRunningError):
        hft.getSingleQuoteCurrency(hft.Exchange.KRAKEN, hft.DataType.BALANCE, "USD")
    with StoreWriter.open(store_path("kraken"), exchange="kraken") as w:
        w.publish_decimal("USD", [42, 42, 0, 0, 0, 0, 0, 0])
        w.mark_live()
        assert manager.get_balance("USD") == 42.0
        quote = hft.getSingleQuoteCurrency(hft.Exchange.KRAKEN, hft.DataType.BALANCE, "USD")
        assert quote.mid == 42.0


def test_layout_version_mismatch_is_refused(writer: StoreWriter) -> None:
    path = store_path("kraken")
    with open(path, "r+b") as f:
        f.seek(8)
        f.write((99).to_bytes(4, "little"))
    with pytest.raises(hft.StoreVersionError, match="layout version 99"):
        StrategyBalanceManager(hft.Exchange.KRAKEN)


def test_file_that_is_not_a_store_is_refused(shm: Path) -> None:
    store_path("kraken").write_bytes(b"hello" * 100)
    with pytest.raises(hft.StoreCorruptError, match="not a balance store"):
        hft.getSingleQuoteCurrency(hft.Exchange.KRAKEN, hft.DataType.BALANCE, "USD")


def test_unknown_currency_names_what_the_store_has(writer: StoreWriter) -> None:
    manager = StrategyBalanceManager(hft.Exchange.KRAKEN)
    with pytest.raises(hft.UnknownCurrencyError, match=r"no DOGE balance .* USDC, USDT"):
        manager.get_balance(hft.Currency.DOGE)
    with pytest.raises(KeyError):
        hft.getSingleQuoteCurrency(hft.Exchange.KRAKEN, hft.DataType.BALANCE, "doge")


@pytest.mark.parametrize("index", [-1, 8, 100])
def test_index_out_of_range_is_refused(writer: StoreWriter, index: int) -> None:
    manager = StrategyBalanceManager(hft.Exchange.KRAKEN, strategy_count=8)
    with pytest.raises(hft.SlotIndexError, match="out of range"):
        manager.get_balance("USDC", index=index)
    with pytest.raises(IndexError):
        manager.get_balance_exact("USDC", index=index)


def test_strategy_count_larger_than_the_store_is_refused(writer: StoreWriter) -> None:
    with pytest.raises(hft.StrategyCountError, match="asked for 16 slots"):
        StrategyBalanceManager(hft.Exchange.KRAKEN, strategy_count=16)


def test_strategy_count_larger_than_the_store_is_refused_on_first_read(shm: Path) -> None:
    manager = StrategyBalanceManager(hft.Exchange.KRAKEN, strategy_count=16)
    with StoreWriter.open(store_path("kraken"), exchange="kraken", strategy_count=8) as w:
        w.publish_decimal("USD", [1, 1] + [0] * 6)
        with pytest.raises(hft.StrategyCountError):
            manager.get_balance("USD")


def test_unknown_exchange_is_refused(writer: StoreWriter) -> None:
    with pytest.raises(ValueError, match="nasdaq"):
        StrategyBalanceManager("nasdaq")


def test_writer_status_tells_live_stopped_and_dead(shm: Path) -> None:
    path = store_path("kraken")
    w = StoreWriter.open(path, exchange="kraken")
    w.publish_decimal("USD", [1, 1] + [0] * 6)
    manager = StrategyBalanceManager(hft.Exchange.KRAKEN)
    assert manager.writer_status().health is WriterHealth.STARTING
    w.mark_live()
    status = manager.writer_status()
    assert status.health is WriterHealth.LIVE and status.alive
    assert status.pid == os.getpid()
    assert status.heartbeat_age_s < 1.0
    # A heartbeat older than the limit with the process still there: stale (hung).
    later = w._clock_ns() + 10 * 10**9
    assert manager.writer_status().health is WriterHealth.LIVE
    assert manager._reader is not None
    assert manager._reader.writer_status(now_ns=later).health is WriterHealth.STALE
    w.close()
    assert manager.writer_status().health is WriterHealth.STOPPED
    assert not manager.writer_status().alive
    # A writer whose process is gone without a clean stop: dead.
    w = StoreWriter.open(path, exchange="kraken")
    w.mark_live()
    w._map.words[H_WRITER_PID] = _dead_pid()
    assert manager.writer_status().health is WriterHealth.DEAD
    w.close()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_starting_gateway_is_not_running_yet_for_readers(shm: Path) -> None:
    with StoreWriter.open(store_path("kraken"), exchange="kraken") as w:
        manager = StrategyBalanceManager(hft.Exchange.KRAKEN)
        with pytest.raises(hft.StoreStartingError, match="gateway is starting"):
            manager.get_balance("USD")
        with pytest.raises(hft.GatewayNotRunningError):  # the same family: retry later
            manager.get_balance("USD")
        w.publish_decimal("USD", [5, 5, 0, 0, 0, 0, 0, 0])
        w.mark_live()
        assert manager.get_balance("USD") == 5.0
        with pytest.raises(hft.UnknownCurrencyError):
            manager.get_balance("DOGE")
