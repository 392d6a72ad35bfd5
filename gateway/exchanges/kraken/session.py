"""The Kraken exchange session: balances from REST, fills from the WS v2 ``executions`` channel.

Implements ``gateway.service.ExchangeSession``. The fill stream takes a fresh
token for every connection, subscribes with ``snap_trades``, feeds the
snapshot's trades to the writer (which skips those already applied), closes a
gap the snapshot cannot cover with ``TradesHistory``, and reconnects with
backoff when the connection drops or goes quiet.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Final

import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from gateway.errors import BootstrapError
from gateway.exchanges.kraken.assets import AssetMap
from gateway.exchanges.kraken.errors import KrakenAPIError, KrakenError, KrakenProtocolError
from gateway.exchanges.kraken.parsing import (
    WsAck,
    WsExecutions,
    WsHeartbeat,
    WsIgnored,
    WsStatus,
    parse_rest_trade,
    parse_ws_message,
)
from gateway.exchanges.kraken.rest import KrakenRestClient, RetryPolicy
from gateway.ledger import Fill
from gateway.messages import ExchangeHealthChanged, FillReceived, WriterMessage

logger = logging.getLogger(__name__)

KRAKEN_WS_URL: Final = "wss://ws-auth.kraken.com/v2"
SNAPSHOT_TRADES: Final = 50
HEARTBEAT_TIMEOUT_S: Final = 10.0
SUBSCRIBE_TIMEOUT_S: Final = 10.0
STARTUP_ATTEMPTS: Final = 5
# A bound against a runaway loop, not a limit on gaps: 10,000 pages are 500,000 trades.
MAX_CATCH_UP_PAGES: Final = 10_000
CATCH_UP_PAGE: Final = 50  # TradesHistory's page size
QUERY_ORDERS_CHUNK: Final = 20
CATCH_UP_OVERLAP_NS: Final = 1_000_000_000


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
        self.last_fill_ns: Callable[[], int] = lambda: 0
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.reconnect = reconnect or RetryPolicy(attempts=1_000_000, base_s=0.25, cap_s=10.0)
        self._assets: AssetMap | None = None
        self.ws_state = "disconnected"
        self.system = "unknown"
        self.connections = 0
        self.reconnects = 0
        self.fills_received = 0
        self.caught_up = 0
        self.last_error: str | None = None

    def feed_connection(self) -> int | None:
        """Which connection is live and caught up (a number), or None while none is."""
        return self.connections if self.ws_state == "live" else None

    def status(self) -> dict[str, object]:
        return {
            "websocket": self.ws_state,
            "exchange_system": self.system,
            "ws_reconnects": self.reconnects,
            "fills_received": self.fills_received,
            "fills_caught_up": self.caught_up,
            "rest_calls": self.rest.calls,
            "rest_failures": self.rest.failures,
            "exchange_last_error": self.last_error,
        }

    async def assets(self) -> AssetMap:
        if self._assets is None:
            self._assets = AssetMap.from_rest(
                await self.rest.assets(), await self.rest.asset_pairs()
            )
        return self._assets

    # -- balances ------------------------------------------------------------------------

    async def fetch_totals(self) -> dict[str, Decimal]:
        """Each currency's total balance (``BalanceEx``, falling back to ``Balance``).

        Suffixed balances (earn, staking) stay apart under their own names.

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
            try:
                amount = Decimal(str(value))
            except ArithmeticError:
                raise KrakenProtocolError(f"balance of {key} is not a number: {value!r}") from None
            if not amount.is_finite():
                raise KrakenProtocolError(f"balance of {key} is not finite: {value!r}")
            currency = assets.asset(key)
            totals[currency] = totals.get(currency, Decimal(0)) + amount
        return totals

    # -- fills -------------------------------------------------------------------------

    async def run_fills(
        self,
        send: trio.MemorySendChannel[WriterMessage],
        *,
        last_fill_ns: Callable[[], int],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Stream fills to the writer until cancelled; reconnect whenever the stream fails.

        ``started()`` after the first subscription's snapshot (and any catch-up)
        has been sent to the writer.

        Raises:
            BootstrapError: no subscription after ``STARTUP_ATTEMPTS`` tries at start.
        """
        self.last_fill_ns = last_fill_ns
        live_once = False
        live_now = False

        def on_live() -> None:
            nonlocal live_once, live_now
            live_now = True
            if not live_once:
                live_once = True
                task_status.started()

        async with send:
            attempt = 0
            while True:
                live_now = False
                try:
                    await self._one_connection(send, on_live)
                    attempt = 0
                    logger.warning("Kraken executions stream closed; reconnecting")
                except (
                    ConnectionClosed, HandshakeError, OSError, StreamStale, KrakenError,
                    trio.TooSlowError,
                ) as exc:  # fmt: skip
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if not live_once and attempt + 1 >= STARTUP_ATTEMPTS:
                        raise BootstrapError(
                            f"could not subscribe to Kraken executions at {self.ws_url}: {exc}"
                        ) from exc
                    logger.warning("Kraken executions stream failed: %s", self.last_error)
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
        token = await self.rest.websockets_token()  # a fresh token for every connection
        async with open_websocket_url(self.ws_url) as ws:
            self.connections += 1
            subscribe = {
                "method": "subscribe",
                "params": {
                    "channel": "executions",
                    "token": token,
                    "snap_trades": True,
                    "snap_orders": False,
                },
                "req_id": self.connections,
            }
            await ws.send_message(json.dumps(subscribe))
            snapshot_seen = False
            with trio.fail_after(SUBSCRIBE_TIMEOUT_S):
                while not snapshot_seen:
                    message = parse_ws_message(await ws.get_message())
                    if isinstance(message, WsAck) and message.method == "subscribe":
                        if not message.success:
                            raise KrakenProtocolError(f"subscribe refused: {message.error}")
                    elif isinstance(message, WsStatus):
                        self.system = message.system
                    elif isinstance(message, WsExecutions):
                        await self._take_snapshot(message, send)
                        snapshot_seen = True
            self.ws_state = "live"
            logger.info("Kraken executions stream live (%s)", self.ws_url)
            await send.send(ExchangeHealthChanged(feed_live=True))
            on_live()
            while True:
                with trio.move_on_after(self.heartbeat_timeout_s) as quiet:
                    text = await ws.get_message()
                if quiet.cancelled_caught:
                    raise StreamStale(f"nothing for {self.heartbeat_timeout_s} s")
                message = parse_ws_message(text)
                if isinstance(message, WsExecutions):
                    for fill in message.fills:
                        self.fills_received += 1
                        await send.send(FillReceived(fill))
                elif isinstance(message, WsStatus):
                    self.system = message.system
                    logger.info("Kraken system status: %s", message.system)
                elif isinstance(message, WsHeartbeat | WsAck | WsIgnored):
                    pass

    async def _take_snapshot(
        self, message: WsExecutions, send: trio.MemorySendChannel[WriterMessage]
    ) -> None:
        """Feed the snapshot, first closing any gap older than it with ``TradesHistory``."""
        last = self.last_fill_ns()
        fills = sorted(message.fills, key=lambda f: f.timestamp_ns)
        full = len(fills) >= SNAPSHOT_TRADES
        if last and full and fills[0].timestamp_ns > last:
            for fill in await self._catch_up(last):
                self.caught_up += 1
                await send.send(FillReceived(fill))
        for fill in fills:
            self.fills_received += 1
            await send.send(FillReceived(fill))

    async def _catch_up(self, since_ns: int) -> list[Fill]:
        """Every trade after ``since_ns`` from REST, oldest first, with its order's userref."""
        assets = await self.assets()
        # TradesHistory's start is exclusive and whole trades may share a timestamp: ask
        # from a second earlier; the writer skips what it already applied.
        start = Decimal(since_ns - CATCH_UP_OVERLAP_NS).scaleb(-9)
        trades: dict[str, dict[str, object]] = {}
        # Pages come newest first. Trades made meanwhile push older ones to later
        # offsets, so pages overlap (the dict merges them) but never leave a hole;
        # a short page is the end.
        for page in range(MAX_CATCH_UP_PAGES):
            batch, count = await self.rest.trades_history(start=start, ofs=len(trades))
            trades.update(batch)
            if len(batch) < CATCH_UP_PAGE or len(trades) >= count:
                break
            if page % 20 == 19:
                logger.info("catching up: %d of %d trades fetched", len(trades), count)
            if page + 1 == MAX_CATCH_UP_PAGES:
                logger.error("catch-up stopped after %d pages of trades", MAX_CATCH_UP_PAGES)
        order_ids = sorted({str(t.get("ordertxid")) for t in trades.values() if t.get("ordertxid")})
        userrefs: dict[str, int | None] = {}
        for first in range(0, len(order_ids), QUERY_ORDERS_CHUNK):
            orders = await self.rest.query_orders(order_ids[first : first + QUERY_ORDERS_CHUNK])
            for txid, order in orders.items():
                userref = order.get("userref")
                userrefs[txid] = userref if isinstance(userref, int) else None
        fills = [parse_rest_trade(txid, t, assets, userrefs) for txid, t in trades.items()]
        logger.warning("caught up %d trades missed since the last fill", len(fills))
        return sorted(fills, key=lambda f: f.timestamp_ns)
