"""A full /dev/shm is an error at open, never a SIGBUS later.

Any local user may fill /dev/shm. A store file made sparse had its pages
allocated on first write through the mapping, and on a full tmpfs that write
raised SIGBUS: the writer died without a word, its store left "live" with a
stale heartbeat (a gateway, seen end to end in tests/kraken/test_full_shm.py).
Every page is now allocated when the store is opened.
"""

from __future__ import annotations

import os
import signal
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from mmapstore import StoreReader, StoreSpaceError, StoreWriter
from mmapstore._layout import Geometry
from tests.conftest import Workers, fill_as_another_user


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_a_writer_outlives_another_user_filling_the_file_system(
    small_shm: Path, workers: Workers
) -> None:
    store = small_shm / "hft.kraken.balance"
    writer = workers.start_ready("grow", store, "200")  # 15 records a page: 14 pages more
    fill_as_another_user(small_shm)
    assert writer.stdin is not None
    writer.stdin.write("go\n")
    writer.stdin.flush()
    out, err = writer.communicate(timeout=30)
    assert writer.returncode != -signal.SIGBUS, "the writer died of SIGBUS"
    assert (writer.returncode, out.strip()) == (0, "DONE"), err
    with StoreReader(store) as reader:
        assert reader.record("C199").exact_all()[:2] == (Decimal(199), Decimal(199))


def test_a_full_file_system_is_refused_at_open_in_one_line(small_shm: Path) -> None:
    fill_as_another_user(small_shm)
    store = small_shm / "hft.kraken.balance"
    with pytest.raises(StoreSpaceError, match=f"no room for the store {store} in {small_shm}"):
        StoreWriter.open(store, exchange="kraken")
    left = sorted(p.name for p in small_shm.iterdir())
    assert left in (["filler"], ["filler", "hft.kraken.balance.lock"]), left  # no half store


def test_a_sparse_store_an_older_version_left_is_allocated_when_reused(small_shm: Path) -> None:
    store = small_shm / "hft.kraken.balance"
    StoreWriter.open(store, exchange="kraken").close()
    size = Geometry(8, 1024).file_size
    assert store.stat().st_size == size
    # As the older version left it: the records' pages never written.
    subprocess.run(["fallocate", "--punch-hole", "--offset", "65536", "--length",
                    str(size - 65536), str(store)], check=True)  # fmt: skip
    assert _allocated(store) < size
    StoreWriter.open(store, exchange="kraken").close()
    assert _allocated(store) >= size


def test_a_sparse_store_on_a_full_file_system_is_refused_before_any_write(
    small_shm: Path,
) -> None:
    store = small_shm / "hft.kraken.balance"
    StoreWriter.open(store, exchange="kraken").close()
    subprocess.run(["fallocate", "--punch-hole", "--offset", "65536", "--length",
                    str(store.stat().st_size - 65536), str(store)], check=True)  # fmt: skip
    fill_as_another_user(small_shm)
    with pytest.raises(StoreSpaceError, match="no room for the store"):
        StoreWriter.open(store, exchange="kraken")
