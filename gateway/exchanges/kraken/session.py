"""The Kraken exchange session: balances from REST, fills and transfers from WS v2.

Implements ``gateway.service.ExchangeSession``. At start it checks that the
API key has every permission the gateway's calls need. Each connection takes
a fresh token and subscribes to ``executions`` (with ``snap_trades``) and
``balances``. It closes any gap between the ledger's position and the
snapshot with ``TradesHistory`` (paced by the API counter, however long that
takes), then feeds the snapshot's trades and what arrived meanwhile to the
writer (which skips what it has applied), and closes any gap in transfers with
``Ledgers`` beside the live stream. It reconnects with backoff when the connection
drops or goes quiet.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from functools import partial
from typing import Final, TypeVar

import trio

from gateway.errors import BootstrapError, only_leaf
from gateway.exchanges.base import ExchangeHealth
from gateway.exchanges.feed import SilenceTimer, deliver, describe_failure
from gateway.exchanges.kraken.adapter import KRAKEN_WS_URL
from gateway.exchanges.kraken.assets import AssetMap
from gateway.exchanges.kraken.errors import (
    PERMISSIONS,
    KrakenAPIError,
    KrakenAuthError,
    KrakenError,
    KrakenProtocolError,
)
from gateway.exchanges.kraken.parsing import (
    EARN_SUFFIX,
    SkippedExecution,
    WsAck,
    WsBalances,
    WsExecutions,
    WsHeartbeat,
    WsIgnored,
    WsStatus,
    parse_balance,
    parse_rest_ledger_entry,
    parse_rest_trade,
    parse_ws_message,
)
from gateway.exchanges.kraken.rest import KrakenRestClient, RetryPolicy
from gateway.exchanges.numbers import MAX_ID, exact_sum, is_printable_id
from gateway.exchanges.websocket import (
    CertificateRefusedError,
    WebSocket,
    WebSocketError,
    open_websocket,
)
from gateway.ledger import Fill, Transfer
from gateway.messages import ExchangeHealthChanged, FillReceived, TransferReceived, WriterMessage

logger = logging.getLogger(__name__)
T = TypeVar("T")

SNAPSHOT_TRADES: Final = 50
HEARTBEAT_TIMEOUT_S: Final = 10.0
SUBSCRIBE_TIMEOUT_S: Final = 10.0
STARTUP_ATTEMPTS: Final = 5
PROBED_TOKEN_MAX_AGE_S: Final = 60.0  # Kraken's limit is 15 minutes; a start takes seconds
# A bound against a runaway loop, not a limit on gaps: 10,000 pages are 500,000 trades.
MAX_CATCH_UP_PAGES: Final = 10_000
CATCH_UP_PAGE: Final = 50  # TradesHistory's page size
QUERY_ORDERS_CHUNK: Final = 50  # the most txids QueryOrders takes in one call
# A connection asks Ledgers once it has held this long.
TRANSFER_CATCH_UP_DELAY_S: Final = 5.0
# The ledger entry kinds a connection's catch-up asks for, one Ledgers filter each.
CATCH_UP_TRANSFER_KINDS: Final = ("deposit", "withdrawal", "transfer")
# TradesHistory's start is whole seconds and exclusive: ask from a second before.
CATCH_UP_OVERLAP_S: Final = 1
# Messages the connection keeps reading (and holds) while a catch-up runs: ~15 MB at most.
WS_QUEUE_MESSAGES: Final = 20_000


def format_ns(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns % 10**9 // 10**6:03d}"


def _trade_time(trade: object) -> Decimal:
    """An entry's time to page by. One that is not an object, or whose time is not a
    number, sorts first (``max`` raised out of the catch-up: ``.get`` on a string, and
    Decimal's NaN cannot be compared); such an entry is refused when parsed."""
    if not isinstance(trade, dict):
        return Decimal(0)
    try:
        moment = Decimal(str(trade.get("time")))
    except ArithmeticError:
        return Decimal(0)
    return moment if moment.is_finite() else Decimal(0)


def _parse_rest_trade(
    txid: str, trade: object, assets: AssetMap, userrefs: dict[str, int | None]
) -> Fill | SkippedExecution:
    try:
        return parse_rest_trade(txid, trade, assets, userrefs)
    except KrakenProtocolError as exc:
        return SkippedExecution(txid[:MAX_ID], "malformed", str(exc))


class StreamStale(Exception):  # noqa: N818 - a condition that ends one connection
    """No message (not even a heartbeat) for too long: the connection is dead."""


class KrakenSession:
    """One Kraken account for the gateway: totals, fills, and the state of both."""

    def __init__(
        self,
        rest: KrakenRestClient,
        ws_url: str = KRAKEN_WS_URL,
        *,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
        reconnect: RetryPolicy | None = None,
    ) -> None:
        self.rest = rest
        self.ws_url = ws_url
        self.position_ns: Callable[[], int] = lambda: 0
        self.transfer_position_ns: Callable[[], int] = lambda: 0
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.reconnect = reconnect or RetryPolicy(attempts=1_000_000, base_s=0.25, cap_s=10.0)
        self._assets: AssetMap | None = None
        self.ws_state = "disconnected"
        self.system = "unknown"
        self.connections = 0
        self.reconnects = 0
        self.fills_received = 0
        self.caught_up = 0
        self.transfers_received = 0
        self.transfers_caught_up = 0
        self._transfers_pending = False  # a reconnect's transfer catch-up is under way
        self.catch_up: str | None = None  # progress of a catch-up while one runs
        self.skipped: dict[str, int] = {}  # executions not booked, by why
        self.last_error: str | None = None
        # The permission probe's token, and when (Trio time): it serves the first
        # connection, so a start spends 8 of the API counter, not 9. Later ones take new.
        self._probed_token: tuple[str, float] | None = None

    def account(self) -> str:
        return self.rest.account

    def feed_connection(self) -> int | None:
        """Which connection is live and caught up (a number), or None while none is.

        Caught up means transfers too: a REST total compared while a reconnect's
        ``Ledgers`` catch-up is still on its way would see them as drift.
        """
        live = self.ws_state == "live" and not self._transfers_pending
        return self.connections if live else None

    def health(self) -> ExchangeHealth:
        return ExchangeHealth(
            feed=self.ws_state,
            feed_live=self.ws_state == "live",
            reconnects=self.reconnects,
            rest_failures=self.rest.failures,
            last_error=self.last_error,
            details=self._details(),
        )

    def _details(self) -> dict[str, object]:
        return {
            "exchange_system": self.system,
            "fills_received": self.fills_received,
            "fills_caught_up": self.caught_up,
            "transfers_received": self.transfers_received,
            "transfers_caught_up": self.transfers_caught_up,
            "catch_up": self.catch_up,
            "executions_skipped": dict(self.skipped),
            "rest_calls": self.rest.calls,
            "rest_counter_wait_s": round(self.rest.counter.waited_s, 1),
            "rest_counter_refusals": self.rest.counter.refusals,
        }

    async def assets(self, *, refresh: bool = False) -> AssetMap:
        """The asset and pair maps, fetched once; ``refresh`` fetches them again."""
        if self._assets is None or refresh:
            self._assets = AssetMap.from_rest(
                await self.rest.assets(), await self.rest.asset_pairs()
            )
            if refresh:
                logger.info("Kraken asset and pair maps refreshed")
        return self._assets

    async def check_permissions(self) -> None:
        """Call each private method the gateway relies on, once, and name what is refused.

        Raises:
            BootstrapError: one line naming every missing permission, or why the
                key was refused.
        """
        probes: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("BalanceEx", self.rest.balance_ex),
            ("GetWebSocketsToken", self._probe_token),
            ("TradesHistory", lambda: self.rest.trades_history(start=int(time.time()))),
            ("OpenOrders", self.rest.open_orders),
            ("Ledgers", lambda: self.rest.ledgers(start=int(time.time()))),
        ]
        missing = []
        for method, probe in probes:
            try:
                await probe()
            except KrakenAuthError as exc:
                needed = PERMISSIONS.get(method)
                if not exc.permission_denied or needed is None:
                    raise BootstrapError(f"Kraken refused the API key: {exc}") from None
                missing.append(needed)
            except KrakenError as exc:
                raise BootstrapError(f"Kraken's REST API failed: {exc}") from None
        if missing:
            raise BootstrapError(
                "the Kraken API key lacks the permission(s) "
                + ", ".join(repr(m) for m in missing)
                + " (docs/kraken.md lists what the gateway needs)"
            )

    async def _probe_token(self) -> None:
        self._probed_token = (await self.rest.websockets_token(), trio.current_time())

    async def _token(self) -> str:
        """A token for a new connection: the probe's, if it is unused and recent, else a
        fresh one (Kraken: a new token for every connection, used within 15 minutes)."""
        probed, self._probed_token = self._probed_token, None
        if probed is not None and trio.current_time() - probed[1] < PROBED_TOKEN_MAX_AGE_S:
            return probed[0]
        return await self.rest.websockets_token()

    # -- balances ------------------------------------------------------------------------

    async def fetch_totals(self) -> dict[str, Decimal]:
        """Each currency's total balance (``BalanceEx``, falling back to ``Balance``).

        Auto-earn balances (``.F``) count with their base asset: Kraken spends them
        through it ("use USDT to transact with your USDT and USDT.F balances"), so
        a spot sell may draw on ``XBT.F``. Other suffixed balances (staked, bonded,
        on hold) stay apart under their own names.

        Raises:
            KrakenError: after the REST client's retries.
        """
        assets = await self.assets()
        try:
            raw = {k: v.get("balance") for k, v in (await self.rest.balance_ex()).items()}
        except KrakenAPIError as exc:
            if not any("Unknown method" in e or "Invalid arguments" in e for e in exc.errors):
                raise
            logger.warning("BalanceEx refused (%s); using Balance", exc)
            raw = dict(await self.rest.balance())
        totals: dict[str, Decimal] = {}
        for key, value in raw.items():
            amount = parse_balance(key, value)
            try:
                currency = assets.asset(key).removesuffix(EARN_SUFFIX)
            except KrakenProtocolError as exc:
                logger.warning("a balance left out: %s", exc)
                continue
            totals[currency] = exact_sum(totals.get(currency, Decimal(0)), amount)
        return totals

    # -- fills -------------------------------------------------------------------------

    async def run_fills(
        self,
        send: trio.MemorySendChannel[WriterMessage],
        *,
        position_ns: Callable[[], int],
        transfer_position_ns: Callable[[], int],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Stream fills and transfers to the writer until cancelled; reconnect on failure.

        ``started()`` after the first subscription's snapshot and its catch-up
        (every fill since ``position_ns()``) have been sent to the writer; the
        transfers since ``transfer_position_ns()`` follow beside the live
        stream. A catch-up takes as long as Kraken's API counter needs; the
        stream is read (and held) meanwhile.

        Raises:
            BootstrapError: the key lacks a permission, the server's certificate
                does not verify, or no subscription after ``STARTUP_ATTEMPTS`` tries
                at start.
        """
        self.position_ns = position_ns
        self.transfer_position_ns = transfer_position_ns
        live_once = False
        live_now = False

        def on_live() -> None:
            nonlocal live_once, live_now
            live_now = True
            if not live_once:
                live_once = True
                task_status.started()

        async with send:
            await self.check_permissions()
            attempt = 0
            while True:
                live_now = False
                try:
                    await self._one_connection(send, on_live)
                    attempt = 0
                    logger.warning("Kraken executions stream closed; reconnecting")
                except (
                    WebSocketError, OSError, StreamStale, KrakenError, trio.TooSlowError
                ) as exc:  # fmt: skip
                    self.last_error = describe_failure(exc)
                    # A certificate that does not verify will not on the next try either.
                    refused = isinstance(exc, CertificateRefusedError)
                    if not live_once and (refused or attempt + 1 >= STARTUP_ATTEMPTS):
                        hint = "" if isinstance(exc, KrakenError) else " (check --ws-url)"
                        raise BootstrapError(
                            f"could not subscribe to Kraken executions at {self.ws_url}: "
                            f"{self.last_error}{hint}"
                        ) from exc
                    logger.warning("Kraken executions stream failed: %s", self.last_error)
                finally:
                    self.catch_up = None
                if live_once:
                    await send.send(ExchangeHealthChanged(feed_live=False))
                if live_now:
                    attempt = 0  # it was live: reconnect at once, back off only if that fails
                self.ws_state = "reconnecting"
                self.reconnects += 1
                delay = 0.0 if attempt == 0 else self.reconnect.delay(attempt)
                attempt += 1
                await trio.sleep(delay)

    async def _one_connection(
        self, send: trio.MemorySendChannel[WriterMessage], on_live: Callable[[], None]
    ) -> None:
        self.ws_state = "connecting"
        decimals = (await self.assets()).decimals
        token = await self._token()
        async with open_websocket(self.ws_url) as ws:
            self.connections += 1
            subscribe = {
                "method": "subscribe",
                "params": {
                    "channel": "executions",
                    "token": token,
                    "snap_trades": True,
                    "snap_orders": False,
                    # Only open / close transitions (new, filled, canceled, expired):
                    # pending_new and amended carry no fill, and would double the traffic.
                    "order_status": False,
                },
                "req_id": self.connections,
            }
            await ws.send_message(json.dumps(subscribe))
            balances = {
                "method": "subscribe",
                "params": {"channel": "balances", "token": token, "snapshot": False},
                "req_id": -self.connections,
            }
            await ws.send_message(json.dumps(balances))
            snapshot: WsExecutions | None = None
            # What arrives before the catch-up is done: sent after it (the writer
            # skips what it has).
            held_fills: list[Fill] = []
            held: list[Transfer] = []
            with trio.fail_after(SUBSCRIBE_TIMEOUT_S):
                acks = 0
                while snapshot is None or acks < 2:
                    message = parse_ws_message(await ws.get_message(), decimals)
                    if isinstance(message, WsAck) and message.method == "subscribe":
                        if not message.success:
                            raise KrakenProtocolError(f"subscribe refused: {message.error}")
                        acks += 1
                    elif isinstance(message, WsStatus):
                        self.system = message.system
                    elif isinstance(message, WsExecutions):
                        if message.snapshot and snapshot is None:
                            snapshot = message
                        else:  # an update while the balances ack is awaited
                            self._count_skipped(message.skipped)
                            held_fills.extend(message.fills)
                    elif isinstance(message, WsBalances):
                        self._count_skipped(message.skipped)
                        held.extend(message.transfers)
            # Not under the subscribe timeout: a catch-up lasts as long as the counter
            # needs. The connection keeps being read meanwhile (into its queue), so
            # Kraken never sees a stalled client.
            async with ws.reading_ahead(WS_QUEUE_MESSAGES):
                await self._take_snapshot(snapshot, send)
                for fill in held_fills:
                    self.fills_received += 1
                    await send.send(FillReceived(fill))
                for transfer in held:
                    await send.send(TransferReceived(transfer))
            try:
                await self._live(ws, send, decimals, on_live)
            except BaseExceptionGroup as group:
                # One failure of the connection (closed, stale, a catch-up refused) is
                # handled by its type, as if no nursery had wrapped it.
                leaf = only_leaf(group)
                if leaf is None:
                    raise
                raise leaf from None

    async def _live(
        self,
        ws: WebSocket,
        send: trio.MemorySendChannel[WriterMessage],
        decimals: Mapping[str, int],
        on_live: Callable[[], None],
    ) -> None:
        """Go live (catching up transfers at start, or beside the stream on a reconnect)."""
        async with trio.open_nursery() as nursery:
            # Ledgers beside the live stream, not before it, once the connection has
            # held a while: trade catch-ups need the API counter more (a flapping link
            # or a crash loop spends nothing on it), and order does not matter for
            # transfers (once by ledger id; those before the bootstrap's request are
            # in its totals). The reconciler waits meanwhile (feed_connection None).
            self._transfers_pending = True
            nursery.start_soon(self._send_transfers_caught_up, send, TRANSFER_CATCH_UP_DELAY_S)
            self.ws_state = "live"
            logger.info("Kraken executions and balances streams live (%s)", self.ws_url)
            await send.send(ExchangeHealthChanged(feed_live=True))
            on_live()
            await self._stream(ws, send, decimals)

    async def _send_transfers_caught_up(
        self, send: trio.MemorySendChannel[WriterMessage], after_s: float = 0.0
    ) -> None:
        try:
            await trio.sleep(after_s)
            for transfer in await self._catch_up_transfers():
                await send.send(TransferReceived(transfer))
        finally:
            self._transfers_pending = False

    async def _stream(
        self,
        ws: WebSocket,
        send: trio.MemorySendChannel[WriterMessage],
        decimals: Mapping[str, int],
    ) -> None:
        """The live connection: every execution and ledger entry to the writer, in order."""
        silence = SilenceTimer(self.heartbeat_timeout_s)
        with silence.scope:
            while True:
                text = await ws.get_message()
                silence.heard()
                message = parse_ws_message(text, decimals)
                if isinstance(message, WsExecutions):
                    self._count_skipped(message.skipped)
                    for fill in message.fills:
                        self.fills_received += 1
                        await deliver(send, FillReceived(fill))
                elif isinstance(message, WsBalances):
                    self._count_skipped(message.skipped)
                    for transfer in message.transfers:
                        self.transfers_received += 1
                        await deliver(send, TransferReceived(transfer))
                elif isinstance(message, WsStatus):
                    self.system = message.system
                    logger.info("Kraken system status: %s", message.system)
                elif isinstance(message, WsHeartbeat | WsAck | WsIgnored):
                    pass
        raise StreamStale(f"nothing for {self.heartbeat_timeout_s} s")

    def _count_skipped(self, skipped: tuple[SkippedExecution, ...]) -> None:
        """Log and count executions that are not booked; the reconciler mends balances."""
        for item in skipped:
            self.skipped[item.kind] = self.skipped.get(item.kind, 0) + 1
            logger.warning("Kraken entry %s not booked (%s): %s", item.exec_id, item.kind,
                           item.reason)  # fmt: skip

    async def _take_snapshot(
        self, message: WsExecutions, send: trio.MemorySendChannel[WriterMessage]
    ) -> None:
        """Feed the snapshot, first closing any gap between the ledger and it.

        The snapshot holds the last 50 trades. When it is full and its oldest is
        newer than the ledger's position (its epoch or its last fill), trades in
        between may be missing: ``TradesHistory`` fetches them.
        """
        self._count_skipped(message.skipped)
        position = self.position_ns()
        fills = sorted(message.fills, key=lambda f: f.timestamp_ns)
        full = len(fills) + len(message.skipped) >= SNAPSHOT_TRADES
        if full and (not fills or fills[0].timestamp_ns > position):
            logger.info(
                "the snapshot's oldest trade (%s) is newer than the ledger's position (%s): "
                "catching up from REST", format_ns(fills[0].timestamp_ns) if fills else "none",
                format_ns(position),
            )  # fmt: skip
            for fill in await self._catch_up(position):
                self.caught_up += 1
                await send.send(FillReceived(fill))
        for fill in fills:
            self.fills_received += 1
            await send.send(FillReceived(fill))

    async def _history(
        self,
        what: str,
        fetch: Callable[..., Awaitable[tuple[dict[str, object], int | None]]],
        since_ns: int,
    ) -> dict[str, object]:
        """Every entry of a history method (``TradesHistory``, ``Ledgers``) after ``since_ns``.

        ``start`` is whole seconds, as Kraken documents it, and exclusive, and
        several entries may share a second: ask from a second earlier (the
        writer skips what it has). Pages come newest first, by offset. Entries
        made meanwhile would push older ones to later offsets, faster than a
        paced catch-up pages (a hole, and then a loop over entries already
        seen), so after the first page the window ends at its newest entry
        (``end``, inclusive); later ones come on the stream.
        """
        start = max(0, since_ns // 1_000_000_000 - CATCH_UP_OVERLAP_S)
        entries: dict[str, object] = {}
        count: int | None = None
        end: str | None = None
        for page in range(MAX_CATCH_UP_PAGES):
            self.catch_up = f"{what}: {len(entries)} of {count or '?'} fetched"
            batch, count = await self._patiently(
                partial(fetch, start=start, end=end, ofs=len(entries))
            )
            before = len(entries)
            entries.update(batch)
            if end is None and batch:
                end = max(batch, key=lambda key: _trade_time(batch[key]))
            if len(batch) < CATCH_UP_PAGE or (count is not None and len(entries) >= count):
                break
            if len(entries) == before:
                raise KrakenProtocolError(f"{what} paging brought nothing new")
            if page % 10 == 9:
                logger.info("catching up: %d of %s %s fetched", len(entries), count or "?", what)
            if page + 1 == MAX_CATCH_UP_PAGES:
                logger.error("catch-up stopped after %d pages of %s", MAX_CATCH_UP_PAGES, what)
        return entries

    async def _catch_up_transfers(self) -> list[Transfer]:
        """Deposits, withdrawals and transfers since the ledger's transfer position, oldest first.

        The ``balances`` channel has no snapshot of entries, so every connection
        asks ``Ledgers``, one call per kind when nothing happened (the counter's
        +2 each), filtered by ``type``: unfiltered, a busy account's trade
        entries (two a trade) would cost more pages than the trade catch-up.
        Rarer kinds missed in a gap (staking, adjustments) are the reconciler's.
        """
        since = self.transfer_position_ns()
        entries: dict[str, object] = {}
        for kind in CATCH_UP_TRANSFER_KINDS:
            fetch = partial(self.rest.ledgers, kind=kind)
            entries.update(await self._history(f"{kind} entries", fetch, since))
        assets = await self.assets()
        transfers = []
        skipped = []
        for ledger_id, entry in entries.items():
            parsed = parse_rest_ledger_entry(ledger_id, entry, assets)
            if isinstance(parsed, SkippedExecution):
                skipped.append(parsed)
            elif parsed is not None:
                transfers.append(parsed)
        self._count_skipped(tuple(skipped))
        self.transfers_caught_up += len(transfers)
        if transfers:
            # At info: the window opens a second early and the stream runs meanwhile, so
            # some are known; the writer logs each one it books and skips the rest.
            logger.info("Ledgers: %d deposits, withdrawals and transfers since the ledger's "
                        "position (the writer books those it has not)", len(transfers))  # fmt: skip
        return sorted(transfers, key=lambda t: t.timestamp_ns)

    async def _catch_up(self, since_ns: int) -> list[Fill]:
        """Every trade after ``since_ns`` from REST, oldest first, with its order's userref."""
        started = trio.current_time()
        trades = await self._history("trades", self.rest.trades_history, since_ns)
        # Only ids Kraken could have written are looked up (a trade with another is
        # set aside as malformed when it is parsed).
        order_ids = sorted({
            order_id for t in trades.values() if isinstance(t, dict)
            and isinstance(order_id := t.get("ordertxid"), str) and is_printable_id(order_id)
        })  # fmt: skip
        userrefs: dict[str, int | None] = {}
        for first in range(0, len(order_ids), QUERY_ORDERS_CHUNK):
            self.catch_up = f"orders: {first} of {len(order_ids)} looked up"
            chunk = order_ids[first : first + QUERY_ORDERS_CHUNK]
            orders = await self._patiently(partial(self.rest.query_orders, chunk))
            for txid, order in orders.items():
                userref = order.get("userref") if isinstance(order, dict) else None
                bad = isinstance(userref, bool) or not isinstance(userref, int)
                userrefs[txid] = None if bad else userref
        assets = await self.assets()
        if any(isinstance(t, dict) and t.get("pair") not in assets.pairs for t in trades.values()):
            # A pair listed since the maps were fetched: fetch them again, once a catch-up.
            assets = await self._patiently(partial(self.assets, refresh=True))
        fills = []
        skipped = []
        for txid, trade in trades.items():
            parsed = _parse_rest_trade(txid, trade, assets, userrefs)
            if isinstance(parsed, SkippedExecution):
                skipped.append(parsed)
            else:
                fills.append(parsed)
        self._count_skipped(tuple(skipped))
        logger.warning(
            "caught up %d trades since the ledger's position (%d REST calls in %.1f s)",
            len(fills), -(-len(trades) // CATCH_UP_PAGE) + -(-len(order_ids) // QUERY_ORDERS_CHUNK),
            trio.current_time() - started,
        )  # fmt: skip
        return sorted(fills, key=lambda f: f.timestamp_ns)

    async def _patiently(self, call: Callable[[], Awaitable[T]]) -> T:
        """A catch-up call, retried for as long as its failure is transient.

        Giving up would drop the connection and start the catch-up over from
        the same position, with a wider gap: the stream is held meanwhile.
        """
        attempt = 0
        while True:
            try:
                return await call()
            except KrakenError as exc:
                if not exc.retryable:
                    raise
                attempt += 1
                delay = self.reconnect.delay(attempt)
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("catch-up: %s; trying again in %.1f s", exc, delay)
                await trio.sleep(delay)
