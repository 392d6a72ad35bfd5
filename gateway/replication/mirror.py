"""``gateway mirror``: a gateway's store on another host, fed through Redis.

The mirror is the single writer of a local store file of the gateway's layout,
so strategies on its host read balances as they would from the gateway's own.
Its writer task applies the gateway's journal events with the gateway's own
reducer (:func:`gateway.events.apply_event`) and keeps a copy of them in its
own state directory, so a mirror restarted (even after kill -9) resumes where
it was. A gap in the stream, an event that cannot be applied or a new lineage
resyncs it from the published snapshot: it never goes on from a state the
gateway's journal does not describe.

Commands its clients send on the usual socket are forwarded through Redis to
the gateway, which applies them as its own; the mirror answers once its own
file shows the command (read-your-writes), and refuses at once when Redis or
the gateway is out of reach.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, assert_never

import cbor2
import coredis
import trio

from gateway.codes import ErrorCode
from gateway.commands import serve_commands
from gateway.config import HEARTBEAT_INTERVAL_S, GatewayConfig
from gateway.errors import GatewayError, JournalCorruptError
from gateway.events import Reply, apply_event, decode_event, error_reply, replay_events
from gateway.journal import Journal, lock_state_dir
from gateway.ledger import Ledger
from gateway.messages import CommandReceived, HeartbeatTick, QueryReceived
from gateway.protocol import MAX_FRAME_BYTES, request_body
from gateway.replication.client import REDIS_FAILURES, RedisDownError, connect
from gateway.replication.keys import (
    BLOCK_MS,
    RETRY_S,
    SOURCE_STALE_AFTER_S,
    Target,
    as_bytes,
    parse_id,
    read_from,
)
from gateway.service import run_heartbeat
from gateway.writer import WriterCore
from mmapstore import Condition, StoreWriter

logger = logging.getLogger(__name__)

READ_COUNT: Final = 1000
COMMAND_TIMEOUT_S: Final = 5.0
# Conditions the mirror judges itself; every other bit is the source gateway's.
_OWN_CONDITIONS: Final = Condition.OVERDRAWN | Condition.OUT_OF_RANGE | Condition.SOURCE_STALE
_DECODE_FAILURES: Final = (
    ValueError,
    KeyError,
    TypeError,
    AssertionError,
    ArithmeticError,  # a fill of the earlier form, replayed by its decimals
    cbor2.CBORDecodeError,
    RecursionError,
)


class MirrorError(GatewayError):
    """The mirror cannot go on (its source's slot count changed, its state is unusable)."""


# -- what the mirror's writer is sent ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventsArrived:
    """Journal events ``first`` .. ``first + len(payloads) - 1`` of ``lineage``."""

    first: int
    payloads: list[bytes]
    lineage: str


@dataclass(frozen=True, slots=True)
class SnapshotArrived:
    """The source's snapshot at event ``seq``: start over from it."""

    seq: int
    body: bytes
    lineage: str


@dataclass(frozen=True, slots=True)
class SourceSeen:
    """The source's heartbeat as Redis holds it (``reachable`` False: Redis is not)."""

    reachable: bool
    beat_ns: int = 0
    durable: int = 0
    conditions: int = 0
    lineage: str = ""


MirrorMessage = (
    EventsArrived | SnapshotArrived | SourceSeen | QueryReceived | CommandReceived | HeartbeatTick
)


# -- progress, shared read-only with the follower and the forwarder -------------------------


@dataclass
class MirrorProgress:
    """The mirror's position, written by its writer task (and by the follower when the
    stream cannot be read on: :meth:`cannot_go_past`); the others read it."""

    lineage: str = ""
    position: int = 0  # events applied (the next event's number)
    resync_wanted: str = ""  # why the mirror cannot go on ("" when it can)
    stuck_at: int = 0  # with resync_wanted: the event (or snapshot) it cannot go past
    redis_ok: bool = False
    source_seen_ns: int = 0  # this host's clock, when the source's beat last moved
    source_durable: int = 0
    source_conditions: int = 0
    stale_reason: str = "not yet connected"
    resyncs: int = 0
    forwarded: int = 0
    forward_failed: int = 0
    _waiters: list[tuple[int, trio.Event]] = field(default_factory=list)

    def source_reachable(self) -> bool:
        """Redis answers and the gateway's heartbeat moved lately: commands may be sent."""
        age_ns = time.time_ns() - self.source_seen_ns
        return self.redis_ok and bool(self.source_seen_ns) and age_ns <= SOURCE_STALE_AFTER_S * 1e9

    def cannot_go_past(self, seq: int, why: str) -> None:
        """The stream's event ``seq`` (or its snapshot at ``seq``) cannot be used: the
        follower resyncs past it, or has everything published again (:func:`_bridged`)."""
        if why != self.resync_wanted:
            logger.error("mirror: %s", why)
        self.resync_wanted, self.stuck_at = why, seq

    def advance(self, position: int) -> None:
        self.position = position
        if self._waiters:
            due = [(seq, ev) for seq, ev in self._waiters if seq <= position]
            self._waiters = [(seq, ev) for seq, ev in self._waiters if seq > position]
            for _, event in due:
                event.set()

    async def wait_until(self, position: int) -> None:
        """Return once ``position`` events are applied."""
        if self.position >= position:
            return
        waiter = (position, trio.Event())
        self._waiters.append(waiter)
        try:
            await waiter[1].wait()
        finally:  # given up (the deadline): not kept until an event that may never come
            if waiter in self._waiters:
                self._waiters.remove(waiter)


# -- the writer ---------------------------------------------------------------------------------


class MirrorCore:
    """The mirror's state: ledger, its journal copy and the store. Only its writer calls it."""

    def __init__(
        self, core: WriterCore, progress: MirrorProgress, state_dir: Path, target: Target
    ) -> None:
        self.core = core
        self.progress = progress
        self.state_dir = state_dir
        self.target = target
        self.mirror_id = _mirror_id()
        self._durable_history: list[tuple[float, int]] = []  # (monotonic, source durable)
        self._last_beat = 0  # the source's last heartbeat value seen

    def apply_events(self, message: EventsArrived) -> None:
        progress = self.progress
        if message.lineage != progress.lineage or message.first != progress.position:
            return  # sent before a resync the follower has not seen yet
        changed: set[str] = set()
        journal = self.core.journal
        for offset, payload in enumerate(message.payloads):
            try:
                outcome = apply_event(self.core.ledger, decode_event(payload))
            except _DECODE_FAILURES as exc:
                seq = message.first + offset
                progress.cannot_go_past(seq, f"cannot apply event {seq} ({exc})")
                break
            journal.append(payload)
            changed.update(outcome.changed)
        journal.commit()  # a copy: written, not synced (the gateway's journal is the record)
        self.core.publish(changed)
        progress.advance(journal.next_seq)
        self.refresh_header()

    def rebase(self, message: SnapshotArrived) -> None:
        try:
            ledger = Ledger.from_snapshot(cbor2.loads(message.body))
        except _DECODE_FAILURES as exc:
            self.progress.cannot_go_past(
                message.seq, f"the snapshot at {message.seq} is unusable ({exc})"
            )
            return
        if ledger.strategy_count != self.core.store.strategy_count:
            raise MirrorError(
                f"the source now has {ledger.strategy_count} slots, this mirror's store "
                f"{self.core.store.strategy_count}: restart the mirror to re-create it"
            )
        self.core.journal.rebase(message.body, message.seq)
        self.core.ledger = ledger
        _write_lineage(self.state_dir, message.lineage)
        progress = self.progress
        if message.lineage != progress.lineage or message.seq != progress.position:
            progress.resyncs += 1
            logger.info(
                "mirror: resynced from the snapshot at event %d (lineage %s)",
                message.seq, message.lineage,
            )  # fmt: skip
        progress.lineage = message.lineage
        progress.resync_wanted, progress.stuck_at = "", 0
        self.core.publish_all()
        progress.advance(message.seq)
        self.refresh_header()

    def source_seen(self, message: SourceSeen) -> None:
        progress = self.progress
        progress.redis_ok = message.reachable
        if message.reachable:
            if message.beat_ns and message.beat_ns != self._last_beat:
                self._last_beat = message.beat_ns
                progress.source_seen_ns = time.time_ns()
            progress.source_durable = message.durable
            progress.source_conditions = message.conditions
            self._durable_history.append((time.monotonic(), message.durable))
        self.refresh_header()

    def refresh_header(self) -> None:
        """The header's mirror words and conditions, true to the source and to the mirror."""
        progress = self.progress
        now = time.monotonic()
        # What the source had durable a second ago must be applied by now to be current.
        while len(self._durable_history) > 1 and now - self._durable_history[1][0] >= 1.0:
            self._durable_history.pop(0)
        due = (
            self._durable_history[0][1]
            if self._durable_history and now - self._durable_history[0][0] >= 1.0
            else 0
        )
        age = (time.time_ns() - progress.source_seen_ns) / 1e9 if progress.source_seen_ns else None
        if not progress.redis_ok:
            progress.stale_reason = f"redis {self.target.shown} is out of reach"
        elif age is None or age > SOURCE_STALE_AFTER_S:
            progress.stale_reason = "the gateway's heartbeat has stopped"
        elif progress.resync_wanted:
            progress.stale_reason = f"resyncing: {progress.resync_wanted}"
        elif progress.position < due:
            progress.stale_reason = f"{due - progress.position} events behind"
        else:
            progress.stale_reason = ""
        conditions = Condition(progress.source_conditions) & ~_OWN_CONDITIONS
        conditions |= self.core.conditions & (Condition.OVERDRAWN | Condition.OUT_OF_RANGE)
        if progress.stale_reason:
            conditions |= Condition.SOURCE_STALE
        store = self.core.store
        store.set_conditions(conditions)
        store.set_mirror(progress.position, progress.source_seen_ns)

    def status(self) -> Reply:
        progress = self.progress
        ledger = self.core.ledger
        seen = progress.source_seen_ns
        return {
            "ok": True,
            "status": {
                "role": "mirror",
                "pid": os.getpid(),
                "mirror_id": self.mirror_id,
                "source": self.target.shown,
                "redis": "connected" if progress.redis_ok else "out of reach",
                "lineage": progress.lineage,
                "applied_events": progress.position,
                "source_durable_events": progress.source_durable,
                "source_heartbeat_age_s": round((time.time_ns() - seen) / 1e9, 3) if seen else None,
                "current": not progress.stale_reason,
                "stale_reason": progress.stale_reason,
                "resyncs": progress.resyncs,
                "commands_forwarded": progress.forwarded,
                "commands_failed": progress.forward_failed,
                "strategy_count": ledger.strategy_count,
                "currencies": len(ledger.balances),
                "generation": self.core.store.generation,
            },
        }


async def _run_mirror_writer(
    receive: trio.MemoryReceiveChannel[MirrorMessage],
    mirror: MirrorCore,
    forwarder: Forwarder,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The only task that changes the mirror's ledger, journal copy and store."""
    task_status.started()
    async with receive, trio.open_nursery() as nursery:
        async for message in receive:
            match message:
                case EventsArrived():
                    mirror.apply_events(message)
                case SnapshotArrived():
                    mirror.rebase(message)
                case SourceSeen():
                    mirror.source_seen(message)
                case QueryReceived(what=what, currency=currency, reply=slot):
                    slot.set(mirror.status() if what == "status" else mirror.core.query(currency))
                case CommandReceived():
                    nursery.start_soon(forwarder.forward, message)
                case HeartbeatTick():
                    mirror.core.store.heartbeat()
                    mirror.core.store.restore_path()
                    mirror.refresh_header()
                case _:
                    assert_never(message)


# -- following the stream ------------------------------------------------------------------


async def _follow(
    target: Target,
    progress: MirrorProgress,
    send: trio.MemorySendChannel[MirrorMessage],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Read the log after the mirror's position and hand it to the writer; resync when due.

    Supports ``nursery.start``: ``started()`` once the first word on the source (its
    beat, or Redis out of reach) is in the writer's channel, so that a command sent
    as soon as the mirror is ready is judged on it, not refused as never seen.
    """
    said = ""
    async with send:
        while True:
            try:
                async with connect(target) as redis, trio.open_nursery() as nursery:
                    await nursery.start(_watch_source, redis, target, send)
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                    if said:
                        logger.info("mirror: redis %s reachable again", target.shown)
                    said = ""
                    await _follow_connected(redis, target, progress, send)
            except RedisDownError as exc:
                if str(exc) != said:
                    logger.warning("mirror: %s (retrying; last values stay, flagged stale)", exc)
                    said = str(exc)
                await send.send(SourceSeen(reachable=False))
            task_status.started()  # Redis out of reach at start: say so, then serve
            task_status = trio.TASK_STATUS_IGNORED
            await trio.sleep(RETRY_S)


async def _follow_connected(
    redis: coredis.Redis[bytes],
    target: Target,
    progress: MirrorProgress,
    send: trio.MemorySendChannel[MirrorMessage],
) -> None:
    log = target.key("log")
    position, lineage = progress.position, progress.lineage
    asked = ""  # why a new lineage was last asked for (said once, asked every RETRY_S)
    while True:
        published = await redis.hget(target.key("meta"), "lineage")
        if published is None:
            await trio.sleep(RETRY_S)  # nothing published yet
            continue
        if published.decode() != lineage or (
            progress.resync_wanted and await _bridged(redis, target, progress.stuck_at)
        ):
            wanted_before = progress.resync_wanted
            position, lineage = await _resync(redis, target, send)
            await _applied(progress, position, lineage, wanted_before)
            continue
        if progress.resync_wanted:
            asked = await _ask_for_everything(redis, target, progress.resync_wanted, asked)
            continue
        found = await redis.xread({log: read_from(position)}, count=READ_COUNT, block=BLOCK_MS)
        entries = (found or {}).get(log.encode(), ())
        batch: list[bytes] = []
        first = position
        for entry in entries:
            try:
                seq, is_snapshot = parse_id(as_bytes(entry.identifier))
            except ValueError:  # no publisher writes it: someone else did; skipped
                logger.warning("mirror: skipping a log entry that is not ours: %r", entry)
                continue
            if seq != position:
                progress.cannot_go_past(position, f"event {position} is missing from the stream")
                break
            if is_snapshot:
                if batch:
                    await send.send(EventsArrived(first, batch, lineage))
                    batch, first = [], position
                snap = await _snapshot(redis, target)
                if snap is not None and snap.seq == seq and snap.lineage == lineage:
                    await send.send(snap)
                continue
            payload = entry.field_values.get(b"e")
            if not isinstance(payload, bytes):
                progress.cannot_go_past(seq, f"event {seq} has no payload")
                break
            batch.append(payload)
            position += 1
        if batch:
            await send.send(EventsArrived(first, batch, lineage))


async def _bridged(redis: coredis.Redis[bytes], target: Target, stuck_at: int) -> bool:
    """A published snapshot lies beyond event ``stuck_at``, which the mirror cannot go
    past (missing, without a payload, or not applicable; or its snapshot unusable).

    The stream is trimmed only behind a snapshot, so a snapshot beyond a hole bridges
    it, and one beyond an event that cannot be used leaves that event behind.
    """
    snap = await _snapshot(redis, target)
    if snap is not None and snap.seq > stuck_at:
        logger.warning("mirror: resyncing from the snapshot at event %d", snap.seq)
        return True
    return False


async def _ask_for_everything(
    redis: coredis.Redis[bytes], target: Target, reason: str, asked: str
) -> str:
    """No snapshot bridges what the mirror cannot go past: Redis lost writes (a failover),
    or someone else wrote there. Reading on, or loading the same snapshot again, would
    only meet it again, as fast as Redis answers; the gateway is asked to publish
    everything again as a new lineage, every RETRY_S until it does. Returns ``reason``."""
    if reason != asked:
        logger.warning("mirror: %s; asking the gateway to publish everything again", reason)
    await redis.set(target.key("republish"), reason.encode())
    await trio.sleep(RETRY_S)
    return reason


async def _applied(
    progress: MirrorProgress, position: int, lineage: str, wanted_before: str
) -> None:
    """Wait for the writer to take the snapshot just sent (the next read starts after it),
    or to find it unusable (a new reason to resync: then there is nothing to wait for)."""
    with trio.move_on_after(10):
        while progress.lineage != lineage or progress.position < position:
            if progress.resync_wanted not in ("", wanted_before):
                return
            await trio.sleep(0.01)


async def _resync(
    redis: coredis.Redis[bytes], target: Target, send: trio.MemorySendChannel[MirrorMessage]
) -> tuple[int, str]:
    while True:
        snap = await _snapshot(redis, target)
        published = await redis.hget(target.key("meta"), "lineage")
        if snap is not None and published is not None and snap.lineage == published.decode():
            await send.send(snap)
            return snap.seq, snap.lineage
        await trio.sleep(RETRY_S)  # the publisher is between two writes, or not yet there


async def _snapshot(redis: coredis.Redis[bytes], target: Target) -> SnapshotArrived | None:
    fields = await redis.hgetall(target.key("snap"))
    try:
        return SnapshotArrived(
            int(fields[b"seq"]), bytes(fields[b"body"]), fields[b"lineage"].decode()
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


async def _watch_source(
    redis: coredis.Redis[bytes],
    target: Target,
    send: trio.MemorySendChannel[MirrorMessage],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The source's heartbeat, twice a second; ``started()`` once the first is sent."""
    while True:
        values = await redis.hmget(
            target.key("meta"), ["beat_ns", "durable", "conditions", "lineage"]
        )
        beat, durable, conditions, lineage = values
        try:
            seen = SourceSeen(
                True,
                int(beat or 0),
                int(durable or 0),
                int(conditions or 0),
                (lineage or b"").decode(),
            )
        except (ValueError, UnicodeDecodeError):
            seen = SourceSeen(True)
        await send.send(seen)
        task_status.started()
        task_status = trio.TASK_STATUS_IGNORED
        await trio.sleep(HEARTBEAT_INTERVAL_S)


# -- forwarding commands ----------------------------------------------------------------------


class Forwarder:
    """Sends the mirror's clients' commands to the gateway and brings the replies back."""

    def __init__(
        self, target: Target, mirror: MirrorCore, timeout_s: float = COMMAND_TIMEOUT_S
    ) -> None:
        self._target = target
        self._mirror = mirror
        self._timeout_s = timeout_s
        self._redis: coredis.Redis[bytes] | None = None
        self._pending: dict[bytes, trio.MemorySendChannel[tuple[Reply, int]]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read this mirror's reply stream, for as long as the mirror runs.

        Supports ``nursery.start``: ``started()`` after the first attempt to reach
        Redis, so that a command sent as soon as the mirror is ready finds the
        connection there (or Redis found out of reach), not refused as not yet tried.
        """
        key = self._target.reply_key(self._mirror.mirror_id)
        last_id = b"0-0"
        while True:
            try:
                async with connect(self._target) as redis:
                    top = await redis.xrevrange(key, count=1)
                    if top:
                        last_id = max(last_id, as_bytes(top[0].identifier), key=_id_order)
                    self._redis = redis
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                    try:
                        while True:
                            found = await redis.xread({key: last_id}, count=100, block=BLOCK_MS)
                            for entry in (found or {}).get(key.encode(), ()):
                                last_id = as_bytes(entry.identifier)
                                self._deliver(entry.field_values)
                    finally:
                        self._redis = None
            except RedisDownError as exc:
                logger.debug("mirror replies: %s", exc)
            task_status.started()  # Redis out of reach at start: say so, then serve
            task_status = trio.TASK_STATUS_IGNORED
            await trio.sleep(RETRY_S)

    def _deliver(self, fields: Mapping[str | bytes, str | bytes]) -> None:
        values = {as_bytes(k): as_bytes(v) for k, v in fields.items()}
        waiting = self._pending.get(values.get(b"r", b""))
        body = values.get(b"b", b"")
        if waiting is None or len(body) > MAX_FRAME_BYTES:
            return
        try:
            reply = cbor2.loads(body)
            visible_at = int(values.get(b"s", b"0"))
        except _DECODE_FAILURES:
            return
        if isinstance(reply, dict) and isinstance(reply.get("ok"), bool):
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                waiting.send_nowait((reply, visible_at))

    async def forward(self, message: CommandReceived) -> None:
        progress = self._mirror.progress
        request_id = message.request_id
        redis = self._redis
        if redis is None or not progress.source_reachable():
            reason = progress.stale_reason or f"redis {self._target.shown} is out of reach"
            progress.forward_failed += 1
            message.reply.set(
                error_reply(
                    ErrorCode.UNREACHABLE,
                    f"{reason}: the command was not sent; retry later",
                    request_id,
                )
            )
            return
        correlation = uuid.uuid4().hex.encode()
        send, receive = trio.open_memory_channel[tuple[Reply, int]](1)
        self._pending[correlation] = send
        deadline = trio.current_time() + self._timeout_s
        reply: Reply | None = None
        try:
            body = cbor2.dumps(request_body(message.command, request_id))
            expires_ns = time.time_ns() + int(self._timeout_s * 1e9)
            with trio.move_on_at(deadline + 1):
                await redis.xadd(
                    self._target.key("cmd"),
                    {
                        b"m": self._mirror.mirror_id.encode(),
                        b"r": correlation,
                        b"b": body,
                        b"x": str(expires_ns).encode(),
                    },
                )
                progress.forwarded += 1
                reply, visible_at = await receive.receive()
                if reply.get("ok"):
                    await progress.wait_until(visible_at)
        except REDIS_FAILURES as exc:
            logger.warning("mirror: a command could not be sent (%s)", exc)
        finally:
            del self._pending[correlation]
        if reply is None:
            progress.forward_failed += 1
            reply = error_reply(
                ErrorCode.OUTCOME_UNKNOWN,
                f"no reply from the gateway within {self._timeout_s:g} s: it may or may not "
                "have applied the command; resend it with the same request_id to find out",
                request_id,
            )
        message.reply.set(reply)


def _id_order(raw: bytes) -> tuple[int, int]:
    first, _, second = raw.partition(b"-")
    return int(first), int(second or 0)


def _mirror_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())[:32]
    return f"{host}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


# -- state on disk ----------------------------------------------------------------------------


def _write_lineage(state_dir: Path, lineage: str) -> None:
    tmp = state_dir / ".lineage.tmp"
    tmp.write_text(json.dumps({"lineage": lineage}) + "\n")
    tmp.replace(state_dir / "lineage.json")


def _read_lineage(state_dir: Path) -> str:
    try:
        data = json.loads((state_dir / "lineage.json").read_text())
    except (OSError, ValueError):
        return ""
    lineage = data.get("lineage") if isinstance(data, dict) else None
    return lineage if isinstance(lineage, str) else ""


def _restore_local(state_dir: Path) -> tuple[Ledger, Journal, str] | None:
    """The mirror's own copy, if it has one it can use."""
    holder: list[Ledger] = []

    def restore(snapshot: dict[str, object] | None) -> None:
        if snapshot is None:
            raise JournalCorruptError("no snapshot")
        holder.append(Ledger.from_snapshot(snapshot))

    def replay(records: Sequence[bytes]) -> None:
        replay_events(holder[0], records)

    lineage = _read_lineage(state_dir)
    if not lineage:
        return None
    try:
        journal, report = Journal.open(state_dir, restore, replay, sync=False)
    except (JournalCorruptError, *_DECODE_FAILURES) as exc:
        logger.warning("mirror: the local copy in %s is unusable (%s); resyncing", state_dir, exc)
        return None
    logger.info(
        "mirror: resuming from the local copy at event %d (%d replayed)",
        journal.next_seq, report.replayed,
    )  # fmt: skip
    return holder[0], journal, lineage


async def _first_snapshot(target: Target) -> SnapshotArrived:
    """Wait for Redis and the gateway's first publication; say so while waiting."""
    said = ""
    while True:
        try:
            async with connect(target) as redis:
                published = await redis.hget(target.key("meta"), "lineage")
                snap = await _snapshot(redis, target)
                if (
                    snap is not None
                    and published is not None
                    and snap.lineage == published.decode()
                ):
                    try:
                        Ledger.from_snapshot(cbor2.loads(snap.body))
                    except _DECODE_FAILURES as exc:
                        why = f"the published snapshot is unusable ({exc})"
                    else:
                        return snap
                else:
                    why = f"nothing published at {target.key('log')} yet"
        except RedisDownError as exc:
            why = str(exc)
        if why != said:
            logger.warning("mirror: waiting for the source: %s", why)
            said = why
        await trio.sleep(RETRY_S)


# -- the service ------------------------------------------------------------------------------


@dataclass
class MirrorRunning:
    """Handed to ``task_status.started()``."""

    mirror: MirrorCore
    config: GatewayConfig
    stop: trio.Event
    stopped: trio.Event


def mirror_state_dir(config: GatewayConfig) -> Path:
    # Never the gateway's own state directory, should both share a root.
    return config.state_root / f"{config.exchange}.mirror"


async def run_mirror(
    config: GatewayConfig,
    source: str,
    *,
    command_timeout_s: float = COMMAND_TIMEOUT_S,
    task_status: trio.TaskStatus[MirrorRunning] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a mirror until its ``stop`` event is set.

    Raises:
        JournalLockedError: another mirror writes its state directory.
        StoreLockedError: a gateway or another mirror writes this host's store.
        MirrorError: the source changed under it in a way it cannot follow.
    """
    target = Target.parse(source, config.exchange)
    state_dir = mirror_state_dir(config)
    state_lock = lock_state_dir(state_dir)
    try:
        await _run_mirror(config, target, state_dir, command_timeout_s, task_status)
    finally:
        os.close(state_lock)


async def _run_mirror(
    config: GatewayConfig,
    target: Target,
    state_dir: Path,
    command_timeout_s: float,
    task_status: trio.TaskStatus[MirrorRunning],
) -> None:
    local = _restore_local(state_dir)
    first: SnapshotArrived | None = None
    if local is None:
        first = await _first_snapshot(target)
        ledger = Ledger.from_snapshot(cbor2.loads(first.body))

        def no_snapshot(_: dict[str, object] | None) -> None:
            pass

        def no_event(_: Sequence[bytes]) -> None:
            pass

        journal, _ = Journal.open(state_dir, no_snapshot, no_event, sync=False)
        lineage = ""
    else:
        ledger, journal, lineage = local
    config = replace(config, strategy_count=ledger.strategy_count)
    store = StoreWriter.open(
        config.store_path, exchange=config.exchange, strategy_count=ledger.strategy_count
    )
    core = WriterCore(ledger, journal, store)
    progress = MirrorProgress(lineage=lineage, position=journal.next_seq)
    mirror = MirrorCore(core, progress, state_dir, target)
    forwarder = Forwarder(target, mirror, command_timeout_s)
    if first is not None:
        mirror.rebase(first)
        progress.resyncs = 0  # the first load is not a resync
    core.publish_all()
    mirror.refresh_header()
    store.mark_live()
    stop, stopped = trio.Event(), trio.Event()
    send, receive = trio.open_memory_channel[MirrorMessage](4096)
    try:
        async with trio.open_nursery() as outer:
            await outer.start(_run_mirror_writer, receive, mirror, forwarder)
            async with send, trio.open_nursery() as producers:
                await producers.start(forwarder.run)
                await producers.start(_follow, target, progress, send.clone())
                producers.start_soon(run_heartbeat, send.clone())
                await producers.start(serve_commands, config, send.clone())
                logger.info(
                    "mirror ready: %s from %s at event %d",
                    config.store_path, target.shown, progress.position,
                )  # fmt: skip
                task_status.started(MirrorRunning(mirror, config, stop, stopped))
                await stop.wait()
                producers.cancel_scope.cancel()
            outer.cancel_scope.deadline = trio.current_time() + config.shutdown_grace_s
    finally:
        with contextlib.suppress(OSError):
            journal.close()
        store.close()
        stopped.set()
