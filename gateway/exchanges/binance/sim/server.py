"""The Binance-compatible simulator's servers: REST (``/api/v3/...``) and the WebSocket API.

REST answers as Binance does: JSON bodies, errors as ``{"code": -1022, "msg":
...}`` with Binance's HTTP statuses, signed endpoints checked for the API key
(``X-MBX-APIKEY``), the HMAC-SHA256 signature of the query (and body) and a
``timestamp`` within ``recvWindow`` of the server's clock, and the request
weight reported in ``X-MBX-USED-WEIGHT-1M``. The WebSocket API
(``/ws-api/v3``) takes ``userDataStream.subscribe.signature`` and ``ping``
and pushes ``executionReport``, ``outboundAccountPosition`` and
``balanceUpdate`` events as ``{"subscriptionId": N, "event": {...}}``.

Control endpoints under ``/sim/`` (JSON over POST), as the Kraken simulator's:
``deposit``, ``withdraw``, ``drop-websockets``, ``fail-rest``,
``trade-generator`` (taking ``strategy_ids``) and ``state``; and
``terminate-streams`` (an ``eventStreamTerminated`` to every subscription).
"""

from __future__ import annotations

import hmac
import json
import logging
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
)

from gateway.exchanges.binance.signing import sign_query, sign_ws_params
from gateway.exchanges.binance.sim.exchange import (
    Placed,
    SimAccount,
    SimError,
    SimTrade,
    order_report,
)
from gateway.exchanges.simcli import SimAddress, serve_rest_and_ws
from gateway.exchanges.simhttp import HttpAnswer, HttpRequest
from gateway.exchanges.simws import send_messages, take_queued

logger = logging.getLogger(__name__)

DEFAULT_RECV_WINDOW_MS: Final = 5000
MAX_RECV_WINDOW_MS: Final = 60_000
SUBSCRIBER_QUEUE: Final = 100_000
# A trade's executionReport on the wire (json.dumps's separators): probe mode times it.
TRADE_MARK: Final = '"x": "TRADE"'
# Request weights as Binance documents them (rest-api.md), and its 1-minute limit.
WEIGHTS: Final = {"account": 20, "myTrades": 20, "allOrders": 20, "exchangeInfo": 20,
                  "order": 1, "time": 1}  # fmt: skip
WEIGHT_LIMIT_1M: Final = 6000


@dataclass
class FaultPlan:
    """REST calls to fail next: ``count`` more, with an HTTP status (429 with Retry-After)."""

    count: int = 0
    status: int = 503


@dataclass
class BinanceSimulator:
    account: SimAccount
    latency_s: float = 0.0
    jitter_s: float = 0.0
    faults: FaultPlan = field(default_factory=FaultPlan)
    subscribers: dict[trio.MemorySendChannel[str], int] = field(default_factory=dict)
    ws_scopes: set[trio.CancelScope] = field(default_factory=set)
    generator: trio.CancelScope | None = None
    weight_used: int = 0
    weight_minute: int = 0
    # Probe mode (benchmarks): when each trade's report was handed to a socket.
    record_sends: bool = False
    sent_ns: list[int] = field(default_factory=list)

    def push(self, events: list[dict[str, object]]) -> None:
        """Each event to every user data subscription; a subscriber too slow is dropped."""
        for channel, subscription in list(self.subscribers.items()):
            for event in events:
                text = json.dumps({"subscriptionId": subscription, "event": event})
                try:
                    channel.send_nowait(text)
                except (trio.WouldBlock, trio.ClosedResourceError):
                    self.subscribers.pop(channel, None)
                    channel.close()
                    break

    def push_order(self, placed: Placed) -> None:
        """The order's events, as Binance streams them: ``NEW``, each ``TRADE``, then
        ``EXPIRED`` for a part that expired, and the balances that moved."""
        order, trades = placed.order, placed.trades
        time_ms = int(str(order["time"]))
        events = [order_report(order, "NEW", "NEW", time_ms)]
        events += [trade.report(order) for trade in trades]
        if placed.expired:
            events.append(
                order_report(
                    order,
                    "EXPIRED",
                    "EXPIRED",
                    time_ms,
                    cum=(
                        Decimal(str(order["executedQty"])),
                        Decimal(str(order["cummulativeQuoteQty"])),
                    ),
                )
            )
        if trades:
            events.append(self.position({a for t in trades for a in _assets_of(t)}))
        self.push(events)

    def position(self, assets: set[str]) -> dict[str, object]:
        """``outboundAccountPosition`` for ``assets``, as they stand now."""
        now = int(time.time() * 1000)
        return {
            "e": "outboundAccountPosition", "E": now, "u": now,
            "B": [{"a": a, "f": f"{self.account.balances.get(a, Decimal(0)):.8f}",
                   "l": "0.00000000"} for a in sorted(assets)],
        }  # fmt: skip

    def drop_websockets(self) -> int:
        for scope in list(self.ws_scopes):
            scope.cancel()
        return len(self.ws_scopes)


