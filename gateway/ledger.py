"""The exact ledger: every slot of every currency, owners, applied fills, idempotent replies.

Pure: no I/O, no Trio, no clock. Values are integers scaled by ``10**SCALE``
(the store's default scale), so the ledger publishes without conversion and
no arithmetic ever rounds. Every method either applies its event completely
or raises :class:`Refused` having changed nothing.
"""

from __future__ import annotations

import decimal
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

import cbor2
import msgspec

from gateway.codes import ErrorCode
from mmapstore import DEFAULT_SCALE, INT128_MAX, INT128_MIN, StoreValueError, to_scaled

SCALE: Final = DEFAULT_SCALE
UNIT: Final = 10**SCALE
TOTAL: Final = 0
AVAILABLE: Final = 1
FIRST_STRATEGY: Final = 2
# Fill ids remembered exactly. Replays come from a reconnect's snapshot (the last 50
# trades) and a catch-up's one-second overlap; anything older falls below the
# watermark and still counts as seen. 50,000 ids are >= 5 s of fills at 10,000/s,
# hours at ordinary rates, and ~8 MB (200,000 cost 32 MB and the RSS goal).
APPLIED_FILLS_KEPT: Final = 50_000
REPLIES_KEPT: Final = 100_000
TRANSFER_REFS_KEPT: Final = 50_000
UNKNOWN_CURRENCY_LISTED: Final = 12  # currencies named in an UNKNOWN_CURRENCY refusal

# Fill arithmetic (qty * price) and its scaling need more digits than Decimal's default
# 28, and are exact or an error.
_EXACT = decimal.Context(prec=100, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.Inexact])


