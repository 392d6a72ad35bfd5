"""The append-only journal and its snapshots under ``$HFT_STATE_DIR``.

Files (all in one directory, 0700):

    snapshot-<seq>.cbor   the whole ledger after the first <seq> events
    journal-<seq>.log     events from number <seq> on, one record each

A record is ``u32 length | u32 crc32(payload)`` (big-endian) followed by the
payload (one CBOR event, never empty). A segment is allocated ahead of its
records (``fallocate``, in steps of a few MiB: writing into allocated space and
syncing it with ``fdatasync`` is cheaper than growing the file each time), so
it ends in zeros: no record starts with a zero length, and zeros to the end of a
file are unused space, not damage. A snapshot is ``b"HFTSNAP1"`` and the
same framing around one CBOR map. On open, the newest valid snapshot is loaded
and the journal replayed after it. A new segment begins at each snapshot's event
before the snapshot's file is written, so until it lands the older snapshot and
both segments hold everything.

A crash can leave the last write incomplete: a damaged record with nothing
sound after it at the end of the last segment is a *torn tail*, never
acknowledged, and is cut off and logged. Damage with sound records after it is
*corruption*: acknowledged events may be behind it, so the start is refused and
nothing is changed; ``gateway journal verify`` reports it and ``gateway journal
salvage`` (see :mod:`gateway.journal_repair`) is the operator's explicit way on.
Blocking I/O: the writer calls the write-out and snapshot methods from a worker
thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

import cbor2

from gateway.errors import JournalCorruptError, JournalLockedError, JournalWriteError

if TYPE_CHECKING:
    from typing_extensions import Buffer

logger = logging.getLogger(__name__)

RECORD_HEADER: Final = struct.Struct(">II")
ALLOCATE_BYTES: Final = 4 << 20  # a segment grows by this much at a time
MAX_RECORD_BYTES: Final = 1 << 20
SNAPSHOT_MAGIC: Final = b"HFTSNAP1"
_SEQ_DIGITS: Final = 20


def frame(payload: bytes) -> bytes:
    return RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def segment_path(directory: Path, seq: int) -> Path:
    """The segment whose first event is number ``seq``."""
    return directory / f"journal-{seq:0{_SEQ_DIGITS}d}.log"


def snapshot_path(directory: Path, seq: int) -> Path:
    """The snapshot of the state before event ``seq``."""
    return directory / f"snapshot-{seq:0{_SEQ_DIGITS}d}.cbor"


def _seq_of(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def _named(directory: Path, prefix: str, suffix: str) -> list[Path]:
    found = [p for p in directory.glob(f"{prefix}-*{suffix}") if p.stem.split("-", 1)[1].isdigit()]
    return sorted(found, key=_seq_of)


class UnreplayableRecordError(Exception):
    """Raised by a replay function: the record at ``index`` of those it was given passed
    its checksum but cannot be applied (the exception's cause says why)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"record {index} cannot be applied")
        self.index = index


@dataclass
class RestoreReport:
    """What opening the journal found, for the log and for ``status``."""

    snapshot_seq: int = 0
    replayed: int = 0
    dropped_bytes: int = 0
    dropped_reason: str = ""


@dataclass(frozen=True, slots=True)
class Scan:
    """Records read from the start of a file up to its first damaged one."""

    records: list[bytes]
    good_end: int  # where the sound prefix ends (the file's size when nothing is wrong)
    problem: str  # why reading stopped at good_end, or "" when it reached the end


def _record_at(data: bytes, pos: int, max_record: int) -> tuple[int, str]:
    """The end of the sound record at ``pos``, or (-1, why it is not one)."""
    if len(data) - pos < RECORD_HEADER.size:
        return -1, "torn record header"
    length, crc = RECORD_HEADER.unpack_from(data, pos)
    if length == 0 or length > max_record:
        return -1, f"impossible record length {length}"
    end = pos + RECORD_HEADER.size + length
    if end > len(data):
        return -1, "torn record"
    if zlib.crc32(data[pos + RECORD_HEADER.size : end]) != crc:
        return -1, "checksum mismatch"
    return end, ""


def scan_records(data: bytes, max_record: int = MAX_RECORD_BYTES) -> Scan:
    """Split ``data`` into record payloads up to the first torn or corrupt one.

    ``max_record`` guards the journal against reading a corrupt length as a huge
    record; a snapshot, one record as large as its file, passes its own size.
    The loop is :func:`_record_at` inlined (a restart reads every record):
    that function only names what stopped it.
    """
    records: list[bytes] = []
    append, unpack, crc32 = records.append, RECORD_HEADER.unpack_from, zlib.crc32
    size, header = len(data), RECORD_HEADER.size
    pos = 0
    while pos <= size - header:
        length, crc = unpack(data, pos)
        end = pos + header + length
        if not 0 < length <= max_record or end > size:
            break
        payload = data[pos + header : end]
        if crc32(payload) != crc:
            break
        append(payload)
        pos = end
    if pos < size and data.count(0, pos) != size - pos:
        return Scan(records, pos, _record_at(data, pos, max_record)[1])
    # Zeros to the end are space allocated ahead: nothing was written there.
    return Scan(records, pos, "")


def next_sound_record(data: bytes, start: int) -> int | None:
    """The first offset at or after ``start`` where a sound record begins, if any.

    What tells corruption from a torn tail: a crash only ever damages the end of
    what was written last, so a sound record after damage means the damage is
    not a torn write. A random match needs a plausible length and a 32-bit
    checksum to agree, about one chance in 4e9 per offset tried.
    """
    # A record's length is never 0, so no record starts in the zeros a segment ends
    # with (megabytes of them: not worth trying offset by offset).
    written = len(data.rstrip(b"\0"))
    for pos in range(start, min(written, len(data) - RECORD_HEADER.size + 1)):
        if _record_at(data, pos, MAX_RECORD_BYTES)[0] > 0:
            return pos
    return None


WRITER_LOCK: Final = "writer.lock"


def lock_state_dir(directory: Path) -> int:
    """Take ``directory``'s writer lock and return its descriptor: held until it is closed.

    One process writes a journal. The store's lock in /dev/shm refuses a second
    gateway first, but files there can vanish under a running one (systemd-logind's
    ``RemoveIPC`` removes a user's files in /dev/shm at their last logout; so does a
    cleaner), and a second writer of one journal would book everything twice.

    Raises:
        JournalLockedError: another process holds it, named by its pid.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / WRITER_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        raise JournalLockedError(
            f"state directory {directory} already has a writer (pid {holder}, lock {path}): "
            "one gateway or mirror writes a state directory; stop that one first"
        ) from None
    with contextlib.suppress(OSError):  # the pid only names the holder (a full disk: not)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """Records taken from the journal's buffer for one write, and what they make durable."""

    data: bytes
    upto_seq: int  # events before this number are durable once it is written


class Journal:
    """Appends events durably; see the module docstring for the files.

    One owner (the writer task) calls it; only :meth:`write_out`,
    :meth:`write_snapshot_file` and :meth:`write_snapshot` may run in a worker
    thread, the first two while the owner goes on appending.
    """

    def __init__(
        self,
        directory: Path,
        segment: Path,
        next_seq: int,
        records_end: int = 0,
        *,
        sync: bool = True,
    ) -> None:
        self.directory = directory
        self._sync = sync  # False: a mirror's copy, which the gateway's own journal backs
        self._segment = segment
        self._fd = _open_segment(segment)
        self._good_size = records_end  # the end of the last durable record
        self._allocated = os.fstat(self._fd).st_size
        self._pending: list[bytes] = []
        self.next_seq = next_seq  # number of the next event appended
        self.synced_seq = next_seq  # events before this number are on disk
        self.events_since_snapshot = 0
        # Called (on the owner's thread) each time more events are durable: the
        # replication publisher's wake-up.
        self.on_durable: Callable[[], None] | None = None
        # The first event a reader of the files (the replication publisher) still needs:
        # a snapshot keeps the segments holding it and later ones. None: nobody reads.
        self.retain_from: Callable[[], int | None] | None = None
        # The event of a snapshot whose file is still being written (the writer sets
        # it): a reader publishing snapshots waits there for it.
        self.snapshot_pending: int | None = None

    @classmethod
    def open(
        cls,
        directory: Path,
        restore: Callable[[dict[str, object] | None], None],
        replay: Callable[[Sequence[bytes]], None],
        *,
        sync: bool = True,
    ) -> tuple[Journal, RestoreReport]:
        """Open the journal in ``directory`` and bring the caller's state up to date.

        ``restore`` gets the newest readable snapshot's data (or None), then
        ``replay`` gets the event payloads after it, in order, a segment's at a time
        (calls a record were a quarter of a restart), and raises
        :class:`UnreplayableRecordError` for one it cannot apply. A torn tail is cut off
        and logged; anything else damaged stops the start untouched.

        Raises:
            JournalCorruptError: snapshots exist but none is readable, events
                between the snapshot and the journal are missing, a damaged
                record has sound ones (or later files) after it, or ``restore`` or
                ``replay`` rejects a snapshot or record that passed its checksum.
        """
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        report = RestoreReport()
        snapshot, snapshot_seq = load_snapshot(directory)
        try:
            restore(snapshot)
        except (ValueError, KeyError, TypeError, AssertionError, ArithmeticError) as exc:
            # Sound bytes of the wrong shape: a bug or tampering, as with a record below.
            raise JournalCorruptError(
                f"{snapshot_path(directory, snapshot_seq).name} passed its checksum but "
                f"cannot be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        report.snapshot_seq = snapshot_seq
        seq = 0
        last_segment: Path | None = None
        records_end = 0  # where the last segment's records end (allocated zeros may follow)
        segments = list(segments_of(directory))
        for number, segment in enumerate(segments):
            first = _seq_of(segment)
            if first > max(seq, snapshot_seq):
                raise JournalCorruptError(
                    f"{segment.name} starts at event {first}, but events from "
                    f"{max(seq, snapshot_seq)} are missing"
                )
            is_last = number == len(segments) - 1
            if not is_last and _seq_of(segments[number + 1]) <= snapshot_seq:
                continue  # wholly covered by the snapshot (left over from a crash)
            seq = first
            data = segment.read_bytes()
            scan = scan_records(data)
            if scan.problem:
                resume = next_sound_record(data, scan.good_end + 1)
                if resume is not None or not is_last:
                    after = (
                        f"sound records follow from byte {resume}"
                        if resume is not None
                        else "later journal files follow"
                    )
                    raise JournalCorruptError(
                        f"{segment.name}: {scan.problem} at byte {scan.good_end} (event "
                        f"{first + len(scan.records)}) and {after}: this is damage, not a torn "
                        f"write; nothing was changed (run `gateway journal verify`, then "
                        f"`gateway journal salvage` to keep every sound record)"
                    )
            after_snapshot = scan.records[max(0, snapshot_seq - first) :]
            seq = first + len(scan.records) - len(after_snapshot)
            try:
                replay(after_snapshot)
            except UnreplayableRecordError as exc:
                raise JournalCorruptError(
                    f"{segment.name}: event {seq + exc.index} passed its checksum but cannot "
                    f"be applied: {exc.__cause__}"
                ) from exc
            seq += len(after_snapshot)
            report.replayed += len(after_snapshot)
            last_segment, records_end = segment, scan.good_end
            if scan.problem:
                report.dropped_bytes = len(data) - scan.good_end
                report.dropped_reason = scan.problem
                logger.warning(
                    "journal %s: torn tail (%s at byte %d, nothing sound after it); cutting "
                    "off the last %d bytes (events from number %d were never acknowledged)",
                    segment.name, scan.problem, scan.good_end, report.dropped_bytes, seq,
                )  # fmt: skip
                with open(segment, "r+b") as f:
                    f.truncate(scan.good_end)
                    os.fsync(f.fileno())
        seq = max(seq, snapshot_seq)
        if last_segment is None or _seq_of(last_segment) < snapshot_seq:
            last_segment = segment_path(directory, seq)
            records_end = 0
        journal = cls(directory, last_segment, seq, records_end, sync=sync)
        _fsync_directory(directory)
        logger.info(
            "journal %s: snapshot at event %d, %d events replayed, next event %d",
            directory, snapshot_seq, report.replayed, seq,
        )  # fmt: skip
        return journal, report

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def append(self, payload: bytes) -> None:
        """Queue one event; it is durable once a commit covering it returns.

        Raises:
            ValueError: a record longer than a restart reads back (``MAX_RECORD_BYTES``:
                it would read as damage). Every edge bounds what it lets in far below
                this, so this is a bug, stopped before it is written.
        """
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"a journal record of {len(payload):,} bytes is beyond any event")
        self._pending.append(frame(payload))
        self.next_seq += 1
        self.events_since_snapshot += 1

    def commit(self) -> None:
        """Write and sync everything appended so far (blocking).

        Raises:
            JournalWriteError: as :meth:`write_out`; everything not yet durable
                is dropped (:meth:`discard_pending`).
        """
        if not self._pending:
            return
        write = self.take_pending()
        try:
            self.write_out(write)
        except JournalWriteError:
            self.discard_pending()
            raise
        self.mark_durable(write)

    # A commit in three steps, so that the writer can apply the next batch while a
    # worker thread syncs this one: take (writer), write out (thread), mark (writer).

    def take_pending(self) -> PendingWrite:
        """Hand what was appended so far to a write; later appends wait for the next one."""
        write = PendingWrite(b"".join(self._pending), self.next_seq)
        self._pending.clear()
        return write

    def write_out(self, write: PendingWrite) -> None:
        """Write ``write`` at the end of the segment and sync it (blocking; thread-safe
        against appends, which touch only memory). One write out at a time.

        Raises:
            JournalWriteError: the write or sync failed (disk full, read-only, I/O
                error). The file is cut back to its last durable record, so a later
                write never follows a torn one.
        """
        try:
            end = self._good_size + len(write.data)
            if end > self._allocated:
                self._allocate_ahead(end)
            _write_all_at(self._fd, write.data, self._good_size)
            # Data only: the file's size is data to fdatasync, its times are not.
            if self._sync:
                os.fdatasync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._good_size)
                self._allocated = self._good_size
            raise JournalWriteError(f"journal {self._segment}: {exc.strerror}") from exc

    def _allocate_ahead(self, end: int) -> None:
        """Allocate up to ``end`` and a step beyond; short of room, only what is needed.

        A disk too full (or a file system that cannot allocate) is not an error
        here: the write itself then says whether the record fits.
        """
        for size in (max(end, self._allocated + ALLOCATE_BYTES), end):
            try:
                os.posix_fallocate(self._fd, self._allocated, size - self._allocated)
            except OSError:
                continue
            self._allocated = size
            return

    def mark_durable(self, write: PendingWrite) -> None:
        """``write`` is on disk: the events before its sequence are durable."""
        self._good_size += len(write.data)
        self.synced_seq = write.upto_seq
        if self.on_durable is not None:
            self.on_durable()

    def discard_pending(self) -> None:
        """Forget every event not yet durable, in a write or not (a write failed)."""
        self.events_since_snapshot -= self.next_seq - self.synced_seq
        self._pending.clear()
        self.next_seq = self.synced_seq

    def write_snapshot(self, ledger_data: dict[str, object]) -> None:
        """Write a snapshot at the current event number and drop what it covers.

        Call it with nothing pending (right after a commit). Blocking: the writer
        takes its periodic snapshots with :meth:`rotate`, :meth:`write_snapshot_file`
        in a worker thread while it goes on, and :meth:`drop_covered`.
        """
        seq = self.rotate()
        self.write_snapshot_file(ledger_data, seq)
        self.drop_covered(seq)

    def rotate(self) -> int:
        """Start a new segment at the next event, for a snapshot of the state there.

        Events appended from now on go to the new segment, so that the snapshot
        can be written while they are (:meth:`write_snapshot_file`). Until it
        lands, a restart replays the older snapshot through both segments. Call
        with nothing pending and no write out running. Returns the snapshot's
        event number.

        Raises:
            JournalWriteError: the new segment cannot be made; nothing changed.
        """
        assert not self._pending, "commit before snapshotting"
        seq = self.next_seq
        segment = segment_path(self.directory, seq)
        if segment != self._segment:
            self._switch_segment(segment)
        self.events_since_snapshot = 0
        return seq

    def _switch_segment(self, segment: Path, *, fresh: bool = False) -> None:
        """Append to ``segment`` from now on (``fresh``: emptied first).

        Raises:
            JournalWriteError: it cannot be opened, or the directory synced.
        """
        try:
            if fresh:
                segment.unlink(missing_ok=True)
            fd = _open_segment(segment)
            os.close(self._fd)
            self._segment, self._fd = segment, fd
            self._good_size = 0
            self._allocated = os.fstat(fd).st_size
            _fsync_directory(self.directory)
        except OSError as exc:
            raise JournalWriteError(f"journal {segment}: {exc.strerror}") from exc

    def write_snapshot_file(self, ledger_data: dict[str, object], seq: int) -> None:
        """Write ``snapshot-<seq>.cbor`` (blocking). It touches no state of the journal's
        own, so it may run in a worker thread while the owner goes on appending.

        Raises:
            JournalWriteError: it could not be written whole; nothing is left of it.
        """
        # Encoded straight into the file: a snapshot with both caches full is ~17 MB, and
        # holding it whole as bytes was the gateway's peak memory.
        self._write_snapshot_body(partial(cbor2.dump, ledger_data), seq)
        logger.info("journal %s: snapshot at event %d", self.directory, seq)

    def rebase(self, snapshot_body: bytes, seq: int) -> None:
        """Start over from another journal's snapshot (CBOR ``snapshot_body``) at ``seq``.

        A mirror's resync: every earlier and later file goes, and the next event
        appended is number ``seq``. Blocking.
        """
        self._pending.clear()
        self._write_snapshot_body(lambda out: out.write(snapshot_body), seq)
        self._switch_segment(segment_path(self.directory, seq), fresh=True)
        self._drop(seq, keep_later=False)
        self.next_seq = self.synced_seq = seq
        self.events_since_snapshot = 0

    def drop_covered(self, seq: int) -> None:
        """Delete what snapshot ``seq`` covers: older snapshots, and segments whose
        every event is before ``seq`` and that no reader still needs."""
        self._drop(seq, keep_later=True)

    def _write_snapshot_body(self, write_body: Callable[[BinaryIO], object], seq: int) -> None:
        path = snapshot_path(self.directory, seq)
        tmp = path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                # The body first, after room for the header, which needs its length and
                # checksum: no copy of a snapshot of megabytes is ever held whole.
                os.lseek(fd, len(SNAPSHOT_MAGIC) + RECORD_HEADER.size, os.SEEK_SET)
                sink = _ChecksummedSink(fd)
                with io.BufferedWriter(sink, _SNAPSHOT_CHUNK) as out:
                    write_body(out)
                header = SNAPSHOT_MAGIC + RECORD_HEADER.pack(sink.length, sink.crc)
                _write_all_at(fd, header, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _fsync_directory(self.directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise JournalWriteError(f"snapshot {path}: {exc.strerror}") from exc

    def _drop(self, seq: int, *, keep_later: bool) -> None:
        for stale in _named(self.directory, "snapshot", ".cbor"):
            if _seq_of(stale) < seq or (not keep_later and _seq_of(stale) > seq):
                stale.unlink(missing_ok=True)
        retain = self.retain_from() if self.retain_from is not None and keep_later else None
        segments = list(segments_of(self.directory))
        for number, stale in enumerate(segments):
            start = _seq_of(stale)
            if start == seq or (keep_later and start > seq):
                continue
            end = _seq_of(segments[number + 1]) if number + 1 < len(segments) else seq
            if keep_later and end > seq:
                continue  # holds events after the snapshot (none, once rotated there)
            if retain is not None and start < seq and end > retain:
                continue  # still being read (replication); a later snapshot removes it
            stale.unlink(missing_ok=True)

    def abandon(self) -> None:
        """Close and delete a journal nothing was ever acknowledged from.

        Only for a first start that failed before it was ready: its events (the
        ledger's opening, fills of a ledger never published) bind nothing.
        """
        self.discard_pending()
        os.close(self._fd)
        for path in [*_named(self.directory, "snapshot", ".cbor"), *segments_of(self.directory)]:
            path.unlink(missing_ok=True)
        _fsync_directory(self.directory)

    def close(self) -> None:
        os.close(self._fd)


def load_snapshot(directory: Path) -> tuple[dict[str, object] | None, int]:
    snapshots = _named(directory, "snapshot", ".cbor")
    for path in reversed(snapshots):
        try:
            return _read_snapshot(path), _seq_of(path)
        except (OSError, ValueError, cbor2.CBORDecodeError) as exc:
            logger.error("snapshot %s is unusable (%s); trying an older one", path, exc)
    if snapshots:
        raise JournalCorruptError(f"no readable snapshot among {[p.name for p in snapshots]}")
    return None, 0


def _read_snapshot(path: Path) -> dict[str, object]:
    data = path.read_bytes()
    if not data.startswith(SNAPSHOT_MAGIC):
        raise ValueError("bad magic")
    body = data[len(SNAPSHOT_MAGIC) :]
    scan = scan_records(body, max_record=len(body))
    if scan.problem or len(scan.records) != 1:
        raise ValueError(scan.problem or "expected exactly one record")
    body = cbor2.loads(scan.records[0])
    if not isinstance(body, dict):
        raise ValueError("snapshot is not a map")
    return body


_SNAPSHOT_CHUNK: Final = 1 << 20


class _ChecksummedSink(io.RawIOBase):
    """Writes to ``fd`` where it stands, keeping the length and CRC-32 of what passed.

    Closing it leaves ``fd`` open: its owner closes it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.length = 0
        self.crc = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer) -> int:
        view = memoryview(data)
        self.crc = zlib.crc32(view, self.crc)
        self.length += len(view)
        _write_all(self._fd, view)
        return len(view)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_all_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _open_segment(path: Path) -> int:
    # Not O_APPEND: records go at the end of the last one, inside allocated space.
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segments_of(directory: Path) -> Iterator[Path]:
    yield from _named(directory, "journal", ".log")
