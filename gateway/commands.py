"""The command server: strategies' requests on a Unix socket, each turned into a writer message.

A connection is served until its peer closes it, stays idle too long, or
sends something no framing can recover from. A bad request gets its error
reply and the connection goes on; a failing connection is logged and closed
while the server and every other connection carry on.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final

import trio

from gateway.codes import ErrorCode
from gateway.descriptors import read_when_ready, write_all
from gateway.errors import CommandProtocolError, GatewayError
from gateway.events import Reply, error_reply
from gateway.files import make_own_dir
from gateway.messages import CommandReceived, QueryReceived, ReplySlot
from gateway.protocol import (
    CborFrameDecoder,
    Frame,
    FrameError,
    Framing,
    JsonLineDecoder,
    Query,
    decode_frame,
    detect_framing,
    encode_reply,
    parse_request,
    request_id_of,
)

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.metrics import Metrics

logger = logging.getLogger(__name__)

_PEERCRED = struct.Struct("3i")
# How often the server looks for its socket file (and binds it again if it was removed).
SOCKET_CHECK_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: trio.socket.SocketType) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return Peer(*_PEERCRED.unpack(raw))


@dataclass(eq=False, slots=True)
class _Connection:
    """What the server knows of one open connection, for fair limits."""

    peer: Peer
    scope: trio.CancelScope
    # Since when it has waited for a request with nothing half-received, or None
    # while part of a request is in hand or one is being answered.
    idle_since: float | None = None
    # When the first bytes of a request still incomplete arrived, if one is.
    frame_started: float | None = None
    evicted: bool = False
    # A command's reply is written from the writer's side as it is left (see
    # CommandServer._deliver); the connection's task settles it before it writes
    # anything else, or ends.
    sock: trio.socket.SocketType | None = None
    reply_due: ReplySlot | None = None
    flushed: trio.Event | None = None  # set once a flusher has written what was left

    def answering(self) -> bool:
        """A command's reply is still to be written whole."""
        due = self.reply_due
        return due is not None and (
            not due.is_set() or (self.flushed is not None and not self.flushed.is_set())
        )


