"""The messages producers send to the writer: one closed union, facts in the past tense."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

from gateway.events import Reply
from gateway.ledger import BalanceCommand, Fill, Transfer


class ReplySlot:
    """Where the writer leaves one reply and its requester waits for it.

    ``on_set``, if given, is called with the reply as it is left, in the
    writer's task: the command server writes a reply to its socket then,
    without waking the connection's task for it.
    """

    __slots__ = ("_event", "_on_set", "_reply", "visible_at")

    def __init__(self, on_set: Callable[[Reply], None] | None = None) -> None:
        self._event = trio.Event()
        self._on_set = on_set
        self._reply: Reply | None = None
        # The journal's length once the command was applied: a mirror shows the
        # command's effect once it has applied this many events.
        self.visible_at = 0

    def set(self, reply: Reply) -> None:
        self._reply = reply
        self._event.set()
        if self._on_set is not None:
            self._on_set(reply)

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> Reply:
        await self._event.wait()
        assert self._reply is not None
        return self._reply


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """allocate / release / adjust from a strategy; the reply follows its fsync."""

    command: BalanceCommand
    request_id: str | None
    reply: ReplySlot = field(default_factory=ReplySlot)


@dataclass(frozen=True, slots=True)
class QueryReceived:
    """A read of the ledger (``query``) or of the writer's health (``status``)."""

    what: str  # "query" | "status"
    currency: str | None
    reply: ReplySlot = field(default_factory=ReplySlot)


@dataclass(frozen=True, slots=True)
class FillReceived:
    fill: Fill


@dataclass(frozen=True, slots=True)
class TransferReceived:
    """A deposit, withdrawal or other non-trade movement the exchange streamed."""

    transfer: Transfer


@dataclass(frozen=True, slots=True)
class BalancesFetched:
    """The exchange's totals (scaled). ``applied`` is set once they are published.

    ``as_of_ns``: when the request was sent; transfers before it are in them.
    """

    totals: Mapping[str, int]
    as_of_ns: int = 0
    applied: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True, slots=True)
class CorrectionProposed:
    """The reconciler's verdict: ``currency``'s total should be ``new_total``.

    Applied only if slot 0 still equals ``seen_total``: a fill that landed since
    the reconciler looked makes the proposal stale, and it is dropped.
    """

    currency: str
    seen_total: int
    new_total: int


@dataclass(frozen=True, slots=True)
class ExchangeHealthChanged:
    """The fill stream connected or dropped, or REST started or stopped failing.

    None leaves that part as it was. The writer shows it in the store's header,
    so strategies can tell balances that may be stale.
    """

    feed_live: bool | None = None
    rest_ok: bool | None = None


@dataclass(frozen=True, slots=True)
class TotalsStreamed:
    """Totals the exchange streamed after the events before them (scaled): a cross-check.

    Never booked (the reconciler owns corrections); a total that differs from
    slot 0 is counted and logged, for the operator.
    """

    totals: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class HeartbeatTick:
    """Refresh the store's heartbeat so readers know the writer lives."""


WriterMessage = (
    CommandReceived
    | QueryReceived
    | FillReceived
    | TransferReceived
    | BalancesFetched
    | CorrectionProposed
    | ExchangeHealthChanged
    | TotalsStreamed
    | HeartbeatTick
)
