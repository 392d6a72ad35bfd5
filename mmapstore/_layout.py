"""The store file's byte layout (version 1) and the exact value encoding.

Everything is little-endian and every field a reader polls is an aligned
8-byte word, so one machine store publishes it whole. ``docs/shm-layout.md``
is the prose version of this module; keep the two in step.

    [ header: 256 bytes ][ directory: capacity x 32 bytes ][ records: capacity x record_size ]
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum, IntFlag
from typing import Final, TypeAlias

from mmapstore.errors import StoreCorruptError, StoreValueError, StoreVersionError

# What the pack/unpack helpers accept: a mapping, or a copy of its bytes.
Readable: TypeAlias = bytes | bytearray | memoryview | mmap.mmap
Writable: TypeAlias = bytearray | memoryview | mmap.mmap

MAGIC: Final = b"HFTBAL\x00\x01"
LAYOUT_VERSION: Final = 1
HEADER_SIZE: Final = 256
DIRECTORY_ENTRY_SIZE: Final = 32
CACHE_LINE: Final = 64
CURRENCY_NAME_MAX: Final = 20
EXCHANGE_NAME_MAX: Final = 32

MIN_STRATEGY_COUNT: Final = 2
MAX_STRATEGY_COUNT: Final = 1024
DEFAULT_STRATEGY_COUNT: Final = 8
DEFAULT_CAPACITY: Final = 1024
MAX_CAPACITY: Final = 1 << 20
DEFAULT_SCALE: Final = 18
MAX_SCALE: Final = 36

# Exact values are signed 128-bit integers: value = scaled / 10**scale.
INT128_MIN: Final = -(1 << 127)
INT128_MAX: Final = (1 << 127) - 1
_MASK64: Final = (1 << 64) - 1

# A record sequence of all ones marks a file replaced by a newer one: readers
# see it only on their slow path (it is odd) and then re-open the path.
RETIRED_SEQ: Final = _MASK64


class WriterState(IntEnum):
    """The header's ``state`` word."""

    STARTING = 0
    LIVE = 1
    STOPPED = 2
    RETIRED = 3


class Condition(IntFlag):
    """The header's ``flags`` word: what the writer knows is wrong right now."""

    FEED_DOWN = 1  # the exchange's fill stream is not connected: balances may be stale
    JOURNAL_DOWN = 2  # the state directory cannot be written: commands are refused
    REST_DOWN = 4  # the exchange's REST API is failing: no reconciliation
    OVERDRAWN = 8  # a slot is below zero (a withdrawal beyond available, a strategy oversold)
    # A balance the store cannot hold (that record keeps its last values), or a currency
    # it cannot name or has no record left for (not published).
    OUT_OF_RANGE = 16
    SOURCE_STALE = 32  # a mirror: its gateway or Redis is out of reach, or it is behind


CONDITION_BITS: Final = 0b111111  # the bits a reader of this layout knows


class WriterRole(IntEnum):
    """The header's ``role`` word: who writes the file."""

    GATEWAY = 0  # the exchange account's own gateway
    MIRROR = 1  # ``gateway mirror``: a copy fed through Redis from a gateway on another host


# Header: the static part is written once, before the file is renamed into place.
_HEADER_STATIC = struct.Struct("<8sIIIIII")  # magic .. directory_entry_size, offsets 0..31
_HEADER_OFFSETS = struct.Struct("<QQ")  # directory_offset, records_offset at 32
_HEADER_TAIL = struct.Struct("<qQ32s")  # created_ns, file_size, exchange at 88

# Header word indices (byte offset / 8) of the fields that change while readers map the file.
H_CURRENCY_COUNT: Final = 6  # byte 48
H_GENERATION: Final = 7  # byte 56
H_WRITER_PID: Final = 8  # byte 64
H_HEARTBEAT_NS: Final = 9  # byte 72
H_STATE: Final = 10  # byte 80
H_FLAGS: Final = 17  # byte 136 (Condition)
# A mirror's words (zero in a gateway's file, which older readers never look at).
H_ROLE: Final = 18  # byte 144 (WriterRole)
H_APPLIED_SEQ: Final = 19  # byte 152: how many of the source's journal events it has applied
H_SOURCE_SEEN_NS: Final = 20  # byte 160: when (this host's clock) the source was last seen alive

_ENTRY = struct.Struct("<20sIQ")  # name, scale, record_offset

