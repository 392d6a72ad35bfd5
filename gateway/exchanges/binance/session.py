"""One Binance spot account for the gateway: totals over REST, fills and transfers over the
user data stream of the WebSocket API, caught up from ``myTrades`` after any gap.

Each connection subscribes with ``userDataStream.subscribe.signature`` (Binance
retired the spot listenKey streams), reads events into its queue while the
catch-up runs, then streams. A connection lives at most 24 hours at Binance,
and ``eventStreamTerminated`` ends a subscription: both reconnect and catch up.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Final

import trio

from gateway.errors import BootstrapError
from gateway.exchanges.base import ExchangeHealth
from gateway.exchanges.binance.adapter import BINANCE_WS_URL
from gateway.exchanges.binance.errors import (
    BinanceAPIError,
    BinanceAuthError,
    BinanceError,
    BinanceProtocolError,
)
from gateway.exchanges.binance.parsing import (
    AccountPosition,
    Skipped,
    StreamTerminated,
    SymbolMap,
    UserFill,
    UserTransfer,
    loads,
    parse_account,
    parse_my_trade,
    parse_user_event,
)
from gateway.exchanges.binance.rest import BinanceRestClient
from gateway.exchanges.feed import SilenceTimer, deliver, describe_failure
from gateway.exchanges.websocket import (
    CertificateRefusedError,
    WebSocket,
    WebSocketError,
    open_websocket,
)
from gateway.ledger import Fill, scale_fill
from gateway.messages import (
    ExchangeHealthChanged,
    FillReceived,
    TotalsStreamed,
    TransferReceived,
    WriterMessage,
)
from mmapstore import StoreValueError

logger = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S: Final = 10.0
PING_AFTER_S: Final = 20.0  # silence before we ask the connection whether it lives
STALE_AFTER_S: Final = 45.0
STARTUP_ATTEMPTS: Final = 4
RECONNECT_BASE_S: Final = 0.25
RECONNECT_CAP_S: Final = 10.0
WS_QUEUE_MESSAGES: Final = 20_000
PAGE: Final = 1000  # myTrades and allOrders pages
CATCH_UP_OVERLAP_MS: Final = 1000
DAY_MS: Final = 86_400_000  # myTrades' startTime window


class StreamEnded(Exception):  # noqa: N818 - a condition that ends one connection
    """The connection went quiet, or Binance ended the subscription."""


class BinanceSession:
    """One Binance account for the gateway: totals, fills, transfers, and their health.

    ``symbols``: the symbols a catch-up asks ``myTrades`` for; None means those
    of the assets the account held at its last ``fetch_totals`` (a trade leaves
    one of its two assets held).
    """

    def __init__(
        self,
        rest: BinanceRestClient,
        ws_url: str = BINANCE_WS_URL,
        *,
        symbols: Iterable[str] | None = None,
    ) -> None:
        self.rest = rest
        self.ws_url = ws_url
        self.catch_up_symbols = list(symbols) if symbols is not None else None
        self._symbols: SymbolMap | None = None
        self._held: set[str] = set()
        self._cross_check_from_ms = 2**63  # not before the first catch-up is done
        self.ws_state = "disconnected"
        self.connections = 0
        self.reconnects = 0
        self.fills_received = 0
        self.fills_caught_up = 0
        self.transfers_received = 0
        self.skipped: dict[str, int] = {}
        self.last_error: str | None = None
        self._live_connection: int | None = None

    # -- the contract -------------------------------------------------------------------------

    def account(self) -> str:
        return self.rest.account

    def feed_connection(self) -> int | None:
        return self._live_connection

    def health(self) -> ExchangeHealth:
        return ExchangeHealth(
            feed=self.ws_state,
            feed_live=self.ws_state == "live",
            reconnects=self.reconnects,
            rest_failures=self.rest.failures,
            last_error=self.last_error,
            details={
                "fills_received": self.fills_received,
                "fills_caught_up": self.fills_caught_up,
                "transfers_received": self.transfers_received,
                "events_skipped": dict(self.skipped),
                "rest_calls": self.rest.calls,
                "rest_used_weight_1m": self.rest.used_weight,
                "clock_offset_ms": self.rest.clock_offset_ms,
            },
        )

    async def fetch_totals(self) -> dict[str, Decimal]:
        """Each asset's total (free + locked) from ``GET /api/v3/account``.

        Raises:
            BinanceError: after the REST client's retries.
        """
        totals = parse_account(await self.rest.account_info())
        self._held = {asset for asset, amount in totals.items() if amount}
        return totals

    async def symbols(self, *, refresh: bool = False) -> SymbolMap:
        if self._symbols is None or refresh:
            self._symbols = SymbolMap.from_exchange_info(await self.rest.exchange_info())
        return self._symbols

    # -- the stream ---------------------------------------------------------------------------

    async def run_fills(
        self,
        send: trio.MemorySendChannel[WriterMessage],
        *,
        position_ns: Callable[[], int],
        transfer_position_ns: Callable[[], int],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Stream fills and transfers until cancelled; reconnect (and catch up) on failure.

        ``started()`` once subscribed and every fill since ``position_ns()`` was
        sent. Transfers during a gap are not in ``myTrades``: the reconciler's
        next pass books them (``transfer_position_ns`` is not used).

        Raises:
            BootstrapError: bad credentials, a certificate that does not verify, or
                no subscription after ``STARTUP_ATTEMPTS``.
        """
        del transfer_position_ns
        live_once = False
        attempt = 0
        async with send:
            while True:
                try:
                    await self._one_connection(send, position_ns, task_status, live_once)
                except (WebSocketError, OSError, BinanceError, StreamEnded,
                        trio.TooSlowError) as exc:  # fmt: skip
                    self.last_error = describe_failure(exc)
                    # Credentials or a certificate refused will be on the next try too.
                    final = isinstance(exc, BinanceAuthError | CertificateRefusedError)
                    if not live_once and (final or attempt + 1 >= STARTUP_ATTEMPTS):
                        raise BootstrapError(
                            f"could not subscribe to the Binance user data stream at "
                            f"{self.ws_url}: {self.last_error}"
                        ) from exc
                    logger.warning("Binance user data stream failed: %s", self.last_error)
                live_once = live_once or self._live_connection is not None
                if self._live_connection is not None:
                    attempt = 0
                    await send.send(ExchangeHealthChanged(feed_live=False))
                self._live_connection = None
                self.ws_state = "reconnecting"
                self.reconnects += 1
                attempt += 1
                await trio.sleep(min(RECONNECT_CAP_S, RECONNECT_BASE_S * 2 ** min(attempt, 6)))

    async def _one_connection(
        self,
        send: trio.MemorySendChannel[WriterMessage],
        position_ns: Callable[[], int],
        task_status: trio.TaskStatus[None],
        started_before: bool,
    ) -> None:
        self.ws_state = "connecting"
        symbols = await self.symbols()
        async with open_websocket(self.ws_url) as ws:
            self.connections += 1
            request_id = f"subscribe-{self.connections}"
            params: dict[str, str | int] = {
                "apiKey": self.rest.api_key,
                "timestamp": int(time.time() * 1000) + self.rest.clock_offset_ms,
            }
            params["signature"] = self.rest.sign_ws(params)
            await ws.send_message(json.dumps(
                {"id": request_id, "method": "userDataStream.subscribe.signature",
                 "params": params}
            ))  # fmt: skip
            early: list[object] = []  # events before the answer: they follow the catch-up
            with trio.fail_after(SUBSCRIBE_TIMEOUT_S):
                while True:
                    message = loads(await ws.get_message())
                    if isinstance(message, dict) and message.get("id") == request_id:
                        _check_answer(message)
                        break
                    early.append(message)
            # Subscribed before catching up: a fill made meanwhile is in the queue, or
            # in myTrades, or both (the writer applies it once, by its id).
            self.ws_state = "catching up"
            # The connection keeps being read meanwhile (into its queue): Binance
            # never sees a stalled client.
            async with ws.reading_ahead(WS_QUEUE_MESSAGES):
                for fill in await self._catch_up(position_ns(), symbols):
                    self.fills_caught_up += 1
                    await send.send(FillReceived(fill))
                for message in early:
                    await self._handle(message, symbols, send)
            # Streamed totals are compared from here on: one older than the catch-up
            # may predate trades the catch-up already applied.
            self._cross_check_from_ms = int(time.time() * 1000) + self.rest.clock_offset_ms
            self.ws_state = "live"
            self._live_connection = self.connections
            await send.send(ExchangeHealthChanged(feed_live=True))
            logger.info("Binance user data stream live (%s)", self.ws_url)
            if not started_before:
                task_status.started()
            await self._stream(ws, symbols, send)

    async def _stream(
        self,
        ws: WebSocket,
        symbols: SymbolMap,
        send: trio.MemorySendChannel[WriterMessage],
    ) -> None:
        pings = 0
        while True:
            silence = SilenceTimer(PING_AFTER_S)
            with silence.scope:
                while True:
                    text = await ws.get_message()
                    silence.heard()
                    pings = 0
                    await self._handle(loads(text), symbols, send)
            pings += 1
            if pings * PING_AFTER_S >= STALE_AFTER_S:
                raise StreamEnded(f"nothing for {STALE_AFTER_S:.0f} s")
            await ws.send_message(json.dumps({"id": f"ping-{pings}", "method": "ping"}))

    async def _handle(
        self, message: object, symbols: SymbolMap, send: trio.MemorySendChannel[WriterMessage]
    ) -> None:
        if not isinstance(message, dict) or "event" not in message:
            return  # an answer (ping) or something we did not ask for
        event = parse_user_event(message["event"], symbols)
        match event:
            case UserFill(fill=fill):
                self.fills_received += 1
                await deliver(send, FillReceived(fill))
            case UserTransfer(transfer=transfer):
                self.transfers_received += 1
                await deliver(send, TransferReceived(transfer))
            case Skipped(event=kind, reason=reason):
                self.skipped[kind] = self.skipped.get(kind, 0) + 1
                logger.warning("Binance %s event not booked: %s", kind, reason)
                if "unknown symbol" in reason:
                    await self.symbols(refresh=True)  # listed since: known next time
            case StreamTerminated():
                raise StreamEnded("Binance ended the subscription (eventStreamTerminated)")
            case AccountPosition(totals=totals, updated_ms=updated_ms):
                if updated_ms >= self._cross_check_from_ms:
                    scaled = _scaled_totals(totals)
                    if scaled:
                        await deliver(send, TotalsStreamed(scaled))
            case None:
                pass

    # -- catching up ----------------------------------------------------------------------------

    async def _catch_up(self, since_ns: int, symbols: SymbolMap) -> list[Fill]:
        """Every trade since ``since_ns`` from ``myTrades``, with its order's strategyId."""
        if since_ns <= 0:
            return []
        since_ms = since_ns // 1_000_000 - CATCH_UP_OVERLAP_MS
        names = self.catch_up_symbols
        if names is None:
            held = self._held
            names = [
                s.name for s in symbols.symbols.values()
                if not held or s.base in held or s.quote in held
            ]  # fmt: skip
        fills: list[Fill] = []
        for name in names:
            entries = await self._trades_since(name, since_ms)
            if not entries:
                continue
            order_ids = _ids(entries, "orderId")
            strategies = await self._strategies(name, min(order_ids)) if order_ids else {}
            for entry in entries:
                try:
                    fills.append(parse_my_trade(entry, symbols, strategies))
                except BinanceProtocolError as exc:
                    self.skipped["myTrades"] = self.skipped.get("myTrades", 0) + 1
                    logger.warning("Binance trade not booked: %s", exc)
        if fills:
            logger.warning("caught up %d Binance trades since the ledger's position", len(fills))
        return sorted(fills, key=lambda f: f.timestamp_ns)

    async def _trades_since(self, symbol: str, since_ms: int) -> list[object]:
        """``myTrades`` from ``since_ms``: by time window to the first trade, then by id.

        An entry without a usable id stays in (it is refused when parsed, and counted):
        one such trade used to fail every catch-up, and so every reconnect.
        """
        now_ms = int(time.time() * 1000) + self.rest.clock_offset_ms
        start = since_ms
        page: list[object] = []
        while start <= now_ms and not page:
            page = _trade_list(await self.rest.my_trades(symbol, from_id=None, start_ms=start))
            start += DAY_MS
        entries = list(page)
        from_id = 0
        while len(page) >= PAGE:
            newest = max(_ids(page, "id"), default=-1)
            if newest < from_id:  # paging on from the newest would ask for this page again
                raise BinanceProtocolError(f"myTrades: a full page, no trade from {from_id}")
            from_id = newest + 1
            page = _trade_list(await self.rest.my_trades(symbol, from_id=from_id, start_ms=None))
            entries += page
        return entries

    async def _strategies(self, symbol: str, first_order: int) -> dict[int, int | None]:
        """Each order's strategyId (None when it had none), from ``allOrders``."""
        strategies: dict[int, int | None] = {}
        from_order = first_order
        while True:
            orders = await self.rest.all_orders(symbol, from_order)
            if not isinstance(orders, list):
                raise BinanceProtocolError("allOrders is not a list")
            newest = from_order - 1
            for order in orders:
                order_id = order.get("orderId") if isinstance(order, dict) else None
                if isinstance(order_id, int) and not isinstance(order_id, bool):
                    strategy = order.get("strategyId")
                    valid = isinstance(strategy, int) and not isinstance(strategy, bool)
                    strategies[order_id] = strategy if valid else None
                    newest = max(newest, order_id)
            if len(orders) < PAGE:
                return strategies
            if newest < from_order:  # paging on from the newest would ask for this page again
                raise BinanceProtocolError(f"allOrders: a full page, no order from {from_order}")
            from_order = newest + 1


