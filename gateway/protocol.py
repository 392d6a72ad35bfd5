"""The command socket's wire protocol: framing, decoding, validation. Pure, no I/O.

A connection's first byte picks its framing for good: ``{`` or white space
means newline-delimited JSON; ``0x00`` means length-prefixed CBOR (a 4-byte
big-endian length, then one CBOR map; a frame is at most 64 KiB, so its
length's first byte is always 0). ``docs/protocol.md`` is the user's version.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Final

import cbor2
import msgspec

from gateway.codes import ErrorCode
from gateway.errors import CommandProtocolError
from gateway.events import Reply
from gateway.ledger import (
    AVAILABLE,
    TOTAL,
    UNIT,
    BalanceCommand,
    CommandKind,
    Refused,
    format_scaled,
    scale_exact,
)

MAX_FRAME_BYTES: Final = 64 * 1024
# A CBOR frame declared larger than this is not skipped but ends the connection.
MAX_SKIP_BYTES: Final = 16 * 1024 * 1024
MAX_AMOUNT: Final = Decimal(10) ** 18
MAX_AMOUNT_INT: Final = 10**18
LENGTH_PREFIX: Final = struct.Struct(">I")
MAX_NAME_CHARS: Final = 64
MAX_REQUEST_ID_CHARS: Final = 128
_CURRENCY_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.]{0,19}")
# ASCII digits only: str.isdigit() and Decimal() also take "١٢" (Arabic-Indic twelve).
_DECIMAL_RE: Final = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)
# Bounds checked before any arithmetic: Decimal("1e-999999999") is cheap to build but
# scaling it computes 10**999999981 and stalls every client. No amount the ledger can
# hold (18 decimals, below 10**18) needs more digits or a larger exponent than these.
MAX_AMOUNT_DIGITS: Final = 60
MAX_AMOUNT_EXPONENT: Final = 60

BALANCE_FIELDS: Final = frozenset(
    {"strategy", "cmd", "currency", "amount", "index", "request_id", "ref_id"}
)
MAX_REF_ID_CHARS: Final = 64  # an exchange's transfer reference (Kraken's: 18 characters)
QUERY_FIELDS: Final = frozenset({"cmd", "currency", "strategy", "request_id"})


class Framing(Enum):
    JSON = "json"
    CBOR = "cbor"


def detect_framing(first_byte: int) -> Framing | None:
    if first_byte == ord("{") or chr(first_byte) in " \t\r\n":
        return Framing.JSON
    if first_byte == 0:
        return Framing.CBOR
    return None


# -- frame decoders -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameError:
    """A frame that could not be taken; ``fatal`` ends the connection."""

    code: ErrorCode
    message: str
    fatal: bool = False


Frame = bytes | FrameError


class JsonLineDecoder:
    """Splits a byte stream into lines; an overlong line is reported and skipped."""

    def __init__(self, limit: int = MAX_FRAME_BYTES) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > self._limit and not self._skipping:
                    self._skipping = True
                    frames.append(_too_large(self._limit))
                if self._skipping:
                    self._buffer.clear()
                return frames
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            if self._skipping:
                self._skipping = False  # the rest of the oversize line
            elif len(line) > self._limit:
                frames.append(_too_large(self._limit))
            elif line.strip():
                frames.append(line)

    @property
    def mid_frame(self) -> bool:
        """True while part of a request has arrived and the rest has not."""
        return bool(self._buffer) or self._skipping

    def at_eof(self) -> list[Frame]:
        if self._buffer.strip() and not self._skipping:
            return [FrameError(ErrorCode.BAD_FRAME, "truncated request: no newline before EOF")]
        return []


class CborFrameDecoder:
    """Splits a byte stream into length-prefixed frames."""

    def __init__(self, limit: int = MAX_FRAME_BYTES) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._skip = 0

    @property
    def mid_frame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return bool(self._buffer) or self._skip > 0

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                del self._buffer[:dropped]
                self._skip -= dropped
                if self._skip:
                    return frames
            if len(self._buffer) < LENGTH_PREFIX.size:
                return frames
            (length,) = LENGTH_PREFIX.unpack_from(self._buffer)
            if length > self._limit:
                del self._buffer[: LENGTH_PREFIX.size]
                if length > MAX_SKIP_BYTES:
                    frames.append(
                        FrameError(
                            ErrorCode.FRAME_TOO_LARGE,
                            f"frame of {length} bytes; the limit is {self._limit}",
                            fatal=True,
                        )
                    )
                    return frames
                self._skip = length
                frames.append(_too_large(self._limit))
                continue
            end = LENGTH_PREFIX.size + length
            if len(self._buffer) < end:
                return frames
            frames.append(bytes(self._buffer[LENGTH_PREFIX.size : end]))
            del self._buffer[:end]

    def at_eof(self) -> list[Frame]:
        if self._buffer:
            return [FrameError(ErrorCode.BAD_FRAME, "truncated frame at EOF")]
        return []


def _too_large(limit: int) -> FrameError:
    return FrameError(ErrorCode.FRAME_TOO_LARGE, f"request larger than {limit} bytes")


# -- decoding --------------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise CommandProtocolError(ErrorCode.INVALID_AMOUNT, f"{name} is not a finite amount")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    body = dict(pairs)
    if len(body) != len(pairs):
        raise CommandProtocolError(ErrorCode.BAD_FRAME, "a key appears twice in the request")
    return body


# One decoder for every request: JSON numbers become Decimal (never float), NaN is refused,
# and a repeated key is refused rather than "last one wins".
_JSON: Final = json.JSONDecoder(
    parse_float=Decimal, parse_constant=_reject_constant, object_pairs_hook=_unique_keys
)
# Replies are compact UTF-8 JSON; msgspec writes one in a tenth of json's time (~0.3 µs).
# A lone surrogate (which UTF-8 cannot hold) in a message echoing a request is escaped
# by json instead.
_JSON_OUT: Final = msgspec.json.Encoder()
_JSON_ESCAPED: Final = json.JSONEncoder(separators=(",", ":"))


def decode_frame(frame: bytes, framing: Framing) -> dict[str, object]:
    """One frame's map. JSON numbers become Decimal or int exactly, never float.

    Raises:
        CommandProtocolError: BAD_FRAME (not JSON/CBOR, not a map), INVALID_AMOUNT (NaN).
    """
    try:
        body = _JSON.decode(frame.decode()) if framing is Framing.JSON else _one_cbor_map(frame)
    except CommandProtocolError:
        raise
    except (ValueError, UnicodeDecodeError, cbor2.CBORDecodeError, RecursionError) as exc:
        kind = "JSON" if framing is Framing.JSON else "CBOR"
        raise CommandProtocolError(ErrorCode.BAD_FRAME, f"not valid {kind}: {exc}") from None
    if not isinstance(body, dict):
        raise CommandProtocolError(ErrorCode.BAD_FRAME, "a request must be a map/object")
    return body


def _one_cbor_map(frame: bytes) -> object:
    """The frame's one CBOR item; bytes after it are refused, not ignored."""
    stream = io.BytesIO(frame)
    item = cbor2.CBORDecoder(stream).decode()
    if stream.tell() != len(frame):
        raise CommandProtocolError(ErrorCode.BAD_FRAME, "bytes after the CBOR map")
    return item


