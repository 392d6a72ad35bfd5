"""The Kraken-compatible simulator's servers: REST (HTTP/1.1 via h11) and WS v2, on loopback.

REST answers like Kraken (HTTP 200 with an ``error`` array) under
``/0/public/<Method>`` and ``/0/private/<Method>``, checking key, signature
and nonce. The WS endpoint serves the private ``executions`` channel with a
snapshot, updates, heartbeats, ping/pong and the ``status`` message.
Control endpoints under ``/sim/`` (JSON over POST) inject faults and drive
trading for tests, the demo and benchmarks.

It is as strict as Kraken where Kraken is strict (``SimRules``): the API
counter of the account's tier refuses calls past its maximum (and counts the
refused ones, so a client that keeps calling stays locked out longer), each
key has its permissions, nonces must increase, requests take network latency
with jitter (so concurrent requests arrive out of order), ``TradesHistory``
takes ``start`` as whole seconds, heartbeats flow only once subscribed, and
each subscription numbers its own messages.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from gateway.exchanges.kraken.ratelimit import Tier, call_cost
from gateway.exchanges.kraken.sim.exchange import (
    ASSETS,
    PAIRS,
    LedgerEntry,
    SimError,
    SimExchange,
    SimPair,
    Trade,
    dumps,
    public_asset_pairs,
    public_assets,
)
from gateway.exchanges.simcli import SimAddress, serve_rest_and_ws
from gateway.exchanges.simhttp import HttpAnswer, HttpRequest
from gateway.exchanges.simws import send_messages, take_queued

logger = logging.getLogger(__name__)

HEARTBEAT_S: Final = 1.0
SUBSCRIBER_QUEUE: Final = 100_000


@dataclass
class FaultPlan:
    """REST calls to fail next: ``count`` more, with a Kraken error string or an HTTP status."""

    count: int = 0
    error: str = "EService:Unavailable"
    status: int | None = None
    method: str | None = None  # only this API method's calls fail; None: every one
    skip: int = 0  # so many of those calls are answered first


# Key permissions as Kraken names them, and the private methods each allows.
PERMISSIONS: Final = {
    "funds": ("Balance", "BalanceEx"),
    "websocket": ("GetWebSocketsToken",),
    "closed-orders": ("TradesHistory", "QueryTrades", "ClosedOrders"),
    "open-orders": ("OpenOrders", "QueryOrders"),
    "ledger": ("Ledgers", "QueryLedgers"),
    "trade": ("AddOrder", "CancelOrder"),
}
# Kraken's documented ``type`` filter of Ledgers.
LEDGER_TYPES: Final = frozenset(
    {"all", "trade", "deposit", "withdrawal", "transfer", "margin", "adjustment", "rollover",
     "credit", "settled", "staking", "dividend", "sale", "nft_rebate"}
)  # fmt: skip
NEEDED: Final = {method: name for name, methods in PERMISSIONS.items() for method in methods}


@dataclass
class SimRules:
    """How strict the simulator is: network latency, the API counter, the key's permissions.

    ``tier`` None turns the counter off (for benchmarks of other things).
    """

    latency_s: float = 0.0
    jitter_s: float = 0.0
    tier: Tier | None = None
    permissions: frozenset[str] = frozenset(PERMISSIONS)


@dataclass
class ApiCounterState:
    """Kraken's counter for the one key: decays continuously, refused calls count too."""

    level: float = 0.0
    at: float = 0.0
    refused: int = 0

    def charge(self, tier: Tier, cost: int, now: float) -> bool:
        self.level = max(0.0, self.level - (now - self.at) * tier.decay_per_s) + cost
        self.at = now
        if self.level > tier.max_count:
            self.refused += 1
            return False
        return True


@dataclass
class _Subscription:
    """One WS connection's state: its channels, and a message sequence per channel."""

    channels: set[str] = field(default_factory=set)
    sequences: dict[str, int] = field(default_factory=dict)

    @property
    def subscribed(self) -> bool:
        return bool(self.channels)


