"""The lean websocket client, over real loopback sockets.

Against trio-websocket's server (an independent RFC 6455 implementation),
against a raw server that writes exactly the bytes a hostile or broken
exchange might, and its frame parser fuzzed on its own.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial

import pytest
import trio
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed as ServerSawClose
from trio_websocket import WebSocketRequest, serve_websocket

from gateway.exchanges.websocket import (
    CLOSE_ABNORMAL,
    CLOSE_INVALID_DATA,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CertificateRefusedError,
    ConnectionClosedError,
    FrameParser,
    HandshakeError,
    HandshakeRejectedError,
    WebSocket,
    accept_key,
    close_payload,
    frame,
    masked,
    open_websocket,
)

ServerHandler = Callable[[trio.SocketStream], Awaitable[None]]


def unmask_client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each frame a client sent; every one must be masked."""
    frames = []
    position = 0
    while position < len(data):
        first, second = data[position], data[position + 1]
        assert second & 0x80, "a client frame is not masked"
        length, position = second & 0x7F, position + 2
        if length == 126:
            length, position = struct.unpack_from("!H", data, position)[0], position + 2
        elif length == 127:
            length, position = struct.unpack_from("!Q", data, position)[0], position + 8
        mask, position = data[position : position + 4], position + 4
        frames.append((first & 0x0F, masked(data[position : position + length], mask)))
        position += length
    return frames


async def read_request(stream: trio.SocketStream) -> bytes:
    """The client's upgrade request; returns its Sec-WebSocket-Key."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = await stream.receive_some(4096)
        assert chunk, "the client closed during its request"
        request += chunk
    found = re.search(rb"Sec-WebSocket-Key: (\S+)", request)
    assert found is not None and b"GET /v2 HTTP/1.1" in request
    assert b"Sec-WebSocket-Version: 13" in request
    return found.group(1)


def switching(key: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n" + extra + b"\r\n"
    )


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.move_on_after(2), suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


@asynccontextmanager
async def raw_server(handler: ServerHandler) -> AsyncIterator[str]:
    """A TCP server on loopback running ``handler`` per connection; yields its ws:// URL."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v2"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def frames_server(payload: bytes, seen: list[bytes] | None = None) -> AsyncIterator[str]:
    """A server that upgrades, writes ``payload`` and keeps what the client sends in ``seen``."""

    async def handler(stream: trio.SocketStream) -> None:
        key = await read_request(stream)
        await stream.send_all(switching(key) + payload)
        data = await read_all(stream)
        if seen is not None:
            seen.append(data)

    async with raw_server(handler) as url:
        yield url


# -- against trio-websocket's server ------------------------------------------------------


