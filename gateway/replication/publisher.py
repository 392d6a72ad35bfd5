"""The gateway's side of replication: publish the durable journal, serve forwarded commands.

Nothing here runs on the writer's path. The publisher reads the journal's files
(events the writer has already made durable, told by ``Journal.synced_seq``)
and sends them with ``XADD``; a Redis that is slow, down or restarted empty
costs the writer nothing, and the publisher catches up from the files (and the
newest snapshot) when it is back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import cbor2
import coredis
import trio
from coredis.exceptions import ResponseError
from coredis.response.types import StreamEntry
from coredis.tokens import PureToken

from gateway.codes import ErrorCode
from gateway.errors import CommandProtocolError, JournalCorruptError
from gateway.events import Reply, error_reply
from gateway.journal import (
    RECORD_HEADER,
    SNAPSHOT_MAGIC,
    Journal,
    segment_path,
    segments_of,
    snapshot_path,
)
from gateway.ledger import Ledger
from gateway.messages import CommandReceived
from gateway.protocol import MAX_FRAME_BYTES, Framing, Query, decode_frame, parse_request
from gateway.replication.client import REDIS_FAILURES, RedisDownError, connect
from gateway.replication.keys import (
    BEAT,
    BEAT_INTERVAL_S,
    BLOCK_MS,
    CLAIM,
    MIRROR_ID_RE,
    OWNER_TTL_MS,
    PUBLISH_EVENTS,
    PUBLISH_SNAPSHOT,
    RELEASE,
    RETRY_S,
    Target,
    as_bytes,
    pack_events,
    parse_id,
    position_after,
)
from gateway.replication.resp import ScriptCaller

logger = logging.getLogger(__name__)

BATCH_EVENTS: Final = 512
SEND_INTERVAL_S: Final = 0.002
BUSY_SEND_INTERVAL_S: Final = 0.010
BUSY_SEND_EVENTS: Final = 16  # a send this full means events come faster than ~8,000/s
RELEASE_TIMEOUT_S: Final = 1.0
# A mirror's request for everything again is taken at most this often: each costs every
# mirror a resync, and anyone who may write the request key could ask without end.
REPUBLISH_INTERVAL_S: Final = 10.0
BATCH_BYTES: Final = 512 * 1024
READ_BYTES: Final = 64 * 1024
MAX_REMOTE_IN_FLIGHT: Final = 256
REPLY_STREAM_LENGTH: Final = 1000
REPLY_STREAM_TTL_S: Final = 600


@dataclass
class ReplicationStatus:
    """What ``gateway status`` says of replication."""

    target: str
    state: str = "connecting"
    lineage: str = ""
    published: int = 0  # events published (the next event's number)
    snapshots_published: int = 0
    sends: int = 0  # event batches sent (published / sends: events a send carries)
    remote_commands: int = 0
    remote_refused: int = 0
    durable: Callable[[], int] = field(default=lambda: 0, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "replication": {
                "target": self.target,
                "state": self.state,
                "lineage": self.lineage,
                "published": self.published,
                "behind": max(0, self.durable() - self.published),
                "snapshots_published": self.snapshots_published,
                "sends": self.sends,
                "remote_commands": self.remote_commands,
                "remote_refused": self.remote_refused,
            }
        }


class SnapshotNeededError(Exception):
    """The events wanted are no longer in the journal's files: publish its snapshot."""