@dataclass
class Simulator:
    """The running simulator: exchange state plus its connections."""

    exchange: SimExchange
    rules: SimRules = field(default_factory=SimRules)
    counter: ApiCounterState = field(default_factory=ApiCounterState)
    faults: FaultPlan = field(default_factory=FaultPlan)
    subscribers: set[trio.MemorySendChannel[str]] = field(default_factory=set)
    balance_subscribers: set[trio.MemorySendChannel[str]] = field(default_factory=set)
    # executions subscribers that asked for every status transition (``order_status``,
    # Kraken's default): they also get pending_new and amended.
    status_subscribers: set[trio.MemorySendChannel[str]] = field(default_factory=set)
    ws_scopes: set[trio.CancelScope] = field(default_factory=set)
    generator: trio.CancelScope | None = None
    # Probe mode: when each execution update left for the socket (ns), in order.
    sent_ns: list[int] = field(default_factory=list)
    record_sends: bool = False
    ws_connections: int = 0
    extra_snapshot: list[object] = field(default_factory=list)

    def broadcast(self, trades: list[Trade]) -> None:
        """Push trades to every ``executions`` subscriber, as Kraken streams an order's life.

        Subscribers with ``order_status`` (Kraken's default) first get the
        order's ``pending_new`` and, if it was amended, its ``amended``, each in
        a message of its own; then every subscriber gets one message with the
        order's ``new``, each of its trades and, when it ends, its ``filled``,
        ``canceled`` or ``expired``. The sender adds the sequence.
        """
        orders: dict[str, list[Trade]] = {}
        for trade in trades:
            orders.setdefault(trade.order_id, []).append(trade)
        for fills in orders.values():
            first, last = fills[0], fills[-1]
            if self.status_subscribers:
                self.broadcast_raw(
                    _UPDATE_PREFIX + ', "data": ' + dumps([first.order_event("pending_new")]),
                    self.status_subscribers,
                )
                if first.amended:
                    self.broadcast_raw(
                        _UPDATE_PREFIX + ', "data": ' + dumps([first.order_event("amended")]),
                        self.status_subscribers,
                    )
            events = [first.order_event("new"), *(trade.execution() for trade in fills)]
            ending = "filled" if last.completes_order else last.ending
            if ending is not None:
                events.append(last.order_event(ending))
            self.broadcast_raw(_UPDATE_PREFIX + ', "data": ' + dumps(events))

    def broadcast_entries(self, entries: list[LedgerEntry]) -> None:
        """Push ledger entries to every ``balances`` subscriber, in one update message."""
        if entries and self.balance_subscribers:
            data = dumps([entry.ws() for entry in entries])
            self.broadcast_raw(_BALANCES_PREFIX + ', "data": ' + data, self.balance_subscribers)

    def broadcast_raw(
        self, message: str, subscribers: set[trio.MemorySendChannel[str]] | None = None
    ) -> None:
        """One update (without its sequence) to every subscriber; a slow one is dropped."""
        chosen = self.subscribers if subscribers is None else subscribers
        for channel in list(chosen):
            try:
                channel.send_nowait(message)
            except trio.WouldBlock:
                logger.warning("a WS subscriber is too slow: dropping its connection")
                chosen.discard(channel)
                channel.close()
            except trio.ClosedResourceError:
                chosen.discard(channel)

    def drop_websockets(self) -> int:
        dropped = len(self.ws_scopes)
        for scope in list(self.ws_scopes):
            scope.cancel()
        return dropped


# -- REST ------------------------------------------------------------------------------


Handler = Callable[[Simulator, dict[str, str], bytes], object]