def encode_reply(reply: Reply, framing: Framing) -> bytes:
    if framing is Framing.JSON:
        try:
            return _JSON_OUT.encode(reply) + b"\n"
        except UnicodeEncodeError:
            return _JSON_ESCAPED.encode(reply).encode() + b"\n"
    body = cbor2.dumps(reply)
    return LENGTH_PREFIX.pack(len(body)) + body


# -- validation ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """``query`` (balances) or ``status`` (health)."""

    what: str
    currency: str | None
    request_id: str | None


Request = BalanceCommand | Query


def request_id_of(body: dict[str, object]) -> str | None:
    """The request's id if it has a usable one (for echoing it in an error reply)."""
    value = body.get("request_id")
    return value if isinstance(value, str) and _is_text(value, MAX_REQUEST_ID_CHARS) else None


def parse_request(body: dict[str, object], strategy_count: int) -> tuple[Request, str | None]:
    """Validate a decoded map into a typed request and its ``request_id``.

    Everything that can be judged without the ledger is judged here.

    Raises:
        CommandProtocolError: with the code the client should see.
    """
    cmd = body.get("cmd")
    if not isinstance(cmd, str):
        raise CommandProtocolError(ErrorCode.INVALID_REQUEST, "'cmd' (a string) is required")
    request_id = _request_id(body.get("request_id"))
    if cmd in ("query", "status"):
        _check_fields(body, QUERY_FIELDS)
        currency = body.get("currency")
        return Query(cmd, None if currency is None else _currency(currency), request_id), (
            request_id
        )
    try:
        kind = CommandKind(cmd)
    except ValueError:
        raise CommandProtocolError(
            ErrorCode.UNKNOWN_COMMAND,
            f"unknown cmd {cmd!r}; expected allocate, release, adjust, query or status",
        ) from None
    _check_fields(body, BALANCE_FIELDS)
    for name in ("strategy", "currency", "amount", "index"):
        if name not in body:
            raise CommandProtocolError(ErrorCode.INVALID_REQUEST, f"{cmd} needs '{name}'")
    strategy = body["strategy"]
    if not isinstance(strategy, str) or not _is_text(strategy, MAX_NAME_CHARS):
        raise CommandProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"'strategy' must be printable text of 1..{MAX_NAME_CHARS} characters",
        )
    index = _index(body["index"], kind, strategy_count)
    amount = _amount(body["amount"], signed=kind is CommandKind.ADJUST)
    ref_id = body.get("ref_id")
    if ref_id is not None:
        if kind is not CommandKind.ADJUST:
            raise CommandProtocolError(
                ErrorCode.INVALID_REQUEST, "'ref_id' names a transfer: only adjust takes it"
            )
        if not isinstance(ref_id, str) or not _is_text(ref_id, MAX_REF_ID_CHARS):
            raise CommandProtocolError(
                ErrorCode.INVALID_REQUEST,
                f"'ref_id' must be printable text of 1..{MAX_REF_ID_CHARS} characters",
            )
    command = BalanceCommand(kind, strategy, _currency(body["currency"]), index, amount, ref_id)
    return command, request_id


