"""State-changing events: how each is applied to the ledger and how it is journalled.

The writer applies an event and journals it; a restart replays the journal
through the very same :func:`apply_event`, so live and replayed state cannot
diverge. Pure: no I/O, no Trio.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, assert_never

import cbor2
import msgspec

from gateway.journal import UnreplayableRecordError
from gateway.ledger import (
    AVAILABLE,
    FIRST_STRATEGY,
    TOTAL,
    BalanceCommand,
    CommandKind,
    Fee,
    Fill,
    FillOutcome,
    Ledger,
    Refused,
    Side,
    Transfer,
    format_scaled,
)

Reply = dict[str, object]


@dataclass(frozen=True, slots=True)
class CommandApplied:
    """An allocate / release / adjust, with its idempotency key if it had one."""

    command: BalanceCommand
    request_id: str | None = None

    @property
    def fingerprint(self) -> tuple[object, ...]:
        c = self.command
        if c.ref_id is None:  # as before ref ids existed: remembered replies still match
            return (c.kind.value, c.strategy, c.currency, c.index, c.amount)
        return (c.kind.value, c.strategy, c.currency, c.index, c.amount, c.ref_id)


@dataclass(frozen=True, slots=True)
class FillApplied:
    fill: Fill


@dataclass(frozen=True, slots=True)
class FillReplayed:
    """A journalled fill, read back by what it booked: replay needs no decimals.

    ``record`` is the journal record itself, so that it encodes as it was.
    """

    exec_id: str
    timestamp_ns: int
    slot: int
    booked: tuple[tuple[str, int], ...]
    record: bytes


@dataclass(frozen=True, slots=True)
class TransferApplied:
    transfer: Transfer


@dataclass(frozen=True, slots=True)
class TotalsSet:
    """The exchange's totals at bootstrap (scaled), as of a moment (ns; 0 if unknown)."""

    totals: Mapping[str, int]
    as_of_ns: int = 0


@dataclass(frozen=True, slots=True)
class Corrected:
    """A reconcile correction of one currency's total (scaled)."""

    currency: str
    old_total: int
    new_total: int


@dataclass(frozen=True, slots=True)
class LedgerOpened:
    """A new ledger began at ``epoch_ns``; fills older than that are history."""

    epoch_ns: int


@dataclass(frozen=True, slots=True)
class AccountBound:
    """The ledger belongs to this exchange account (see ExchangeSession.account)."""

    account: str


Event = (
    CommandApplied
    | FillApplied
    | FillReplayed
    | TransferApplied
    | TotalsSet
    | Corrected
    | LedgerOpened
    | AccountBound
)


class Outcome(msgspec.Struct, frozen=True):
    """What applying an event did: currencies to republish, a reply, a fill report.

    A Struct, made in a fraction of a frozen dataclass's time (gateway/ledger.py says why).
    """

    changed: tuple[str, ...]
    reply: Reply | None = None
    fill: FillOutcome | None = None
    durable: bool = True  # False: nothing changed, nothing to journal


def ok_reply(ledger: Ledger, currency: str, request_id: str | None) -> Reply:
    reply: Reply = {
        "ok": True,
        "currency": currency,
        "balances": [format_scaled(v) for v in ledger.slots(currency)],
    }
    if request_id is not None:
        reply["request_id"] = request_id
    return reply


def error_reply(code: str, message: str, request_id: str | None = None) -> Reply:
    reply: Reply = {"ok": False, "error": {"code": code, "message": message}}
    if request_id is not None:
        reply["request_id"] = request_id
    return reply


def apply_event(ledger: Ledger, event: Event) -> Outcome:
    """Apply one event. Commands answer with a reply; refusals change nothing."""
    match event:
        case CommandApplied(command=command, request_id=request_id):
            if request_id is not None:
                known = _recall(ledger, event)
                if known is not None:
                    return Outcome((), known, durable=False)
            try:
                ledger.apply_command(command)
            except Refused as refusal:
                reply = error_reply(refusal.code, refusal.message, request_id)
                if request_id is None:
                    return Outcome((), reply, durable=False)
                # A refusal with a key is remembered (and journalled) like a success,
                # so a retry after a restart gets the same answer.
                ledger.remember_reply(request_id, event.fingerprint, reply)
                return Outcome((), reply)
            reply = ok_reply(ledger, command.currency, request_id)
            if request_id is not None:
                ledger.remember_reply(request_id, event.fingerprint, reply)
            return Outcome((command.currency,), reply)
        case FillApplied(fill=fill):
            outcome = ledger.apply_fill(fill)
            if outcome is None:
                return Outcome((), durable=False)
            return Outcome(outcome.changed, fill=outcome)
        case FillReplayed(exec_id=exec_id, timestamp_ns=ts, slot=slot, booked=booked):
            outcome = ledger.apply_booked_fill(exec_id, ts, slot, booked)
            if outcome is None:
                return Outcome((), durable=False)
            return Outcome(outcome.changed, fill=outcome)
        case TransferApplied(transfer=transfer):
            currency = ledger.apply_transfer(transfer)
            if currency is None:
                return Outcome((), durable=False)
            return Outcome((currency,))
        case TotalsSet(totals=totals, as_of_ns=as_of_ns):
            return Outcome(tuple(ledger.set_totals(totals, as_of_ns)))
        case Corrected(currency=currency, new_total=new_total):
            ledger.correct(currency, new_total)
            return Outcome((currency,))
        case LedgerOpened(epoch_ns=epoch_ns):
            ledger.epoch_ns = epoch_ns
            return Outcome(())
        case AccountBound(account=account):
            ledger.account = account
            return Outcome(())
        case _:
            assert_never(event)