class Refused(Exception):  # noqa: N818 - a verdict, not a malfunction
    """The event was refused; the ledger is unchanged."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CommandKind(StrEnum):
    ALLOCATE = "allocate"
    RELEASE = "release"
    ADJUST = "adjust"


# The values the edges make for the writer (a command, a fill, its fees, what a fill did)
# are frozen msgspec Structs, not frozen dataclasses, which set each field through
# object.__setattr__: a Fill took 2.6 µs to make, 0.2 as a Struct, several percent of a
# fill's CPU at 10,000 a second. The same fields, equality, hash and match patterns.


class BalanceCommand(msgspec.Struct, frozen=True):
    """A validated allocate / release / adjust: amount is scaled, signed only for adjust."""

    kind: CommandKind
    strategy: str
    currency: str
    index: int
    amount: int
    # adjust only: the exchange's reference of the transfer this adjust is the notice of.
    ref_id: str | None = None


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class Fee(msgspec.Struct, frozen=True):
    asset: str
    qty: Decimal


class Fill(msgspec.Struct, frozen=True):
    """One execution, as the exchange adapter parsed it (canonical currency codes)."""

    exec_id: str
    base: str
    quote: str
    side: Side
    qty: Decimal
    price: Decimal
    fees: tuple[Fee, ...] = ()
    userref: int | None = None
    timestamp_ns: int = 0
    order_id: str = ""
    cl_ord_id: str | None = None
    # The quote leg as the exchange booked it; None books qty * price (older journals).
    cost: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Transfer:
    """Money the exchange moved outside trading: a deposit, withdrawal, transfer, earn move.

    ``amount`` is the signed change of the balance (the fee already taken off);
    ``ledger_id`` makes it exactly-once; ``ref_id`` is what an ``adjust`` names
    to say "that transfer was mine" (docs/protocol.md).
    """

    ledger_id: str
    ref_id: str
    currency: str
    amount: Decimal
    kind: str
    timestamp_ns: int = 0


@dataclass(slots=True)
class TransferRef:
    """What the ledger knows of one ref id in one currency."""

    seen: int | None = None  # net amount the exchange's entries booked, once one arrived
    claimed: int | None = None  # the delta an adjust with this ref moved, once one did


class FillOutcome(msgspec.Struct, frozen=True):
    """What a fill did: the currencies it changed, and slots it drove negative (reported)."""

    slot: int
    changed: tuple[str, ...]
    negative: tuple[tuple[str, int, int], ...]  # (currency, slot, value) that just went below 0
    booked: tuple[tuple[str, int], ...] = ()  # (currency, scaled change) of slots 0 and ``slot``


@dataclass
class AppliedFills:
    """Execution ids already applied, bounded.

    The oldest ids are forgotten past ``capacity``; ``watermark_ns`` remembers
    the newest timestamp forgotten, and a fill at or before it counts as seen.
    The order lives in a deque: taking the first key of a dict that has had
    its front deleted over and over scans past every deleted slot (measured:
    eviction grew to ~100 µs a fill after a million fills).
    """

    capacity: int = APPLIED_FILLS_KEPT
    ids: dict[str, int] = field(default_factory=dict)
    order: deque[str] = field(default_factory=deque)
    watermark_ns: int = 0

    def seen(self, exec_id: str, timestamp_ns: int) -> bool:
        if exec_id in self.ids:
            return True
        return 0 < timestamp_ns <= self.watermark_ns

    def add(self, exec_id: str, timestamp_ns: int) -> None:
        ids = self.ids
        if exec_id not in ids:
            self.order.append(exec_id)
        ids[exec_id] = timestamp_ns
        if len(ids) > self.capacity:
            self.forget_oldest()

    def forget_oldest(self) -> None:
        """Forget ids past ``capacity``, oldest first, raising the watermark to them."""
        ids, order = self.ids, self.order
        while len(order) > self.capacity:
            forgotten_ns = ids.pop(order.popleft())
            if forgotten_ns > self.watermark_ns:  # noqa: PLR1730 (max() costs 6x an if)
                self.watermark_ns = forgotten_ns

    def restore(self, pairs: Iterable[tuple[str, int]], watermark_ns: int) -> None:
        self.ids = dict(pairs)
        self.order = deque(self.ids)
        self.watermark_ns = watermark_ns


def _ref_key(ref_id: str, currency: str) -> str:
    return f"{currency} {ref_id}"


def scale_exact(value: Decimal | int) -> int:
    """A command amount as a scaled integer; raises ``Refused`` rather than round."""
    try:
        return to_scaled(value, SCALE)
    except StoreValueError as exc:
        raise Refused(ErrorCode.INVALID_AMOUNT, str(exc)) from None


def scale_fact(value: Decimal) -> int:
    """An amount the exchange reports (a fill's leg), scaled and rounded half-even.

    Facts must be applied, so there is no range here: the ledger holds any
    integer, and a value the store cannot hold degrades that currency's record
    (``OUT_OF_RANGE``) instead of stopping the gateway. The edge bounds every
    exponent (see the exchange parsers), so this is never a huge computation.
    A product of quantity and price may carry more decimals than the ledger
    keeps (the exchange rounds too): ``round`` rounds half-even. Three of
    these a fill: one scaling and a round are a third less than a quantize,
    a scaling and an ``int``.
    """
    try:
        return round(value.scaleb(SCALE, context=_EXACT))
    except decimal.Inexact:  # more than 100 digits: nothing an exchange books
        raise StoreValueError(f"{value} is far beyond any balance") from None


def scale_fill(value: Decimal) -> int:
    """An exchange total, scaled as :func:`scale_fact`, within the store's range.

    Raises:
        StoreValueError: the store could not hold it.
    """
    scaled = scale_fact(value)
    if not INT128_MIN <= scaled <= INT128_MAX:
        raise StoreValueError(f"{value} does not fit a 128-bit value at scale {SCALE}")
    return scaled


def _check_range(currency: str, *values: int) -> None:
    """Refuse a command whose result the store could not hold (signed 128-bit, scaled).

    A refusal here is the only way out: published, the value would crash the writer,
    and replayed from the journal, every restart after.
    """
    if any(not INT128_MIN <= v <= INT128_MAX for v in values):
        raise Refused(
            ErrorCode.INVALID_AMOUNT,
            f"the result would exceed the largest {currency} balance the store can hold",
        )


def format_scaled(value: int) -> str:
    """A scaled value as a plain decimal string (``"100.5"``, ``"-0.000001"``)."""
    if value == 0:  # most slots of most replies
        return "0"
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), UNIT)
    if not frac:
        return f"{sign}{whole}"
    text = f"{frac:0{SCALE}d}".rstrip("0")
    return f"{sign}{whole}.{text}" if text else f"{sign}{whole}"


class Ledger:
    """All balances of one exchange account, split into strategy slots.

    Invariant after every event: ``slot[0] == sum(slot[1:])`` for every currency.
    """

    def __init__(self, strategy_count: int) -> None:
        if strategy_count < 2:
            raise ValueError("a ledger needs at least slots 0 (total) and 1 (available)")
        self.strategy_count = strategy_count
        self.balances: dict[str, list[int]] = {}
        self.owners: dict[int, str] = {}
        self.applied = AppliedFills()
        # request id -> one CBOR blob of [fingerprint, reply]: a third of
        # the memory of the tuples and dicts themselves (100,000 replies cost ~70 MB
        # so), and a snapshot takes the blobs as they are, making no object per reply.
        self.replies: dict[str, bytes] = {}
        self._reply_order: deque[str] = deque()  # see AppliedFills for why not dict order
        self.last_fill_ns = 0
        # When this ledger began: older fills are already in the exchange's balances.
        self.epoch_ns = 0
        # Which exchange account these slots belong to ("" before it was bound).
        self.account = ""
        # Transfers (deposits, withdrawals ...) applied, by ledger id; and by ref id, for adjust.
        self.transfers = AppliedFills()
        self.transfer_refs: dict[str, TransferRef] = {}
        self._ref_order: deque[str] = deque()  # see AppliedFills for why not dict order
        self.last_transfer_ns = 0
        # The bootstrap's totals hold every transfer before this moment.
        self.totals_as_of_ns = 0

    # -- queries ----------------------------------------------------------------

    def slots(self, currency: str) -> tuple[int, ...]:
        return tuple(self.balances[currency])

    def check_invariant(self) -> None:
        for currency, slots in self.balances.items():
            assert len(slots) == self.strategy_count, currency
            assert slots[TOTAL] == sum(slots[1:]), (currency, slots)

    def owner(self, index: int) -> str | None:
        return self.owners.get(index)

    # -- commands ---------------------------------------------------------------

    def unknown_currency(self, currency: str) -> Refused:
        """The refusal for a currency this account has no balance of, naming those it has."""
        held = sorted(self.balances)
        listed = ", ".join(held[:UNKNOWN_CURRENCY_LISTED])
        if len(held) > UNKNOWN_CURRENCY_LISTED:
            listed += f" and {len(held) - UNKNOWN_CURRENCY_LISTED} more"
        return Refused(
            ErrorCode.UNKNOWN_CURRENCY,
            f"no {currency} balance on this account (it holds {listed or 'none yet'})",
        )

    def apply_command(self, command: BalanceCommand) -> tuple[int, ...]:
        """Apply allocate / release / adjust; return the currency's new slots.

        Raises:
            Refused: unknown currency, bad index or amount, another strategy's
                slot, or a slot that would go below zero.
        """
        slots = self.balances.get(command.currency)
        if slots is None:
            raise self.unknown_currency(command.currency)
        index, amount = command.index, command.amount
        if command.kind is CommandKind.ADJUST:
            target = AVAILABLE if index == TOTAL else index
            if not (index == TOTAL or FIRST_STRATEGY <= index < self.strategy_count):
                raise Refused(
                    ErrorCode.INVALID_INDEX,
                    f"adjust takes index 0 or 2..{self.strategy_count - 1}, not {index}",
                )
            if amount == 0:
                raise Refused(ErrorCode.INVALID_AMOUNT, "adjust needs a non-zero delta")
            self._check_owner(command.strategy, index)
            if command.ref_id is not None and self._adjust_seen_transfer(command, slots):
                if index >= FIRST_STRATEGY:
                    self._rebind(command.strategy, index)
                return tuple(slots)
            new_total, new_target = slots[TOTAL] + amount, slots[target] + amount
            _check_range(command.currency, new_total, new_target)
            if new_total < 0 or new_target < 0:
                raise Refused(
                    ErrorCode.INSUFFICIENT_FUNDS,
                    f"adjust {format_scaled(amount)} {command.currency} would make slot "
                    f"{TOTAL if new_total < 0 else target} negative",
                )
            slots[TOTAL], slots[target] = new_total, new_target
            if command.ref_id is not None:  # ahead of the exchange's own entry for it
                self._ref(command.ref_id, command.currency).claimed = amount
        else:
            if not FIRST_STRATEGY <= index < self.strategy_count:
                raise Refused(
                    ErrorCode.INVALID_INDEX,
                    f"{command.kind} takes index 2..{self.strategy_count - 1}, not {index}",
                )
            if amount <= 0:
                raise Refused(ErrorCode.INVALID_AMOUNT, "amount must be positive")
            self._check_owner(command.strategy, index)
            source, sink = (
                (AVAILABLE, index) if command.kind is CommandKind.ALLOCATE else (index, AVAILABLE)
            )
            if slots[source] < amount:
                raise Refused(
                    ErrorCode.INSUFFICIENT_FUNDS,
                    f"{command.kind} {format_scaled(amount)} {command.currency}: slot {source} "
                    f"has only {format_scaled(slots[source])}",
                )
            _check_range(command.currency, slots[sink] + amount)
            slots[source] -= amount
            slots[sink] += amount
        if index >= FIRST_STRATEGY:
            self._rebind(command.strategy, index)
        return tuple(slots)

    def _adjust_seen_transfer(self, command: BalanceCommand, slots: list[int]) -> bool:
        """An adjust naming a transfer: True if it was handled as one already seen.

        A transfer the exchange streamed is already in slots 0 and 1; its notice
        moves it from slot 1 to the strategy's slot (index 0: nothing to move),
        so it is never counted twice. One not seen yet is an ordinary adjust,
        and the entry, when it arrives, books only what differs from it.

        Raises:
            Refused: the transfer was claimed already, or its amount differs.
        """
        assert command.ref_id is not None
        known = self.transfer_refs.get(_ref_key(command.ref_id, command.currency))
        if known is not None and known.claimed is not None:
            raise Refused(
                ErrorCode.TRANSFER_CLAIMED,
                f"transfer {command.ref_id!r} ({command.currency}) was already adjusted",
            )
        if known is None or known.seen is None:
            return False
        amount, index = command.amount, command.index
        if amount != known.seen:
            raise Refused(
                ErrorCode.INVALID_AMOUNT,
                f"the exchange booked transfer {command.ref_id!r} as "
                f"{format_scaled(known.seen)} {command.currency}, not {format_scaled(amount)}",
            )
        if index >= FIRST_STRATEGY:
            if slots[AVAILABLE] - amount < 0 or slots[index] + amount < 0:
                raise Refused(
                    ErrorCode.INSUFFICIENT_FUNDS,
                    f"adjust {format_scaled(amount)} {command.currency} of transfer "
                    f"{command.ref_id!r} would make slot "
                    f"{AVAILABLE if slots[AVAILABLE] - amount < 0 else index} negative",
                )
            _check_range(command.currency, slots[index] + amount)
            slots[AVAILABLE] -= amount
            slots[index] += amount
        known.claimed = amount
        return True

    def _ref(self, ref_id: str, currency: str) -> TransferRef:
        key = _ref_key(ref_id, currency)
        known = self.transfer_refs.get(key)
        if known is None:
            known = self.transfer_refs[key] = TransferRef()
            self._ref_order.append(key)
            while len(self._ref_order) > TRANSFER_REFS_KEPT:
                self.transfer_refs.pop(self._ref_order.popleft(), None)
        return known

    # -- transfers ------------------------------------------------------------------

    @property
    def transfer_position_ns(self) -> int:
        """Where a catch-up of transfers starts: the epoch or the last transfer."""
        return max(self.epoch_ns, self.last_transfer_ns)

    def apply_transfer(self, transfer: Transfer) -> str | None:
        """Book a transfer in slots 0 and 1, once per ledger id; returns the currency.

        None when it was applied before, or is history older than the ledger.
        One from before the last bootstrap's request is in its totals: it is
        remembered (so an adjust naming it moves it) but not booked again.
        """
        if self.transfers.seen(transfer.ledger_id, transfer.timestamp_ns):
            return None
        self.transfers.add(transfer.ledger_id, transfer.timestamp_ns)
        if 0 < transfer.timestamp_ns < self.epoch_ns:
            return None
        net = scale_fact(transfer.amount)
        known = self._ref(transfer.ref_id, transfer.currency)
        # Before the bootstrap's totals were asked for, they hold it already: seen
        # (for an adjust naming it), not booked again.
        in_totals = 0 < transfer.timestamp_ns < self.totals_as_of_ns
        booked = 0 if in_totals else net
        if known.seen is None and known.claimed is not None:
            booked -= known.claimed  # an adjust booked it ahead: only the difference
        known.seen = (known.seen or 0) + net
        slots = self.slots_for(transfer.currency)
        slots[TOTAL] += booked
        slots[AVAILABLE] += booked
        self.last_transfer_ns = max(self.last_transfer_ns, transfer.timestamp_ns)
        return transfer.currency

    def _check_owner(self, strategy: str, index: int) -> None:
        owner = self.owners.get(index)
        if index >= FIRST_STRATEGY and owner is not None and owner != strategy:
            raise Refused(
                ErrorCode.SLOT_OWNED,
                f"slot {index} belongs to strategy {owner!r} until it is released to zero",
            )

    def _rebind(self, strategy: str, index: int) -> None:
        """Bind a slot to its user, or free it once it is zero in every currency."""
        if all(slots[index] == 0 for slots in self.balances.values()):
            self.owners.pop(index, None)
        else:
            self.owners[index] = strategy

    # -- fills ------------------------------------------------------------------

    @property
    def position_ns(self) -> int:
        """The moment up to which this ledger holds every fill: its epoch or last fill."""
        return max(self.epoch_ns, self.last_fill_ns)

    def fill_slot(self, userref: int | None) -> int:
        if userref is not None and FIRST_STRATEGY <= userref < self.strategy_count:
            return userref
        return AVAILABLE

    def apply_fill(self, fill: Fill) -> FillOutcome | None:
        """Apply a fill to slot 0 and its order's slot; None if it was applied before.

        Never refuses: a fill is a fact. Slots it drives negative are reported.
        """
        if self.applied.seen(fill.exec_id, fill.timestamp_ns):
            return None
        if 0 < fill.timestamp_ns < self.epoch_ns:
            # History from before the ledger existed (a first snapshot): the bootstrap
            # balances include it, and no strategy slot held anything then.
            self.applied.add(fill.exec_id, fill.timestamp_ns)
            return None
        slot = self.fill_slot(fill.userref)
        cost = fill.cost if fill.cost is not None else _EXACT.multiply(fill.qty, fill.price)
        sign = 1 if fill.side is Side.BUY else -1
        deltas: dict[str, int] = {}
        for currency, delta in (
            (fill.base, sign * scale_fact(fill.qty)),
            (fill.quote, -sign * scale_fact(cost)),
            *((fee.asset, -scale_fact(fee.qty)) for fee in fill.fees),
        ):
            deltas[currency] = deltas.get(currency, 0) + delta
        return self._book(fill.exec_id, fill.timestamp_ns, slot, tuple(deltas.items()))

    def apply_booked_fill(
        self, exec_id: str, timestamp_ns: int, slot: int, booked: tuple[tuple[str, int], ...]
    ) -> FillOutcome | None:
        """Replay a journalled fill by what it booked (no decimal arithmetic again).

        The journal records what :meth:`apply_fill` booked; replayed on the
        same state, the same checks pass, so this is that fill applied again.
        """
        if not self._replayable(exec_id, timestamp_ns, slot):
            return None
        return self._book(exec_id, timestamp_ns, slot, booked)

    def replay_booked_fill(
        self,
        exec_id: str,
        timestamp_ns: int,
        slot: int,
        currencies: Sequence[str],
        changes: Sequence[int],
    ) -> None:
        """:meth:`apply_booked_fill` for a restart, which needs no outcome.

        :meth:`_replayable`, :meth:`_move` and ``AppliedFills.add`` in one
        call, without the report of slots gone negative (the writer reads
        those from the ledger once it is restored): a restart replays up to a
        snapshot interval of these, and the four calls were a third of it.
        Its maxima are ifs, as in ``_move`` and ``forget_oldest``: a fifth off
        this method over a million fills.
        """
        applied = self.applied
        ids = applied.ids
        if exec_id in ids or 0 < timestamp_ns <= applied.watermark_ns:
            return
        if not (FIRST_STRATEGY <= slot < self.strategy_count or slot == AVAILABLE):
            raise ValueError(f"a journalled fill booked to slot {slot}")
        balances = self.balances
        # One length by construction (one list split in two); strict would cost a fifth.
        for currency, delta in zip(currencies, changes, strict=False):
            slots = balances.get(currency) or self.slots_for(currency)
            slots[TOTAL] += delta
            slots[slot] += delta
        applied.order.append(exec_id)
        ids[exec_id] = timestamp_ns
        if len(ids) > applied.capacity:
            applied.forget_oldest()
        if timestamp_ns > self.last_fill_ns:  # noqa: PLR1730 (max() costs 6x an if)
            self.last_fill_ns = timestamp_ns

    def _replayable(self, exec_id: str, timestamp_ns: int, slot: int) -> bool:
        """Not applied yet; raises ValueError for a slot no fill books to."""
        if self.applied.seen(exec_id, timestamp_ns):
            return False
        if self.fill_slot(slot) != slot:
            raise ValueError(f"a journalled fill booked to slot {slot}")
        return True

    def _book(
        self, exec_id: str, timestamp_ns: int, slot: int, booked: tuple[tuple[str, int], ...]
    ) -> FillOutcome:
        changed = tuple([currency for currency, _ in booked])
        return FillOutcome(slot, changed, self._move(exec_id, timestamp_ns, slot, booked), booked)

    def _move(
        self, exec_id: str, timestamp_ns: int, slot: int, booked: tuple[tuple[str, int], ...]
    ) -> tuple[tuple[str, int, int], ...]:
        """Every fill's one change of state; returns the slots it drove below zero."""
        # slot is never TOTAL (fill_slot gives AVAILABLE or a strategy's).
        negative: list[tuple[str, int, int]] = []
        balances = self.balances
        for currency, delta in booked:
            slots = balances.get(currency) or self.slots_for(currency)
            total = slots[TOTAL] = slots[TOTAL] + delta
            mine = slots[slot] = slots[slot] + delta
            # Reported once, when a slot crosses below zero, not on every fill after.
            if total < 0 <= total - delta:
                negative.append((currency, TOTAL, total))
            if mine < 0 <= mine - delta:
                negative.append((currency, slot, mine))
        self.applied.add(exec_id, timestamp_ns)
        if timestamp_ns > self.last_fill_ns:  # noqa: PLR1730 (max() costs 6x an if)
            self.last_fill_ns = timestamp_ns
        return tuple(negative)

    def slots_for(self, currency: str) -> list[int]:
        """The currency's slots to change, made (all zero) the first time."""
        slots = self.balances.get(currency)
        if slots is None:
            slots = self.balances[currency] = [0] * self.strategy_count
        return slots

    # -- totals from the exchange -------------------------------------------------

    def set_totals(self, totals: Mapping[str, int], as_of_ns: int = 0) -> list[str]:
        """Take the exchange's totals (bootstrap): slot 0 = total, slot 1 absorbs the rest.

        Strategy slots keep their values; a currency the exchange no longer
        lists is taken as zero. Transfers before ``as_of_ns`` are in these
        totals (see :meth:`apply_transfer`). Returns the currencies that changed.
        """
        self.totals_as_of_ns = max(self.totals_as_of_ns, as_of_ns)
        changed = []
        for currency in sorted(set(totals) | set(self.balances)):
            total = totals.get(currency, 0)
            slots = self.slots_for(currency)
            if slots[TOTAL] != total:
                slots[AVAILABLE] += total - slots[TOTAL]
                slots[TOTAL] = total
                changed.append(currency)
        return changed

    def correct(self, currency: str, total: int) -> tuple[int, int]:
        """A reconcile correction: slots 0 and 1 move by the difference. Returns (old, new)."""
        slots = self.slots_for(currency)
        old = slots[TOTAL]
        slots[AVAILABLE] += total - old
        slots[TOTAL] = total
        return old, total

    # -- idempotency --------------------------------------------------------------

    def remember_reply(
        self, request_id: str, fingerprint: tuple[object, ...], reply: dict[str, object]
    ) -> None:
        if request_id not in self.replies:
            self._reply_order.append(request_id)
        self.replies[request_id] = _reply_blob(fingerprint, reply)
        while len(self._reply_order) > REPLIES_KEPT:
            self.replies.pop(self._reply_order.popleft(), None)

    def recall_reply(
        self, request_id: str, fingerprint: tuple[object, ...]
    ) -> dict[str, object] | None:
        """The first reply to ``request_id``, or None if it is new.

        Raises:
            Refused: the id was used before for a different request.
        """
        blob = self.replies.get(request_id)
        if blob is None:
            return None
        known_fingerprint, reply = cbor2.loads(blob)
        if tuple(known_fingerprint) != fingerprint:
            raise Refused(
                ErrorCode.IDEMPOTENCY_CONFLICT,
                f"request_id {request_id!r} was already used for a different request",
            )
        assert isinstance(reply, dict)
        reply["request_id"] = request_id
        return reply

    # -- snapshots ------------------------------------------------------------------

    def to_snapshot(self) -> dict[str, object]:
        """Everything, as plain CBOR-encodable values."""
        return {
            "strategy_count": self.strategy_count,
            "balances": {c: list(s) for c, s in self.balances.items()},
            "owners": {str(k): v for k, v in self.owners.items()},
            # Lists of what the ledger holds already: no object made per id or reply.
            "applied_ids": list(self.applied.ids),
            "applied_ns": list(self.applied.ids.values()),
            "watermark_ns": self.applied.watermark_ns,
            "reply_ids": list(self.replies),
            "reply_blobs": list(self.replies.values()),
            "last_fill_ns": self.last_fill_ns,
            "epoch_ns": self.epoch_ns,
            "account": self.account,
            "transfers": [[k, v] for k, v in self.transfers.ids.items()],
            "transfers_watermark_ns": self.transfers.watermark_ns,
            "transfer_refs": [[k, r.seen, r.claimed] for k, r in self.transfer_refs.items()],
            "last_transfer_ns": self.last_transfer_ns,
            "totals_as_of_ns": self.totals_as_of_ns,
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, object]) -> Ledger:
        """The ledger a snapshot holds; ValueError (or KeyError, TypeError) for one of
        another shape. Checked by ifs, not asserts: ``python -O`` drops those."""
        strategy_count = _int(data["strategy_count"])
        _check(2 <= strategy_count <= 1024, f"{strategy_count} slots")  # as the store allows
        ledger = cls(strategy_count)
        balances = _map(data["balances"])
        ledger.balances = {str(c): [_int(v) for v in _list(s)] for c, s in balances.items()}
        for currency, slots in ledger.balances.items():
            _check(len(slots) == strategy_count, f"{currency} has {len(slots)} slots")
            _check(slots[TOTAL] == sum(slots[1:]), f"{currency}'s slots do not add up")
        ledger.owners = {int(k): str(v) for k, v in _map(data["owners"]).items()}
        if "applied_ids" in data:
            ids, times = _list(data["applied_ids"]), _list(data["applied_ns"])
            _check(len(ids) == len(times), "fill ids and times differ in number")
            applied: Iterable[tuple[object, object]] = zip(ids, times, strict=True)
        else:  # as snapshots kept them before: [[id, ns], ...]
            applied = _pairs(data["applied"])
        ledger.applied.restore(((str(k), _int(v)) for k, v in applied), _int(data["watermark_ns"]))
        if "reply_ids" in data:
            ids, blobs = _list(data["reply_ids"]), _list(data["reply_blobs"])
            _check(len(ids) == len(blobs), "reply ids and replies differ in number")
            ledger.replies = dict(zip(ids, blobs, strict=True))
            _check(
                all(isinstance(k, str) and isinstance(b, bytes) for k, b in ledger.replies.items()),
                "a remembered reply is not an id and its bytes",
            )
        else:  # before the blobs: [[id, fingerprint, reply], ...]
            replies = _list(data["replies"])
            ledger.replies = {str(k): _reply_blob(tuple(f), r) for k, f, r in replies}
        ledger._reply_order = deque(ledger.replies)
        ledger.last_fill_ns = _int(data["last_fill_ns"])
        ledger.epoch_ns = _int(data.get("epoch_ns", 0))
        ledger.account = str(data.get("account", ""))
        ledger.transfers.restore(
            ((str(k), _int(v)) for k, v in _pairs(data.get("transfers", []))),
            _int(data.get("transfers_watermark_ns", 0)),
        )
        refs = _list(data.get("transfer_refs", []))
        ledger.transfer_refs = {str(k): TransferRef(seen, claimed) for k, seen, claimed in refs}
        ledger._ref_order = deque(ledger.transfer_refs)
        ledger.last_transfer_ns = _int(data.get("last_transfer_ns", 0))
        ledger.totals_as_of_ns = _int(data.get("totals_as_of_ns", 0))
        return ledger


def _reply_blob(fingerprint: tuple[object, ...], reply: Mapping[str, object]) -> bytes:
    """The remembered form: the request id is the key, so the blob leaves it out."""
    return cbor2.dumps([list(fingerprint), {k: v for k, v in reply.items() if k != "request_id"}])


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"a snapshot's {what}")


def _int(value: object) -> int:
    if type(value) is not int:
        raise ValueError(f"a snapshot holds {value!r} where a whole number belongs")
    return value


def _list(value: object) -> list[Any]:
    if type(value) is not list:
        raise ValueError(f"a snapshot holds {type(value).__name__} where a list belongs")
    return value


def _map(value: object) -> dict[Any, Any]:
    if type(value) is not dict:
        raise ValueError(f"a snapshot holds {type(value).__name__} where a map belongs")
    return value


def _pairs(value: object) -> Iterable[tuple[object, object]]:
    return ((k, v) for k, v in _list(value))