def _form(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _decimal(value: str | None, name: str) -> Decimal:
    try:
        number = Decimal(value or "")
    except InvalidOperation:
        raise SimError(f"EGeneral:Invalid arguments:{name}") from None
    if not number.is_finite():
        raise SimError(f"EGeneral:Invalid arguments:{name}")
    return number


def _check_access(sim: Simulator, method: str) -> None:
    """The key's permission for ``method``, then the API counter, as Kraken checks them.

    Raises:
        SimError: ``EGeneral:Permission denied`` or ``EAPI:Rate limit exceeded``.
    """
    needed = NEEDED.get(method)
    if needed is not None and needed not in sim.rules.permissions:
        raise SimError("EGeneral:Permission denied")
    tier = sim.rules.tier
    if tier is not None and not sim.counter.charge(tier, call_cost(method), trio.current_time()):
        raise SimError("EAPI:Rate limit exceeded")


def _start(form: dict[str, str]) -> int | None:
    """``start`` as Kraken documents it: a unix time in whole seconds (or absent)."""
    text = form.get("start")
    if not text:
        return None
    if not text.isdigit():
        raise SimError("EGeneral:Invalid arguments:start")
    return int(text)


def _private(sim: Simulator, method: str, form: dict[str, str]) -> object:
    _check_access(sim, method)
    exchange = sim.exchange
    if method == "Balance":
        return {k: v["balance"] for k, v in exchange.balance_ex().items()}
    if method == "BalanceEx":
        return exchange.balance_ex()
    if method == "GetWebSocketsToken":
        return {"token": exchange.new_token(), "expires": 900}
    if method == "AddOrder":
        userref = form.get("userref")
        entries_before = len(exchange.ledger)
        trades = exchange.execute(
            form.get("pair", ""),
            form.get("type", ""),
            _decimal(form.get("volume"), "volume"),
            ordertype=form.get("ordertype", "market"),
            price=_decimal(form["price"], "price") if "price" in form else None,
            userref=int(userref) if userref not in (None, "") else None,
            cl_ord_id=form.get("cl_ord_id") or None,
        )
        if trades:
            sim.broadcast(trades)
            sim.broadcast_entries(exchange.ledger[entries_before:])
            trade = trades[0]
            return {
                "descr": {"order": f"{trade.side} {trade.order_qty} {trade.pair.altname} @ market"},
                "txid": [trade.order_id],
            }
        return {"descr": {"order": "limit order placed"}, "txid": [list(exchange.orders)[-1]]}
    if method == "TradesHistory":
        end = form.get("end") or None
        return exchange.trades_history(
            _start(form),
            int(form.get("ofs") or 0),
            int(end) if end is not None and end.isdigit() else end,
        )
    if method == "Ledgers":
        end = form.get("end") or None
        kind = form.get("type") or "all"
        if kind not in LEDGER_TYPES:
            raise SimError("EGeneral:Invalid arguments:type")
        return exchange.ledgers(
            _start(form),
            int(form.get("ofs") or 0),
            int(end) if end is not None and end.isdigit() else end,
            kind,
        )
    if method == "OpenOrders":
        return exchange.open_orders()
    if method == "QueryOrders":
        return exchange.query_orders([t for t in form.get("txid", "").split(",") if t])
    raise SimError("EGeneral:Unknown method")


def _public(sim: Simulator, method: str) -> object:
    if method == "Time":
        now = time.time()
        return {
            "unixtime": int(now),
            "rfc1123": time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(now)),
        }
    if method == "Assets":
        return public_assets()
    if method == "AssetPairs":
        return public_asset_pairs(sim.exchange.pairs)
    raise SimError("EGeneral:Unknown method")