@asynccontextmanager
async def echo_server(events: list[str]) -> AsyncIterator[str]:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                if message == "ping me":
                    with trio.fail_after(5):
                        await ws.ping(b"are you there")  # returns once the pong is in
                    events.append("pong received")
                elif message == "close me":
                    await ws.aclose(4001, "as asked")
                    return
                await ws.send_message(message)
        except ServerSawClose as closed:
            events.append(f"client closed {closed.reason.code}")  # type: ignore[union-attr]

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        yield f"ws://127.0.0.1:{server.port}/v2"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 1_048_576])
async def test_messages_of_every_length_class_round_trip(size: int) -> None:
    events: list[str] = []
    async with echo_server(events) as url, open_websocket(url) as ws:
        text = "é" * (size // 2) + "x" * (size % 2)
        binary = bytes(range(256)) * (size // 256) + bytes(size % 256)
        await ws.send_message(text)
        await ws.send_message(binary)
        assert await ws.get_message() == text
        assert await ws.get_message() == binary


async def test_server_ping_is_answered_and_close_is_mutual() -> None:
    events: list[str] = []
    async with echo_server(events) as url:
        async with open_websocket(url) as ws:
            await ws.send_message("ping me")
            assert await ws.get_message() == "ping me"
            assert events == ["pong received"]
            await ws.send_message("close me")
            with pytest.raises(ConnectionClosedError) as closed:
                await ws.get_message()
            assert (closed.value.code, closed.value.reason) == (4001, "as asked")
            with pytest.raises(ConnectionClosedError):
                await ws.send_message("after the close")
        async with open_websocket(url) as ws:
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"
        with trio.fail_after(5):
            while len(events) < 2:
                await trio.sleep(0.01)
        assert events[1] == "client closed 1000"


async def test_reading_ahead_queues_messages_and_answers_pings_while_the_body_works() -> None:
    pinged = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for index in range(300):
            await ws.send_message(f"message {index}")
        with trio.fail_after(5):
            await ws.ping(b"still there?")
        pinged.set()
        await ws.get_message()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        async with open_websocket(f"ws://127.0.0.1:{server.port}/v2") as ws:
            async with ws.reading_ahead(limit_messages=100_000):
                with trio.fail_after(5):
                    await pinged.wait()  # the body never reads; the ping was answered
            assert ws.pending() == 300
            assert [await ws.get_message() for _ in range(300)] == [
                f"message {index}" for index in range(300)
            ]
            async with ws.reading_ahead(limit_messages=1):
                await trio.sleep(0.2)
        nursery.cancel_scope.cancel()


async def test_reading_ahead_stops_at_its_limit() -> None:
    payload = b"".join(frame(OP_TEXT, f"m{index}".encode()) for index in range(50))
    async with frames_server(payload) as url, open_websocket(url) as ws:
        async with ws.reading_ahead(limit_messages=10):
            await trio.sleep(0.3)
        # One read may bring more than the limit, never a read past it.
        assert 10 <= ws.pending() <= 50
        assert [await ws.get_message() for _ in range(50)] == [f"m{i}" for i in range(50)]


async def test_reading_ahead_stops_at_its_byte_limit() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        key = await read_request(stream)
        await stream.send_all(switching(key))
        for _ in range(20):  # one message a read
            await stream.send_all(frame(OP_TEXT, b"x" * 10_000))
            await trio.sleep(0.01)
        await trio.sleep_forever()

    async with raw_server(handler) as url, open_websocket(url) as ws:
        async with ws.reading_ahead(limit_messages=1000, limit_bytes=30_000):
            await trio.sleep(0.5)
        assert 3 <= ws.pending() <= 8  # the read that passes the limit is the last
        assert len([await ws.get_message() for _ in range(20)]) == 20


async def test_what_the_body_of_reading_ahead_raises_comes_out_as_it_is() -> None:
    """A failed catch-up is handled by its type (a reconnect), not as an exception group."""
    async with frames_server(frame(OP_TEXT, b"kept")) as url, open_websocket(url) as ws:
        with pytest.raises(LookupError, match="catch-up refused"):
            async with ws.reading_ahead(limit_messages=10):
                raise LookupError("catch-up refused")
        assert await ws.get_message() == "kept"  # and the connection is still usable


async def test_a_dropped_connection_during_reading_ahead_reaches_the_next_read() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        key = await read_request(stream)
        await stream.send_all(switching(key) + frame(OP_TEXT, b"last words"))

    async with raw_server(handler) as url, open_websocket(url) as ws:
        async with ws.reading_ahead(limit_messages=100):
            await trio.sleep(0.3)  # no error raised into the body
        assert await ws.get_message() == "last words"
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.get_message()
        assert closed.value.code == CLOSE_ABNORMAL


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for ``localhost`` and a client context that trusts its CA."""
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return server, client


async def test_wss_verifies_the_server_and_says_why_it_refuses(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Kraken and Binance are wss://: the certificate and its name are checked."""
    server_context, client_context = tls
    events: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("over TLS: " + str(await ws.get_message()))
        events.append("answered")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, server_context)
        url = f"wss://localhost:{server.port}/v2"
        async with open_websocket(url, ssl_context=client_context) as ws:
            await ws.send_message("hello")
            assert await ws.get_message() == "over TLS: hello"
        with pytest.raises(
            CertificateRefusedError, match="TLS certificate refused: IP address mismatch"
        ):
            async with open_websocket(
                f"wss://127.0.0.1:{server.port}/v2", ssl_context=client_context
            ):
                pass
        with pytest.raises(
            CertificateRefusedError, match="TLS certificate refused: unable to get loc"
        ):
            async with open_websocket(url):  # the system's authorities do not know this one
                pass
        nursery.cancel_scope.cancel()
    assert events == ["answered"]


# -- hostile and broken servers, byte for byte ------------------------------------------


def header(first: int, length_byte: int, extended: bytes = b"") -> bytes:
    return bytes((first, length_byte)) + extended


HOSTILE_FRAMES = {
    "masked": (bytes((0x81, 0x82)) + b"abcd" + masked(b"hi", b"abcd"), CLOSE_PROTOCOL_ERROR),
    "reserved bit": (bytes((0xC1, 2)) + b"hi", CLOSE_PROTOCOL_ERROR),
    "fragmented ping": (bytes((0x09, 0)), CLOSE_PROTOCOL_ERROR),
    "long ping": (header(0x89, 126, struct.pack("!H", 126)) + bytes(126), CLOSE_PROTOCOL_ERROR),
    "stray continuation": (frame(OP_CONTINUATION, b"x"), CLOSE_PROTOCOL_ERROR),
    "text inside a fragmented message": (
        frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"),
        CLOSE_PROTOCOL_ERROR,
    ),
    "unknown opcode": (bytes((0x83, 0)), CLOSE_PROTOCOL_ERROR),
    "invalid UTF-8": (frame(OP_TEXT, b"\xff\xfe"), CLOSE_INVALID_DATA),
    "a 2^63 length": (header(0x82, 127, struct.pack("!Q", 1 << 63)), CLOSE_PROTOCOL_ERROR),
    "a header announcing 1 TB": (header(0x82, 127, struct.pack("!Q", 1 << 40)), CLOSE_TOO_BIG),
    "fragments adding up past the limit": (
        frame(OP_TEXT, b"x" * 600, fin=False) + frame(OP_CONTINUATION, b"x" * 600),
        CLOSE_TOO_BIG,
    ),
    "a message in 2,000 fragments": (
        frame(OP_TEXT, b"x", fin=False) + frame(OP_CONTINUATION, b"", fin=False) * 2000,
        CLOSE_TOO_BIG,
    ),
    "a close of one byte": (frame(OP_CLOSE, b"\x03"), CLOSE_PROTOCOL_ERROR),
    "a close with code 1005 on the wire": (frame(OP_CLOSE, close_payload(1005)), 1002),
    "a close reason not UTF-8": (frame(OP_CLOSE, b"\x03\xe8\xff"), CLOSE_INVALID_DATA),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FRAMES))