# Record: word 0 seq, word 1 updated_ns, words 2-3 reserved, then floats, then int128 pairs.
R_SEQ: Final = 0
R_UPDATED_NS: Final = 1
R_FLOATS: Final = 4


@dataclass(frozen=True, slots=True)
class Geometry:
    """Sizes and offsets fixed when a file is created."""

    strategy_count: int
    capacity: int

    def __post_init__(self) -> None:
        if not MIN_STRATEGY_COUNT <= self.strategy_count <= MAX_STRATEGY_COUNT:
            raise StoreValueError(
                f"strategy_count must be {MIN_STRATEGY_COUNT}..{MAX_STRATEGY_COUNT}, "
                f"not {self.strategy_count}"
            )
        if not 1 <= self.capacity <= MAX_CAPACITY:
            raise StoreValueError(f"capacity must be 1..{MAX_CAPACITY}, not {self.capacity}")

    @property
    def record_size(self) -> int:
        """Bytes per record, padded to whole cache lines so records never share one."""
        raw = 8 * R_FLOATS + 8 * self.strategy_count + 16 * self.strategy_count
        return -(-raw // CACHE_LINE) * CACHE_LINE

    @property
    def directory_offset(self) -> int:
        return HEADER_SIZE

    @property
    def records_offset(self) -> int:
        end = HEADER_SIZE + self.capacity * DIRECTORY_ENTRY_SIZE
        return -(-end // CACHE_LINE) * CACHE_LINE

    @property
    def file_size(self) -> int:
        return self.records_offset + self.capacity * self.record_size

    def record_offset(self, index: int) -> int:
        return self.records_offset + index * self.record_size

    def entry_offset(self, index: int) -> int:
        return self.directory_offset + index * DIRECTORY_ENTRY_SIZE


@dataclass(frozen=True, slots=True)
class Header:
    """The static header fields, as read back from a file."""

    geometry: Geometry
    created_ns: int
    exchange: str


def pack_header(buf: bytearray, geometry: Geometry, *, exchange: str, created_ns: int) -> None:
    """Write the static header into ``buf`` (a new file's first bytes)."""
    exchange_raw = exchange.encode("ascii")
    if not exchange_raw or len(exchange_raw) > EXCHANGE_NAME_MAX:
        raise StoreValueError(f"exchange name must be 1..{EXCHANGE_NAME_MAX} ASCII bytes")
    _HEADER_STATIC.pack_into(
        buf,
        0,
        MAGIC,
        LAYOUT_VERSION,
        HEADER_SIZE,
        geometry.strategy_count,
        geometry.record_size,
        geometry.capacity,
        DIRECTORY_ENTRY_SIZE,
    )
    _HEADER_OFFSETS.pack_into(buf, 32, geometry.directory_offset, geometry.records_offset)
    _HEADER_TAIL.pack_into(buf, 88, created_ns, geometry.file_size, exchange_raw)


def unpack_header(buf: Readable, *, file_size: int, path: str) -> Header:
    """Validate and decode the static header.

    Raises:
        StoreCorruptError: not a store file, or sizes that do not add up.
        StoreVersionError: a store file of another layout version.
    """
    if file_size < HEADER_SIZE:
        raise StoreCorruptError(f"{path}: {file_size} bytes is too short for a balance store")
    magic, version, header_size, strategy_count, record_size, capacity, entry_size = (
        _HEADER_STATIC.unpack_from(buf, 0)
    )
    if magic[:6] != MAGIC[:6]:
        raise StoreCorruptError(f"{path}: not a balance store (magic {magic!r})")
    if magic != MAGIC or version != LAYOUT_VERSION:
        raise StoreVersionError(
            f"{path}: layout version {version}, this code reads version {LAYOUT_VERSION}; "
            "upgrade the reader or the gateway so they match"
        )
    try:
        geometry = Geometry(strategy_count, capacity)
    except StoreValueError as exc:
        raise StoreCorruptError(f"{path}: {exc}") from exc
    directory_offset, records_offset = _HEADER_OFFSETS.unpack_from(buf, 32)
    created_ns, recorded_size, exchange_raw = _HEADER_TAIL.unpack_from(buf, 88)
    expected = (
        HEADER_SIZE,
        geometry.record_size,
        DIRECTORY_ENTRY_SIZE,
        geometry.directory_offset,
        geometry.records_offset,
        geometry.file_size,
    )
    found = (header_size, record_size, entry_size, directory_offset, records_offset, recorded_size)
    if found != expected:
        raise StoreCorruptError(f"{path}: header sizes {found} do not match the layout {expected}")
    if file_size < geometry.file_size:
        raise StoreCorruptError(
            f"{path}: truncated ({file_size} bytes, the header says {geometry.file_size})"
        )
    return Header(geometry, created_ns, _decode_name(exchange_raw, f"{path}: exchange name"))


def _decode_name(raw: bytes, what: str) -> str:
    """A NUL-padded printable ASCII name, or StoreCorruptError (a crafted file)."""
    name = raw.rstrip(b"\0")
    if not name or not all(0x21 <= byte < 0x7F for byte in name):
        raise StoreCorruptError(f"{what} {name!r} is not printable ASCII")
    return name.decode("ascii")


def pack_entry(buf: Writable, offset: int, name: str, scale: int, record_at: int) -> None:
    _ENTRY.pack_into(buf, offset, encode_currency_name(name), scale, record_at)


def unpack_entry(buf: Readable, offset: int) -> tuple[str, int, int]:
    """Return ``(name, scale, record_offset)`` of one directory entry."""
    raw, scale, record_at = _ENTRY.unpack_from(buf, offset)
    return _decode_name(raw, f"currency entry at byte {offset}:"), scale, record_at


def encode_currency_name(name: str) -> bytes:
    """A currency's directory name: a ticker as given, upper-case ASCII letters and
    digits, dots after the first (``BTC``, ``ETH2.S``), at most ``CURRENCY_NAME_MAX``.

    As given, not upper-cased here: two names that differ only in case (``btc`` and
    ``BTC``, or a non-ASCII letter that upper-cases to ASCII) must not share one record.

    Raises:
        StoreValueError: anything else (readers print these names; a name from an
            exchange is not trusted to be one).
    """
    if not _TICKER.fullmatch(name):
        raise StoreValueError(
            f"currency name {name[:40]!r} is not a ticker (1..{CURRENCY_NAME_MAX} upper-case "
            "ASCII letters, digits and dots)"
        )
    return name.encode("ascii")


_TICKER: Final = re.compile(rf"[A-Z0-9][A-Z0-9.]{{0,{CURRENCY_NAME_MAX - 1}}}", re.ASCII)


def payload_struct(strategy_count: int) -> struct.Struct:
    """The record payload after the sequence word: updated_ns, 2 reserved words, floats, ints."""
    return struct.Struct("<q16x" + "d" * strategy_count + "Qq" * strategy_count)


def split_int128(value: int) -> tuple[int, int]:
    """``value`` as its (low unsigned, high signed) 64-bit halves."""
    return value & _MASK64, value >> 64


def join_int128(low: int, high: int) -> int:
    result: int = (high << 64) | low
    return result


def check_scale(scale: int) -> int:
    if not 0 <= scale <= MAX_SCALE:
        raise StoreValueError(f"scale must be 0..{MAX_SCALE}, not {scale}")
    return scale


def to_scaled(value: Decimal | int | str, scale: int) -> int:
    """Encode ``value`` as the integer ``value * 10**scale``, exactly.

    Raises:
        StoreValueError: not finite, more decimal places than ``scale``, or
            outside the signed 128-bit range. Nothing is ever rounded.
    """
    number = value if isinstance(value, Decimal) else Decimal(value)
    if not number.is_finite():
        raise StoreValueError(f"{value!r} is not a finite number")
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    magnitude = int("".join(map(str, digits))) if digits else 0
    shift = exponent + scale
    if shift >= 0:
        magnitude *= 10**shift
    else:
        divisor: int = 10 ** (-shift)
        magnitude, remainder = divmod(magnitude, divisor)
        if remainder:
            raise StoreValueError(f"{value} has more than {scale} decimal places")
    scaled = -magnitude if sign else magnitude
    if not INT128_MIN <= scaled <= INT128_MAX:
        raise StoreValueError(f"{value} does not fit a 128-bit value at scale {scale}")
    return scaled


def from_scaled(scaled: int, scale: int) -> Decimal:
    """Decode ``scaled / 10**scale`` as an exact Decimal (no context rounding).

    Trailing fractional zeros are dropped (``100.5``, not ``100.500…``); the
    value is the same either way.
    """
    if scaled == 0:
        return Decimal(0)
    text = str(abs(scaled))
    exponent = -scale
    drop = min(len(text) - len(text.rstrip("0")), scale)
    if drop:
        text = text[:-drop]
        exponent += drop
    return Decimal((1 if scaled < 0 else 0, tuple(map(int, text)), exponent))