async def _control(
    sim: Simulator, name: str, body: dict[str, object], nursery: trio.Nursery
) -> object:
    exchange = sim.exchange
    if name in ("deposit", "withdraw"):
        amount = _decimal(str(body.get("amount")), "amount")
        fee = _decimal(str(body.get("fee", "0")), "fee")
        entry = exchange.move(
            str(body.get("asset", "")), amount if name == "deposit" else -amount, fee=fee,
            kind=str(body["kind"]) if "kind" in body else None,
            ref_id=str(body["ref_id"]) if "ref_id" in body else None,
        )  # fmt: skip
        if not body.get("silent"):  # silent: only REST (Ledgers, balances) shows it
            sim.broadcast_entries([entry])
        return {"balances": exchange.balance_ex(), "ledger_id": entry.ledger_id,
                "ref_id": entry.ref_id}  # fmt: skip
    if name == "drop-websockets":
        return {"dropped": sim.drop_websockets()}
    if name == "fail-rest":
        status = body.get("status")
        sim.faults = FaultPlan(
            int(str(body.get("count", 1))),
            str(body.get("error", "EService:Unavailable")),
            int(str(status)) if status is not None else None,
            str(body["method"]) if "method" in body else None,
            int(str(body.get("skip", 0))),
        )
        return {"failing": sim.faults.count}
    if name == "trade-generator":
        if sim.generator is not None:
            sim.generator.cancel()
            sim.generator = None
        rate = float(str(body.get("rate", 0)))
        if rate > 0:
            sim.sent_ns.clear()
            sim.record_sends = bool(body.get("probe", False))
            sim.generator = trio.CancelScope()
            nursery.start_soon(_generate_trades, sim, sim.generator, rate, body)
        return {"rate": rate}
    if name == "trades":
        return {
            "trades": [
                [t.txid, t.userref, t.pair.key, t.side, str(t.qty), t.time_ns]
                for t in exchange.trades
            ]
        }
    if name == "generated":
        return {"sent_ns": sim.sent_ns}
    if name == "inject-execution":
        # A raw item in every snapshot from now on, and in one update now (malformed ones too).
        item = body.get("item")
        sim.extra_snapshot.append(item)
        sim.broadcast_raw(_UPDATE_PREFIX + ', "data": ' + dumps([item]))
        return {"injected": len(sim.extra_snapshot)}
    if name == "list-pair":
        pair = SimPair(
            str(body["key"]), str(body["altname"]), str(body["base"]), str(body["quote"]),
            Decimal(str(body["price"])),
        )  # fmt: skip
        exchange.pairs[pair.key] = pair
        exchange.prices[pair.key] = pair.price
        return {"pairs": sorted(exchange.pairs)}
    if name == "state":
        return {
            "balances": exchange.balance_ex(),
            "by_userref": exchange.deltas_by_userref(),
            "trades": len(exchange.trades),
            "orders": len(exchange.orders),
            "rest_refused": sim.counter.refused,
            "rest_counter": round(sim.counter.level, 2),
            "ws_connections": sim.ws_connections,
            "tokens_issued": len(exchange.tokens),
            "subscribers": len(sim.subscribers),
            "balance_subscribers": len(sim.balance_subscribers),
            "ledger_entries": len(exchange.ledger),
        }
    raise SimError(f"EGeneral:Unknown control {name}")


ORDER_ENDINGS: Final = ("filled",) * 7 + ("canceled", "expired", "rests")
AMENDED_SHARE: Final = 0.1