async def test_a_protocol_violation_closes_with_its_code_after_the_good_messages(
    case: str,
) -> None:
    hostile, code = HOSTILE_FRAMES[case]
    seen: list[bytes] = []
    payload = frame(OP_TEXT, b"before") + hostile
    async with frames_server(payload, seen) as url:
        async with open_websocket(url, max_message_bytes=1000) as ws:
            assert await ws.get_message() == "before"
            with trio.fail_after(5), pytest.raises(ConnectionClosedError) as closed:
                await ws.get_message()
            assert closed.value.code == code
        with trio.fail_after(5):
            while not seen:
                await trio.sleep(0.01)
    # The client told the server why, in one masked close frame, and nothing after it.
    assert unmask_client_frames(seen[0]) == [(OP_CLOSE, close_payload(code))]


async def test_an_oversized_message_is_refused_from_its_header_before_its_payload() -> None:
    seen: list[bytes] = []
    announced = header(0x81, 127, struct.pack("!Q", 20 * 1024 * 1024))  # over 16 MiB
    async with frames_server(announced + b"only the start", seen) as url, open_websocket(url) as ws:
        with trio.fail_after(2), pytest.raises(ConnectionClosedError) as closed:
            await ws.get_message()
        assert closed.value.code == CLOSE_TOO_BIG


async def test_pings_inside_a_fragmented_message_are_answered_in_order() -> None:
    seen: list[bytes] = []
    payload = (
        frame(OP_TEXT, b"frag", fin=False)
        + frame(OP_PING, b"one")
        + frame(OP_CONTINUATION, b"men", fin=False)
        + frame(OP_PONG, b"unsolicited")
        + frame(OP_PING, b"two")
        + frame(OP_CONTINUATION, b"ted")
        + frame(OP_CLOSE, close_payload(1001, "going away"))
    )
    async with frames_server(payload, seen) as url:
        async with open_websocket(url) as ws:
            assert await ws.get_message() == "fragmented"
            with pytest.raises(ConnectionClosedError) as closed:
                await ws.get_message()
            assert (closed.value.code, closed.value.reason) == (1001, "going away")
        with trio.fail_after(5):
            while not seen:
                await trio.sleep(0.01)
    assert unmask_client_frames(seen[0]) == [
        (OP_PONG, b"one"),
        (OP_PONG, b"two"),
        (OP_CLOSE, close_payload(1001)),
    ]