def request_body(command: BalanceCommand, request_id: str | None) -> dict[str, object]:
    """The request map that :func:`parse_request` turns into ``command`` (for forwarding)."""
    body: dict[str, object] = {
        "cmd": command.kind.value,
        "strategy": command.strategy,
        "currency": command.currency,
        "index": command.index,
        "amount": format_scaled(command.amount),
    }
    if command.ref_id is not None:
        body["ref_id"] = command.ref_id
    if request_id is not None:
        body["request_id"] = request_id
    return body


def _check_fields(body: dict[str, object], allowed: frozenset[str]) -> None:
    unknown = body.keys() - allowed
    if unknown:
        names = ", ".join(sorted(map(str, unknown)))
        raise CommandProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"unknown field(s) {names}; allowed: {', '.join(sorted(allowed))}",
        )


def _is_text(value: str, limit: int) -> bool:
    """Printable text of 1..limit characters: no control characters, no lone surrogates
    (which no encoder can write, so one would crash the writer's journal)."""
    return 0 < len(value) <= limit and value.isprintable()


def _request_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _is_text(value, MAX_REQUEST_ID_CHARS):
        raise CommandProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"'request_id' must be printable text of 1..{MAX_REQUEST_ID_CHARS} characters",
        )
    return value


def _currency(value: object) -> str:
    if not isinstance(value, str):
        raise CommandProtocolError(ErrorCode.INVALID_REQUEST, "'currency' must be a string")
    if not _CURRENCY_RE.fullmatch(value):
        raise CommandProtocolError(ErrorCode.UNKNOWN_CURRENCY, f"no such currency: {value!r}")
    return value.upper()


