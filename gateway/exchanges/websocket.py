"""A lean websocket client for the exchanges' private streams (RFC 6455, no extensions).

trio-websocket runs a reader task per connection and hands every message
through a memory channel to its consumer, and wsproto parses each frame
through several generator layers: together about a fifth of the gateway's
CPU per fill. Here the consumer reads and parses in its own task
(:meth:`WebSocket.get_message`), and frames are parsed by a small sans-IO
:class:`FrameParser`, which the tests fuzz on its own.

While the consumer is busy elsewhere (a REST catch-up that may last
minutes), :meth:`WebSocket.reading_ahead` keeps reading into the
connection's queue, so the exchange never sees a stalled client.

Errors (all :class:`WebSocketError`)::

    WebSocketError
    ├── HandshakeError        no connection, or the upgrade failed
    │   └── HandshakeRejectedError    the server answered HTTP, not 101
    └── ConnectionClosedError      closed by the server, dropped, or a protocol error (code, reason)
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import h11
import trio

from gateway.descriptors import RECEIVE_BYTES, read_when_ready
from gateway.errors import only_leaf

MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024  # Kraken's 50-trade snapshot is ~50 KB
READ_AHEAD_BYTES: Final = 64 * 1024 * 1024
MAX_FRAGMENTS: Final = 1024
HANDSHAKE_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 1.0
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REJECTED_BODY_BYTES: Final = 4096

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005
CLOSE_ABNORMAL: Final = 1006
CLOSE_INVALID_DATA: Final = 1007
CLOSE_TOO_BIG: Final = 1009
# Codes a peer may send (RFC 6455 7.4.1, 7.4.2): the others are never on the wire.
_SENDABLE_CODES: Final = frozenset({*range(1000, 1004), *range(1007, 1015)} | {*range(3000, 5000)})

_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")


class WebSocketError(Exception):
    """Root of this module's errors."""


class HandshakeError(WebSocketError):
    """No websocket: the connection or the upgrade failed (the message says which)."""


class HandshakeRejectedError(HandshakeError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status_code: int, body: bytes) -> None:
        text = body[:120].decode("utf-8", "replace").strip()
        super().__init__(f"the server refused the websocket: HTTP {status_code} {text}".rstrip())
        self.status_code = status_code
        self.body = body


class CertificateRefusedError(HandshakeError):
    """The server's TLS certificate did not verify: a setting to fix (its CA, the URL's
    host), not a failure to retry, so a start says so at once."""


class ConnectionClosedError(WebSocketError):
    """The connection is over: ``code`` and ``reason`` as the close frame gave them.

    1006 means it dropped without a close frame; 1002, 1007 and 1009 that the
    server broke the protocol and this client closed it.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"websocket closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _FrameError(Exception):
    code: int
    reason: str


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame's bytes; ``mask`` (4 bytes) for a client's frame, None for a server's."""
    length = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        head = bytes((first, mask_bit | length))
    elif length < 1 << 16:
        head = bytes((first, mask_bit | 126)) + _U16.pack(length)
    else:
        head = bytes((first, mask_bit | 127)) + _U64.pack(length)
    if mask is None:
        return head + payload
    return head + mask + masked(payload, mask)