async def test_closing_against_a_peer_that_reads_nothing_takes_at_most_the_grace() -> None:
    """Another task's send is stuck on full buffers: the close waits 1 s, then closes anyway."""
    peer_saw_the_end = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        key = await read_request(stream)
        await stream.send_all(switching(key))
        await trio.sleep(2.5)  # reads nothing meanwhile: the client's sends back up
        with suppress(trio.BrokenResourceError):
            while await stream.receive_some(1 << 20):
                pass
        peer_saw_the_end.set()

    async def stuck_send(ws: WebSocket) -> None:
        with suppress(ConnectionClosedError):
            await ws.send_message(b"x" * (64 << 20))  # never fits the buffers

    async with raw_server(handler) as url, open_websocket(url) as ws:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stuck_send, ws)
            await trio.sleep(0.3)
            started = trio.current_time()
            await ws.aclose()
            assert trio.current_time() - started < 1.5
        with trio.fail_after(10):
            await peer_saw_the_end.wait()


async def test_after_a_cancelled_send_nothing_follows_the_partial_frame() -> None:
    """A frame cut short by cancellation ends the connection: a close frame after it would
    be read as the cut frame's payload."""
    received: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        key = await read_request(stream)
        await stream.send_all(switching(key))
        await trio.sleep(2)
        data = bytearray()
        with suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(1 << 20):
                data += chunk
        received.append(bytes(data))

    async with raw_server(handler) as url:
        async with open_websocket(url) as ws:
            with trio.move_on_after(1):  # well after the first bytes, long before the last
                await ws.send_message(b"x" * (32 << 20))
            with pytest.raises(ConnectionClosedError, match="cancelled midway"):
                await ws.send_message("after it")
        with trio.fail_after(10):
            while not received:
                await trio.sleep(0.05)
    data = received[0]
    assert data[0] == 0x82 and data[1] == 0x80 | 127  # one binary frame, 64-bit length
    mask, payload = data[10:14], data[14:]
    assert 0 < len(payload) < 32 << 20
    assert masked(payload, mask) == b"x" * len(payload)  # its payload, and nothing after


async def test_a_connection_dropped_without_a_close_frame_is_1006() -> None:
    async with frames_server(frame(OP_BINARY, b"\x00")) as url, open_websocket(url) as ws:
        assert await ws.get_message() == b"\x00"
        with trio.fail_after(5), pytest.raises(ConnectionClosedError) as closed:
            await ws.get_message()
        assert closed.value.code == CLOSE_ABNORMAL


async def test_a_connection_reset_by_the_server_is_1006_with_its_reason() -> None:
    """An RST, not a FIN: the read fails, and says so, after the messages before it."""

    async def handler(stream: trio.SocketStream) -> None:
        key = await read_request(stream)
        await stream.send_all(switching(key) + frame(OP_TEXT, b"before the reset"))
        await trio.sleep(0.2)  # the client has read it: the reset meets a waiting read
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    async with raw_server(handler) as url, open_websocket(url) as ws:
        assert await ws.get_message() == "before the reset"
        with trio.fail_after(5), pytest.raises(ConnectionClosedError) as closed:
            await ws.get_message()
        assert closed.value.code == CLOSE_ABNORMAL
        assert "reset" in closed.value.reason


async def test_closing_while_a_read_waits_ends_that_read() -> None:
    """The reader waits on the descriptor, not in a socket call: a close from another
    task must still wake it (as a dropped connection), never leave it waiting."""
    async with frames_server(b"") as url, open_websocket(url) as ws:
        outcome: list[ConnectionClosedError] = []

        async def reader() -> None:
            try:
                await ws.get_message()
            except ConnectionClosedError as exc:
                outcome.append(exc)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.sleep(0.1)  # the reader is waiting
                await ws.aclose()
        assert len(outcome) == 1 and outcome[0].code == CLOSE_ABNORMAL