class JournalTail:
    """Reads durable records from the journal's files, in order, behind the writer.

    It keeps its segment open, so a snapshot that deletes the segment does not
    take records still to be read away from it.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._fd: int | None = None
        self._offset = 0
        self._seq = 0  # the number of the record at _offset
        self._buffer = b""  # bytes of the file read ahead; _offset is at _buffer[_used]
        self._used = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self, position: int, upto: int, limit: int) -> list[bytes]:
        """Payloads of events ``position`` .. ``min(upto, position + limit) - 1``.

        Raises:
            SnapshotNeededError: event ``position`` is in no file any more.
            JournalCorruptError: a durable record fails its checksum.
        """
        if self._fd is None or position != self._seq:
            self._seek(position)
        records: list[bytes] = []
        while self._seq < upto and len(records) < limit:
            payload = self._next_record()
            if payload is None:
                if not self._open_segment_at(self._seq):
                    if records:
                        break
                    raise SnapshotNeededError
                continue
            records.append(payload)
        # What was read past the last durable record may have been zeros or half a write
        # then: the next call reads it afresh.
        self._forget()
        return records

    def _seek(self, position: int) -> None:
        starts = [int(p.stem.split("-", 1)[1]) for p in segments_of(self._directory)]
        candidates = [s for s in starts if s <= position]
        if not candidates or not self._open_segment_at(max(candidates)):
            raise SnapshotNeededError
        while self._seq < position:
            if self._next_record() is None:
                raise SnapshotNeededError

    def _open_segment_at(self, start: int) -> bool:
        path = segment_path(self._directory, start)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        self.close()
        self._fd, self._offset, self._seq = fd, 0, start
        self._forget()
        return True

    def _next_record(self) -> bytes | None:
        header = self._take(RECORD_HEADER.size)
        if header is None:
            return None
        length, crc = RECORD_HEADER.unpack(header)
        if length == 0:
            # Space allocated ahead, nothing written here yet: forget what was read of
            # it, so that the next read finds the records written there since.
            self._offset -= RECORD_HEADER.size
            self._forget()
            return None
        payload = self._take(length)
        if payload is None:
            raise JournalCorruptError(f"journal event {self._seq} is cut short on disk")
        if zlib.crc32(payload) != crc:
            raise JournalCorruptError(f"journal event {self._seq} fails its checksum on disk")
        self._seq += 1
        return payload

    def _take(self, size: int) -> bytes | None:
        """The next ``size`` bytes of the file from ``_offset``, or None before they exist."""
        start = self._used
        if len(self._buffer) - start < size:
            assert self._fd is not None
            rest = self._buffer[start:]
            more = os.pread(self._fd, max(READ_BYTES, size), self._offset + len(rest))
            self._buffer, self._used, start = rest + more, 0, 0
            if len(self._buffer) < size:
                return None
        self._used = start + size
        self._offset += size
        return self._buffer[start : start + size]

    def _forget(self) -> None:
        self._buffer, self._used = b"", 0


def _snapshot_body(directory: Path, seq: int) -> bytes | None:
    """The CBOR body of ``snapshot-<seq>.cbor`` if it is there and sound."""
    try:
        data = snapshot_path(directory, seq).read_bytes()
    except FileNotFoundError:
        return None
    header = len(SNAPSHOT_MAGIC) + RECORD_HEADER.size
    if not data.startswith(SNAPSHOT_MAGIC) or len(data) < header:
        return None
    length, crc = RECORD_HEADER.unpack_from(data, len(SNAPSHOT_MAGIC))
    body = data[header:]
    return body if len(body) == length and zlib.crc32(body) == crc else None


def _newest_snapshot(directory: Path, strategy_count: int) -> tuple[int, bytes]:
    """The newest sound snapshot's number and CBOR body (as on disk); an empty ledger at 0
    when there is none (a journal that starts at event 0)."""
    for seq in sorted(_snapshot_seqs(directory), reverse=True):
        body = _snapshot_body(directory, seq)
        if body is not None:
            return seq, body
    return 0, cbor2.dumps(Ledger(strategy_count).to_snapshot())


def _file_identity(directory: Path, seq: int) -> tuple[int, int] | None:
    """Which file ``snapshot-<seq>.cbor`` is (inode, change time), or None if there is none."""
    try:
        info = os.stat(snapshot_path(directory, seq))
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_ctime_ns


def _snapshot_seqs(directory: Path) -> list[int]:
    return [
        int(path.stem.split("-", 1)[1])
        for path in directory.glob("snapshot-*.cbor")
        if path.stem.split("-", 1)[1].isdigit()
    ]


def owner_identity(state_dir: Path) -> str:
    """Who publishes: this host and state directory (a restart of it is the same owner)."""
    return f"{socket.gethostname()}:{state_dir.resolve()}"


class Publisher:
    """One gateway's publishing: owner, lineage, position; see the module docstring."""

    def __init__(
        self,
        target: Target,
        journal: Journal,
        *,
        epoch_ns: int,
        strategy_count: int,
        conditions: Callable[[], int],
        status: ReplicationStatus,
    ) -> None:
        self._target = target
        self._journal = journal
        self._directory = journal.directory
        self._epoch = epoch_ns
        self._strategy_count = strategy_count
        self._conditions = conditions
        self.status = status
        self._identity = owner_identity(journal.directory)
        self._token = f"{self._identity}|{os.getpid()}|{uuid.uuid4().hex}"
        self._wake = trio.Event()
        self._position = 0
        self._last_snapshot = -1
        self._republish = ""  # why a mirror asked for everything again, if one did
        self._republish_due = float("-inf")  # when a mirror's next request is taken
        # The highest log entry id this publisher has written (or found its own), and how
        # many times it has emptied the stream: an entry beyond it is someone else's.
        self._written: tuple[int, int] = (-1, 0)
        self._resets = 0
        self._snapshot_file: tuple[int, int] | None = None  # the last one published, on disk
        journal.on_durable = self._on_durable
        # Behind while connected, the publisher reads segments a snapshot would delete.
        journal.retain_from = lambda: self._position if status.state == "publishing" else None
        status.durable = lambda: journal.synced_seq

    def _on_durable(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish until cancelled, reconnecting as long as it takes."""
        task_status.started()
        said = ""
        while True:
            try:
                async with connect(self._target) as redis:
                    await self._serve(redis)
            except RedisDownError as exc:
                state = f"down: {exc}"
            except _NotOwnerError as exc:
                state = f"refused: {exc}"
            except (JournalCorruptError, OSError) as exc:
                # The journal's files could not be read back: replication stops short of
                # them, the gateway does not (its state is in memory, its journal written).
                state = f"failing: {exc}"
            if state != said:
                logger.warning("replication %s (retrying; the gateway carries on)", state)
                said = state
            self.status.state = state
            await trio.sleep(RETRY_S)

    async def _serve(self, redis: coredis.Redis[bytes]) -> None:
        claim = redis.register_script(CLAIM)
        owner: object = await claim(
            keys=[self._target.key("owner")],
            args=[self._token, self._identity, OWNER_TTL_MS],
        )
        if owner != b"OK":
            holder = owner.decode(errors="replace") if isinstance(owner, bytes) else repr(owner)
            raise _NotOwnerError(
                f"the stream {self._target.key('log')} is another gateway's "
                f"({holder.rsplit('|', 2)[0]}); give this one its own Redis database"
            )
        await self._resume(redis)
        self.status.state = "publishing"
        logger.info(
            "replicating to %s from event %d (lineage %s)",
            self._target.shown,
            self._position,
            self.status.lineage,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._beat, redis)
                await self._publish_forever(redis)
        finally:
            # Stopping: free the stream at once for a successor (killed, the key's time
            # to live frees it). Never more than a moment, Redis answering or not.
            # A connection of its own: the client's is being cancelled with this task.
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(RELEASE_TIMEOUT_S),
                contextlib.suppress(*REDIS_FAILURES),
            ):
                caller = await ScriptCaller.connect(self._target, RELEASE)
                try:
                    await caller.call([self._target.key("owner")], [self._token])
                finally:
                    await caller.aclose()

    async def _resume(self, redis: coredis.Redis[bytes]) -> None:
        """Find where the stream ends, or start a new lineage when it cannot be continued."""
        meta = await redis.hgetall(self._target.key("meta"))
        top = await redis.xrevrange(self._target.key("log"), count=1)
        snap_seq = await redis.hget(self._target.key("snap"), "seq")
        lineage = meta.get(b"lineage", b"").decode()
        same_ledger = meta.get(b"epoch") == str(self._epoch).encode()
        try:
            if top:
                position = position_after(as_bytes(top[0].identifier))
            else:
                position = int(snap_seq) if snap_seq is not None else -1
        except ValueError:  # an entry or a snapshot no publisher wrote: start over
            position = -1
        local_seq = max(_snapshot_seqs(self._directory), default=0)
        if not lineage or not same_ledger or position < 0 or position > self._journal.synced_seq:
            why = (
                "Redis holds nothing of it (or what it holds is not ours)"
                if not lineage or position < 0
                else "Redis holds another ledger's events"
                if not same_ledger
                else "Redis holds events this journal does not have"
            )
            await self._publish_snapshot(redis, reset=True, why=why)
            return
        if top and not await self._ends_with_ours(top[0], local_seq):
            why = "the stream's last event is not this journal's (someone else wrote it)"
            await self._publish_snapshot(redis, reset=True, why=why)
            return
        self.status.lineage = lineage
        self._position = position
        self._written = _entry_id(top[0]) if top else (-1, 0)
        if position < local_seq:
            await self._publish_snapshot(redis, reset=False, why="the stream ends before it")
        self._last_snapshot = max(self._last_snapshot, min(position, local_seq))
        self._snapshot_file = _file_identity(self._directory, self._last_snapshot)

    async def _ends_with_ours(self, entry: StreamEntry, local_seq: int) -> bool:
        """The stream's last entry, an event, is this journal's byte for byte.

        A user who can write to Redis may put an entry at the id this publisher writes
        next: its write then fails, and without this check it would carry on after that
        entry, which every mirror applies. An event the journal no longer holds cannot
        be compared, and need not be: it lies before the newest snapshot, which is then
        published after it and rebases the mirrors.
        """
        seq, is_snapshot = parse_id(as_bytes(entry.identifier))
        if is_snapshot:
            return True

        def read_ours() -> bytes | None:
            tail = JournalTail(self._directory)
            try:
                records = tail.read(seq, seq + 1, 1)
            except SnapshotNeededError:
                return None
            finally:
                tail.close()
            return records[0] if records else None

        ours = await trio.to_thread.run_sync(read_ours)
        if ours is None:
            return seq < local_seq
        return ours == entry.field_values.get(b"e")

    async def _publish_snapshot(
        self, redis: coredis.Redis[bytes], *, reset: bool, why: str
    ) -> None:
        seq, body = await trio.to_thread.run_sync(
            _newest_snapshot, self._directory, self._strategy_count
        )
        if reset:
            self.status.lineage = uuid.uuid4().hex
        marker = (seq, 0) if seq else (-1, 0)  # no marker at event 0
        self._written = max(self._written, marker)
        script = redis.register_script(PUBLISH_SNAPSHOT)
        await _fenced(
            script(
                keys=[self._target.key(k) for k in ("owner", "log", "snap", "meta", "republish")],
                args=[
                    self._token,
                    seq,
                    body,
                    self.status.lineage,
                    "1" if reset else "0",
                    self._epoch,
                    self._strategy_count,
                ],
            )
        )
        if reset:  # the stream was emptied: it ends at the marker now
            self._written = marker
            self._resets += 1
        logger.info(
            "replication: snapshot at event %d published (%s)%s",
            seq,
            why,
            f"; new lineage {self.status.lineage}" if reset else "",
        )
        self._position = seq
        self._last_snapshot = seq
        self._snapshot_file = _file_identity(self._directory, seq)
        self.status.published = seq
        self.status.snapshots_published += 1

    def _readable_until(self) -> int:
        """The durable events, but not past a snapshot whose file is still being
        written: its marker goes in at its own event, as mirrors expect."""
        durable = self._journal.synced_seq
        pending = self._journal.snapshot_pending
        if pending is None or self._last_snapshot >= pending:
            return durable
        return min(durable, pending)

    def _snapshot_retaken(self) -> bool:
        current = _file_identity(self._directory, self._last_snapshot)
        return None not in (current, self._snapshot_file) and current != self._snapshot_file

    async def _publish_forever(self, redis: coredis.Redis[bytes]) -> None:
        sender = await ScriptCaller.connect(self._target, PUBLISH_EVENTS)
        tail = JournalTail(self._directory)
        next_send = trio.current_time()
        try:
            while True:
                self._wake = trio.Event()
                if self._republish:
                    why, self._republish = self._republish, ""
                    await self._publish_snapshot(redis, reset=True, why=why)
                    continue
                if self._position == self._last_snapshot and self._snapshot_retaken():
                    # After a journal outage the gateway snapshots again at the same
                    # event, with the fills applied meanwhile: a marker for it exists
                    # already, so only a new lineage carries it to the mirrors.
                    why = "the gateway took its snapshot again (the journal recovered)"
                    await self._publish_snapshot(redis, reset=True, why=why)
                    continue
                if self._position > self._last_snapshot and (
                    _file_identity(self._directory, self._position) is not None
                ):
                    await self._publish_snapshot(redis, reset=False, why="the gateway took one")
                if self._position >= self._readable_until():
                    with trio.move_on_after(BEAT_INTERVAL_S):
                        await self._wake.wait()
                    continue
                # One send per interval at most: a send costs the gateway's loop more than
                # a command does, so under load each carries many events. The interval
                # stretches while sends come full (many commands a second), and is short
                # while they carry a few (mirrors then see fills sooner).
                await trio.sleep_until(next_send)
                durable = self._readable_until()
                try:
                    records = tail.read(self._position, durable, BATCH_EVENTS)
                except SnapshotNeededError:
                    await self._publish_snapshot(
                        redis, reset=False, why="the stream fell behind it"
                    )
                    continue
                size = count = 0
                for payload in records:
                    count += 1
                    size += len(payload)
                    if size > BATCH_BYTES:
                        break
                args: list[str | bytes | int] = [
                    self._token,
                    self._position,
                    pack_events(records[:count]),
                ]
                self._written = max(self._written, (self._position + count - 1, 1))
                await _fenced(
                    sender.call([self._target.key("owner"), self._target.key("log")], args)
                )
                self._position += count
                self.status.published = self._position
                self.status.sends += 1
                busy = count >= BUSY_SEND_EVENTS
                next_send = trio.current_time() + (
                    BUSY_SEND_INTERVAL_S if busy else SEND_INTERVAL_S
                )
        finally:
            tail.close()
            with trio.CancelScope(shield=True):
                await sender.aclose()

    async def _beat(self, redis: coredis.Redis[bytes]) -> None:
        beat = redis.register_script(BEAT)
        while True:
            if trio.current_time() >= self._republish_due:
                asked = await redis.getdel(self._target.key("republish"))
                if asked is not None:
                    # A mirror found a hole no snapshot bridges (Redis lost writes: a
                    # failover, a hand-edited stream): publish everything again, as a new
                    # lineage. One asked meanwhile stays in Redis until the next is due.
                    self._republish = f"a mirror asked: {asked.decode(errors='replace')[:200]}"
                    self._republish_due = trio.current_time() + REPUBLISH_INTERVAL_S
                    self._wake.set()
            await _fenced(
                beat(
                    keys=[self._target.key(k) for k in ("owner", "meta", "snap")],
                    args=[
                        self._token,
                        OWNER_TTL_MS,
                        time.time_ns(),
                        self._journal.synced_seq,
                        self._position,
                        self._conditions(),
                        self.status.lineage,
                    ],
                )
            )
            await self._check_the_stream_end(redis)
            await trio.sleep(BEAT_INTERVAL_S)

    async def _check_the_stream_end(self, redis: coredis.Redis[bytes]) -> None:
        """An entry beyond the last this publisher wrote was written by someone else: a
        new lineage. Its own next write would find it too (refused at that id), but a
        quiet gateway may not write for hours, and mirrors apply what they read."""
        resets = self._resets
        top = await redis.xrevrange(self._target.key("log"), count=1)
        if not top or resets != self._resets or self._republish:
            return
        found = _entry_id(top[0])
        if found > self._written:
            self._republish = (
                f"the stream holds an entry this gateway did not write ({found[0]}-{found[1]})"
            )
            self._wake.set()


def _entry_id(entry: StreamEntry) -> tuple[int, int]:
    """A log entry's id as Redis orders it (``seq-0`` a snapshot's marker, ``seq-1`` an
    event); one no publisher writes sorts after every one it does."""
    try:
        seq, is_snapshot = parse_id(as_bytes(entry.identifier))
    except ValueError:
        return (2**64, 0)
    return seq, 0 if is_snapshot else 1


class _NotOwnerError(Exception):
    """The stream belongs to another gateway."""


async def _fenced(call: Awaitable[object]) -> object:
    try:
        return await call
    except ResponseError as exc:
        if str(exc).startswith("NOTOWNER"):
            raise _NotOwnerError(str(exc)) from None
        raise


# -- commands forwarded by mirrors -------------------------------------------------------


async def serve_remote_commands(
    target: Target,
    send: trio.MemorySendChannel[CommandReceived],
    strategy_count: int,
    status: ReplicationStatus,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Apply the commands mirrors forward as this gateway's own; reply on each mirror's stream.

    A forwarded request is judged exactly as one from the socket is (the same
    parser, the same limits); ``ok`` leaves only after the gateway's fsync, with
    the journal length that shows it, so the mirror can wait until it does.
    """
    task_status.started()
    last_id: bytes | None = None
    limit = trio.CapacityLimiter(MAX_REMOTE_IN_FLIGHT)
    async with send:
        while True:
            try:
                async with connect(target) as redis, trio.open_nursery() as nursery:
                    if last_id is None:
                        top = await redis.xrevrange(target.key("cmd"), count=1)
                        last_id = as_bytes(top[0].identifier) if top else b"0-0"
                    while True:
                        found = await redis.xread(
                            {target.key("cmd"): last_id}, count=100, block=BLOCK_MS
                        )
                        for entry in (found or {}).get(target.key("cmd").encode(), ()):
                            last_id = as_bytes(entry.identifier)
                            await limit.acquire_on_behalf_of(last_id)
                            nursery.start_soon(
                                _answer_remote,
                                redis,
                                target,
                                send,
                                strategy_count,
                                status,
                                {as_bytes(k): as_bytes(v) for k, v in entry.field_values.items()},
                                limit,
                                last_id,
                            )
            except RedisDownError as exc:
                logger.debug("remote commands: %s", exc)
            await trio.sleep(RETRY_S)


