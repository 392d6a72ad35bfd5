"""What both simulators share on their websocket side: sending a batch of messages.

Only the simulators use it (tests, the demo, benchmarks); the gateway's own
code never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.events import TextMessage

# A batch is one write: bounded, so that one subscriber's backlog is not one huge buffer.
MAX_BATCH: Final = 256

# What trio-websocket's own send_message uses inside (it has no public call for a batch).
_INSIDE: Final = ("_wsproto", "_stream", "_stream_lock", "_close_reason", "_abort_web_socket")


def batches_writes(ws: WebSocketConnection) -> bool:
    """Whether :func:`send_messages` can write a batch at once with this trio-websocket."""
    return all(hasattr(ws, name) for name in _INSIDE)


async def send_messages(ws: WebSocketConnection, messages: Sequence[str]) -> None:
    """Send ``messages`` as text messages, each its own frame, in one write.

    ``send_message`` makes a write and two trips through the scheduler for each
    message: at 10,000 fills/s that was a third of the simulator's CPU, and the
    simulator must offer 10,000/s beside the gateway it feeds, on the same two
    cores (docs/performance.md). This does what ``send_message`` does inside,
    once for the batch, and falls back to it should trio-websocket's insides
    change (a test says so if they do).

    Raises:
        ConnectionClosed: as ``send_message`` does.
    """
    if not batches_writes(ws):
        for message in messages:
            await ws.send_message(message)
        return
    inside: Any = ws  # trio-websocket's private names, checked above
    if inside._close_reason:
        raise ConnectionClosed(inside._close_reason)
    data = b"".join([inside._wsproto.send(TextMessage(data=message)) for message in messages])
    async with inside._stream_lock:
        try:
            await inside._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await inside._abort_web_socket()
            raise ConnectionClosed(inside._close_reason) from None


def take_queued(first: str, receive: trio.MemoryReceiveChannel[str]) -> list[str]:
    """``first`` and whatever else is queued behind it now, up to :data:`MAX_BATCH`."""
    batch = [first]
    while len(batch) < MAX_BATCH:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch
