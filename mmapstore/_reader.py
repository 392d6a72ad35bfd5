"""Read-only access to a store file: lock-free, never blocks the writer, never torn."""

from __future__ import annotations

import errno
import mmap
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Final, NamedTuple, Protocol, TypeVar

from mmapstore._layout import (
    CONDITION_BITS,
    H_APPLIED_SEQ,
    H_CURRENCY_COUNT,
    H_FLAGS,
    H_GENERATION,
    H_HEARTBEAT_NS,
    H_ROLE,
    H_SOURCE_SEEN_NS,
    H_STATE,
    H_WRITER_PID,
    R_FLOATS,
    R_SEQ,
    R_UPDATED_NS,
    RETIRED_SEQ,
    Condition,
    WriterRole,
    WriterState,
    from_scaled,
    join_int128,
    unpack_entry,
    unpack_header,
)
from mmapstore._paths import untrusted_because
from mmapstore.errors import (
    SlotIndexError,
    StoreBusyError,
    StoreCorruptError,
    StoreNotFoundError,
    StoreStartingError,
    StoreUnsafeError,
    UnknownCurrencyError,
)

T = TypeVar("T")

DEFAULT_STALE_AFTER_S: Final = 3.0
# How long a reader waits for one record to settle before asking whether its
# writer is still alive. A descheduled writer can hold a record odd for a
# scheduler tick (milliseconds) on a loaded 2-core machine.
SETTLE_CHECK_S: Final = 0.05
SETTLE_GIVE_UP_S: Final = 2.0


NO_CONDITIONS: Final = Condition(0)


class _FloatRead(Protocol):
    def __call__(self, currency: str, index: int = 0) -> float: ...


class WriterHealth(Enum):
    """What a reader can tell about the store's writer."""

    STARTING = "starting"  # a writer holds the store but has not published everything yet
    LIVE = "live"
    STOPPED = "stopped"  # it shut down cleanly; values are its last
    DEAD = "dead"  # its process is gone without a clean stop
    STALE = "stale"  # its process exists but the heartbeat stopped (hung or paused)


@dataclass(frozen=True, slots=True)
class WriterStatus:
    """A snapshot of the header's writer fields, judged."""

    health: WriterHealth
    pid: int
    generation: int
    heartbeat_age_s: float
    conditions: Condition = NO_CONDITIONS
    # A mirror's file (``gateway mirror``): the source's journal events it has applied,
    # and how long ago (this host's clock) it last saw its source alive.
    mirror: bool = False
    applied_seq: int = 0
    source_age_s: float = 0.0

    @property
    def alive(self) -> bool:
        return self.health in (WriterHealth.LIVE, WriterHealth.STARTING)

    @property
    def balances_may_be_stale(self) -> bool:
        """The writer is not live, or the exchange's fill stream (or a mirror's source) is down."""
        return not self.alive or bool(
            self.conditions & (Condition.FEED_DOWN | Condition.SOURCE_STALE)
        )


@dataclass(frozen=True, slots=True)
class BalanceRecord:
    """One consistent read of a currency's record."""

    currency: str
    scale: int
    scaled: tuple[int, ...]  # exact: slot value * 10**scale
    floats: tuple[float, ...]
    updated_ns: int
    sequence: int

    def exact(self, slot: int) -> Decimal:
        return from_scaled(self.scaled[slot], self.scale)

    def exact_all(self) -> tuple[Decimal, ...]:
        return tuple(from_scaled(v, self.scale) for v in self.scaled)


_new_tuple = tuple.__new__


class SlotValue(NamedTuple):
    """One slot of one consistent record read."""

    scaled: int
    scale: int
    value: float
    updated_ns: int
    sequence: int

    @property
    def exact(self) -> Decimal:
        return from_scaled(self.scaled, self.scale)


# Per currency: (seq word, first float word, scale, canonical name).
_Entry = tuple[int, int, int, str]


_PID_MAX: Final = 2**22  # Linux's ceiling for pid_max