def masked(payload: bytes, mask: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``mask`` (its own inverse), as one big integer."""
    length = len(payload)
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        length, "little"
    )


def close_payload(code: int, reason: str = "") -> bytes:
    return _U16.pack(code) + reason.encode()[:120]


class FrameParser:
    """The server-to-client half of RFC 6455, sans IO.

    Feed it bytes with :meth:`receive`; take whole messages from
    :attr:`messages` (``str`` for text, ``bytes`` for binary), the frames to
    send back (pongs, the closing handshake) from :meth:`take_outgoing`, and
    once :attr:`closed` is set, the end of the connection. A frame's size is
    checked against ``max_message_bytes`` from its header, before its payload
    is buffered. Anything a server must not send (a masked frame, reserved
    bits, a fragmented or long control frame, invalid UTF-8, an unknown
    opcode) closes the connection with the code RFC 6455 gives for it.
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self.messages: deque[str | bytes] = deque()
        self.closed: ConnectionClosedError | None = None
        self._buffer = bytearray()
        self._outgoing: list[bytes] = []
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = OP_TEXT
        self._fragment_bytes = 0
        self.close_queued = False
        self._mask = os.urandom  # every client frame takes a fresh, unpredictable mask

    def receive(self, data: bytes | bytearray) -> None:
        """Parse ``data`` (b"" is the end of the stream) into messages and replies."""
        if self.closed is not None:
            return
        if not data:
            self.closed = ConnectionClosedError(CLOSE_ABNORMAL, "the connection dropped")
            return
        self._buffer += data
        try:
            self._parse()
        except _FrameError as violation:
            self.fail(violation.code, violation.reason)

    def fail(self, code: int, reason: str) -> None:
        """Close on this side: a close frame with ``code`` to send, nothing more read."""
        if self.closed is None:
            self.closed = ConnectionClosedError(code, reason)
            self._queue_close(code)
        self._buffer.clear()

    def _queue_close(self, code: int) -> None:
        self._outgoing.append(self.client_frame(OP_CLOSE, close_payload(code)))
        self.close_queued = True

    def client_frame(self, opcode: int, payload: bytes) -> bytes:
        return frame(opcode, payload, mask=self._mask(4))

    def take_outgoing(self) -> bytes:
        """The frames owed to the server (pongs, a close), oldest first."""
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        return out

    def _parse(self) -> None:
        buffer = self._buffer
        end = len(buffer)
        position = 0
        try:
            while self.closed is None and end - position >= 2:
                first, second = buffer[position], buffer[position + 1]
                if second & 0x80:
                    raise _FrameError(CLOSE_PROTOCOL_ERROR, "a masked frame from the server")
                if first & 0x70:
                    raise _FrameError(
                        CLOSE_PROTOCOL_ERROR, "reserved bits set, and no extension was agreed"
                    )
                length = second & 0x7F
                start = position + 2
                if length == 126:
                    if end - position < 4:
                        break
                    length = _U16.unpack_from(buffer, start)[0]
                    start += 2
                elif length == 127:
                    if end - position < 10:
                        break
                    length = _U64.unpack_from(buffer, start)[0]
                    start += 8
                    if length >> 63:
                        raise _FrameError(CLOSE_PROTOCOL_ERROR, "a frame length over 2^63")
                opcode = first & 0x0F
                fin = first & 0x80
                if opcode >= OP_CLOSE:
                    if not fin or length > 125:
                        raise _FrameError(
                            CLOSE_PROTOCOL_ERROR, "a control frame fragmented or over 125 bytes"
                        )
                elif self._fragment_bytes + length > self.max_message_bytes:
                    raise _FrameError(
                        CLOSE_TOO_BIG, f"a message over {self.max_message_bytes} bytes"
                    )
                if end - start < length:
                    break
                position = start + length
                self._frame(opcode, bool(fin), bytes(buffer[start:position]))
        finally:
            if self.closed is None:
                del buffer[:position]

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                raise _FrameError(
                    CLOSE_PROTOCOL_ERROR, "a new message before the last one finished"
                )
            if fin:
                self._message(opcode, payload)
            else:
                self._fragments = [payload]
                self._fragment_opcode = opcode
                self._fragment_bytes = len(payload)
        elif opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise _FrameError(CLOSE_PROTOCOL_ERROR, "a continuation of no message")
            if len(self._fragments) >= MAX_FRAGMENTS:
                # Legal, but no exchange splits a message so finely: parsing frames of a
                # byte each would cost seconds of CPU a message.
                raise _FrameError(CLOSE_TOO_BIG, f"a message in over {MAX_FRAGMENTS} fragments")
            self._fragments.append(payload)
            self._fragment_bytes += len(payload)
            if fin:
                whole = b"".join(self._fragments)
                self._fragments = None
                self._fragment_bytes = 0
                self._message(self._fragment_opcode, whole)
        elif opcode == OP_PING:
            self._outgoing.append(self.client_frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            pass  # this client sends no pings; an unsolicited pong is allowed
        elif opcode == OP_CLOSE:
            self._peer_closed(payload)
        else:
            raise _FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")

    def _message(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_BINARY:
            self.messages.append(payload)
            return
        try:
            self.messages.append(payload.decode())
        except UnicodeDecodeError:
            raise _FrameError(CLOSE_INVALID_DATA, "a text message not UTF-8") from None

    def _peer_closed(self, payload: bytes) -> None:
        if not payload:
            code, reason = CLOSE_NO_STATUS, ""
        elif len(payload) < 2:
            raise _FrameError(CLOSE_PROTOCOL_ERROR, "a close frame of one byte")
        else:
            code = _U16.unpack_from(payload)[0]
            if code not in _SENDABLE_CODES:
                raise _FrameError(CLOSE_PROTOCOL_ERROR, f"close code {code}")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                raise _FrameError(CLOSE_INVALID_DATA, "a close reason not UTF-8") from None
        self._queue_close(CLOSE_NORMAL if code == CLOSE_NO_STATUS else code)
        self.closed = ConnectionClosedError(code, reason)
        self._buffer.clear()


def _dropped(exc: BaseException) -> ConnectionClosedError:
    return ConnectionClosedError(CLOSE_ABNORMAL, f"the connection failed: {exc}")


class WebSocket:
    """One client connection; made by :func:`open_websocket`.

    One task reads with :meth:`get_message`; while :meth:`reading_ahead`
    runs, a read that finds the queue empty waits for it to end.
    :meth:`send_message` may be called from any task.
    """

    def __init__(self, stream: trio.abc.Stream, parser: FrameParser) -> None:
        self._stream = stream
        self._parser = parser
        self._read_ahead_done: trio.Event | None = None
        self._send_lock = trio.Lock()
        self._close_sent = False

    def pending(self) -> int:
        """Messages read but not yet taken."""
        return len(self._parser.messages)

    async def get_message(self) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises:
            ConnectionClosedError: once the queue is empty and the connection is over.
        """
        messages = self._parser.messages
        while not messages:
            if self._read_ahead_done is not None:
                await self._read_ahead_done.wait()  # it reads; no second reader beside it
            else:
                await self._receive()
        return messages.popleft()

    async def send_message(self, message: str | bytes) -> None:
        """Send one message, masked as a client's must be.

        Raises:
            ConnectionClosedError: the connection is over.
        """
        if self._parser.closed is not None:
            raise self._parser.closed
        opcode = OP_TEXT if isinstance(message, str) else OP_BINARY
        payload = message.encode() if isinstance(message, str) else message
        await self._send(self._parser.client_frame(opcode, payload))

    @asynccontextmanager
    async def reading_ahead(
        self, limit_messages: int, limit_bytes: int = READ_AHEAD_BYTES
    ) -> AsyncIterator[None]:
        """Keep reading into the queue while the body runs, up to either limit.

        Pings are answered meanwhile. Past a limit, reading pauses and TCP
        pushes back. A failure of the connection is kept for the next
        :meth:`get_message`, never raised into the body; what the body raises
        comes out as it is, not in an exception group.
        """
        if self._read_ahead_done is not None:
            raise RuntimeError("already reading ahead")
        done = self._read_ahead_done = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_ahead, limit_messages, limit_bytes)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The reader raises nothing (it keeps a failure for the next read), so the
            # group holds the body's own exception: raised as the body raised it, for
            # callers that handle a failed catch-up by its type.
            leaf = only_leaf(group)
            if leaf is None:
                raise
            raise leaf from None
        finally:
            self._read_ahead_done = None
            done.set()

    async def _read_ahead(self, limit_messages: int, limit_bytes: int) -> None:
        messages = self._parser.messages
        read = 0  # the body takes no messages meanwhile: what was read is what is queued
        while self._parser.closed is None and len(messages) < limit_messages and read < limit_bytes:
            try:
                read += await self._receive()
            except ConnectionClosedError:
                return  # for the next get_message

    async def _receive(self) -> int:
        """One read from the stream, parsed; replies owed are sent before returning.

        Returns how many bytes were read.
        """
        parser = self._parser
        data: bytes | bytearray = b""
        if parser.closed is None:
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                parser.closed = _dropped(exc)
            parser.receive(data)
            owed = parser.take_outgoing()
            if owed:
                await self._send(owed)
        if parser.closed is not None and not parser.messages:
            raise parser.closed
        return len(data)

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            if self._close_sent:
                raise self._parser.closed or ConnectionClosedError(CLOSE_NORMAL, "closed here")
            self._close_sent = self._parser.close_queued
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                closed = _dropped(exc)
                if self._parser.closed is None:
                    self._parser.closed = closed
                raise closed from None
            except trio.Cancelled:
                # Part of a frame may be out: nothing may follow it, not even a close frame.
                self._close_sent = True
                if self._parser.closed is None:
                    self._parser.closed = ConnectionClosedError(
                        CLOSE_ABNORMAL, "a send was cancelled midway"
                    )
                raise

    async def aclose(self) -> None:
        """Send a close frame if none was sent, then close: at most ``CLOSE_TIMEOUT_S``, after
        which the stream is closed at once (a peer that reads nothing cannot hold it open)."""
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True) as grace:
            if not self._close_sent:
                self._parser.fail(CLOSE_NORMAL, "closed by the client")
                with suppress(ConnectionClosedError):
                    await self._send(self._parser.take_outgoing())
            await self._stream.aclose()
        if grace.cancelled_caught:
            await trio.aclose_forcefully(self._stream)


@dataclass(frozen=True, slots=True)
class _Target:
    secure: bool
    host: str
    port: int
    resource: str

    @property
    def host_header(self) -> str:
        default = 443 if self.secure else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise HandshakeError(f"not a ws:// or wss:// address: {url!r}")
    secure = parts.scheme == "wss"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise HandshakeError(f"bad port in {url!r}") from None
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(secure, parts.hostname, port, resource)


class _SocketTransport(trio.abc.Stream):
    """A TCP stream whose receives wait for its descriptor first (gateway/descriptors.py):
    one wake-up and one read a message, where Trio's try-first receive takes two reads
    and two trips through the run loop. Sends, rare, are the stream's own."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        fd = self._stream.socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the stream is closed")
        try:
            return await read_when_ready(fd, max_bytes or RECEIVE_BYTES)
        except OSError as exc:
            raise trio.BrokenResourceError(f"the connection failed: {exc}") from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _connect(target: _Target, ssl_context: ssl.SSLContext | None) -> trio.abc.Stream:
    try:
        transport = _SocketTransport(await trio.open_tcp_stream(target.host, target.port))
    except OSError as exc:
        raise HandshakeError(f"cannot connect: {_reason(exc)}") from exc
    if not target.secure:
        return transport
    # As trio.open_ssl_over_tcp_stream does, over our transport.
    return trio.SSLStream(
        transport,
        ssl_context or ssl.create_default_context(),
        server_hostname=target.host,
        https_compatible=True,
    )


def _broken(exc: BaseException) -> str:
    """Why a stream broke, in words: TLS refusals are wrapped in BrokenResourceError."""
    cause = exc.__cause__ or exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate refused: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS: {cause.reason or cause}"
    return str(cause) or type(cause).__name__


def _reason(exc: BaseException) -> str:
    """The OS's words for a failed connect (trio groups one error per address tried)."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    for error in (cause, exc):
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
    return str(exc)


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server owes for ``key``."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


async def _upgrade(stream: trio.abc.Stream, target: _Target) -> bytes:
    """The HTTP/1.1 upgrade (h11 parses the answer); returns the bytes after it."""
    key = base64.b64encode(os.urandom(16))
    http = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=target.resource,
        headers=[
            ("Host", target.host_header),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key.decode()),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    await stream.send_all(http.send(request) or b"")
    body = bytearray()
    rejected: h11.Response | None = None
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            raise HandshakeError(f"the server's answer is not HTTP: {exc}") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data and rejected is None:
                raise HandshakeError("the server closed the connection during the handshake")
            if not data:
                break
            http.receive_data(bytes(data))
        elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            _check_upgrade(event.headers, key)
            return http.trailing_data[0]
        elif isinstance(event, h11.Response):
            rejected = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) >= _REJECTED_BODY_BYTES:
                break
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
            break
    if rejected is None:
        raise HandshakeError("the server's answer to the upgrade is not a response")
    raise HandshakeRejectedError(rejected.status_code, bytes(body))


def _check_upgrade(headers: Iterable[tuple[bytes, bytes]], key: bytes) -> None:
    fields: dict[bytes, bytes] = {}
    for name, value in headers:
        fields[name] = value if name not in fields else fields[name] + b", " + value
    if fields.get(b"upgrade", b"").lower() != b"websocket":
        raise HandshakeError("the server's 101 does not upgrade to websocket")
    if b"upgrade" not in fields.get(b"connection", b"").lower():
        raise HandshakeError("the server's 101 lacks Connection: Upgrade")
    if fields.get(b"sec-websocket-accept") != accept_key(key):
        raise HandshakeError("the server's Sec-WebSocket-Accept does not match the key")
    for name in (b"sec-websocket-extensions", b"sec-websocket-protocol"):
        if name in fields:
            raise HandshakeError(f"the server chose {name.decode()} that was not offered")


@asynccontextmanager
async def open_websocket(
    url: str,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[WebSocket]:
    """Connect to ``url`` (``ws://`` or ``wss://``) and upgrade; closes on exit.

    Raises:
        HandshakeError: no connection, no upgrade within ``handshake_timeout_s``,
            or an answer that breaks RFC 6455 (:class:`HandshakeRejectedError` for
            an HTTP status, :class:`CertificateRefusedError` for a certificate
            that does not verify).
    """
    target = _target(url)
    with trio.move_on_after(handshake_timeout_s) as timeout:
        stream = await _connect(target, ssl_context)
        try:
            leftover = await _upgrade(stream, target)
        except (trio.BrokenResourceError, OSError) as exc:
            await trio.aclose_forcefully(stream)
            refused = isinstance(exc.__cause__ or exc, ssl.SSLCertVerificationError)
            error = CertificateRefusedError if refused else HandshakeError
            raise error(f"the handshake failed: {_broken(exc)}") from exc
        except BaseException:  # the timeout's Cancelled too: the stream is closed either way
            await trio.aclose_forcefully(stream)
            raise
    if timeout.cancelled_caught:
        raise HandshakeError(f"no websocket handshake within {handshake_timeout_s:g} s")
    parser = FrameParser(max_message_bytes)
    websocket = WebSocket(stream, parser)
    if leftover:
        parser.receive(leftover)
    try:
        yield websocket
    finally:
        await websocket.aclose()