class CommandServer:
    """Per-connection conversation; shared state is only the set of open connections.

    Limits are fair: one process holds at most ``max_connections_per_peer``;
    when all ``max_connections`` are taken, the connection idle the longest is
    closed to admit the newcomer (our clients reconnect on their next command);
    and a request begun must be complete within ``frame_deadline_s``. So no
    client, however many connections it opens, can lock the others out.
    """

    def __init__(
        self,
        config: GatewayConfig,
        send: trio.MemorySendChannel[CommandReceived | QueryReceived],
        metrics: Metrics | None,
        nursery: trio.Nursery,
    ) -> None:
        self._config = config
        self._send = send
        self._metrics = metrics
        self._nursery = nursery
        self._open: set[_Connection] = set()
        self._per_pid: dict[int, int] = {}

    @property
    def connections(self) -> int:
        return len(self._open)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                peer = peer_credentials(stream.socket)
            except OSError as exc:
                logger.debug("command connection gone before it was served: %s", exc)
                return
            refusal = self._admit(peer)
            if refusal is not None:
                logger.warning("refusing a connection from pid %d: %s", peer.pid, refusal)
                await self._reply_json(stream, error_reply(ErrorCode.TOO_MANY_CONNECTIONS, refusal))
                return
            connection = _Connection(peer, trio.CancelScope(), sock=stream.socket)
            self._open.add(connection)
            self._per_pid[peer.pid] = self._per_pid.get(peer.pid, 0) + 1
            try:
                with connection.scope:
                    await self._converse(stream, connection)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                logger.debug("command connection closed under us: %s", exc)
            except Exception:
                # A bug in serving one connection must not take the others down.
                logger.exception("command connection failed; closing it")
            finally:
                self._open.discard(connection)
                left = self._per_pid[peer.pid] - 1
                if left:
                    self._per_pid[peer.pid] = left
                else:
                    del self._per_pid[peer.pid]

    def _admit(self, peer: Peer) -> str | None:
        """Make room for ``peer``'s new connection, or say why there is none."""
        per_peer = self._config.max_connections_per_peer
        if self._per_pid.get(peer.pid, 0) >= per_peer:
            return f"pid {peer.pid} already holds {per_peer} connections (the most one may)"
        if len(self._open) < self._config.max_connections:
            return None
        idle = [c for c in self._open if c.idle_since is not None]
        if not idle:
            return (
                f"the gateway serves at most {self._config.max_connections} connections "
                "and all are busy"
            )
        victim = min(idle, key=lambda c: c.idle_since or 0.0)
        logger.info(
            "all %d connections taken: closing pid %d's, idle the longest, to admit pid %d",
            self._config.max_connections, victim.peer.pid, peer.pid,
        )  # fmt: skip
        victim.evicted = True
        victim.scope.cancel()
        self._open.discard(victim)  # counted out now; its task closes it at once
        return None

    async def _reply_json(self, stream: trio.SocketStream, reply: Reply) -> None:
        with trio.move_on_after(1):
            await stream.send_all(encode_reply(reply, Framing.JSON))

    async def _converse(self, stream: trio.SocketStream, connection: _Connection) -> None:
        peer = connection.peer
        if peer.uid not in self._config.allowed_uids:
            logger.warning("refused command connection from uid %d (pid %d)", peer.uid, peer.pid)
            await self._reply_json(
                stream,
                error_reply(ErrorCode.PERMISSION_DENIED, f"uid {peer.uid} may not send commands"),
            )
            return
        logger.debug("command connection from pid %d uid %d", peer.pid, peer.uid)
        # One scope for the connection's life: its deadline is the idle timeout while
        # we wait for a request, the frame deadline once part of one has arrived.
        with trio.CancelScope(
            deadline=trio.current_time() + self._config.idle_timeout_s
        ) as deadline:
            await self._serve_frames(stream, connection, deadline)
        if deadline.cancelled_caught:
            logger.info("closing command connection of pid %d: timed out", peer.pid)

    async def _receive(
        self,
        stream: trio.SocketStream,
        connection: _Connection,
        deadline: trio.CancelScope,
        mid_frame: bool,
    ) -> bytes:
        now = trio.current_time()
        if not mid_frame:
            if not connection.answering():
                connection.idle_since = now
            # Moving a deadline costs about what parsing a request does: move it only
            # once it is 1% of the timeout stale (a connection closes after 99-100% of it).
            idle_until = now + self._config.idle_timeout_s
            if deadline.deadline < idle_until - self._config.idle_timeout_s / 100:
                deadline.deadline = idle_until
        elif connection.frame_started is None:  # a request arrives in pieces
            connection.frame_started = now
            deadline.deadline = now + self._config.frame_deadline_s
        data = await read_when_ready(stream.socket.fileno())
        connection.idle_since = None  # a request is arriving: not evictable
        return data

    @staticmethod
    async def _write(stream: trio.SocketStream, data: bytes) -> None:
        await write_all(stream.socket, data)

    async def _serve_frames(
        self, stream: trio.SocketStream, connection: _Connection, deadline: trio.CancelScope
    ) -> None:
        data = await self._receive(stream, connection, deadline, mid_frame=False)
        if not data:
            return
        framing = detect_framing(data[0])
        if framing is None:
            await self._reply_json(
                stream,
                error_reply(
                    ErrorCode.BAD_FRAME,
                    "a connection must start with JSON ('{') or a CBOR length prefix (0x00)",
                ),
            )
            return
        decoder = JsonLineDecoder() if framing is Framing.JSON else CborFrameDecoder()
        frames = decoder.feed(data)
        while True:
            if frames and connection.frame_started is not None:
                # Complete at last: answering is not bound by the frame deadline.
                connection.frame_started = None
                deadline.deadline = trio.current_time() + self._config.idle_timeout_s
            for frame in frames:
                if not await self._answer(stream, connection, frame, framing):
                    return
            data = await self._receive(stream, connection, deadline, decoder.mid_frame)
            if not data:
                for frame in decoder.at_eof():
                    await self._answer(stream, connection, frame, framing)
                await self._settle(connection)  # a half-closed peer still gets its reply
                return
            frames = decoder.feed(data)

    async def _answer(
        self, stream: trio.SocketStream, connection: _Connection, frame: Frame, framing: Framing
    ) -> bool:
        """Answer one frame; False when the connection must end."""
        if connection.reply_due is not None:
            await self._settle(connection)  # replies leave in the order of their requests
        # An error is answered here, with a checkpoint of its own: the writes below
        # yield only when the peer's buffer is full, and a read of junk frames must
        # not hold the loop for a thousand replies.
        if isinstance(frame, FrameError):
            await self._write(stream, encode_reply(error_reply(frame.code, frame.message), framing))
            await trio.lowlevel.checkpoint()
            return not frame.fatal
        body: dict[str, object] | None = None
        try:
            body = decode_frame(frame, framing)
            request, request_id = parse_request(body, self._config.strategy_count)
        except CommandProtocolError as exc:
            request_id = request_id_of(body) if body is not None else None
            await self._write(
                stream, encode_reply(error_reply(exc.code, exc.message, request_id), framing)
            )
            await trio.lowlevel.checkpoint()
            return True
        started = time.perf_counter() if self._metrics is not None else 0.0
        if not isinstance(request, Query):
            kind = request.kind.value

            def deliver(reply: Reply) -> None:
                self._deliver(connection, reply, request_id, framing, kind, started)

            command = CommandReceived(request, request_id, ReplySlot(deliver))
            connection.reply_due = command.reply
            try:
                self._send.send_nowait(command)
            except trio.WouldBlock:
                await self._send.send(command)
            return True
        message = QueryReceived(request.what, request.currency)
        try:
            self._send.send_nowait(message)  # the wait for the reply checkpoints anyway
        except trio.WouldBlock:
            await self._send.send(message)
        reply = await message.reply.wait()
        if request_id is not None and "request_id" not in reply:
            reply = {**reply, "request_id": request_id}
        await self._write(stream, encode_reply(reply, framing))
        if self._metrics is not None:
            self._metrics.command_latency.labels(request.what).observe(
                time.perf_counter() - started
            )
        return True

    def _deliver(
        self,
        connection: _Connection,
        reply: Reply,
        request_id: str | None,
        framing: Framing,
        kind: str,
        started: float,
    ) -> None:
        """Write a command's reply as the writer leaves it (its sync has returned).

        Runs in the writer's task, so it never waits: what the socket does not
        take at once is written by a flusher task of its own. The connection's
        task is not woken for the reply, a trip through the run loop saved on
        every command (docs/performance.md).
        """
        assert connection.sock is not None
        fd = connection.sock.fileno()
        if fd < 0:
            return  # closed meanwhile: nobody is left to answer
        if request_id is not None and "request_id" not in reply:
            reply = {**reply, "request_id": request_id}
        try:
            data = encode_reply(reply, framing)
            try:
                written = os.write(fd, data)
            except BlockingIOError:
                written = 0
            if written < len(data):
                connection.flushed = trio.Event()
                self._nursery.start_soon(self._flush, connection, data[written:])
            elif connection.frame_started is None:
                connection.idle_since = trio.current_time()
        except OSError as exc:
            logger.debug("command connection of pid %d gone: %s", connection.peer.pid, exc)
            connection.scope.cancel()
            return
        except Exception:
            # A bug in answering one connection (or a server already shut, whose
            # nursery takes no flusher) must not take the writer down.
            logger.exception("answering pid %d failed; closing its connection", connection.peer.pid)
            if connection.flushed is not None:
                connection.flushed.set()
            connection.scope.cancel()
            return
        if self._metrics is not None:
            self._metrics.command_latency.labels(kind).observe(time.perf_counter() - started)

    @staticmethod
    async def _flush(connection: _Connection, rest: bytes) -> None:
        """Write what a reply's first write left, once the peer reads."""
        assert connection.sock is not None and connection.flushed is not None
        try:
            await write_all(connection.sock, rest)
        except (trio.ClosedResourceError, OSError) as exc:
            logger.debug("command connection of pid %d gone: %s", connection.peer.pid, exc)
            connection.scope.cancel()
        except Exception:
            # Runs in the server's nursery: a bug here must not take the others down.
            logger.exception("answering pid %d failed; closing its connection", connection.peer.pid)
            connection.scope.cancel()
        finally:
            connection.flushed.set()

    @staticmethod
    async def _settle(connection: _Connection) -> None:
        """Wait until the last command's reply is written whole."""
        due = connection.reply_due
        if due is None:
            return
        if not due.is_set():
            await due.wait()
        if connection.flushed is not None:
            await connection.flushed.wait()
            connection.flushed = None
        connection.reply_due = None