def _recall(ledger: Ledger, event: CommandApplied) -> Reply | None:
    assert event.request_id is not None
    try:
        return ledger.recall_reply(event.request_id, event.fingerprint)
    except Refused as refusal:
        return error_reply(refusal.code, refusal.message, event.request_id)


# -- journal encoding -------------------------------------------------------------

_KIND: Final = "t"
# A fill as the writer journals it (with what it booked) is not a map but an array:
#   ["bf", exec_id, timestamp_ns, slot, [currency, scaled, ...], <the fill's map, as CBOR bytes>]
# Replay reads the first five and never decodes the fill itself: a fifth of the cost of
# the map form, which journals written before still hold and replay still reads.
_BOOKED_FILL: Final = "bf"


def encode_event(event: Event, fill: FillOutcome | None = None) -> bytes:
    """The event as one CBOR item (decimals as strings, so the bytes are exact).

    A fill applied (``fill``, its outcome) is recorded with what it booked,
    which replay applies instead of redoing the decimal arithmetic (the
    array form above); every other event is a map.
    """
    body: dict[str, object]
    match event:
        case CommandApplied(command=c, request_id=request_id):
            body = {
                _KIND: "cmd",
                "kind": c.kind.value,
                "strategy": c.strategy,
                "currency": c.currency,
                "index": c.index,
                "amount": c.amount,
                "rid": request_id,
            }
            if c.ref_id is not None:
                body["ref"] = c.ref_id
        case FillApplied(fill=f):
            body = _fill_body(f)
            if fill is not None:
                return cbor2.dumps([
                    _BOOKED_FILL, f.exec_id, f.timestamp_ns, fill.slot,
                    [part for c, d in fill.booked for part in (c, _compact(d))],
                    cbor2.dumps(body),
                ])  # fmt: skip
        case FillReplayed(record=record):
            return record
        case TransferApplied(transfer=t):
            body = {
                _KIND: "transfer",
                "id": t.ledger_id,
                "ref": t.ref_id,
                "currency": t.currency,
                "amount": str(t.amount),
                "kind": t.kind,
                "ts": t.timestamp_ns,
            }
        case TotalsSet(totals=totals, as_of_ns=as_of_ns):
            body = {_KIND: "totals", "totals": dict(totals), "asof": as_of_ns}
        case Corrected(currency=currency, old_total=old, new_total=new):
            body = {_KIND: "correct", "currency": currency, "old": old, "new": new}
        case LedgerOpened(epoch_ns=epoch_ns):
            body = {_KIND: "opened", "epoch": epoch_ns}
        case AccountBound(account=account):
            body = {_KIND: "account", "account": account}
        case _:
            assert_never(event)
    return cbor2.dumps(body)


def _fill_body(f: Fill) -> dict[str, object]:
    return {
        _KIND: "fill",
        "id": f.exec_id,
        "base": f.base,
        "quote": f.quote,
        "side": f.side.value,
        "qty": str(f.qty),
        "price": str(f.price),
        "fees": [[fee.asset, str(fee.qty)] for fee in f.fees],
        "userref": f.userref,
        "ts": f.timestamp_ns,
        "order": f.order_id,
        "clid": f.cl_ord_id,
        "cost": None if f.cost is None else str(f.cost),
    }


def decode_event(data: bytes) -> Event:
    """Inverse of :func:`encode_event`. Raises ValueError (or a CBOR error) on bad input."""
    item = cbor2.loads(data)
    if type(item) is list:
        exec_id, timestamp_ns, slot, booked = _booking(item)
        return FillReplayed(exec_id, timestamp_ns, slot, booked, data)
    return _decode_map(item, data)