async def _generate_trades(
    sim: Simulator, scope: trio.CancelScope, rate: float, body: dict[str, object]
) -> None:
    """Trade at ``rate`` fills/s: market orders on the given pairs and userrefs.

    Buys and sells alternate so the account never runs dry; orders fill in
    one or more trades (``parts``, picked at random). With ``probe``,
    every fill is a buy of ``qty`` on one pair and userref, and its send time
    is recorded as it is handed to the socket (``/sim/generated``), so a
    benchmark can time each one from the moment it is sent.
    """
    # strategy_ids as the Binance simulator names them; userrefs, Kraken's name, too.
    tagged = body.get("strategy_ids", body.get("userrefs", [2, 3, 4]))
    userrefs = [int(u) for u in tagged]  # type: ignore[attr-defined]
    pairs = [str(p) for p in body.get("pairs", ["XXBTZUSD", "XETHZUSD", "XBTUSDT", "ETHUSDT"])]  # type: ignore[attr-defined]
    probe = bool(body.get("probe", False))
    qty = Decimal(str(body.get("qty", "0.001")))
    limit = int(str(body.get("count", 0)))
    split = [int(p) for p in body.get("parts", [1, 1, 2, 3])]  # type: ignore[attr-defined]
    batch = max(1, int(rate / 1000))  # at most ~1000 wake-ups a second
    interval = batch / rate
    rng = random.Random(int(str(body.get("seed", 7))))
    made = 0
    next_at = trio.current_time()
    with scope:
        while limit == 0 or made < limit:
            trades: list[Trade] = []
            entries_before = len(sim.exchange.ledger)
            for _ in range(batch):
                if probe:
                    trades += sim.exchange.execute(pairs[0], "buy", qty, userref=userrefs[0])
                    made += 1
                    continue
                pair = rng.choice(pairs)
                side = "buy" if made % 2 == 0 else "sell"
                # Odd sizes at drifting prices: costs with more digits than the quote keeps.
                volume = (qty * rng.randint(1000, 5000) / 1000).quantize(Decimal("0.00000001"))
                sim.exchange.drift(pair, rng)
                parts = rng.choice(split) if split else 1
                # Most orders fill; some are amended first, some fill in part and are
                # then canceled, expire or rest: none of those events is a fill.
                ending = rng.choice(ORDER_ENDINGS)
                try:
                    trades += sim.exchange.execute(
                        pair, side, volume, userref=rng.choice(userrefs), parts=parts,
                        unfilled=volume if ending != "filled" else Decimal(0),
                        ending=None if ending in ("filled", "rests") else ending,
                        amended=rng.random() < AMENDED_SHARE,
                    )  # fmt: skip
                except SimError:
                    continue
                made += 1
            sim.broadcast(trades)
            sim.broadcast_entries(sim.exchange.ledger[entries_before:])
            next_at += interval
            await trio.sleep_until(next_at)


def _one_way_s(rules: SimRules) -> float:
    """Half the round trip, plus jitter on the way in (so requests can overtake each other)."""
    return rules.latency_s / 2 + random.uniform(0, rules.jitter_s)


async def _handle(sim: Simulator, nursery: trio.Nursery, request: HttpRequest) -> HttpAnswer:
    delayed = (sim.rules.latency_s or sim.rules.jitter_s) and not request.target.startswith("/sim/")
    if delayed:
        await trio.sleep(_one_way_s(sim.rules))
    status, payload = await _route(
        sim, nursery, request.method, request.target, dict(request.headers), request.body
    )
    if delayed:
        await trio.sleep(sim.rules.latency_s / 2)
    # Kraken's JSON keeps exact decimals as numbers: encoded here, not by the server.
    return HttpAnswer(status, payload if isinstance(payload, str) else dumps(payload))


async def _route(
    sim: Simulator,
    nursery: trio.Nursery,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
) -> tuple[int, object]:
    path = urlsplit(target).path
    parts = path.strip("/").split("/")
    try:
        if parts[0] == "sim" and len(parts) == 2:
            request = json.loads(body or b"{}")
            return 200, await _control(
                sim, parts[1], request if isinstance(request, dict) else {}, nursery
            )
        if len(parts) != 3 or parts[0] != "0" or parts[1] not in ("public", "private"):
            return 404, {"error": ["EGeneral:Unknown method"]}
        faults = sim.faults
        if faults.count > 0 and faults.method in (None, parts[2]):
            if faults.skip > 0:
                faults.skip -= 1
            else:
                faults.count -= 1
                if faults.status is not None:
                    return faults.status, "<html><body>upstream unavailable</body></html>"
                return 200, {"error": [faults.error]}
        if parts[1] == "public":
            return 200, {"error": [], "result": _public(sim, parts[2])}
        if method != "POST":
            return 200, {"error": ["EGeneral:Invalid arguments"]}
        form = _form(body)
        sim.exchange.authenticate(path, headers, body, form)
        return 200, {"error": [], "result": _private(sim, parts[2], form)}
    except SimError as exc:
        return 200, {"error": [exc.error]}
    except (ValueError, KeyError) as exc:
        return 200, {"error": [f"EGeneral:Invalid arguments:{exc}"]}


