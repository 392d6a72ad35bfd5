"""The store across processes: one writer, read-only readers, takeover and re-creation."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from decimal import Decimal
from pathlib import Path

import pytest

from mmapstore import (
    SlotIndexError,
    StoreBusyError,
    StoreLockedError,
    StoreNotFoundError,
    StoreReader,
    StoreWriter,
    WriterHealth,
)
from mmapstore._paths import lock_path
from tests.conftest import Workers


def _mapping_permissions(path: Path) -> list[str]:
    with open("/proc/self/maps") as maps:
        return [line.split()[1] for line in maps if line.rstrip().endswith(str(path))]


def test_reader_mapping_is_read_only(store_file: Path) -> None:
    with StoreWriter.open(store_file, exchange="kraken") as writer:
        writer.publish_decimal("USD", [Decimal(10), Decimal(10)] + [0] * 6)
        with StoreReader(store_file) as reader:
            permissions = _mapping_permissions(store_file)
            # The writer's mapping is rw; the reader's must be read-only and shared.
            assert "r--s" in permissions
            assert "rw-s" in permissions
            with pytest.raises(TypeError):
                reader._mm[0] = 0
            with pytest.raises(TypeError):
                reader._words[0] = 0
            assert reader.slot_float("USD", 0) == 10.0


def test_second_writer_is_refused_and_first_keeps_running(
    store_file: Path, workers: Workers
) -> None:
    first = workers.start_ready("hold", store_file)
    second = workers.start("try-open", store_file)
    out, _ = second.communicate(timeout=30)
    assert second.returncode == 3
    assert "already has a writer" in out
    assert f"pid {first.pid}" in out
    assert first.poll() is None
    with StoreReader(store_file) as reader:
        assert reader.writer_status().health is WriterHealth.LIVE
        assert reader.writer_status().pid == first.pid
        assert reader.slot_float("USD", 0) == 300.5


def test_second_writer_in_same_process_is_refused(store_file: Path) -> None:
    with (
        StoreWriter.open(store_file, exchange="kraken"),
        pytest.raises(StoreLockedError, match="one writer per exchange"),
    ):
        StoreWriter.open(store_file, exchange="kraken")


def test_takeover_after_kill_9_bumps_generation_and_readers_follow(
    store_file: Path, workers: Workers
) -> None:
    first = workers.start_ready("hold", store_file)
    reader = StoreReader(store_file)
    assert reader.generation == 1
    assert reader.slot_float("USD", 1) == 100.5

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert reader.writer_status().health is WriterHealth.DEAD

    with StoreWriter.open(store_file, exchange="kraken") as writer:
        assert writer.generation == 2
        writer.publish_decimal("USD", [Decimal(7), Decimal(3), Decimal(4)] + [0] * 5)
        writer.mark_live()
        # The same reader, never re-opened, sees the new writer and its values.
        status = reader.writer_status()
        assert status.health is WriterHealth.LIVE
        assert status.generation == 2
        assert status.pid == os.getpid()
        assert reader.record("USD").exact_all()[:3] == (Decimal(7), Decimal(3), Decimal(4))
    assert reader.writer_status().health is WriterHealth.STOPPED
    reader.close()


def test_currency_added_after_reader_mapped_is_found(store_file: Path) -> None:
    with StoreWriter.open(store_file, exchange="kraken") as writer:
        writer.publish_decimal("USD", [1, 1] + [0] * 6)
        with StoreReader(store_file) as reader:
            assert reader.currencies() == ["USD"]
            writer.publish_decimal("ETH", [Decimal("2.5"), Decimal("2.5")] + [0] * 6)
            assert reader.slot_float("eth", 1) == 2.5
            assert reader.currencies() == ["USD", "ETH"]


def test_recreated_store_is_followed_by_mapped_readers(store_file: Path) -> None:
    with StoreWriter.open(store_file, exchange="kraken", strategy_count=4) as writer:
        writer.publish_decimal("USD", [5, 5, 0, 0])
    reader = StoreReader(store_file)
    assert reader.strategy_count == 4
    # A gateway configured with more slots cannot reuse the file: it replaces it.
    with StoreWriter.open(store_file, exchange="kraken", strategy_count=8) as writer:
        writer.publish_decimal("USD", [9, 4, 5] + [0] * 5)
        writer.mark_live()
        assert reader.slot_float("USD", 2) == 5.0
        assert reader.strategy_count == 8
        assert reader.generation == 2
    reader.close()


def test_reader_whose_successor_vanished_keeps_its_mapping_until_one_appears(
    store_file: Path,
) -> None:
    with StoreWriter.open(store_file, exchange="kraken", strategy_count=4) as writer:
        writer.publish_decimal("USD", [5, 5, 0, 0])
    reader = StoreReader(store_file)
    assert reader.slot_float("USD", 1) == 5.0
    with StoreWriter.open(store_file, exchange="kraken", strategy_count=8) as writer:
        writer.publish_decimal("USD", [9, 4, 5] + [0] * 5)
    store_file.unlink()  # the successor is gone before the reader followed it
    for _ in range(2):  # and stays a clear error, read after read
        with pytest.raises(StoreNotFoundError, match="gateway is not running"):
            reader.slot_float("USD", 1)
    with StoreWriter.open(store_file, exchange="kraken", strategy_count=2) as writer:
        writer.publish_decimal("USD", [7, 6])
        writer.mark_live()
        assert reader.slot_float("USD", 1) == 6.0
        assert reader.strategy_count == 2
        with pytest.raises(SlotIndexError, match=r"slots 0\.\.1"):
            reader.slot_float("USD", 2)
    reader.close()


def test_stopped_store_replaced_on_disk_is_found_by_status(store_file: Path) -> None:
    with StoreWriter.open(store_file, exchange="kraken") as writer:
        writer.publish_decimal("USD", [1, 1] + [0] * 6)
    reader = StoreReader(store_file)
    store_file.unlink()  # e.g. /dev/shm cleared, then a new gateway starts
    with StoreWriter.open(store_file, exchange="kraken") as writer:
        writer.publish_decimal("USD", [2, 2] + [0] * 6)
        writer.mark_live()
        assert reader.writer_status().health is WriterHealth.LIVE
        assert reader.slot_float("USD", 0) == 2.0
    reader.close()


def test_record_left_mid_write_by_dead_writer_is_busy_until_republished(
    store_file: Path, workers: Workers
) -> None:
    crashed = workers.start("crash-mid-write", store_file)
    crashed.wait(timeout=30)
    assert crashed.returncode == -signal.SIGKILL
    with StoreReader(store_file) as reader:
        with pytest.raises(StoreBusyError, match="stuck mid-write"):
            reader.slot_float("USD", 0)
        assert reader.retries > 0
        with StoreWriter.open(store_file, exchange="kraken") as writer:
            writer.publish_decimal("USD", [3, 3] + [0] * 6)
            assert reader.slot_float("USD", 0) == 3.0


def test_missing_store_says_gateway_not_running(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="gateway is not running"):
        StoreReader(tmp_path / "hft.kraken.balance")


def test_writer_reuses_file_and_keeps_directory(store_file: Path) -> None:
    with StoreWriter.open(store_file, exchange="kraken") as writer:
        writer.publish_decimal("BTC", [1, 1] + [0] * 6)
        writer.publish_decimal("USD", [2, 2] + [0] * 6)
    with StoreWriter.open(store_file, exchange="kraken") as writer:
        assert writer.currencies == {"BTC": 0, "USD": 1}
        assert writer.generation == 2


def test_a_store_removed_under_its_writer_is_put_back(
    store_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with StoreWriter.open(store_file, exchange="kraken", strategy_count=4) as writer:
        writer.publish_decimal("USD", ["10", "10", "0", "0"])
        writer.mark_live()
        assert writer.restore_path() is False  # all in place: nothing done
        with StoreReader(store_file) as early:
            assert early.slot_float("USD", 0) == 10.0
            store_file.unlink()
            lock_path(store_file).unlink()
            assert writer.restore_path() is True
            assert lock_path(store_file).exists()
            writer.publish_decimal("USD", ["11", "11", "0", "0"])
            assert early.slot_float("USD", 0) == 11.0  # the reader follows to the new file
        with StoreReader(store_file) as late:
            assert late.slot_float("USD", 1) == 11.0
        shutil.rmtree(store_file.parent)  # its directory too (one under XDG_RUNTIME_DIR)
        assert writer.restore_path() is True
        with StoreReader(store_file) as late:
            assert late.slot_float("USD", 1) == 11.0
        # Another file at the path is not this writer's to replace: said once.
        store_file.rename(store_file.with_name("moved"))
        store_file.write_bytes(b"someone else's")
        assert writer.restore_path() is False
        assert writer.restore_path() is False
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
            f"store {store_file}: another file is at its path; this writer's is not there"
        ]
        assert store_file.read_bytes() == b"someone else's"