def _assets_of(trade: SimTrade) -> tuple[str, ...]:
    return (trade.symbol.base, trade.symbol.quote, trade.commission_asset)


def _error(status: int, code: int, msg: str) -> HttpAnswer:
    return HttpAnswer(status, {"code": code, "msg": msg})


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check_signed(sim: BinanceSimulator, request: HttpRequest, params: dict[str, str]) -> None:
    """Key, signature and timestamp, as Binance checks them.

    Raises:
        SimError: -2014/-2015 (key), -1022 (signature), -1021 (timestamp), -1102 (missing).
    """
    key = request.headers.get("x-mbx-apikey")
    if not key:
        raise SimError(401, -2014, "API-key format invalid.")
    if not hmac.compare_digest(key, sim.account.api_key):
        raise SimError(401, -2015, "Invalid API-key, IP, or permissions for action.")
    query = urlsplit(request.target).query
    total = query + request.body.decode("utf-8", "replace")
    signed, _, signature = total.rpartition("&signature=")
    if not signature or not hmac.compare_digest(
        signature.lower(), sign_query(signed, sim.account.api_secret)
    ):
        raise SimError(400, -1022, "Signature for this request is not valid.")
    try:
        timestamp = int(params["timestamp"])
        window = float(params.get("recvWindow", DEFAULT_RECV_WINDOW_MS))
    except (KeyError, ValueError):
        raise SimError(400, -1102, "Mandatory parameter 'timestamp' was not sent.") from None
    if not 0 < window <= MAX_RECV_WINDOW_MS:
        raise SimError(400, -1131, "recvWindow must be less than 60000")
    now = _now_ms()
    if timestamp > now + 1000 or now - timestamp > window:
        raise SimError(400, -1021, "Timestamp for this request is outside of the recvWindow.")


def _int(params: dict[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not value.isdigit():
        raise SimError(400, -1100, f"Illegal characters found in parameter '{name}'.")
    return int(value)


async def _handle(sim: BinanceSimulator, nursery: trio.Nursery, request: HttpRequest) -> HttpAnswer:
    parts = urlsplit(request.target)
    path = parts.path.rstrip("/")
    try:
        if path.startswith("/sim/"):
            body = json.loads(request.body or b"{}")
            result = await _control(sim, path[5:], body if isinstance(body, dict) else {}, nursery)
            return HttpAnswer(200, result)
        if sim.latency_s or sim.jitter_s:
            await trio.sleep(sim.latency_s + random.uniform(0, sim.jitter_s))
        if not path.startswith("/api/v3/"):
            return _error(404, -1000, "Unknown endpoint.")
        endpoint = path[len("/api/v3/") :]
        if sim.faults.count > 0:
            sim.faults.count -= 1
            if sim.faults.status == 429:
                return HttpAnswer(429, {"code": -1003, "msg": "Too many requests; current "
                                        "limit of IP is 6000 requests per minute."},
                                  {"retry-after": "1"})  # fmt: skip
            return HttpAnswer(sim.faults.status, "<html><body>unavailable</body></html>")
        minute = int(time.time() // 60)
        if minute != sim.weight_minute:
            sim.weight_minute, sim.weight_used = minute, 0
        sim.weight_used += WEIGHTS.get(endpoint, 1)
        headers = {"x-mbx-used-weight-1m": str(sim.weight_used)}
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        params.update(parse_qsl(request.body.decode("utf-8", "replace")))
        result = _rest(sim, request, endpoint, params)
        return HttpAnswer(200, result, headers)
    except SimError as exc:
        return _error(exc.status, exc.code, exc.msg)
    except (ValueError, KeyError, InvalidOperation) as exc:
        return _error(400, -1100, f"Illegal characters found in a parameter: {exc}")


def _rest(
    sim: BinanceSimulator, request: HttpRequest, endpoint: str, params: dict[str, str]
) -> object:
    account = sim.account
    if endpoint == "time" and request.method == "GET":
        return {"serverTime": _now_ms()}
    if endpoint == "exchangeInfo" and request.method == "GET":
        return {
            "timezone": "UTC", "serverTime": _now_ms(),
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE",
                            "intervalNum": 1, "limit": WEIGHT_LIMIT_1M}],
            "exchangeFilters": [], "symbols": [s.info() for s in account.symbols.values()],
        }  # fmt: skip
    if endpoint not in ("account", "myTrades", "allOrders", "order"):
        raise SimError(404, -1000, "Unknown endpoint.")
    _check_signed(sim, request, params)
    limit = min(_int(params, "limit") or 500, 1000)
    if endpoint == "account" and request.method == "GET":
        return account.account(params.get("omitZeroBalances") == "true")
    if endpoint == "myTrades" and request.method == "GET":
        return account.my_trades(
            params["symbol"], _int(params, "fromId"), _int(params, "startTime"), limit
        )
    if endpoint == "allOrders" and request.method == "GET":
        return account.all_orders(params["symbol"], _int(params, "orderId"), limit)
    if endpoint == "order" and request.method == "POST":
        return _new_order(sim, params)
    raise SimError(405, -1000, "Method not allowed.")


def _new_order(sim: BinanceSimulator, params: dict[str, str]) -> object:
    """``POST /api/v3/order``: MARKET and LIMIT orders, answered ACK, RESULT or FULL."""
    order_type = params.get("type")
    if order_type not in ("MARKET", "LIMIT"):
        raise SimError(400, -1116, "Invalid orderType.")
    for name in ("symbol", "side", "quantity"):
        if not params.get(name):
            raise SimError(
                400, -1102,
                f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
            )  # fmt: skip
    price = params.get("price")
    placed = sim.account.place(
        params["symbol"], params["side"], Decimal(params["quantity"]), order_type=order_type,
        limit_price=Decimal(price) if price else None, time_in_force=params.get("timeInForce"),
        strategy_id=_int(params, "strategyId"), client_order_id=params.get("newClientOrderId"),
    )  # fmt: skip
    sim.push_order(placed)
    order = placed.order
    answer: dict[str, object] = {
        key: order[key] for key in ("symbol", "orderId", "orderListId", "clientOrderId")
    }
    answer["transactTime"] = order["time"]
    response_type = params.get("newOrderRespType", "FULL")
    if response_type == "ACK":
        return answer
    answer.update(
        (key, order[key])
        for key in (
            "price", "origQty", "executedQty", "origQuoteOrderQty", "cummulativeQuoteQty",
            "status", "timeInForce", "type", "side", "workingTime", "selfTradePreventionMode",
        )
    )  # fmt: skip
    if "strategyId" in order:
        answer["strategyId"] = order["strategyId"]
    if response_type == "FULL":
        answer["fills"] = [
            {"price": str(t.price), "qty": str(t.qty), "commission": str(t.commission),
             "commissionAsset": t.commission_asset, "tradeId": t.trade_id}
            for t in placed.trades
        ]  # fmt: skip
    return answer


async def _control(
    sim: BinanceSimulator, name: str, body: dict[str, object], nursery: trio.Nursery
) -> object:
    account = sim.account
    if name in ("deposit", "withdraw"):
        asset = str(body.get("asset", "")).upper()
        amount = Decimal(str(body.get("amount")))
        delta = amount if name == "deposit" else -amount
        account.move(asset, delta)
        now = _now_ms()
        if not body.get("silent", False):  # silent: a change only REST shows
            sim.push([{"e": "balanceUpdate", "E": now + 1, "a": asset, "d": f"{delta:.8f}",
                       "T": now}, sim.position({asset})])  # fmt: skip
        return {"balances": {a: str(v) for a, v in account.balances.items()}}
    if name == "drop-websockets":
        return {"dropped": sim.drop_websockets()}
    if name == "terminate-streams":
        # What Binance sends when it ends a subscription; the connection stays open.
        ended = len(sim.subscribers)
        sim.push([{"e": "eventStreamTerminated", "E": _now_ms()}])
        sim.subscribers.clear()
        return {"terminated": ended}
    if name == "fail-rest":
        sim.faults = FaultPlan(int(str(body.get("count", 1))), int(str(body.get("status", 503))))
        return {"failing": sim.faults.count}
    if name == "trade-generator":
        if sim.generator is not None:
            sim.generator.cancel()
            sim.generator = None
        sim.sent_ns.clear()
        sim.record_sends = bool(body.get("probe", False))
        rate = float(str(body.get("rate", 0)))
        if rate > 0:
            sim.generator = trio.CancelScope()
            nursery.start_soon(_generate_trades, sim, sim.generator, rate, body)
        return {"rate": rate}
    if name == "generated":
        return {"sent_ns": sim.sent_ns}
    if name == "state":
        return {
            "balances": {a: str(v) for a, v in sorted(account.balances.items())},
            "trades": len(account.trades),
            "orders": len(account.orders),
            "by_strategy": {
                str(k): {a: str(v) for a, v in book.items()}
                for k, book in account.by_strategy.items()
            },
            "subscribers": len(sim.subscribers),
        }
    raise SimError(404, -1000, f"unknown control {name}")


async def _generate_trades(
    sim: BinanceSimulator, scope: trio.CancelScope, rate: float, body: dict[str, object]
) -> None:
    """Market orders at ``rate``/s on the given symbols and strategy ids (None: untagged).

    With ``probe``, every order buys ``qty`` of the first symbol for the first
    strategy in one trade, and each trade's send time is recorded as it is
    handed to the socket (``/sim/generated``), so a benchmark can time it.
    ``dated_ahead_s`` dates the orders that far past now, as an exchange whose
    clock runs ahead would.
    """
    ids = body.get("strategy_ids", [2, 3, 4])
    strategies = [None if s is None else int(str(s)) for s in ids] if isinstance(ids, list) else []
    symbols = body.get("symbols", ["BTCUSDT", "ETHUSDT", "ETHBTC", "BNBUSDT"])
    names = [str(s) for s in symbols] if isinstance(symbols, list) else []
    limit = int(str(body.get("count", 0)))
    probe = bool(body.get("probe", False))
    probe_qty = Decimal(str(body.get("qty", "0.001")))
    rng = random.Random(int(str(body.get("seed", 7))))
    ahead_ms = int(float(str(body.get("dated_ahead_s", 0))) * 1000)
    batch = max(1, int(rate / 1000))  # at most ~1000 wake-ups a second
    next_at = trio.current_time()
    made = 0
    with scope:
        while limit == 0 or made < limit:
            for _ in range(batch):
                placed: Placed | None
                if probe:
                    placed = sim.account.place(
                        names[0], "BUY", probe_qty, strategy_id=strategies[0],
                        now_ms=_now_ms() + ahead_ms,
                    )  # fmt: skip
                else:
                    placed = _random_order(sim, rng, names, strategies, made, _now_ms() + ahead_ms)
                if placed is not None:
                    sim.push_order(placed)
                made += 1
                if made == limit:
                    break
            next_at += batch / rate
            await trio.sleep_until(next_at)


def _random_order(
    sim: BinanceSimulator,
    rng: random.Random,
    names: list[str],
    strategies: list[int | None],
    made: int,
    now_ms: int,
) -> Placed | None:
    name = rng.choice(names)
    base_qty = Decimal("0.001") if name.startswith("BTC") else Decimal("0.01")
    qty = (base_qty * rng.randint(1000, 5000) / 1000).quantize(Decimal("0.00000001"))
    side = "BUY" if made % 2 == 0 else "SELL"
    try:
        return sim.account.place(
            name, side, qty, strategy_id=rng.choice(strategies) if strategies else None,
            parts=rng.choice([1, 1, 2, 3]), fee_in_bnb=rng.random() < 0.2, now_ms=now_ms,
        )  # fmt: skip
    except SimError:
        return None


# -- the WebSocket API ----------------------------------------------------------------------


async def _serve_ws(sim: BinanceSimulator, request: WebSocketRequest) -> None:
    ws = await request.accept()
    send, receive = trio.open_memory_channel[str](SUBSCRIBER_QUEUE)
    # /sim/drop-websockets cancels this scope: the connection ends mid-stream.
    with trio.CancelScope() as scope:
        sim.ws_scopes.add(scope)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_forward, sim, ws, receive, nursery.cancel_scope)
                await _answer_requests(sim, ws, send)
                nursery.cancel_scope.cancel()
        finally:
            sim.ws_scopes.discard(scope)
            sim.subscribers.pop(send, None)