def _check_answer(message: dict[str, object]) -> None:
    status = message.get("status")
    if status == 200:
        return
    error = message.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    msg = error.get("msg") if isinstance(error, dict) else None
    code = code if isinstance(code, int) else 0
    text = f"subscribe refused: {status} {code} {str(msg)[:200]}"
    if code in (-2014, -2015, -1022) or status in (401, 403):
        raise BinanceAuthError(
            f"{text} (check BINANCE_API_KEY / BINANCE_API_SECRET and the key's permissions)", code
        )
    raise BinanceAPIError(text, code)


def _trade_list(answer: object) -> list[object]:
    if not isinstance(answer, list):
        raise BinanceProtocolError("myTrades is not a list")
    return answer


def _ids(entries: list[object], name: str) -> list[int]:
    """Each entry's integer ``name``, where it has one."""
    return [
        value for entry in entries if isinstance(entry, dict)
        and isinstance(value := entry.get(name), int) and not isinstance(value, bool)
    ]  # fmt: skip


def _scaled_totals(totals: Mapping[str, Decimal]) -> dict[str, int]:
    """Totals at the ledger's scale; one the store could not hold is left out."""
    scaled = {}
    for asset, total in totals.items():
        try:
            scaled[asset] = scale_fill(total)
        except StoreValueError:
            continue
    return scaled