# -- WS v2 ---------------------------------------------------------------------------------


async def _serve_ws(sim: Simulator, request: WebSocketRequest) -> None:
    ws = await request.accept()
    sim.ws_connections += 1
    send, receive = trio.open_memory_channel[str](SUBSCRIBER_QUEUE)
    # /sim/drop-websockets cancels this scope: the connection ends mid-stream.
    with trio.CancelScope() as scope:
        sim.ws_scopes.add(scope)
        try:
            status = {
                "api_version": "v2",
                "connection_id": random.getrandbits(64),
                "system": "online",
                "version": "2.0.0",
            }
            await ws.send_message(dumps({"channel": "status", "type": "update", "data": [status]}))
            subscription = _Subscription()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_ws_sender, sim, ws, receive, subscription, nursery.cancel_scope)
                await _ws_reader(sim, ws, send, subscription)
                nursery.cancel_scope.cancel()
        except ConnectionClosed:
            pass  # closed before the nursery started
        finally:
            sim.ws_scopes.discard(scope)
            sim.subscribers.discard(send)
            sim.status_subscribers.discard(send)
            sim.balance_subscribers.discard(send)
            sim.ws_connections -= 1


async def _ws_sender(
    sim: Simulator,
    ws: WebSocketConnection,
    receive: trio.MemoryReceiveChannel[str],
    subscription: _Subscription,
    done: trio.CancelScope,
) -> None:
    """Forward queued messages, numbering updates; heartbeats once subscribed, when idle.

    What is queued goes out in one write, each message its own frame (simws).
    """
    try:
        while True:
            try:  # no timer while messages are queued: at 10,000 fills/s it would cost a tenth
                message = receive.receive_nowait()
            except trio.WouldBlock:
                with trio.move_on_after(HEARTBEAT_S) as idle:
                    message = await receive.receive()
                if idle.cancelled_caught:
                    if subscription.subscribed:  # Kraken sends none before a subscription
                        await ws.send_message('{"channel":"heartbeat"}')
                    continue
            batch = take_queued(message, receive)
            for index, queued in enumerate(batch):
                batch[index] = _numbered(sim, subscription, queued)
            await send_messages(ws, batch)
    except (ConnectionClosed, trio.EndOfChannel):
        done.cancel()


def _numbered(sim: Simulator, subscription: _Subscription, message: str) -> str:
    """An update with its channel's next sequence (its send time kept for the bench)."""
    channel = (
        "executions" if message.startswith(_UPDATE_PREFIX)
        else "balances" if message.startswith(_BALANCES_PREFIX)
        else None
    )  # fmt: skip
    if channel is None:
        return message
    sequence = subscription.sequences.get(channel, 0) + 1
    subscription.sequences[channel] = sequence
    if sim.record_sends and channel == "executions":
        sim.sent_ns.append(time.time_ns())
    return message + f', "sequence": {sequence}}}'


_UPDATE_PREFIX: Final = '{"channel": "executions", "type": "update"'
_BALANCES_PREFIX: Final = '{"channel": "balances", "type": "update"'