def _same(value: SlotValue) -> SlotValue:
    return value


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process visible from here."""
    if not 0 < pid <= _PID_MAX:  # a crafted header may hold any 64-bit number
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


class StoreReader:
    """A read-only mapping of one store file.

    Reads are seqlock reads: they retry while the writer is inside the record
    and never return a torn value. ``retries`` counts those retries. The reader
    follows the store across writers: a writer that takes over the same file
    is seen at once; a re-created file is re-opened on the next read.

    Raises (from the constructor):
        StoreNotFoundError: no file: the gateway is not running.
        StoreCorruptError, StoreVersionError: not a file this code can read.
        StoreUnsafeError: a symlink, or a file another user could have made: owned by
            neither this user, root nor ``$HFT_GATEWAY_UID``, or writable by others.
    """

    def __init__(self, path: Path | str, *, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> None:
        self.path = Path(path)
        self.stale_after_s = stale_after_s
        self.retries = 0
        self._open()
        self.slot_float, self._rebind_slot_float = self._bind_slot_float()

    def _open(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise StoreNotFoundError(
                f"no balance store at {self.path}: the gateway is not running "
                "(or writes to another HFT_SHM_DIR)"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                message = f"{self.path} is a symlink; a reader does not follow it"
                raise StoreUnsafeError(message) from None
            raise
        try:
            stat = os.fstat(fd)
            if (why := untrusted_because(stat)) is not None:
                raise StoreUnsafeError(f"{self.path} {why}")
            if stat.st_size == 0:
                raise StoreCorruptError(f"{self.path}: empty file")
            mm = mmap.mmap(fd, stat.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        try:
            header = unpack_header(mm, file_size=stat.st_size, path=str(self.path))
        except BaseException:
            mm.close()
            raise
        geometry = header.geometry
        self.exchange = header.exchange
        self._inode = stat.st_ino
        self._mm = mm
        self._geometry = geometry
        self._strategy_count = geometry.strategy_count
        # Exactly the layout's bytes: a file longer than its header says (crafted,
        # or not a multiple of 8) must not change what the views see.
        self._view = memoryview(mm)[: geometry.file_size]
        self._words = self._view.cast("Q")
        self._signed = self._view.cast("q")
        self._floats = self._view.cast("d")
        self._float_row = struct.Struct(f"<{geometry.strategy_count}d")
        self._known = 0
        self._by_name: dict[str, _Entry] = {}
        # Lookup cache keyed by whatever the caller passes (canonical name, enum, alias).
        self._index: dict[str, _Entry] = {}
        self._refresh_directory()

    def _releaser(self) -> Callable[[], None]:
        """What releases the current mapping (its views, then the map), to call once
        nothing reads it any more."""
        views, mm = (self._words, self._signed, self._floats, self._view), self._mm

        def release() -> None:
            for view in views:
                view.release()
            mm.close()

        return release

    def close(self) -> None:
        self._releaser()()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reopen(self) -> None:
        """Map the path again: the file we had was replaced (retired) by a new writer.

        The old mapping is released only once the new one is open: if the path
        holds no readable file, the reader keeps the retired one and the next
        read tries again.
        """
        release_old = self._releaser()
        self._open()
        release_old()
        self._rebind_slot_float()

    def _follow_successor(self, currency: str) -> None:
        """Map the file that replaced a retired one, or refuse a file retired in place.

        A writer retires a file only after renaming its successor over the path,
        so a retired mark on the file the path still holds is damage (or a
        crafted file): re-opening it would spin forever.

        Raises:
            StoreCorruptError: the path still holds the retired file.
            StoreNotFoundError: the path holds no file now.
        """
        if not self._replaced_on_disk() and self.path.exists():
            raise StoreCorruptError(
                f"{self.path}: the {currency} record is marked retired, "
                "but no newer file has replaced it"
            )
        self._reopen()

    # -- directory ----------------------------------------------------------------

    @property
    def strategy_count(self) -> int:
        return self._strategy_count

    @property
    def generation(self) -> int:
        return int(self._words[H_GENERATION])

    def currencies(self) -> list[str]:
        """Every currency with a record, in directory order."""
        self._refresh_directory()
        return list(self._by_name)

    def _refresh_directory(self) -> None:
        geometry = self._geometry
        count = min(self._words[H_CURRENCY_COUNT], geometry.capacity)
        for index in range(self._known, count):
            name, scale, record_at = unpack_entry(self._mm, geometry.entry_offset(index))
            if record_at != geometry.record_offset(index):
                raise StoreCorruptError(f"{self.path}: directory entry {index} points astray")
            first = record_at // 8
            self._by_name[name] = (first + R_SEQ, first + R_FLOATS, scale, name)
        self._known = count

    def _locate(self, currency: str) -> _Entry:
        """Slow path of a lookup: normalise, look for new currencies, cache the key."""
        name = currency.upper() if isinstance(currency, str) else currency
        entry = self._by_name.get(name)
        if entry is None:
            self._refresh_directory()
            entry = self._by_name.get(name)
        if entry is None:
            if self._words[H_STATE] == WriterState.STARTING:
                raise StoreStartingError(
                    f"the gateway is starting: no {currency} balance published in {self.path} yet"
                )
            known = ", ".join(self._by_name) or "none yet"
            raise UnknownCurrencyError(f"no {currency} balance in {self.path} (it has: {known})")
        self._index[currency] = entry
        return entry

    def _slot_out_of_range(self, slot: int) -> None:
        raise SlotIndexError(
            f"slot {slot} is out of range: this store has slots 0..{self._strategy_count - 1}"
        )

    # -- reads ------------------------------------------------------------------

    def _bind_slot_float(self) -> tuple[_FloatRead, Callable[[], None]]:
        """:meth:`slot_float`, made once per reader, and what re-binds it to a new mapping.

        A closure is called ~25 ns faster than a bound method, and its cells
        load ~15 ns faster than four attributes of ``self``: together a sixth
        of the read (docs/performance.md). ``_reopen`` calls the second
        function, so the read follows a re-opened file as a method would.
        """
        index_of: dict[str, _Entry]
        slot_count: int
        words: memoryview[int]
        floats: memoryview[float]

        def bind() -> None:
            nonlocal index_of, slot_count, words, floats
            index_of, slot_count = self._index, self._strategy_count
            words, floats = self._words, self._floats

        def slot_float(currency: str, index: int = 0) -> float:
            """Slot ``index``'s balance as a float. The hot path: a dict lookup and three loads."""
            try:
                entry = index_of[currency]
            except KeyError:
                entry = self._locate(currency)
            if not 0 <= index < slot_count:
                self._slot_out_of_range(index)
            seq_word = entry[0]
            seq = words[seq_word]
            value = floats[entry[1] + index]
            if seq & 1 or words[seq_word] != seq:
                return self._settle(currency, lambda e: self._try_slot_float(e, index))
            return value

        bind()
        return slot_float, bind

    def _try_slot_float(self, entry: _Entry, slot: int) -> float | None:
        words = self._words
        seq = words[entry[0]]
        value = self._floats[entry[1] + slot]
        if seq & 1 or words[entry[0]] != seq:
            return None
        return value

    def slot(self, currency: str, slot: int) -> SlotValue:
        """One slot, exact and as a float, with the record's update time and sequence."""
        try:
            entry = self._index[currency]
        except KeyError:
            entry = self._locate(currency)
        if not 0 <= slot < self._strategy_count:
            self._slot_out_of_range(slot)
        result = self._try_slot(entry, slot)
        if result is None:
            return self._settle(currency, lambda e: self._try_slot(e, slot))
        return result

    def _try_slot(self, entry: _Entry, slot: int) -> SlotValue | None:
        words = self._words
        seq_word, first_float, scale, _ = entry
        seq = words[seq_word]
        value = self._floats[first_float + slot]
        int_word = first_float + self._strategy_count + 2 * slot
        scaled = join_int128(words[int_word], self._signed[int_word + 1])
        updated_ns = self._signed[seq_word + R_UPDATED_NS]
        if seq & 1 or words[seq_word] != seq:
            return None
        # tuple.__new__: a NamedTuple's own __new__ is a Python call, a third of this read.
        return _new_tuple(SlotValue, (scaled, scale, value, updated_ns, seq // 2))

    def slot_reader(self, currency: str, slot: int) -> Callable[[], SlotValue]:
        """A bound :meth:`slot` for a hot loop, answering from its last read while it holds.

        Balances change far less often than they are read, and the exact value
        costs a 128-bit join: while the record's sequence (one aligned load) and
        the mapping are the ones of the last read, the last read is still the
        record, and is returned as it was.

        Raises (on each call, as :meth:`slot` does):
            UnknownCurrencyError, SlotIndexError, StoreBusyError.
        """
        return self.derived_reader(currency, slot, _same)

    def derived_reader(
        self, currency: str, slot: int, derive: Callable[[SlotValue], T]
    ) -> Callable[[], T]:
        """:meth:`slot_reader` that hands out ``derive(value)``, made once per record version.

        One call on the hot path: a caller that turns each read into its own
        object (the seed's quote) would otherwise pay a second call per read.
        """
        # The mapping, the record's sequence word in it and the sequence last read
        # (2x + 0: even, so stable then), and what was derived from that read.
        seen_words: memoryview | None = None
        seq_word = 0
        seen_seq = -1
        made: T

        def read() -> T:
            nonlocal seen_words, seq_word, seen_seq, made
            words = self._words
            if words is seen_words and words[seq_word] == seen_seq:
                return made
            value = self.slot(currency, slot)
            made = derive(value)
            seen_words, seq_word = self._words, self._index[currency][0]
            seen_seq = value.sequence * 2
            return made

        return read

    def floats(self, currency: str) -> tuple[float, ...]:
        """Every slot as floats, from one consistent read."""
        try:
            entry = self._index[currency]
        except KeyError:
            entry = self._locate(currency)
        result = self._try_floats(entry)
        if result is None:
            return self._settle(currency, self._try_floats)
        return result

    def _try_floats(self, entry: _Entry) -> tuple[float, ...] | None:
        words = self._words
        seq = words[entry[0]]
        values: tuple[float, ...] = self._float_row.unpack_from(self._mm, entry[1] * 8)
        if seq & 1 or words[entry[0]] != seq:
            return None
        return values

    def record(self, currency: str) -> BalanceRecord:
        """Every slot, exact and as floats, with update time and sequence, read at once."""
        try:
            entry = self._index[currency]
        except KeyError:
            entry = self._locate(currency)
        result = self._try_record(entry)
        if result is None:
            return self._settle(currency, self._try_record)
        return result

    def _try_record(self, entry: _Entry) -> BalanceRecord | None:
        words = self._words
        seq_word, first_float, scale, name = entry
        count = self._strategy_count
        seq = words[seq_word]
        updated_ns = self._signed[seq_word + R_UPDATED_NS]
        floats = tuple(self._floats[first_float : first_float + count])
        first_int = first_float + count
        lows = words[first_int : first_int + 2 * count : 2].tolist()
        highs = self._signed[first_int + 1 : first_int + 2 * count : 2].tolist()
        if seq & 1 or words[seq_word] != seq:
            return None
        scaled = tuple(map(join_int128, lows, highs))
        return BalanceRecord(name, scale, scaled, floats, updated_ns, seq // 2)

    def _settle(self, currency: str, attempt: Callable[[_Entry], T | None]) -> T:
        """Retry a read until the record is stable, following a retired file.

        Raises:
            StoreBusyError: the record stayed mid-write and its writer is dead,
                or it did not settle within ``SETTLE_GIVE_UP_S``.
        """
        started = time.monotonic()
        next_check = started + SETTLE_CHECK_S
        spins = 0
        while True:
            self.retries += 1
            entry = self._index.get(currency) or self._locate(currency)
            result = attempt(entry)
            if result is not None:
                return result
            seq = self._words[entry[0]]
            if seq == RETIRED_SEQ or self._words[H_STATE] == WriterState.RETIRED:
                self._follow_successor(entry[3])
                continue
            spins += 1
            if spins % 32 == 0:
                os.sched_yield()  # on 2 cores the writer may be waiting for ours
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + SETTLE_CHECK_S
                    if not pid_alive(int(self._words[H_WRITER_PID])) or (
                        now - started >= SETTLE_GIVE_UP_S
                    ):
                        raise StoreBusyError(
                            f"the {entry[3]} record in {self.path} is stuck mid-write "
                            f"(writer pid {self._words[H_WRITER_PID]} is not finishing it); "
                            "it reads again once a gateway republishes it"
                        )

    # -- writer health ----------------------------------------------------------

    def writer_status(self, now_ns: int | None = None) -> WriterStatus:
        """Judge the writer by the header's state, pid and heartbeat age.

        A store that was replaced on disk while this reader held the old one is
        re-opened first, so a stopped writer's successor is found.
        """
        state = self._words[H_STATE]
        if state != WriterState.LIVE and self._replaced_on_disk():
            self._reopen()
            state = self._words[H_STATE]
        pid = int(self._words[H_WRITER_PID])
        heartbeat_ns = int(self._signed[H_HEARTBEAT_NS])
        now = time.time_ns() if now_ns is None else now_ns
        age = max(0.0, (now - heartbeat_ns) / 1e9)
        if state == WriterState.STOPPED:
            health = WriterHealth.STOPPED
        elif not pid_alive(pid):
            health = WriterHealth.DEAD
        elif age > self.stale_after_s:
            health = WriterHealth.STALE
        elif state == WriterState.STARTING:
            health = WriterHealth.STARTING
        else:
            health = WriterHealth.LIVE
        conditions = Condition(int(self._words[H_FLAGS]) & CONDITION_BITS)
        generation = int(self._words[H_GENERATION])
        if self._words[H_ROLE] != WriterRole.MIRROR:
            return WriterStatus(health, pid, generation, age, conditions)
        seen_ns = int(self._signed[H_SOURCE_SEEN_NS])
        return WriterStatus(
            health,
            pid,
            generation,
            age,
            conditions,
            mirror=True,
            applied_seq=int(self._words[H_APPLIED_SEQ]),
            source_age_s=max(0.0, (now - seen_ns) / 1e9) if seen_ns else float("inf"),
        )

    def _replaced_on_disk(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return False