async def _answer_remote(
    redis: coredis.Redis[bytes],
    target: Target,
    send: trio.MemorySendChannel[CommandReceived],
    strategy_count: int,
    status: ReplicationStatus,
    fields: dict[bytes, bytes],
    limit: trio.CapacityLimiter,
    borrower: bytes,
) -> None:
    try:
        mirror = fields.get(b"m", b"").decode("ascii", "replace")
        correlation = fields.get(b"r", b"")
        if not MIRROR_ID_RE.fullmatch(mirror) or not 0 < len(correlation) <= 64:
            logger.warning("remote command without a usable mirror id or correlation: dropped")
            return
        reply, visible_at = await _judge_remote(fields, send, strategy_count)
        status.remote_commands += 1
        if not reply.get("ok"):
            status.remote_refused += 1
        if reply.get("expired"):
            return
        key = target.reply_key(mirror)
        await redis.xadd(
            key,
            {b"r": correlation, b"b": cbor2.dumps(reply), b"s": str(visible_at).encode()},
            trim_strategy=PureToken.MAXLEN,
            threshold=REPLY_STREAM_LENGTH,
            trim_operator=PureToken.APPROXIMATELY,
        )
        await redis.expire(key, REPLY_STREAM_TTL_S)
    except RedisDownError as exc:
        logger.warning("a forwarded command's reply could not be sent: %s", exc)
    except REDIS_FAILURES as exc:
        logger.warning("a forwarded command's reply could not be sent: %s", exc)
    finally:
        limit.release_on_behalf_of(borrower)