def _remove_stale_socket(path: os.PathLike[str]) -> None:
    """Unlink a socket left by a dead gateway; refuse if one is still answering."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fspath(path))
    except FileNotFoundError:
        return
    except ConnectionRefusedError:
        logger.info("removing stale socket %s", path)
        os.unlink(path)
        return
    except OSError as exc:
        if exc.errno == errno.ENOTSOCK:
            raise GatewayError(f"{path} exists and is not a socket; move it away") from exc
        raise
    finally:
        probe.close()
    raise GatewayError(f"another gateway is answering on {path}")


async def serve_commands(
    config: GatewayConfig,
    send: trio.MemorySendChannel[CommandReceived | QueryReceived],
    metrics: Metrics | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the command socket until cancelled; the socket file is removed on the way out.

    Supports ``nursery.start``: ``started()`` once the socket accepts connections.
    Owns ``send`` and closes it on exit.

    Raises:
        GatewayError: another gateway answers on the socket path.
    """
    path = config.socket_path
    async with send:
        listener = _listen(config)
        bound = [os.stat(path).st_ino]  # the socket files this process made, latest last
        try:
            async with trio.open_nursery() as nursery:
                server = CommandServer(config, send, metrics, nursery)
                await nursery.start(trio.serve_listeners, server.handle, [listener])
                task_status.started()
                await _keep_the_path(config, bound, partial(_serve_also, nursery, server))
        finally:
            # Only our own socket: a successor may already have bound the path.
            try:
                if os.stat(path).st_ino in bound:
                    os.unlink(path)
            except FileNotFoundError:
                pass