def replay_events(ledger: Ledger, records: Sequence[bytes]) -> None:
    """Apply journal records on a restart: ``apply_event(ledger, decode_event(record))``
    for each in turn, without the outcomes a restart does not read.

    A restart replays up to a snapshot interval of records, nearly all of them booked
    fills in two currencies (the fee charged in one of the two). Such a
    record is checked whole and then booked in this loop, with no call of its own:
    :meth:`Ledger.replay_booked_fill` inlined, a third of a record's replay. Any other
    record (another event, a third currency, or a shape that is wrong) takes the checked
    way, :func:`_replay_item`, which also says what is wrong. The property test in
    tests/gateway/test_ledger.py holds that both ways build the ledger ``apply_event``
    builds.

    Raises:
        UnreplayableRecordError: the record at its ``index`` in ``records`` passed its
            checksum but cannot be applied; the exception's cause says why.
    """
    loads = cbor2.loads
    balances, applied, strategy_count = ledger.balances, ledger.applied, ledger.strategy_count
    known_ids, order, capacity = applied.ids, applied.order, applied.capacity
    for index, record in enumerate(records):
        try:
            item = loads(record)
            if type(item) is not list or len(item) != 6 or type(flat := item[4]) is not list:
                _replay_item(ledger, item, record)
                continue
            tag, exec_id, timestamp_ns, slot, _, detail = item
            if len(flat) != 4 or not (
                tag == _BOOKED_FILL
                and type(exec_id) is str
                and type(timestamp_ns) is int
                and type(slot) is int
                and type(detail) is bytes
                and (FIRST_STRATEGY <= slot < strategy_count or slot == AVAILABLE)
                and type(base := flat[0]) is str
                and type(quote := flat[2]) is str
            ):
                _replay_item(ledger, item, record)
                continue
            base_change, quote_change = flat[1], flat[3]
            if type(base_change) is not int:
                base_change = _scaled(base_change)
            if type(quote_change) is bytes and len(quote_change) <= _MAX_SCALED_BYTES:
                quote_change = int.from_bytes(quote_change, "big", signed=True)  # a price's leg
            elif type(quote_change) is not int:
                quote_change = _scaled(quote_change)
            if exec_id in known_ids or 0 < timestamp_ns <= applied.watermark_ns:
                continue  # applied before (as Ledger.replay_booked_fill decides)
            slots = balances.get(base) or ledger.slots_for(base)
            slots[TOTAL] += base_change
            slots[slot] += base_change
            slots = balances.get(quote) or ledger.slots_for(quote)
            slots[TOTAL] += quote_change
            slots[slot] += quote_change
            order.append(exec_id)
            known_ids[exec_id] = timestamp_ns
            while len(known_ids) > capacity:  # AppliedFills.forget_oldest, inlined
                forgotten_ns = known_ids.pop(order.popleft())
                if forgotten_ns > applied.watermark_ns:  # noqa: PLR1730
                    applied.watermark_ns = forgotten_ns
            if timestamp_ns > ledger.last_fill_ns:  # noqa: PLR1730 (max() costs 6x an if)
                ledger.last_fill_ns = timestamp_ns
        except (ValueError, KeyError, TypeError, ArithmeticError, cbor2.CBORDecodeError) as exc:
            raise UnreplayableRecordError(index) from exc


def _replay_item(ledger: Ledger, item: object, record: bytes) -> None:
    """One decoded record replayed the checked way; raises ValueError for a wrong shape."""
    if type(item) is list:
        ledger.replay_booked_fill(*_booked_columns(item))
    else:
        apply_event(ledger, _decode_map(item, record))


def fill_of(data: bytes) -> Fill | None:
    """The fill a journal record holds, with its decimals (for audits); None if not a fill."""
    item = cbor2.loads(data)
    if type(item) is list:
        _booked_columns(item)
        item = cbor2.loads(item[5])
    event = _decode_map(item, data)
    return event.fill if isinstance(event, FillApplied) else None


def _booking(item: list[object]) -> tuple[str, int, int, tuple[tuple[str, int], ...]]:
    """A booked fill record's ``(exec_id, timestamp_ns, slot, booked)``."""
    exec_id, timestamp_ns, slot, currencies, changes = _booked_columns(item)
    return exec_id, timestamp_ns, slot, tuple(zip(currencies, changes, strict=True))


def _booked_columns(item: list[object]) -> tuple[str, int, int, list[str], list[int]]:
    """A booked fill record's ``(exec_id, timestamp_ns, slot, currencies, changes)``,
    checked for shape (it passed its checksum: a bad shape is a bug or tampering, and the
    start must stop). Two columns, not pairs: a restart applies them without a tuple each."""
    try:
        tag, exec_id, timestamp_ns, slot, flat, detail = item
    except ValueError:
        raise ValueError("a journal record array is not a booked fill") from None
    if tag != _BOOKED_FILL or type(detail) is not bytes:
        raise ValueError("a journal record array is not a booked fill")
    if not (type(exec_id) is str and type(timestamp_ns) is int and type(slot) is int):
        raise ValueError("a fill record without its id, time or slot")
    if type(flat) is not list or len(flat) % 2:
        raise ValueError("a fill record's changes are not [currency, scaled, ...]")
    currencies: list[str] = flat[::2]
    changes: list[int] = flat[1::2]
    for currency in currencies:
        if type(currency) is not str:
            raise ValueError("a fill record's change is not [currency, scaled]")
    for index, scaled in enumerate(changes):
        if type(scaled) is not int:
            changes[index] = _scaled(scaled)
    return exec_id, timestamp_ns, slot, currencies, changes