async def _judge_remote(
    fields: dict[bytes, bytes], send: trio.MemorySendChannel[CommandReceived], strategy_count: int
) -> tuple[Reply, int]:
    body_raw = fields.get(b"b", b"")
    try:
        expires_ns = int(fields.get(b"x", b"0"))
    except ValueError:
        expires_ns = 0
    if time.time_ns() > expires_ns:
        # The mirror has already told its client the outcome is unknown; applying it
        # now would surprise that client. It may resend with the same request_id.
        logger.info("a forwarded command arrived after its deadline: not applied")
        return {"ok": False, "expired": True}, 0
    if len(body_raw) > MAX_FRAME_BYTES:
        return error_reply(ErrorCode.FRAME_TOO_LARGE, "forwarded request too large"), 0
    body: dict[str, object] | None = None
    try:
        body = decode_frame(body_raw, Framing.CBOR)
        request, request_id = parse_request(body, strategy_count)
    except CommandProtocolError as exc:
        return error_reply(exc.code, exc.message), 0
    if isinstance(request, Query):
        return error_reply(ErrorCode.INVALID_REQUEST, "a mirror answers queries itself"), 0
    message = CommandReceived(request, request_id)
    await send.send(message)
    reply = await message.reply.wait()
    return reply, message.reply.visible_at