def _index(value: object, kind: CommandKind, strategy_count: int) -> int:
    if type(value) is not int:
        raise CommandProtocolError(ErrorCode.INVALID_REQUEST, "'index' must be an integer")
    if not 0 <= value < strategy_count:
        raise CommandProtocolError(
            ErrorCode.INVALID_INDEX,
            f"index {value} is out of range 0..{strategy_count - 1}",
        )
    if kind is CommandKind.ADJUST and value == AVAILABLE:
        raise CommandProtocolError(
            ErrorCode.INVALID_INDEX,
            "adjust takes index 0 (the account) or a strategy's index (>= 2), not 1",
        )
    if kind is not CommandKind.ADJUST and value in (TOTAL, AVAILABLE):
        raise CommandProtocolError(
            ErrorCode.INVALID_INDEX, f"{kind} takes a strategy's index (>= 2), not {value}"
        )
    return value


def _amount(value: object, *, signed: bool) -> int:
    if type(value) is int and -MAX_AMOUNT_INT <= value <= MAX_AMOUNT_INT:
        # The common case, judged without Decimal (the checks below, in the same order).
        if value == 0:
            raise CommandProtocolError(ErrorCode.INVALID_AMOUNT, "amount must not be zero")
        if value < 0 and not signed:
            raise CommandProtocolError(
                ErrorCode.INVALID_AMOUNT, "amount must be positive (use release to give back)"
            )
        return value * UNIT
    number: Decimal
    if isinstance(value, bool):
        raise CommandProtocolError(ErrorCode.INVALID_REQUEST, "'amount' must be a number")
    if isinstance(value, int) and not -(10**MAX_AMOUNT_DIGITS) < value < 10**MAX_AMOUNT_DIGITS:
        # A 4,300-digit CBOR bignum cannot even be turned into text.
        raise CommandProtocolError(ErrorCode.INVALID_AMOUNT, "amount is too large")
    if isinstance(value, int | Decimal):
        number = Decimal(value)
    elif isinstance(value, float):  # CBOR floats: their shortest repr, never binary noise
        if not math.isfinite(value):
            raise CommandProtocolError(ErrorCode.INVALID_AMOUNT, f"{value} is not finite")
        number = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip(" ")  # ASCII spaces only: no NBSP, no other Unicode space
        if len(text) > 2 * MAX_AMOUNT_DIGITS or not _DECIMAL_RE.fullmatch(text):
            raise CommandProtocolError(
                ErrorCode.INVALID_AMOUNT, f"{value[:40]!r} is not a decimal number"
            )
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise CommandProtocolError(
                ErrorCode.INVALID_AMOUNT, f"{value!r} is not a decimal number"
            ) from None
    else:
        raise CommandProtocolError(
            ErrorCode.INVALID_REQUEST, "'amount' must be a number or a decimal string"
        )
    if not number.is_finite():
        raise CommandProtocolError(ErrorCode.INVALID_AMOUNT, f"{value} is not finite")
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    if len(digits) > MAX_AMOUNT_DIGITS or abs(exponent) > MAX_AMOUNT_EXPONENT:
        raise CommandProtocolError(
            ErrorCode.INVALID_AMOUNT,
            "amount has too many digits or too large an exponent (18 decimals, < 1e18)",
        )
    if number.is_zero():
        raise CommandProtocolError(ErrorCode.INVALID_AMOUNT, "amount must not be zero")
    if number < 0 and not signed:
        raise CommandProtocolError(
            ErrorCode.INVALID_AMOUNT, "amount must be positive (use release to give back)"
        )
    if number.copy_abs() > MAX_AMOUNT:  # exact: abs() rounds to the context's 28 digits
        raise CommandProtocolError(ErrorCode.INVALID_AMOUNT, f"amount {value} is too large")
    try:
        return scale_exact(number)
    except Refused as refusal:
        raise CommandProtocolError(refusal.code, refusal.message) from None
