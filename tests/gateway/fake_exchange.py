"""An in-process stand-in for the exchange side: fixed totals, fills pushed by the test."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal

import trio

from gateway.exchanges.base import ExchangeHealth
from gateway.ledger import Fill
from gateway.messages import ExchangeHealthChanged, FillReceived, WriterMessage


class FakeExchange:
    """Serves ``totals`` as the REST snapshot; ``push_fill`` plays the fill stream."""

    def __init__(
        self, totals: Mapping[str, Decimal | int | str], account_name: str = "fake account"
    ) -> None:
        self.totals = {c: Decimal(v) for c, v in totals.items()}
        self.account_name = account_name
        self._send: trio.MemorySendChannel[WriterMessage] | None = None
        self.fetches = 0

    async def fetch_totals(self) -> Mapping[str, Decimal]:
        self.fetches += 1
        return dict(self.totals)

    async def run_fills(
        self,
        send: trio.MemorySendChannel[WriterMessage],
        *,
        position_ns: Callable[[], int],
        transfer_position_ns: Callable[[], int],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with send:
            self._send = send
            await send.send(ExchangeHealthChanged(feed_live=True))
            task_status.started()
            await trio.sleep_forever()

    def account(self) -> str:
        return self.account_name

    def feed_connection(self) -> int | None:
        return 1 if self._send is not None else None

    def health(self) -> ExchangeHealth:
        live = self._send is not None
        return ExchangeHealth(
            feed="live" if live else "connecting", feed_live=live, details={"fetches": self.fetches}
        )

    async def push_fill(self, fill: Fill) -> None:
        await self.push(FillReceived(fill))

    async def push(self, message: WriterMessage) -> None:
        """Any message into the writer's channel, as a producer would send it."""
        assert self._send is not None, "the fill stream has not started"
        await self._send.send(message)