async def _ws_reader(
    sim: Simulator,
    ws: WebSocketConnection,
    send: trio.MemorySendChannel[str],
    subscription: _Subscription,
) -> None:
    while True:
        try:
            text = await ws.get_message()
        except ConnectionClosed:
            return
        try:
            message = json.loads(text)
        except ValueError:
            send.send_nowait(dumps({"error": "EGeneral:Invalid arguments", "success": False}))
            continue
        method = message.get("method") if isinstance(message, dict) else None
        req_id = message.get("req_id") if isinstance(message, dict) else None
        params = message.get("params") or {} if isinstance(message, dict) else {}
        if method == "ping":
            send.send_nowait(
                dumps({"method": "pong", "req_id": req_id, "time_in": _now(), "time_out": _now()})
            )
        elif method == "subscribe" and params.get("channel") == "executions":
            if not sim.exchange.token_valid(params.get("token")):
                send.send_nowait(
                    dumps(
                        {
                            "method": "subscribe",
                            "success": False,
                            "error": "EAccount:Invalid permissions",
                            "req_id": req_id,
                        }
                    )
                )
                continue
            send.send_nowait(
                dumps(
                    {
                        "method": "subscribe",
                        "success": True,
                        "req_id": req_id,
                        "time_in": _now(),
                        "time_out": _now(),
                        "result": {
                            "channel": "executions",
                            "maxratecount": 125,
                            "snap_orders": bool(params.get("snap_orders", True)),
                            "snap_trades": bool(params.get("snap_trades", False)),
                        },
                    }
                )
            )
            snapshot = (
                [t.execution() for t in sim.exchange.recent] + sim.extra_snapshot
                if params.get("snap_trades")
                else []
            )
            subscription.channels.add("executions")
            subscription.sequences["executions"] = 1
            send.send_nowait(
                dumps(
                    {"channel": "executions", "type": "snapshot", "data": snapshot, "sequence": 1}
                )
            )
            sim.subscribers.add(send)
            if params.get("order_status", True):
                sim.status_subscribers.add(send)
        elif method == "subscribe" and params.get("channel") == "balances":
            _subscribe_balances(sim, send, subscription, params, req_id)
        elif method == "unsubscribe":
            sim.subscribers.discard(send)
            sim.status_subscribers.discard(send)
            sim.balance_subscribers.discard(send)
            subscription.channels.clear()
            send.send_nowait(dumps({"method": "unsubscribe", "success": True, "req_id": req_id}))
        else:
            send.send_nowait(
                dumps(
                    {
                        "method": method,
                        "success": False,
                        "error": "EGeneral:Invalid arguments",
                        "req_id": req_id,
                    }
                )
            )


def _subscribe_balances(
    sim: Simulator,
    send: trio.MemorySendChannel[str],
    subscription: _Subscription,
    params: dict[str, object],
    req_id: object,
) -> None:
    """Ack, then (unless ``snapshot`` is false) each asset's balance by wallet, then updates."""
    if not sim.exchange.token_valid(params.get("token")):
        refusal = {"method": "subscribe", "success": False, "req_id": req_id,
                   "error": "EAccount:Invalid permissions"}  # fmt: skip
        send.send_nowait(dumps(refusal))
        return
    snapshot = params.get("snapshot", True) is not False
    send.send_nowait(
        dumps(
            {
                "method": "subscribe", "success": True, "req_id": req_id,
                "time_in": _now(), "time_out": _now(),
                "result": {"channel": "balances", "snapshot": snapshot},
            }
        )
    )  # fmt: skip
    subscription.channels.add("balances")
    if snapshot:
        subscription.sequences["balances"] = 1
        data = [
            {
                "asset": ASSETS.get(key, ("", 0, key))[2],
                "asset_class": "currency",
                "balance": amount,
                "wallets": [{"type": "spot", "id": "main", "balance": amount}],
            }
            for key, amount in sim.exchange.balances.items()
        ]
        send.send_nowait(
            dumps({"channel": "balances", "type": "snapshot", "data": data, "sequence": 1})
        )
    sim.balance_subscribers.add(send)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


# -- the whole thing ----------------------------------------------------------------------


async def run_simulator(
    sim: Simulator,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ws_port: int = 0,
    ready_file: Path | None = None,
    ws_tls: Path | None = None,
    task_status: trio.TaskStatus[SimAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve REST and WS until cancelled. ``started(SimAddress)`` once both listen.

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
            ws_path="/v2",
            api_key=sim.exchange.api_key,
            api_secret=sim.exchange.api_secret,
            ready_file=ready_file,
            ws_tls=ws_tls,
        )
        logger.info("simulator ready: REST %s, WS %s", address.rest_url, address.ws_url)
        task_status.started(address)


__all__ = ["PAIRS", "SimAddress", "Simulator", "run_simulator"]
