"""Issue 11 finding 13: whatever bytes a store file holds, readers raise only StoreError.

A reader maps a file another process wrote; the file may be damaged or crafted.
Every byte of a valid store is a candidate for change here, and every public
read must either answer or raise from the ``StoreError`` tree: never
``OverflowError``, ``UnicodeDecodeError``, ``struct.error`` or a hang.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients import StrategyBalanceManager
from mmapstore import StoreCorruptError, StoreError, StoreReader, StoreWriter
from mmapstore._layout import H_STATE, HEADER_SIZE, RETIRED_SEQ, WriterState, unpack_header

STRATEGIES = 4
# A short run in `make test`; `make fuzz` sets HFT_FUZZ_EXAMPLES for a long one.
EXAMPLES = int(os.environ.get("HFT_FUZZ_EXAMPLES", "160"))


def _valid_store(path: Path) -> bytes:
    with StoreWriter.open(path, exchange="kraken", strategy_count=STRATEGIES, capacity=4) as w:
        for currency, value in (("USD", 10**20), ("BTC", 5 * 10**17)):
            index = w.add_currency(currency)
            w.publish(index, [value, value // 2, value // 4, value // 4])
    return path.read_bytes()


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _valid_store(tmp_path_factory.mktemp("valid") / "hft.kraken.balance")


def _read_everything(path: Path) -> None:
    with StoreReader(path, stale_after_s=3600) as reader:
        reader.writer_status()
        reader.strategy_count  # noqa: B018 - a read that may raise
        for currency in [*reader.currencies(), "USD", "BTC", "ETH"]:
            try:
                reader.record(currency).exact_all()
                reader.floats(currency)
                reader.slot(currency, 1).exact  # noqa: B018
                reader.slot_float(currency, 0)
            except StoreError:
                continue
    manager = StrategyBalanceManager(exchange="kraken", shm_dir=path.parent)
    try:
        manager.get_balance("USD", 0)
    except StoreError:
        pass
    finally:
        manager.close()


def _check(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with contextlib.suppress(StoreError):
        _read_everything(path)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8))
def test_random_bytes_changed_give_only_store_errors(
    valid: bytes, tmp_path: Path, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(valid)
    for offset, value in edits:
        data[offset % len(data)] = value
    _check(tmp_path / "hft.kraken.balance", bytes(data))


@settings(
    max_examples=EXAMPLES // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    offset=st.integers(0, HEADER_SIZE + 512),
    word=st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1]),
    width=st.sampled_from([4, 8]),
)
def test_extreme_header_and_directory_words_give_only_store_errors(
    valid: bytes, tmp_path: Path, offset: int, word: int, width: int
) -> None:
    data = bytearray(valid)
    fmt = "<I" if width == 4 else "<Q"
    struct.pack_into(fmt, data, offset, word % (1 << (8 * width)))
    _check(tmp_path / "hft.kraken.balance", bytes(data))


@settings(
    max_examples=EXAMPLES // 4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(size=st.integers(0, 8192))
def test_truncated_or_extended_files_give_only_store_errors(
    valid: bytes, tmp_path: Path, size: int
) -> None:
    data = valid[:size] if size <= len(valid) else valid + os.urandom(size - len(valid))
    _check(tmp_path / "hft.kraken.balance", data)


def test_writer_pid_beyond_any_pid_and_a_non_ascii_name(valid: bytes, tmp_path: Path) -> None:
    """The two cases the issue found, by name: pid >= 2**63 and a currency's name."""
    path = tmp_path / "hft.kraken.balance"
    with StoreReader(_write(path, valid)) as reader:
        names = reader.currencies()
    data = bytearray(valid)
    name_at = data.index(names[0].encode())
    data[name_at] = 0xFF
    _check(path, bytes(data))
    for offset in range(0, HEADER_SIZE, 8):
        crafted = bytearray(valid)
        crafted[offset : offset + 8] = b"\xff" * 8
        _check(path, bytes(crafted))


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("mark", "words"),
    [
        ("a record's sequence retired", {"record": RETIRED_SEQ}),
        ("the file retired, a record mid-write", {"state": WriterState.RETIRED, "record": 7}),
    ],
)
def test_a_file_marked_retired_but_still_at_its_path_is_refused(
    valid: bytes, tmp_path: Path, mark: str, words: dict[str, int]
) -> None:
    """A retired mark sends readers to the file that replaced this one; there is none.

    CI found it: a record whose sequence read ``2**64 - 1`` made every read
    re-open the same file for ever.
    """
    data = bytearray(valid)
    record_at = unpack_header(valid, file_size=len(valid), path="valid").geometry.record_offset(0)
    struct.pack_into("<Q", data, record_at, words["record"])
    if "state" in words:
        struct.pack_into("<Q", data, H_STATE * 8, words["state"])
    with StoreReader(_write(tmp_path / "hft.kraken.balance", bytes(data))) as reader:
        currency = reader.currencies()[0]
        with pytest.raises(StoreCorruptError, match="marked retired, but no newer file"):
            reader.record(currency)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
