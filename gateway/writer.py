"""The writer task: the only code that changes the ledger, the journal and the store.

It takes whatever is queued as one batch, applies each message, publishes the
currencies that changed, then encodes the batch's journal records, makes the
batch durable with one write and sync, and only then answers the commands in it
(group commit). The commit is pipelined:
while a worker thread syncs one batch, the writer applies the next ones, whose
replies wait for the sync that covers them; a batch found alone, with nothing
queued behind it and someone waiting on it (a client, the bootstrap), is synced
inline, which answers a lone client soonest. A sync nobody waits on (the
heartbeat's, below) always runs in the thread, and the writer takes messages
while a sync is in flight: a fill is never held behind a disk.

Fills never wait for a disk: a batch of fills alone is published and left in
the journal's buffer, to be written with the next batch that needs an fsync
(a command, a correction, or the heartbeat tick twice a second). A crash can
lose at most that half second of fill records, and loses no fill: the
exchange's snapshot and trade history replay them on restart, and the ledger
skips those it already has.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, assert_never

import msgspec
import trio

from gateway.codes import ErrorCode
from gateway.config import SNAPSHOT_EVERY_EVENTS
from gateway.errors import JournalWriteError
from gateway.events import (
    AccountBound,
    CommandApplied,
    Corrected,
    Event,
    FillApplied,
    LedgerOpened,
    Outcome,
    Reply,
    TotalsSet,
    TransferApplied,
    apply_event,
    encode_event,
    error_reply,
)
from gateway.journal import Journal, PendingWrite
from gateway.ledger import FillOutcome, Ledger, format_scaled
from gateway.messages import (
    BalancesFetched,
    CommandReceived,
    CorrectionProposed,
    ExchangeHealthChanged,
    FillReceived,
    HeartbeatTick,
    QueryReceived,
    ReplySlot,
    TotalsStreamed,
    TransferReceived,
    WriterMessage,
)
from mmapstore import INT128_MAX, INT128_MIN, Condition, StoreFullError, StoreValueError

if TYPE_CHECKING:
    from gateway.journal import Journal
    from mmapstore import StoreWriter

logger = logging.getLogger(__name__)

MAX_BATCH: Final = 1024
FILL_SYNC_DELAY_S: Final = 0.002  # replicating: fills wait at most this for their sync
SLOW_COMMIT_S: Final = 0.05
# A fill or transfer dated further than this past the host's clock is booked as of now.
# Its date becomes the ledger's position, where the next catch-up starts: a date ahead
# (a broken or hostile exchange clock) would move that past every trade made until then.
# Booked earlier than its date, a catch-up only fetches again what the writer knows by id.
AHEAD_TOLERANCE_NS: Final = 60 * 10**9


@dataclass
class WriterStats:
    fills_applied: int = 0
    fills_duplicate: int = 0
    transfers_applied: int = 0
    commands_applied: int = 0
    commands_refused: int = 0
    commands_unavailable: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # code -> count
    corrections: int = 0
    batches: int = 0
    streamed_totals_checked: int = 0
    streamed_totals_differed: int = 0
    dated_ahead: int = 0  # fills and transfers dated past this host's clock: booked as of now


@dataclass
class _Batch:
    changed: set[str]
    replies: list[tuple[ReplySlot, Reply]]
    published: list[trio.Event]
    # Fills alone do not need it: see the module docstring.
    needs_sync: bool = False
    # How to take back each command applied in this batch, should its commit fail.
    undo: list[tuple[ReplySlot, _Undo]] = field(default_factory=list)
    recover: bool = False


@dataclass(eq=False, slots=True)
class _Undo:
    """How to take one command back: the slots' change, the owners and the reply before it.

    The change is subtracted rather than the old slots put back, so that fills
    applied since (they stay) are kept.
    """

    currency: str
    before: list[int] | None  # None: the command added the currency
    owners: dict[int, str]
    request_id: str | None
    prior_reply: bytes | None
    after: list[int] = field(default_factory=list)


class WriterCore:
    """The writer's synchronous part: apply, journal, publish. Trio-free but for events."""

    def __init__(
        self,
        ledger: Ledger,
        journal: Journal,
        store: StoreWriter,
        *,
        snapshot_every: int = SNAPSHOT_EVERY_EVENTS,
        status_extra: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        self.ledger = ledger
        self.journal = journal
        self.store = store
        self.snapshot_every = snapshot_every
        self.status_extra = status_extra
        # Replicating: fills are synced at once too, for only durable events leave the host.
        self.sync_fills = False
        self.stats = WriterStats()
        self._store_index: dict[str, int] = {}
        self.conditions = Condition(0)
        # Why the journal cannot be written, while it cannot: commands are refused.
        self.journal_error: str | None = None
        self.overdrawn: dict[str, tuple[int, ...]] = {}  # currency -> slots below zero
        self.out_of_range: set[str] = set()  # currencies the store cannot hold (or name) now
        # The batch's events still to be journalled (with a fill's outcome), encoded once it
        # is published (apply_batch); emptied then, for a batch lives on until its sync.
        self._unjournalled: list[tuple[Event, FillOutcome | None]] = []

    # -- applying ---------------------------------------------------------------

    def _apply(self, event: Event, batch: _Batch) -> Outcome:
        outcome = apply_event(self.ledger, event)
        # While the journal is down, what still happens (fills, corrections) is not
        # journalled: the exchange replays fills, and recovery starts with a snapshot.
        if outcome.durable and self.journal_error is None:
            self._unjournalled.append((event, outcome.fill))
        batch.changed.update(outcome.changed)
        return outcome

    def _dated_ahead(self, what: str, name: str, timestamp_ns: int, now_ns: int) -> None:
        self.stats.dated_ahead += 1
        logger.warning(
            "%s %s is dated %s, %.0f s ahead of this host's clock: booked as of now (a date "
            "ahead would move the next catch-up past every trade made until then)",
            what, name, _utc_text(timestamp_ns), (timestamp_ns - now_ns) / 1e9,
        )  # fmt: skip

    def apply_batch(self, messages: list[WriterMessage]) -> _Batch:
        """Apply ``messages``, publish what changed, then add their records to the journal.

        Readers see a fill before its record is encoded: encoding is a third of the
        writer's part of a fill, and more on a CPU that was idle (33 µs after a 1 ms
        pause, docs/performance.md). Nothing is durable before the batch's commit
        either way, and no reply leaves before it.
        """
        batch = _Batch(set(), [], [])
        try:
            for message in messages:
                self._handle(message, batch)
            self.publish(batch.changed)
        finally:  # should a message fail, what was applied before it is journalled still
            append = self.journal.append
            for event, fill in self._unjournalled:
                append(encode_event(event, fill))
            self._unjournalled.clear()
        return batch

    def _handle(self, message: WriterMessage, batch: _Batch) -> None:
        match message:
            case CommandReceived(command=command, request_id=request_id, reply=slot):
                if self.journal_error is not None:
                    self.stats.commands_unavailable += 1
                    batch.replies.append((slot, self._unavailable(request_id)))
                    return
                undo = self._checkpoint(command.currency, request_id)
                outcome = self._apply(CommandApplied(command, request_id), batch)
                if outcome.durable:
                    undo.after = list(self.ledger.balances.get(command.currency, ()))
                    batch.undo.append((slot, undo))
                assert outcome.reply is not None
                slot.visible_at = self.journal.next_seq + len(self._unjournalled)
                if outcome.reply.get("ok"):
                    self.stats.commands_applied += 1
                else:
                    self.stats.commands_refused += 1
                    error = outcome.reply.get("error")
                    code = str(error.get("code")) if isinstance(error, dict) else "UNKNOWN"
                    self.stats.refusals[code] = self.stats.refusals.get(code, 0) + 1
                batch.replies.append((slot, outcome.reply))
                batch.needs_sync = True
            case QueryReceived(what=what, currency=currency, reply=slot):
                # Reads change nothing, so they need no fsync and answer at once.
                slot.set(self.status() if what == "status" else self.query(currency))
            case FillReceived(fill=fill):
                if fill.timestamp_ns > (now_ns := time.time_ns()) + AHEAD_TOLERANCE_NS:
                    self._dated_ahead("fill", fill.exec_id, fill.timestamp_ns, now_ns)
                    fill = msgspec.structs.replace(fill, timestamp_ns=now_ns)
                outcome = self._apply(FillApplied(fill), batch)
                if outcome.fill is None:
                    self.stats.fills_duplicate += 1
                    logger.debug("fill %s already applied: skipped", fill.exec_id)
                    return
                self.stats.fills_applied += 1
                for currency, slot_index, value in outcome.fill.negative:
                    logger.warning(
                        "fill %s left %s slot %d negative: %s",
                        fill.exec_id, currency, slot_index, format_scaled(value),
                    )  # fmt: skip
            case TransferReceived(transfer=transfer):
                if transfer.timestamp_ns > (now_ns := time.time_ns()) + AHEAD_TOLERANCE_NS:
                    self._dated_ahead("transfer", transfer.ledger_id, transfer.timestamp_ns, now_ns)
                    transfer = dataclasses.replace(transfer, timestamp_ns=now_ns)
                outcome = self._apply(TransferApplied(transfer), batch)
                if not outcome.changed:
                    return  # seen before (a reconnect's catch-up repeats entries)
                self.stats.transfers_applied += 1
                logger.info(
                    "%s %s %s booked to slots 0 and 1 (ledger %s, ref %s)",
                    transfer.kind, transfer.amount, transfer.currency, transfer.ledger_id,
                    transfer.ref_id,
                )  # fmt: skip
            case BalancesFetched(totals=totals, as_of_ns=as_of_ns, applied=applied):
                self._apply(TotalsSet(totals, as_of_ns), batch)
                batch.published.append(applied)
                batch.needs_sync = True
            case CorrectionProposed(currency=currency, seen_total=seen, new_total=new):
                current = self.ledger.balances.get(currency, [0])[0]
                if current != seen:
                    logger.info("correction of %s dropped: the total moved meanwhile", currency)
                    return
                if current == new:
                    return
                self._apply(Corrected(currency, current, new), batch)
                batch.needs_sync = True
                self.stats.corrections += 1
                logger.warning(
                    "corrected %s total: %s -> %s (slot 1 moved by %s)",
                    currency, format_scaled(current), format_scaled(new),
                    format_scaled(new - current),
                )  # fmt: skip
            case ExchangeHealthChanged(feed_live=feed_live, rest_ok=rest_ok):
                if feed_live is not None:
                    self._set_condition(Condition.FEED_DOWN, not feed_live)
                if rest_ok is not None:
                    self._set_condition(Condition.REST_DOWN, not rest_ok)
            case TotalsStreamed(totals=totals):
                self._cross_check(totals)
            case HeartbeatTick():
                self.store.heartbeat()
                self.store.restore_path()  # a cleaner or RemoveIPC may have taken the file
                batch.needs_sync = True  # bounds how long fills stay unsynced
                batch.recover = self.journal_error is not None
            case _:
                assert_never(message)

    def _cross_check(self, totals: Mapping[str, int]) -> None:
        """Compare streamed totals with slot 0; say so when they differ (never book it)."""
        for currency, total in totals.items():
            held = self.ledger.balances.get(currency, (0,))[0]
            self.stats.streamed_totals_checked += 1
            if held != total:
                self.stats.streamed_totals_differed += 1
                logger.warning(
                    "%s: the exchange streamed a total of %s, the ledger holds %s (an event "
                    "missed or not yet streamed; the reconciler checks and corrects)",
                    currency, format_scaled(total), format_scaled(held),
                )  # fmt: skip

    # -- the journal failing and recovering ---------------------------------------------

    def _checkpoint(self, currency: str, request_id: str | None) -> _Undo:
        """What a command may change, kept so that it can be taken back."""
        ledger = self.ledger
        slots = ledger.balances.get(currency)
        prior = ledger.replies.get(request_id) if request_id is not None else None
        return _Undo(
            currency, None if slots is None else list(slots), dict(ledger.owners), request_id, prior
        )

    def _take_back(self, undo: _Undo) -> None:
        ledger = self.ledger
        slots = ledger.balances.get(undo.currency)
        if slots is not None and undo.after:
            before = undo.before or [0] * len(undo.after)
            for i, (was, became) in enumerate(zip(before, undo.after, strict=True)):
                slots[i] -= became - was
            if undo.before is None and not any(slots):
                del ledger.balances[undo.currency]
        ledger.owners = undo.owners
        if undo.request_id is not None:
            if undo.prior_reply is None:
                ledger.replies.pop(undo.request_id, None)
            else:
                ledger.replies[undo.request_id] = undo.prior_reply

    def _unavailable(self, request_id: str | None) -> Reply:
        return error_reply(
            ErrorCode.UNAVAILABLE,
            f"the state directory cannot be written ({self.journal_error}); nothing was "
            "changed: retry once it is writable again",
            request_id,
        )

    def _set_condition(self, condition: Condition, on: bool) -> None:
        updated = self.conditions | condition if on else self.conditions & ~condition
        if updated != self.conditions:
            self.conditions = updated
            self.store.set_conditions(updated)

    def fail_batches(self, batches: list[_Batch], error: JournalWriteError) -> None:
        """A commit failed: take back the commands of ``batches`` and refuse them.

        ``batches`` are every batch not yet durable, in the order applied (a
        later one may build on an earlier one's commands). Fills and corrections
        stay applied (facts the exchange will show again); nothing of them is in
        the journal. The caller has discarded the journal's pending records.
        """
        self.journal_error = str(error)
        self._set_condition(Condition.JOURNAL_DOWN, True)
        undos = [entry for batch in batches for entry in batch.undo]
        reverted = {slot for slot, _ in undos}
        for _, undo in reversed(undos):
            self._take_back(undo)
        self.stats.commands_applied -= len(reverted)
        self.stats.commands_unavailable += len(reverted)
        # A repeat of a taken-back request was answered from the reply just taken
        # back: it gets the same refusal, never an ok that was not kept.
        taken_back = {
            _request_id(reply)
            for batch in batches
            for slot, reply in batch.replies
            if slot in reverted
        }
        taken_back.discard(None)
        for batch in batches:
            batch.replies = [
                (
                    slot,
                    self._unavailable(_request_id(reply))
                    if slot in reverted or _request_id(reply) in taken_back
                    else reply,
                )
                for slot, reply in batch.replies
            ]
        logger.error(
            "journal write failed (%s): %d command(s) taken back and refused; "
            "fills are still applied; commands are refused until the state directory "
            "is writable again", error, len(reverted),
        )  # fmt: skip

    def fail_journal(self, error: JournalWriteError) -> None:
        self.journal_error = str(error)
        self._set_condition(Condition.JOURNAL_DOWN, True)
        logger.error("journal write failed (%s): commands are refused until it works", error)

    def try_recover(self) -> bool:
        """Write a snapshot of everything; if it lands, the journal is back."""
        try:
            self.journal.write_snapshot(self.ledger.to_snapshot())
        except JournalWriteError:
            return False
        logger.warning(
            "state directory writable again (%s gone): accepting commands", self.journal_error
        )
        self.journal_error = None
        self._set_condition(Condition.JOURNAL_DOWN, False)
        return True

    # -- publishing -------------------------------------------------------------

    def publish(self, currencies: set[str] | list[str]) -> None:
        """Publish what changed, and keep OVERDRAWN and OUT_OF_RANGE true to it.

        Facts (fills, corrections) cannot be refused: a balance the store cannot
        hold stays exact in the ledger and the journal, its record keeps its
        last values, and the condition says so, where a crash would help no one.
        """
        flagged = bool(self.overdrawn), bool(self.out_of_range)
        for currency in currencies:
            values = self.ledger.balances[currency]
            low, high = min(values), max(values)
            if low < 0:
                self._note_overdrawn(currency, values)
            elif currency in self.overdrawn:
                del self.overdrawn[currency]
                logger.info("%s: no slot below zero any more", currency)
            if low < INT128_MIN or high > INT128_MAX:
                self._not_held(
                    currency,
                    "a slot is beyond what the store can hold; its record keeps its last "
                    "values until it is back in range",
                )
                continue
            index = self._store_index.get(currency)
            if index is None:
                try:
                    index = self._store_index[currency] = self.store.add_currency(currency)
                except (StoreValueError, StoreFullError) as exc:
                    # A name no record can carry, or no record left: the exchange named it,
                    # so it is booked all the same; readers cannot see it.
                    self._not_held(currency, f"the store has no record for it ({exc})")
                    continue
            self.out_of_range.discard(currency)
            self.store.publish(index, values)
        if flagged != (bool(self.overdrawn), bool(self.out_of_range)):
            self._set_condition(Condition.OVERDRAWN, bool(self.overdrawn))
            self._set_condition(Condition.OUT_OF_RANGE, bool(self.out_of_range))

    def _not_held(self, currency: str, why: str) -> None:
        if currency not in self.out_of_range:  # said once, not on every change
            self.out_of_range.add(currency)
            logger.error("%r: %s (the ledger and the journal stay exact)", currency, why)

    def _note_overdrawn(self, currency: str, values: list[int]) -> None:
        negative = tuple(i for i, v in enumerate(values) if v < 0)
        if currency not in self.overdrawn:  # said once on entering, not on every change
            logger.warning(
                "%s overdrawn: slot(s) %s below zero (%s); a withdrawal beyond what was "
                "available, or a strategy that sold more than its slot",
                currency, ", ".join(map(str, negative)),
                ", ".join(format_scaled(values[i]) for i in negative),
            )  # fmt: skip
        self.overdrawn[currency] = negative

    def open_ledger(self, epoch_ns: int) -> None:
        """Mark a new ledger's beginning, durably (call before any fill can arrive)."""
        self._journal_now(LedgerOpened(epoch_ns))

    def bind_account(self, account: str) -> None:
        """Record, durably, which exchange account the ledger belongs to."""
        self._journal_now(AccountBound(account))

    def _journal_now(self, event: Event) -> None:
        apply_event(self.ledger, event)
        self.journal.append(encode_event(event))
        self.journal.commit()

    def publish_all(self) -> None:
        self.publish(list(self.ledger.balances))

    # -- reads --------------------------------------------------------------------

    def query(self, currency: str | None) -> Reply:
        if currency is not None and currency not in self.ledger.balances:
            refused = self.ledger.unknown_currency(currency)
            return error_reply(refused.code, refused.message)
        currencies = [currency] if currency is not None else sorted(self.ledger.balances)
        return {
            "ok": True,
            "balances": {
                c: [format_scaled(v) for v in self.ledger.balances[c]] for c in currencies
            },
            "owners": {str(k): v for k, v in sorted(self.ledger.owners.items())},
        }

    def status(self) -> Reply:
        stats = self.stats
        status: dict[str, object] = {
            "pid": os.getpid(),
            "generation": self.store.generation,
            "strategy_count": self.ledger.strategy_count,
            "currencies": len(self.ledger.balances),
            "journal_events": self.journal.next_seq,
            "fills_applied": stats.fills_applied,
            "fills_duplicate": stats.fills_duplicate,
            "transfers_applied": stats.transfers_applied,
            "commands_applied": stats.commands_applied,
            "commands_refused": stats.commands_refused,
            "corrections": stats.corrections,
            "batches": stats.batches,
            "streamed_totals_checked": stats.streamed_totals_checked,
            "streamed_totals_differed": stats.streamed_totals_differed,
            "dated_ahead": stats.dated_ahead,
            "commands_unavailable": stats.commands_unavailable,
            "journal": "ok" if self.journal_error is None else f"failing: {self.journal_error}",
            "conditions": [c.name for c in Condition if c in self.conditions],
            "overdrawn": {c: list(slots) for c, slots in sorted(self.overdrawn.items())},
            "out_of_range": sorted(self.out_of_range),
            "last_fill_ns": self.ledger.last_fill_ns,
        }
        if self.status_extra is not None:
            status.update(self.status_extra())
        return {"ok": True, "status": status}


def _utc_text(timestamp_ns: int) -> str:
    """A moment as people read it; one past what a date can say (the adapters' bounds
    keep them to 2000-2200, but a log line must not stop the writer) as nanoseconds."""
    try:
        return datetime.fromtimestamp(timestamp_ns / 1e9, UTC).isoformat(" ", "seconds")
    except (OverflowError, ValueError, OSError):
        return f"{timestamp_ns} ns after the epoch"


def _request_id(reply: Reply) -> str | None:
    request_id = reply.get("request_id")
    return request_id if isinstance(request_id, str) else None


@dataclass(eq=False)
class _Sync:
    """One write and sync running in a worker thread, and the batches it makes durable."""

    write: PendingWrite
    batches: list[_Batch]
    done: trio.Event = field(default_factory=trio.Event)
    error: JournalWriteError | None = None


class _CommitPipeline:
    """Batches applied but not yet answered, and the one sync in flight.

    Replies leave in the order their batches were applied, each only once a
    sync covering its batch (and every batch before it) has returned; so an ok
    still means journalled and synced. At most one sync runs at a time.
    """

    def __init__(self, core: WriterCore, nursery: trio.Nursery) -> None:
        self._core = core
        self._nursery = nursery
        self.waiting: list[_Batch] = []  # applied after the sync in flight, if any
        self.syncing: _Sync | None = None
        self._receiving: trio.CancelScope | None = None  # the writer waiting for a message

    def add(self, batch: _Batch) -> None:
        self.waiting.append(batch)

    def flush(self, *, more_queued: bool) -> None:
        """Nothing in flight: answer what needs no sync; start the sync of what does.

        The sync runs inline only for a batch found alone that someone waits on
        (a client's reply, the bootstrap): a thread's wake-ups (~100 µs here)
        would only delay a lone client. Otherwise it runs in the worker thread
        while the writer goes on: with work queued, to apply it meanwhile; with
        nobody waiting (the heartbeat's sync of fills, 1-3 ms twice a second
        here), so that the fills arriving meanwhile are not held behind it.
        """
        assert self.syncing is None
        core = self._core
        if not (core.journal.has_pending and any(b.needs_sync for b in self.waiting)):
            # Fills alone wait for a disk no more than their replies (none) do.
            self._release(self.waiting)
            self.waiting = []
            return
        write = core.journal.take_pending()
        batches, self.waiting = self.waiting, []
        if not more_queued and any(batch.replies or batch.published for batch in batches):
            started = time.perf_counter()
            error = _write_out(core, write)
            _warn_if_slow(time.perf_counter() - started)
            self._finish(write, batches, error)
            return
        self._start_sync(_Sync(write, batches))

    def sync_pending(self) -> None:
        """Start syncing what the journal holds with no reply waiting on it (fills, for
        replication: only durable events leave the host)."""
        assert self.syncing is None and not self.waiting
        self._start_sync(_Sync(self._core.journal.take_pending(), []))

    def _start_sync(self, sync: _Sync) -> None:
        self.syncing = sync
        self._nursery.start_soon(self._sync_in_thread, sync)

    async def _sync_in_thread(self, sync: _Sync) -> None:
        # The thread is not abandoned on cancellation: a write half done must end
        # before the journal is touched again.
        started = time.perf_counter()
        sync.error = await trio.to_thread.run_sync(_write_out, self._core, sync.write)
        _warn_if_slow(time.perf_counter() - started)
        sync.done.set()
        if self._receiving is not None:
            self._receiving.cancel()  # the writer waits for a message: its sync is back

    async def receive_while_syncing(
        self, receive: trio.MemoryReceiveChannel[WriterMessage]
    ) -> WriterMessage | None:
        """The next message, or None once the sync in flight returns (whichever comes
        first; a message is never lost to the race, as Trio's receive is atomic).
        One already queued is taken without a checkpoint, as the writer takes a batch.

        Raises:
            trio.EndOfChannel: every producer is gone.
        """
        assert self.syncing is not None
        try:
            return receive.receive_nowait()
        except trio.WouldBlock:
            pass
        # No checkpoint since the writer's last reap, so the sync cannot have returned
        # unseen: it ends by cancelling this scope.
        self._receiving = trio.CancelScope()
        try:
            with self._receiving:
                return await receive.receive()
        finally:
            self._receiving = None
        return None

    async def wait_sync(self) -> None:
        """Wait for the sync in flight, then answer its batches."""
        sync = self.syncing
        assert sync is not None
        await sync.done.wait()
        self.reap()

    def reap(self) -> None:
        """Answer the sync in flight's batches if it has returned."""
        sync = self.syncing
        if sync is None or not sync.done.is_set():
            return
        self.syncing = None
        if sync.error is None:
            self._finish(sync.write, sync.batches, None)
            return
        # Every batch applied since builds on the failed one: none of it is kept.
        failed, self.waiting = [*sync.batches, *self.waiting], []
        self._finish(sync.write, failed, sync.error)

    def _finish(
        self, write: PendingWrite, batches: list[_Batch], error: JournalWriteError | None
    ) -> None:
        core = self._core
        if error is None:
            core.journal.mark_durable(write)
        else:
            core.journal.discard_pending()
            core.fail_batches(batches, error)
            core.publish({c for batch in batches for c in batch.changed})
        self._release(batches)

    @staticmethod
    def _release(batches: list[_Batch]) -> None:
        for batch in batches:
            for slot, reply in batch.replies:
                slot.set(reply)
            for published in batch.published:
                published.set()


def _write_out(core: WriterCore, write: PendingWrite) -> JournalWriteError | None:
    try:
        core.journal.write_out(write)
    except JournalWriteError as error:
        return error
    return None


def _warn_if_slow(seconds: float) -> None:
    if seconds > SLOW_COMMIT_S:
        logger.warning("journal sync took %.0f ms: the disk is slow", seconds * 1e3)


async def run_writer(
    receive: trio.MemoryReceiveChannel[WriterMessage],
    core: WriterCore,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Consume ``receive`` until every producer has closed its clone.

    Supports ``nursery.start``; ``started()`` once it is receiving. Returns
    after the channel ends and the last batch is durable and answered; the
    caller then closes the core (snapshot, store stopped).
    """
    task_status.started()
    async with receive, trio.open_nursery() as nursery:
        pipeline = _CommitPipeline(core, nursery)
        snapshot: _SnapshotWrite | None = None  # a snapshot's file being written meanwhile
        more_queued = False  # the last batch stopped at MAX_BATCH, not at an empty queue
        # Replicating: when the fills the journal holds unsynced must be synced (a few
        # ms after the first, so that one sync serves many; mirrors wait for it).
        fills_due = math.inf
        while True:
            pipeline.reap()
            if snapshot is not None and snapshot.done.is_set():
                _finish_snapshot(core, snapshot)
                snapshot = None
            if pipeline.syncing is None and pipeline.waiting:
                pipeline.flush(more_queued=more_queued)
                continue
            if not (core.sync_fills and core.journal.has_pending):
                fills_due = math.inf
            elif fills_due == math.inf:
                fills_due = trio.current_time() + FILL_SYNC_DELAY_S
            elif pipeline.syncing is None and trio.current_time() >= fills_due:
                pipeline.sync_pending()
                fills_due = math.inf
                continue
            if pipeline.syncing is None:
                if snapshot is None and core.journal.events_since_snapshot >= core.snapshot_every:
                    snapshot = _start_snapshot(core, nursery)
                messages = []
                try:
                    if fills_due == math.inf:  # no cancel scope on the common path
                        messages = [await receive.receive()]
                    else:
                        with trio.move_on_at(fills_due):
                            messages = [await receive.receive()]
                except trio.EndOfChannel:
                    break  # with nothing in flight or waiting: all is answered
                if not messages:
                    continue  # the fills' sync is due
            else:
                try:
                    message = await pipeline.receive_while_syncing(receive)
                except trio.EndOfChannel:
                    await pipeline.wait_sync()  # the last batches' sync, then the end
                    continue
                if message is None:
                    continue  # the sync returned: answer its batches
                messages = [message]
            more_queued = True
            while len(messages) < MAX_BATCH:
                try:
                    messages.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    more_queued = False
                    break
            batch = core.apply_batch(messages)
            core.stats.batches += 1
            # One snapshot at a time: recovering writes one.
            idle = pipeline.syncing is None and not pipeline.waiting and snapshot is None
            if batch.recover and idle:
                core.try_recover()
            pipeline.add(batch)
        if snapshot is not None:  # its file is whole or not there: say which
            await snapshot.done.wait()
            _finish_snapshot(core, snapshot)


@dataclass(eq=False)
class _SnapshotWrite:
    """A snapshot's file being written in a worker thread while the writer goes on."""

    seq: int
    done: trio.Event = field(default_factory=trio.Event)
    error: JournalWriteError | None = None


def _start_snapshot(core: WriterCore, nursery: trio.Nursery) -> _SnapshotWrite | None:
    """Snapshot the ledger at the journal's next event, with nothing in flight.

    Only the gathering (~8 ms with both caches full) holds the writer: the
    journal moves to a new segment at once, and the file (~90 ms to encode and
    write) is written by a worker thread while the writer applies what comes.
    Until it lands, a restart replays the older snapshot through both segments,
    and the replication publisher waits at its event (its marker goes there).
    """
    if core.journal_error is not None:
        return None
    journal = core.journal
    try:
        journal.commit()  # fill-only batches leave records unsynced: sync them first
        data = core.ledger.to_snapshot()
        seq = journal.rotate()
    except JournalWriteError as error:
        core.fail_journal(error)
        return None
    journal.snapshot_pending = seq
    write = _SnapshotWrite(seq)
    nursery.start_soon(_write_snapshot_file, journal, data, write)
    return write


async def _write_snapshot_file(
    journal: Journal, data: dict[str, object], write: _SnapshotWrite
) -> None:
    # Not abandoned on cancellation: the file is whole or not there when this returns.
    try:
        await trio.to_thread.run_sync(journal.write_snapshot_file, data, write.seq)
    except JournalWriteError as error:
        write.error = error
    write.done.set()
    if journal.on_durable is not None:
        journal.on_durable()  # the publisher, waiting at the snapshot's event for its file


def _finish_snapshot(core: WriterCore, write: _SnapshotWrite) -> None:
    """The file is written (or not): drop what it covers, or say the journal is down."""
    journal = core.journal
    journal.snapshot_pending = None
    if write.error is not None:
        core.fail_journal(write.error)
    else:
        try:
            journal.drop_covered(write.seq)
        except OSError as exc:  # files left behind cost disk, not correctness
            logger.warning("journal %s: files the snapshot covers stay: %s", journal.directory, exc)
    if journal.on_durable is not None:
        journal.on_durable()  # without a file, the publisher goes past its event now