HANDSHAKES = {
    "refused with a status": (
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 12\r\n\r\nno such key.",
        "the server refused the websocket: HTTP 403 no such key.",
    ),
    "a wrong accept key": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + base64.b64encode(bytes(20)) + b"\r\n\r\n",
        "Sec-WebSocket-Accept does not match",
    ),
    "no upgrade header": (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
        "does not upgrade to websocket",
    ),
    "not HTTP": (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not HTTP"),
    "closed at once": (b"", "closed the connection during the handshake"),
}


@pytest.mark.parametrize("case", sorted(HANDSHAKES))
async def test_a_failed_handshake_says_why_in_one_line(case: str) -> None:
    answer, words = HANDSHAKES[case]

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(answer) if answer else None

    async with raw_server(handler) as url:
        with pytest.raises(HandshakeError) as failed:
            async with open_websocket(url):
                pass
    assert words in str(failed.value) and "\n" not in str(failed.value)
    if case == "refused with a status":
        assert isinstance(failed.value, HandshakeRejectedError)
        assert failed.value.status_code == 403


async def test_an_extension_the_client_did_not_offer_is_refused() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        key = await read_request(stream)
        await stream.send_all(switching(key, b"Sec-WebSocket-Extensions: permessage-deflate\r\n"))

    async with raw_server(handler) as url:
        with pytest.raises(HandshakeError, match="sec-websocket-extensions that was not offered"):
            async with open_websocket(url):
                pass


async def test_a_silent_server_times_the_handshake_out() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with raw_server(handler) as url:
        with trio.fail_after(5), pytest.raises(HandshakeError, match=r"within 0\.3 s"):
            async with open_websocket(url, handshake_timeout_s=0.3):
                pass


async def test_bad_addresses_are_named() -> None:
    with pytest.raises(HandshakeError, match="not a ws:// or wss:// address"):
        async with open_websocket("http://127.0.0.1/v2"):
            pass
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(HandshakeError, match=r"cannot connect: .*Connection refused"):
        async with open_websocket(f"ws://127.0.0.1:{port}/v2"):
            pass


async def test_frames_in_the_same_packet_as_the_upgrade_are_kept() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        key = await read_request(stream)
        await stream.send_all(switching(key) + frame(OP_TEXT, b"at once"))
        await trio.sleep_forever()

    async with raw_server(handler) as url, open_websocket(url) as ws:
        assert ws.pending() == 1
        assert await ws.get_message() == "at once"


# -- the parser alone ---------------------------------------------------------------------

messages = st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_any_fragmentation_and_chunking_gives_the_same_messages(
    sent: list[str | bytes], data: st.DataObject
) -> None:
    wire = b""
    pings: list[bytes] = []
    for message in sent:
        payload = message.encode() if isinstance(message, str) else message
        opcode = OP_TEXT if isinstance(message, str) else OP_BINARY
        cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            wire += frame(opcode if index == 0 else OP_CONTINUATION, piece, fin=last)
            if data.draw(st.booleans()):
                ping = data.draw(st.binary(max_size=125))
                pings.append(ping)
                wire += frame(OP_PING, ping)
    parser = FrameParser()
    position = 0
    while position < len(wire):
        step = data.draw(st.integers(1, 64))
        parser.receive(wire[position : position + step])
        position += step
    assert parser.closed is None
    assert list(parser.messages) == sent
    assert unmask_client_frames(parser.take_outgoing()) == [(OP_PONG, ping) for ping in pings]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_arbitrary_bytes_never_raise_and_never_buffer_past_the_limit(chunks: list[bytes]) -> None:
    parser = FrameParser(max_message_bytes=1000)
    for chunk in chunks:
        parser.receive(chunk)
        assert len(parser._buffer) <= 1000 + 14 + 200  # one frame below the limit, one chunk
    if parser.closed is not None:
        assert parser.closed.code in (CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA, CLOSE_TOO_BIG) or (
            1000 <= parser.closed.code < 5000
        )


@given(st.binary(max_size=2000), st.binary(min_size=4, max_size=4))
def test_masking_is_its_own_inverse(payload: bytes, mask: bytes) -> None:
    assert masked(masked(payload, mask), mask) == payload
    assert masked(payload, bytes(4)) == payload
