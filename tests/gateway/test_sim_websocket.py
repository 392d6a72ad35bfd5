"""The simulators' batched websocket sends, against a real trio-websocket server and client."""

from __future__ import annotations

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from gateway.exchanges.simws import MAX_BATCH, batches_writes, send_messages, take_queued


async def _serve_one(
    nursery: trio.Nursery,
) -> tuple[str, trio.MemoryReceiveChannel[WebSocketConnection]]:
    """A trio-websocket server whose accepted connections come out of the channel."""
    accepted_send, accepted = trio.open_memory_channel[WebSocketConnection](1)

    async def accept(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await accepted_send.send(ws)
        await trio.sleep_forever()

    server = await nursery.start(serve_websocket, accept, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}/", accepted


async def test_a_batch_arrives_as_its_messages_in_order(nursery: trio.Nursery) -> None:
    url, accepted = await _serve_one(nursery)
    async with open_websocket_url(url) as client:
        server_side = await accepted.receive()
        # The installed trio-websocket still has what a batch needs: were its insides
        # renamed, the simulators would quietly fall back to a write a message.
        assert batches_writes(server_side)
        messages = [f'{{"n": {n}, "pad": "{"x" * (n % 300)}"}}' for n in range(1000)]
        # Past what the socket buffers hold: the client reads while the write goes on.
        nursery.start_soon(send_messages, server_side, messages)
        with trio.fail_after(10):
            received = [await client.get_message() for _ in messages]
        assert received == messages


async def test_a_batch_to_a_closed_connection_says_so(nursery: trio.Nursery) -> None:
    url, accepted = await _serve_one(nursery)
    async with open_websocket_url(url):
        server_side = await accepted.receive()
    with trio.fail_after(10):
        with pytest.raises(ConnectionClosed):
            for _ in range(100):  # the close reaches the server side within a few writes
                await send_messages(server_side, ["after the close"])
                await trio.sleep(0.01)


async def test_take_queued_stops_at_the_bound_and_at_an_empty_queue() -> None:
    send, receive = trio.open_memory_channel[str](MAX_BATCH * 2)
    for n in range(MAX_BATCH + 5):
        send.send_nowait(str(n))
    first = receive.receive_nowait()
    assert take_queued(first, receive) == [str(n) for n in range(MAX_BATCH)]
    rest = take_queued(receive.receive_nowait(), receive)
    assert rest == [str(n) for n in range(MAX_BATCH, MAX_BATCH + 5)]
    await send.aclose()
