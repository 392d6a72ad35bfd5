"""The store's single writer: owns the lock, the file and every record's seqlock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from types import TracebackType

from mmapstore._layout import (
    DEFAULT_CAPACITY,
    DEFAULT_SCALE,
    DEFAULT_STRATEGY_COUNT,
    H_APPLIED_SEQ,
    H_CURRENCY_COUNT,
    H_FLAGS,
    H_GENERATION,
    H_HEARTBEAT_NS,
    H_ROLE,
    H_SOURCE_SEEN_NS,
    H_STATE,
    H_WRITER_PID,
    HEADER_SIZE,
    INT128_MAX,
    INT128_MIN,
    R_SEQ,
    RETIRED_SEQ,
    Condition,
    Geometry,
    WriterRole,
    WriterState,
    check_scale,
    encode_currency_name,
    pack_entry,
    pack_header,
    payload_struct,
    to_scaled,
    unpack_entry,
    unpack_header,
)
from mmapstore._paths import lock_path
from mmapstore.errors import (
    StoreError,
    StoreFormatError,
    StoreFullError,
    StoreLockedError,
    StoreSpaceError,
    StoreUnsafeError,
    StoreValueError,
)

logger = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1


class _Mapping:
    """One open, writable mapping of a store file and its word views."""

    def __init__(self, fd: int, size: int) -> None:
        self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.words = memoryview(self.mm).cast("Q")
        self.inode = os.fstat(fd).st_ino

    def close(self) -> None:
        self.words.release()
        self.mm.close()


def _check_owned(fd: int, path: Path, what: str) -> None:
    """Refuse a file this process's user does not own, or that others may write.

    Raises:
        StoreUnsafeError: naming the file, its owner and its mode.
    """
    _check_owner(os.fstat(fd), path, what)


def _check_owner(info: os.stat_result, path: Path, what: str) -> None:
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise StoreUnsafeError(
            f"{what} {path} is owned by uid {info.st_uid} with mode "
            f"{stat.S_IMODE(info.st_mode):04o}; a gateway adopts only its own user's files "
            "that no one else may write: remove it (after checking who made it)"
        )


def _allocate(fd: int, size: int) -> None:
    """Give every page of the file its memory now, while a full file system is an error.

    A store file is created sparse. On tmpfs, a page first written through the
    mapping when the file system is full raises SIGBUS, which ends the writer
    with no word; and ``/dev/shm`` is shared by every local user, any of whom
    can fill it. Allocated pages are never taken back, so once this returns,
    no write through the mapping can fail.
    """
    os.posix_fallocate(fd, 0, size)


@contextlib.contextmanager
def _room_needed(path: Path) -> Iterator[None]:
    """Turn a full file system while opening the store into :class:`StoreSpaceError`."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StoreSpaceError(
            f"no room for the store {path} in {path.parent} ({exc.strerror}): free some "
            f"space there (`df -h {path.parent}`, `du -a {path.parent}`), or set HFT_SHM_DIR"
        ) from None