def _change(currency: object, scaled: object) -> tuple[str, int]:
    if not isinstance(currency, str):
        raise ValueError("a fill record's change is not [currency, scaled]")
    return currency, _scaled(scaled)


def _scaled(value: object) -> int:
    """A scaled change as journalled: an int, its two's-complement bytes, or (earlier) digits."""
    if type(value) is int:
        return value
    if type(value) is bytes and len(value) <= _MAX_SCALED_BYTES:
        return int.from_bytes(value, "big", signed=True)
    if type(value) is str and len(value) <= _MAX_SCALED_DIGITS and _SCALED.fullmatch(value):
        return int(value)
    raise ValueError("a fill record's change is not [currency, scaled]")


def _decode_map(body: object, data: bytes) -> Event:
    if not isinstance(body, dict):
        raise ValueError("journal record is not a map")
    kind = body.get(_KIND)
    if kind == "cmd":
        command = BalanceCommand(
            CommandKind(body["kind"]),
            body["strategy"],
            body["currency"],
            body["index"],
            body["amount"],
            body.get("ref"),
        )
        return CommandApplied(command, body["rid"])
    if kind == "fill":
        booked = body.get("book")
        if booked is not None:
            return _replayed(body, booked, data)
        fill = Fill(
            exec_id=body["id"],
            base=body["base"],
            quote=body["quote"],
            side=Side(body["side"]),
            qty=Decimal(body["qty"]),
            price=Decimal(body["price"]),
            fees=tuple(Fee(asset, Decimal(qty)) for asset, qty in body["fees"]),
            userref=body["userref"],
            timestamp_ns=body["ts"],
            order_id=body["order"],
            cl_ord_id=body["clid"],
            cost=None if body.get("cost") is None else Decimal(body["cost"]),
        )
        return FillApplied(fill)
    if kind == "transfer":
        transfer = Transfer(
            ledger_id=body["id"],
            ref_id=body["ref"],
            currency=body["currency"],
            amount=Decimal(body["amount"]),
            kind=body["kind"],
            timestamp_ns=body["ts"],
        )
        return TransferApplied(transfer)
    if kind == "totals":
        return TotalsSet(dict(body["totals"]), body.get("asof", 0))
    if kind == "correct":
        return Corrected(body["currency"], body["old"], body["new"])
    if kind == "opened":
        return LedgerOpened(body["epoch"])
    if kind == "account":
        account = body["account"]
        if not isinstance(account, str):
            raise ValueError("account is not text")
        return AccountBound(account)
    raise ValueError(f"unknown journal record kind {kind!r}")


def _replayed(body: Mapping[str, object], booked: object, record: bytes) -> FillReplayed:
    """A fill record of the earlier form (a map with its booking in ``book``)."""
    exec_id, timestamp_ns = body["id"], body["ts"]
    if not (isinstance(exec_id, str) and type(timestamp_ns) is int):
        raise ValueError("a fill record without its id or time")
    if not (isinstance(booked, list) and len(booked) == 2 and type(booked[0]) is int):
        raise ValueError("a fill record's booking is not [slot, changes]")
    slot, changes = booked
    if not isinstance(changes, list):
        raise ValueError("a fill record's changes are not a list")
    pairs = []
    for change in changes:
        if not (isinstance(change, list) and len(change) == 2):
            raise ValueError("a fill record's change is not [currency, scaled]")
        pairs.append(_change(change[0], change[1]))
    return FillReplayed(exec_id, timestamp_ns, slot, tuple(pairs), record)


# A scaled change beyond 64 bits (most amounts at 18 decimals) is written as its
# two's-complement bytes: CBOR's bignums decode at about a third of a journal record's
# whole decoding cost, and digits (the earlier form, still read) take a regex and a parse.
_INT64: Final = 1 << 63
_SCALED: Final = re.compile(r"-?[0-9]+", re.ASCII)
_MAX_SCALED_DIGITS: Final = 80
_MAX_SCALED_BYTES: Final = 34  # 80 digits


def _compact(scaled: int) -> int | bytes:
    if -_INT64 <= scaled < _INT64:
        return scaled
    return scaled.to_bytes(scaled.bit_length() // 8 + 1, "big", signed=True)