async def _forward(
    sim: BinanceSimulator,
    ws: WebSocketConnection,
    receive: trio.MemoryReceiveChannel[str],
    done: trio.CancelScope,
) -> None:
    """Forward queued events; what is queued goes out in one write (simws)."""
    try:
        async for text in receive:
            batch = take_queued(text, receive)
            if sim.record_sends:
                now = time.time_ns()
                sim.sent_ns.extend(now for queued in batch if TRADE_MARK in queued)
            await send_messages(ws, batch)
    except ConnectionClosed:
        done.cancel()


async def _answer_requests(
    sim: BinanceSimulator, ws: WebSocketConnection, send: trio.MemorySendChannel[str]
) -> None:
    subscriptions = 0
    while True:
        try:
            message = await ws.get_message()
        except ConnectionClosed:
            return
        answer, subscribed = _ws_request(sim, message, subscriptions)
        send.send_nowait(json.dumps(answer))
        if subscribed:
            sim.subscribers[send] = subscriptions
            subscriptions += 1


def _ws_request(
    sim: BinanceSimulator, text: str | bytes, next_subscription: int
) -> tuple[dict[str, object], bool]:
    """The answer to one WebSocket API request, and whether it subscribed."""
    try:
        request = json.loads(text)
        request_id = request.get("id")
        method = request.get("method")
        params = request.get("params") or {}
    except (ValueError, AttributeError):
        return {
            "id": None,
            "status": 400,
            "error": {"code": -1100, "msg": "Malformed request."},
        }, False

    def error(status: int, code: int, msg: str) -> tuple[dict[str, object], bool]:
        return {"id": request_id, "status": status, "error": {"code": code, "msg": msg}}, False

    if method == "ping":
        return {"id": request_id, "status": 200, "result": {}}, False
    if method != "userDataStream.subscribe.signature":
        return error(400, -1000, f"Unknown method {str(method)[:40]!r}.")
    if not isinstance(params, dict) or params.get("apiKey") != sim.account.api_key:
        return error(401, -2015, "Invalid API-key, IP, or permissions for action.")
    signature = str(params.get("signature", ""))
    if not hmac.compare_digest(signature.lower(), sign_ws_params(params, sim.account.api_secret)):
        return error(400, -1022, "Signature for this request is not valid.")
    timestamp = params.get("timestamp")
    if not isinstance(timestamp, int) or abs(_now_ms() - timestamp) > DEFAULT_RECV_WINDOW_MS:
        return error(400, -1021, "Timestamp for this request is outside of the recvWindow.")
    return {"id": request_id, "status": 200, "result": {"subscriptionId": next_subscription}}, True


async def run_simulator(
    sim: BinanceSimulator,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ws_port: int = 0,
    ready_file: Path | None = None,
    ws_tls: Path | None = None,
    task_status: trio.TaskStatus[SimAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve REST and the WebSocket API until cancelled; ``started(SimAddress)`` once both listen.

    ``ready_file`` (if given) gets the same facts as JSON, written atomically;
    ``ws_tls`` (PEM: certificate chain and key) serves the websocket as wss://.
    """
    async with trio.open_nursery() as nursery:
        address = await serve_rest_and_ws(
            nursery,
            partial(_handle, sim, nursery),
            lambda request: _serve_ws(sim, request),
            host=host,
            port=port,
            ws_port=ws_port,
            ws_path="/ws-api/v3",
            api_key=sim.account.api_key,
            api_secret=sim.account.api_secret,
            ready_file=ready_file,
            ws_tls=ws_tls,
        )
        logger.info("Binance simulator ready: REST %s, WS API %s", address.rest_url, address.ws_url)
        task_status.started(address)
