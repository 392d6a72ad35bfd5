"""The exact value encoding and the header codec: pure functions, no files."""

from __future__ import annotations

from decimal import Context, Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmapstore import StoreReader, StoreWriter, from_scaled, to_scaled
from mmapstore._layout import (
    HEADER_SIZE,
    INT128_MAX,
    INT128_MIN,
    MAX_SCALE,
    Geometry,
    pack_header,
    unpack_header,
)
from mmapstore.errors import StoreCorruptError, StoreValueError, StoreVersionError

WIDE = Context(prec=200)  # enough digits that scaleb() in a test never rounds
scales = st.integers(min_value=0, max_value=MAX_SCALE)
int128 = st.integers(min_value=INT128_MIN, max_value=INT128_MAX)


@given(scaled=int128, scale=scales)
def test_scaled_value_round_trips_through_decimal(scaled: int, scale: int) -> None:
    value = from_scaled(scaled, scale)
    assert to_scaled(value, scale) == scaled
    assert value == Decimal(scaled).scaleb(-scale, context=WIDE)


@given(
    value=st.decimals(
        allow_nan=False, allow_infinity=False, places=8, min_value=-(10**20), max_value=10**20
    ),
    extra=st.integers(min_value=0, max_value=10),
)
def test_decimal_within_scale_round_trips(value: Decimal, extra: int) -> None:
    scale = 8 + extra
    assert from_scaled(to_scaled(value, scale), scale) == value


@given(scaled=st.integers(min_value=INT128_MAX + 1, max_value=INT128_MAX * 4), scale=scales)
def test_value_above_int128_is_refused(scaled: int, scale: int) -> None:
    for value in (scaled, -scaled - 1):
        with pytest.raises(StoreValueError, match="128-bit"):
            to_scaled(Decimal(value).scaleb(-scale, context=WIDE), scale)


@given(scaled=int128.filter(lambda v: v % 10 != 0), scale=st.integers(1, MAX_SCALE))
def test_value_with_too_many_decimals_is_refused_not_rounded(scaled: int, scale: int) -> None:
    value = Decimal(scaled).scaleb(-scale, context=WIDE)
    with pytest.raises(StoreValueError, match="decimal places"):
        to_scaled(value, scale - 1)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_non_finite_value_is_refused(value: str) -> None:
    with pytest.raises(StoreValueError, match="finite"):
        to_scaled(Decimal(value), 8)


def test_trailing_zeros_are_not_extra_precision() -> None:
    assert to_scaled(Decimal("1.50000000000000000000000"), 2) == 150
    assert to_scaled(Decimal("1E+3"), 0) == 1000


@given(
    scaled=st.lists(int128, min_size=8, max_size=8),
    scale=scales,
)
def test_published_record_reads_back_exactly(
    tmp_path_factory: pytest.TempPathFactory, scaled: list[int], scale: int
) -> None:
    path = tmp_path_factory.mktemp("store") / "hft.kraken.balance"
    with StoreWriter.open(path, exchange="kraken", strategy_count=8) as writer:
        index = writer.add_currency("BTC", scale=scale)
        writer.publish(index, scaled, updated_ns=123)
        with StoreReader(path) as reader:
            record = reader.record("BTC")
    assert record.scaled == tuple(scaled)
    assert record.floats == tuple(v / 10**scale for v in scaled)
    assert record.exact_all() == tuple(from_scaled(v, scale) for v in scaled)
    assert record.updated_ns == 123


def test_publish_refuses_non_integer_and_out_of_range_slots(store_file: Path) -> None:
    with StoreWriter.open(store_file, exchange="kraken", strategy_count=2) as writer:
        index = writer.add_currency("USD", scale=2)
        for bad in ([1.5, 0], [INT128_MAX + 1, 0], [True, 0]):
            with pytest.raises(StoreValueError):
                writer.publish(index, bad)  # type: ignore[arg-type]
        with pytest.raises(StoreValueError, match="expected 2"):
            writer.publish(index, [1, 2, 3])
        with pytest.raises(StoreValueError, match="decimal places"):
            writer.publish_decimal("USD", ["1.001", "0"])


@pytest.mark.parametrize("strategy_count", [2, 8, 32, 128, 1024])
def test_records_are_whole_cache_lines(strategy_count: int) -> None:
    geometry = Geometry(strategy_count, capacity=16)
    assert geometry.record_size % 64 == 0
    assert geometry.records_offset % 64 == 0
    assert geometry.record_size >= 32 + 24 * strategy_count


@pytest.mark.parametrize("strategy_count", [0, 1, 1025])
def test_impossible_strategy_count_is_refused(strategy_count: int) -> None:
    with pytest.raises(StoreValueError, match="strategy_count"):
        Geometry(strategy_count, capacity=16)


def _header(geometry: Geometry) -> bytearray:
    buf = bytearray(geometry.file_size)
    pack_header(buf, geometry, exchange="kraken", created_ns=1)
    return buf


def test_header_round_trips() -> None:
    geometry = Geometry(8, capacity=4)
    header = unpack_header(_header(geometry), file_size=geometry.file_size, path="x")
    assert header.geometry == geometry
    assert header.exchange == "kraken"


def test_header_with_wrong_magic_is_corrupt() -> None:
    geometry = Geometry(8, capacity=4)
    buf = _header(geometry)
    buf[0:6] = b"NOTHFT"
    with pytest.raises(StoreCorruptError, match="not a balance store"):
        unpack_header(buf, file_size=len(buf), path="x")


def test_header_of_another_version_is_refused() -> None:
    geometry = Geometry(8, capacity=4)
    buf = _header(geometry)
    buf[8] = 2
    with pytest.raises(StoreVersionError, match="layout version 2"):
        unpack_header(buf, file_size=len(buf), path="x")


def test_truncated_file_is_corrupt() -> None:
    geometry = Geometry(8, capacity=4)
    buf = _header(geometry)
    with pytest.raises(StoreCorruptError, match="truncated"):
        unpack_header(buf, file_size=len(buf) - 1, path="x")
    with pytest.raises(StoreCorruptError, match="too short"):
        unpack_header(buf, file_size=HEADER_SIZE - 1, path="x")