def _open_nofollow(path: Path, flags: int, what: str, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symlink in the last component.

    Raises:
        StoreUnsafeError: the path is a symlink, or another user's file this user may
            not open (a gateway that is not root: another user's file is not writable,
            and ``fs.protected_regular`` refuses to create over one in /dev/shm).
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreUnsafeError(f"{path} is a symlink; the gateway does not follow it") from None
        if exc.errno in (errno.EACCES, errno.EPERM) and (info := _lstat(path)) is not None:
            _check_owner(info, path, what)  # another user's: said in one line
        raise


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _inode(path: Path) -> int | None:
    info = _lstat(path)
    return None if info is None else info.st_ino


def _open_existing(path: Path) -> tuple[_Mapping, Geometry, str] | None:
    """Map an existing store read-write, or return None when there is none to reuse.

    Raises:
        StoreUnsafeError: the file is another user's, writable by others, or a symlink.
    """
    try:
        fd = _open_nofollow(path, os.O_RDWR, "store file")
    except FileNotFoundError:
        return None
    try:
        _check_owned(fd, path, "store file")
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE:
            logger.warning("store %s is only %d bytes: replacing it", path, size)
            return None
        _allocate(fd, size)  # one an older version left sparse, reused or retired below
        mapping = _Mapping(fd, size)
    finally:
        os.close(fd)
    try:
        header = unpack_header(mapping.mm, file_size=size, path=str(path))
    except StoreFormatError as exc:
        logger.warning("store %s is unreadable (%s): replacing it", path, exc)
        mapping.close()
        return None
    return mapping, header.geometry, header.exchange


def _acquire_lock(store: Path) -> int:
    """Take the writer lock for the life of the returned descriptor.

    Raises:
        StoreLockedError: another process holds it.
        StoreUnsafeError: the lock file is another user's or others may write it.
    """
    lock_file = lock_path(store)
    # Private to its user: anyone who can open the lock file can take the flock and
    # keep every gateway from starting.
    fd = _open_nofollow(lock_file, os.O_RDWR | os.O_CREAT, "lock file")
    try:
        _check_owned(fd, lock_file, "lock file")
        os.fchmod(fd, 0o600)  # one left readable by an older version
    except BaseException:
        os.close(fd)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreLockedError(
            f"{store} already has a writer (pid {holder}, lock {lock_file}); "
            "stop that gateway first: there is one writer per exchange"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def writer_lock(store: Path) -> Iterator[None]:
    """Hold the store's writer lock without opening the store: no gateway can start.

    For maintenance on the writer's state while it is stopped (a journal salvage).

    Raises:
        StoreLockedError: a writer is running.
    """
    if not store.parent.is_dir():
        yield  # no directory for a store: no writer can be running
        return
    fd = _acquire_lock(store)
    try:
        yield
    finally:
        os.close(fd)


class StoreWriter:
    """The one process allowed to change a store file.

    Open it with :meth:`open`; it holds an exclusive lock until :meth:`close`
    (or until the process dies, when the kernel drops the lock and a new writer
    may take over). Not thread-safe: one task owns it.
    """

    def __init__(
        self,
        path: Path,
        lock_fd: int,
        mapping: _Mapping,
        geometry: Geometry,
        generation: int,
        clock_ns: Callable[[], int],
        mode: int = 0o644,
    ) -> None:
        self._path = path
        self._lock_fd = lock_fd
        self._lock_inode = os.fstat(lock_fd).st_ino
        self._mode = mode
        self._map = mapping
        self._path_trouble: str | None = None  # what restore_path last said, said once
        self._geometry = geometry
        self._generation = generation
        self._clock_ns = clock_ns
        self._payload = payload_struct(geometry.strategy_count)
        self._pow10: dict[int, int] = {}
        self._index: dict[str, int] = {}
        self._scales: list[int] = []
        self._closed = False
        count = mapping.words[H_CURRENCY_COUNT]
        for i in range(count):
            name, scale, _ = unpack_entry(mapping.mm, geometry.entry_offset(i))
            self._index[name] = i
            self._scales.append(scale)

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        exchange: str,
        strategy_count: int = DEFAULT_STRATEGY_COUNT,
        capacity: int = DEFAULT_CAPACITY,
        mode: int = 0o644,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> StoreWriter:
        """Take the store's lock and map it for writing, creating it if needed.

        An existing file with the same exchange, ``strategy_count`` and enough
        capacity is reused in place: mapped readers keep working and see the
        generation go up. Any other file is replaced by a new one and marked
        retired, so mapped readers re-open the path by themselves.

        The header says ``STARTING`` until :meth:`mark_live`.

        Every page of the file is allocated here (see :func:`_allocate`).

        Raises:
            StoreError: its directory cannot be made.
            StoreLockedError: another writer holds the store.
            StoreSpaceError: the file system holding it is full.
            StoreValueError: an impossible geometry or exchange name.
        """
        path = Path(path)
        geometry = Geometry(strategy_count, capacity)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"the store's directory {path.parent} cannot be made: {exc.strerror} "
                "(set HFT_SHM_DIR)"
            ) from None
        with _room_needed(path):
            lock_fd = _acquire_lock(path)
            try:
                mapping, geometry, previous_generation = _map_store(
                    path, geometry, exchange, mode, clock_ns()
                )
            except BaseException:
                os.close(lock_fd)
                raise
        words = mapping.words
        generation = previous_generation + 1
        words[H_STATE] = WriterState.STARTING
        words[H_FLAGS] = 0
        words[H_ROLE] = WriterRole.GATEWAY
        words[H_APPLIED_SEQ] = 0
        words[H_SOURCE_SEEN_NS] = 0
        words[H_GENERATION] = generation
        words[H_WRITER_PID] = os.getpid()
        words[H_HEARTBEAT_NS] = clock_ns() & _MASK64
        logger.info("store %s: writer pid %d, generation %d", path, os.getpid(), generation)
        return cls(path, lock_fd, mapping, geometry, generation, clock_ns, mode)

    # -- properties ---------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def strategy_count(self) -> int:
        return self._geometry.strategy_count

    @property
    def currencies(self) -> dict[str, int]:
        """Canonical currency name → record index, in directory order."""
        return dict(self._index)

    def scale_of(self, currency: str) -> int:
        return self._scales[self._index[encode_currency_name(currency).decode()]]

    # -- changes ----------------------------------------------------------------

    def add_currency(self, currency: str, scale: int = DEFAULT_SCALE) -> int:
        """Give ``currency`` a record (all slots zero) and return its index; idempotent.

        Readers find it without re-mapping: the entry is written before the
        directory count that makes it visible.

        Raises:
            StoreFullError: the directory is full.
            StoreValueError: a bad name, or a scale that differs from the existing record's.
        """
        name = encode_currency_name(currency).decode()
        check_scale(scale)
        index = self._index.get(name)
        if index is not None:
            if self._scales[index] != scale:
                raise StoreValueError(
                    f"{name} is stored at scale {self._scales[index]}, not {scale}"
                )
            return index
        index = len(self._scales)
        if index >= self._geometry.capacity:
            raise StoreFullError(
                f"{self._path}: all {self._geometry.capacity} currency records are in use"
            )
        pack_entry(
            self._map.mm, self._geometry.entry_offset(index), name, scale,
            self._geometry.record_offset(index),
        )  # fmt: skip
        self._index[name] = index
        self._scales.append(scale)
        self._map.words[H_CURRENCY_COUNT] = index + 1
        return index

    def publish(self, index: int, scaled: Sequence[int], updated_ns: int | None = None) -> int:
        """Replace record ``index``'s slots with ``scaled`` (integers at the record's scale).

        Returns:
            The record's new sequence number.

        Raises:
            StoreValueError: wrong slot count or a value outside 128 bits.
            IndexError: no such record.
        """
        scale = self._scales[index]
        count = self._geometry.strategy_count
        if len(scaled) != count:
            raise StoreValueError(f"expected {count} slot values, got {len(scaled)}")
        pow10 = self._pow10.get(scale)
        if pow10 is None:
            pow10 = self._pow10[scale] = 10**scale
        halves: list[int] = []
        for value in scaled:
            if type(value) is not int or not INT128_MIN <= value <= INT128_MAX:
                raise StoreValueError(f"slot value {value!r} is not a 128-bit integer")
            halves.append(value & _MASK64)
            halves.append(value >> 64)
        floats = [value / pow10 for value in scaled]  # int / int rounds correctly
        stamp = self._clock_ns() if updated_ns is None else updated_ns
        offset = self._geometry.record_offset(index)
        seq_word = offset // 8 + R_SEQ
        words = self._map.words
        seq = words[seq_word]
        if not seq & 1:  # an odd seq is a dead writer's torn write: finish it, do not re-open it
            seq += 1
            words[seq_word] = seq
        # The payload may be written any way; only the sequence word needs the aligned store.
        self._payload.pack_into(self._map.mm, offset + 8, stamp, *floats, *halves)
        words[seq_word] = seq + 1
        return (seq + 1) // 2

    def publish_decimal(
        self, currency: str, values: Sequence[Decimal | int | str], updated_ns: int | None = None
    ) -> int:
        """Publish exact values for ``currency``, adding its record if needed.

        Raises:
            StoreValueError: a value with more decimals than the record's scale, or out of range.
        """
        index = self._index.get(currency.upper())
        if index is None:
            index = self.add_currency(currency)
        scale = self._scales[index]
        return self.publish(index, [to_scaled(v, scale) for v in values], updated_ns)

    def heartbeat(self, now_ns: int | None = None) -> None:
        """Tell readers the writer is alive; call it at least once a second."""
        self._map.words[H_HEARTBEAT_NS] = (self._clock_ns() if now_ns is None else now_ns) & _MASK64

    def restore_path(self) -> bool:
        """Put the store and its lock file back at their paths if they are gone; True if so.

        Files in /dev/shm can vanish under a running writer: systemd-logind's
        ``RemoveIPC`` removes a user's files there at their last logout, and a
        cleaner may too. Readers that map the file keep reading it, but a new
        one finds nothing (the gateway "not running"), and without the lock file
        a second writer could start. A copy of the mapping goes back at the
        path and the old file is retired, so its readers re-open the path. Call
        it now and then (the gateway does at every heartbeat): two ``stat`` calls
        when all is well. Another file at the path is left alone, and said once.
        """
        lock_file = lock_path(self._path)
        if _inode(lock_file) != self._lock_inode:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)  # gone with them, maybe
                lock_fd = _acquire_lock(self._path)
            except (StoreError, OSError) as exc:
                self._say_path_trouble(f"its lock file was removed and cannot be made again: {exc}")
                return False
            os.close(self._lock_fd)
            self._lock_fd, self._lock_inode = lock_fd, os.fstat(lock_fd).st_ino
            logger.warning("store %s: its lock file was removed; made again", self._path)
        inode = _inode(self._path)
        if inode == self._map.inode:
            self._path_trouble = None
            return False
        if inode is not None:
            self._say_path_trouble("another file is at its path; this writer's is not there")
            return False
        old = self._map
        try:
            with _room_needed(self._path):
                self._map = _new_file(self._path, self._geometry.file_size, self._mode, old.mm[:])
        except (StoreError, OSError) as exc:
            self._say_path_trouble(f"it was removed and cannot be made again: {exc}")
            return False
        _retire(old, self._geometry)
        logger.warning(
            "store %s was removed while its writer ran (systemd-logind's RemoveIPC at a "
            "logout, or a cleaner): put back; readers re-open it", self._path,
        )  # fmt: skip
        return True

    def _say_path_trouble(self, trouble: str) -> None:
        if trouble != self._path_trouble:
            self._path_trouble = trouble
            logger.error("store %s: %s", self._path, trouble)

    def set_conditions(self, conditions: Condition) -> None:
        """Publish what is wrong right now (readers see it in ``writer_status()``)."""
        self._map.words[H_FLAGS] = int(conditions)

    def set_mirror(self, applied_seq: int, source_seen_ns: int) -> None:
        """A mirror's progress: events applied, and when its source was last seen alive."""
        words = self._map.words
        words[H_APPLIED_SEQ] = applied_seq & _MASK64
        words[H_SOURCE_SEEN_NS] = source_seen_ns & _MASK64
        words[H_ROLE] = WriterRole.MIRROR

    def mark_live(self) -> None:
        """Say the records are current: call once the first full publish is done."""
        self.heartbeat()
        self._map.words[H_STATE] = WriterState.LIVE

    def close(self) -> None:
        """Mark the store stopped, unmap it and release the lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.heartbeat()
            self._map.words[H_STATE] = WriterState.STOPPED
            self._map.close()
        finally:
            os.close(self._lock_fd)
        logger.info("store %s: writer stopped", self._path)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _map_store(
    path: Path, geometry: Geometry, exchange: str, mode: int, now_ns: int
) -> tuple[_Mapping, Geometry, int]:
    """The store at ``path`` mapped, reused if it fits, else made anew (the old one retired);
    with its geometry and the generation it had (0 for a new file)."""
    existing = _open_existing(path)
    if existing is None:
        return _create(path, geometry, exchange, mode, now_ns), geometry, 0
    old, old_geometry, old_exchange = existing
    previous_generation = old.words[H_GENERATION]
    if (
        old_exchange == exchange
        and old_geometry.strategy_count == geometry.strategy_count
        and old_geometry.capacity >= geometry.capacity
    ):
        return old, old_geometry, previous_generation
    logger.warning(
        "store %s has exchange %s, %d slots, capacity %d; "
        "re-creating it for %s, %d slots, capacity %d",
        path, old_exchange, old_geometry.strategy_count, old_geometry.capacity,
        exchange, geometry.strategy_count, geometry.capacity,
    )  # fmt: skip
    try:
        mapping = _create(path, geometry, exchange, mode, now_ns)
    except BaseException:
        old.close()
        raise
    _retire(old, old_geometry)
    return mapping, geometry, previous_generation


def _create(path: Path, geometry: Geometry, exchange: str, mode: int, now_ns: int) -> _Mapping:
    """Write a complete new store beside ``path`` and rename it into place.

    Readers therefore never see a half-written header.
    """
    header = bytearray(HEADER_SIZE)
    pack_header(header, geometry, exchange=exchange, created_ns=now_ns)
    return _new_file(path, geometry.file_size, mode, header)


def _new_file(path: Path, size: int, mode: int, content: bytes | bytearray) -> _Mapping:
    """A file of ``size`` bytes (every page allocated) starting with ``content``, mapped,
    then renamed to ``path``."""
    # A new file of our own at a name no one can guess (O_EXCL | O_NOFOLLOW, mode 0600
    # until the fchmod below): never one planted there, nor a symlink to elsewhere. A
    # name made of the pid could be planted ahead, and in a sticky directory such as
    # /dev/shm another user's file cannot be removed: the writer could not start.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)  # the umask must not narrow who may read balances
        os.ftruncate(fd, size)
        _allocate(fd, size)
        os.pwrite(fd, content, 0)
        mapping = _Mapping(fd, size)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-made file left taking the room
        raise
    finally:
        os.close(fd)
    os.rename(tmp, path)
    return mapping


def _retire(old: _Mapping, geometry: Geometry) -> None:
    """Tell readers still mapping a replaced file to re-open the path."""
    words = old.words
    words[H_STATE] = WriterState.RETIRED
    for index in range(geometry.capacity):
        words[geometry.record_offset(index) // 8 + R_SEQ] = RETIRED_SEQ
    old.close()