def _listen(config: GatewayConfig) -> trio.SocketListener:
    """The run directory made or checked, a stale socket file cleared, and the socket bound
    with its mode and listening.

    Raises:
        ConfigError: the run directory is another user's or a symlink.
        GatewayError: another gateway answers on the socket path.
    """
    path = config.socket_path
    make_own_dir(config.run_dir, config.run_dir_mode, "run directory", "HFT_RUN_DIR")
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, config.socket_mode)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    logger.info("command socket %s ready", path)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _serve_also(
    nursery: trio.Nursery, server: CommandServer, listener: trio.SocketListener
) -> None:
    nursery.start_soon(trio.serve_listeners, server.handle, [listener])


async def _keep_the_path(
    config: GatewayConfig, bound: list[int], serve: Callable[[trio.SocketListener], None]
) -> None:
    """Bind the socket again whenever its file is removed while the gateway runs.

    systemd-logind removes ``$XDG_RUNTIME_DIR`` (the default run directory's parent) at
    a user's last logout, and a cleaner may remove the file: the gateway would go on
    with no way in. Checked every ``SOCKET_CHECK_S``; another file at the path is left
    alone, and each trouble is said once.
    """
    path = config.socket_path
    trouble: str | None = None
    while True:
        await trio.sleep(SOCKET_CHECK_S)
        try:
            inode: int | None = os.lstat(path).st_ino
        except FileNotFoundError:
            inode = None
        if inode == bound[-1]:
            trouble = None
            continue
        listener: trio.SocketListener | None = None
        if inode is not None:
            problem = f"another file is at {path}; this gateway's is not there"
        else:
            try:
                listener = _listen(config)
            except (GatewayError, OSError) as exc:
                problem = str(exc)
        if listener is None:
            if problem != trouble:
                trouble = problem
                logger.error("command socket %s was removed and cannot be made again: %s",
                             path, problem)  # fmt: skip
            continue
        bound.append(os.stat(path).st_ino)
        serve(listener)
        logger.warning(
            "command socket %s was removed while the gateway ran (systemd-logind removes "
            "XDG_RUNTIME_DIR at a logout, or a cleaner): made again", path,
        )  # fmt: skip
