"""What every adapter's fill stream shares: a silence limit, a cheap hand-off to the writer,
and failures in words."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from gateway.exchanges.websocket import WebSocketError

if TYPE_CHECKING:
    from gateway.messages import WriterMessage


class SilenceTimer:
    """A cancel scope that fires once nothing has been heard for ``seconds``.

    Enter :attr:`scope` around the receiving loop and call :meth:`heard` on
    every message. A Trio deadline moved on every message costs about what
    parsing the message does, so it is moved only once it is 1% stale: a
    silence is detected after 99-100% of ``seconds``. The scope covers the
    whole loop, the hand-off to the writer included: a writer that cannot take
    a fill for that long leaves the stream as stale as a silent exchange
    would, and the reconnection's catch-up repairs either.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._slack = seconds / 100
        self.scope = trio.CancelScope(deadline=trio.current_time() + seconds)

    def heard(self) -> None:
        until = trio.current_time() + self.seconds
        if self.scope.deadline < until - self._slack:
            self.scope.deadline = until


async def deliver(send: trio.MemorySendChannel[WriterMessage], message: WriterMessage) -> None:
    """Hand ``message`` to the writer, waiting only when its queue is full.

    A plain ``send`` yields to the scheduler on every message even with room
    in the queue; the stream's next receive checkpoints anyway.
    """
    try:
        send.send_nowait(message)
    except trio.WouldBlock:
        await send.send(message)


def describe_failure(exc: BaseException) -> str:
    """A stream's failure in words: the websocket's own errors are words already."""
    if isinstance(exc, WebSocketError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
