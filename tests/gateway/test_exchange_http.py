"""An exchange's REST answer is read with a bound, against a real server that sends too much.

Found in review: httpx held a whole body in memory, with a timeout per read, so a
server streaming without end (or a small gzip body inflating without end) grew the
gateway until the kernel killed it, and again after each restart.
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import pytest
import trio

from gateway.exchanges.binance.errors import BinanceProtocolError
from gateway.exchanges.binance.rest import BinanceRestClient
from gateway.exchanges.http import MAX_RESPONSE_BYTES
from gateway.exchanges.kraken.errors import KrakenProtocolError
from gateway.exchanges.kraken.rest import KrakenRestClient

CHUNK = b"x" * (1 << 20)
# 64 MiB of zeros is ~64 kB of gzip: small on the wire, too large once inflated.
BOMB = gzip.compress(bytes(2 * MAX_RESPONSE_BYTES), compresslevel=9)


async def _declared(stream: trio.SocketStream) -> None:
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
    await trio.sleep_forever()


async def _endless(stream: trio.SocketStream) -> None:
    await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    while True:
        await stream.send_all(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))


async def _bomb(stream: trio.SocketStream) -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(BOMB)}\r\n\r\n"
    await stream.send_all(head.encode() + BOMB)
    await trio.sleep_forever()


Answer = Callable[[trio.SocketStream], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[str]]]:
    async with trio.open_nursery() as nursery:

        async def start(answer: Answer) -> str:
            async def handle(stream: trio.SocketStream) -> None:
                with trio.move_on_after(30):
                    request = b""
                    while b"\r\n\r\n" not in request:
                        request += await stream.receive_some(65536)
                    # The client gives up reading: what it should do.
                    with contextlib.suppress(trio.BrokenResourceError):
                        await answer(stream)

            listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"

        yield start
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "answer", [_declared, _endless, _bomb], ids=["declared", "endless", "gzip"]
)
async def test_kraken_refuses_an_answer_past_the_bound(
    serve: Callable[[Answer], Awaitable[str]], answer: Answer
) -> None:
    url = await serve(answer)
    async with KrakenRestClient(url) as client:
        with trio.fail_after(20), pytest.raises(KrakenProtocolError, match="Time: the answer"):
            await client.public("Time")


async def test_binance_refuses_an_answer_past_the_bound(
    serve: Callable[[Answer], Awaitable[str]],
) -> None:
    url = await serve(_endless)
    async with BinanceRestClient(url, api_key="KEY", api_secret="SECRET") as client:
        with trio.fail_after(20), pytest.raises(BinanceProtocolError, match="larger than 32 MiB"):
            await client.public("/api/v3/time")
