"""The simulator's exchange: one account, its balances, orders, trades and executions.

Plain Python, no I/O: the servers in ``gateway.exchanges.kraken.sim.server`` speak Kraken's
protocols around it. Asset and pair codes are Kraken's own (REST ``XXBT``,
WS v2 ``BTC``), so a client must normalise them as it would for Kraken.
"""

from __future__ import annotations

import base64
import hmac
import itertools
import random
import secrets
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Final, Protocol, TypeVar

import msgspec

from gateway.exchanges.kraken.parsing import format_timestamp
from gateway.exchanges.kraken.signing import sign

# REST key → (altname, decimals, WS v2 code)
ASSETS: Final = {
    "XXBT": ("XBT", 10, "BTC"),
    "XETH": ("ETH", 10, "ETH"),
    "ZUSD": ("USD", 4, "USD"),
    "ZEUR": ("EUR", 4, "EUR"),
    "USDT": ("USDT", 8, "USDT"),
    "USDC": ("USDC", 8, "USDC"),
}
V2_TO_REST: Final = {v2: key for key, (_, _, v2) in ASSETS.items()}


@dataclass(frozen=True)
class SimPair:
    key: str
    altname: str
    base: str  # REST asset key
    quote: str
    price: Decimal

    @property
    def symbol(self) -> str:
        return f"{ASSETS[self.base][2]}/{ASSETS[self.quote][2]}"


PAIRS: Final = {
    p.key: p
    for p in (
        SimPair("XXBTZUSD", "XBTUSD", "XXBT", "ZUSD", Decimal("60000.1")),
        SimPair("XETHZUSD", "XETHUSD", "XETH", "ZUSD", Decimal("3000.37")),
        SimPair("XBTUSDT", "XBTUSDT", "XXBT", "USDT", Decimal("60010.3")),
        SimPair("ETHUSDT", "ETHUSDT", "XETH", "USDT", Decimal("3001.01")),
        SimPair("XBTUSDC", "XBTUSDC", "XXBT", "USDC", Decimal("60005.7")),
    )
}
DEFAULT_BALANCES: Final = {
    "USD": Decimal(100000),
    "USDT": Decimal(100000),
    "USDC": Decimal(100000),
    "BTC": Decimal(10),
    "ETH": Decimal(100),
}
TAKER_FEE: Final = Decimal("0.0026")
SNAPSHOT_TRADES: Final = 50
TRADES_PAGE: Final = 50
TOKEN_TTL_S: Final = 900


class SimError(Exception):
    """A request refused with one of Kraken's error strings."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


_ids = itertools.count(1)


def kraken_id(prefix: str) -> str:
    """An id shaped like Kraken's (``OK4GJX-KSTLS-7DZZO5``), unique in this process."""
    # Unique by the counter; the rest only looks random (no system call per id).
    raw = f"{next(_ids):06d}{_id_random.getrandbits(48):012X}"
    return f"{prefix}{raw[:5]}-{raw[5:10]}-{raw[10:16]}"


_id_random = random.Random()
# Decimals written as exact JSON numbers, at a sixth of the json module's cost with a
# marker for each: the simulator must offer 10,000 fills/s beside the gateway it feeds.
_ENCODER: Final = msgspec.json.Encoder(decimal_format="number")


def dumps(value: object) -> str:
    """JSON with Decimals as exact JSON numbers, as Kraken's engine sends them."""
    return _ENCODER.encode(value).decode()


@dataclass
class Trade:
    txid: str
    order_id: str
    pair: SimPair
    side: str
    qty: Decimal
    price: Decimal
    cost: Decimal
    fee: Decimal
    userref: int | None
    cl_ord_id: str | None
    time_ns: int
    trade_id: int
    # The order so far, this trade included (an order may fill in several trades).
    cum_qty: Decimal = Decimal(0)
    cum_cost: Decimal = Decimal(0)
    order_qty: Decimal = Decimal(0)
    # How an order that does not fill completely ends: "canceled", "expired", or
    # None (it rests, partially filled). And whether it was amended before it traded.
    ending: str | None = None
    amended: bool = False

    @property
    def completes_order(self) -> bool:
        return self.cum_qty >= self.order_qty

    def _tags(self, item: dict[str, object]) -> dict[str, object]:
        if self.cl_ord_id is not None:
            item["cl_ord_id"] = self.cl_ord_id
        else:
            item["order_userref"] = self.userref or 0
        return item

    def execution(self) -> dict[str, object]:
        """The WS v2 ``executions`` item of this trade, as Kraken's documentation shows it."""
        return self._tags({
            "order_id": self.order_id,
            "exec_id": self.txid,
            "exec_type": "trade",
            "trade_id": self.trade_id,
            "symbol": self.pair.symbol,
            "side": self.side,
            "last_qty": self.qty,
            "last_price": self.price,
            "liquidity_ind": "t",
            "cost": self.cost,
            "order_type": "market",
            "timestamp": format_timestamp(self.time_ns),
            "order_status": "filled" if self.completes_order else "partially_filled",
            "cum_qty": self.cum_qty,
            "cum_cost": self.cum_cost,
            "avg_price": (self.cum_cost / self.cum_qty).quantize(self.price),
            "fee_usd_equiv": self.fee,
            "fees": [{"asset": ASSETS[self.pair.quote][2], "qty": self.fee}],
        })  # fmt: skip

    def order_event(self, exec_type: str) -> dict[str, object]:
        """An order's status event (``pending_new``, ``new``, ``amended``, ``filled``,
        ``canceled``, ``expired``): no trade in it, whatever its cumulative fields say."""
        status = {"amended": "new", "canceled": "canceled", "expired": "expired"}
        item: dict[str, object] = {
            "order_id": self.order_id,
            "exec_id": kraken_id("L"),
            "exec_type": exec_type,
            "symbol": self.pair.symbol,
            "side": self.side,
            "order_type": "market",
            "order_qty": self.order_qty,
            "timestamp": format_timestamp(self.time_ns),
            "order_status": status.get(exec_type, exec_type),
        }
        if exec_type in ("filled", "canceled", "expired"):
            item.update(cum_qty=self.cum_qty, cum_cost=self.cum_cost)
        if exec_type == "canceled":
            item["reason"] = "User requested"
        if exec_type == "amended":
            item.update(amended=True, reason="User requested")
        return self._tags(item)

    def rest(self) -> dict[str, object]:
        """The ``TradesHistory`` entry of this trade."""
        return {
            "ordertxid": self.order_id,
            "postxid": kraken_id("P"),
            "pair": self.pair.key,
            "time": Decimal(self.time_ns).scaleb(-9).quantize(Decimal("0.000001")),
            "type": self.side,
            "ordertype": "market",
            "price": str(self.price),
            "cost": str(self.cost),
            "fee": str(self.fee),
            "vol": str(self.qty),
            "margin": "0.00000",
            "misc": "",
            "trade_id": self.trade_id,
        }


@dataclass
class LedgerEntry:
    """One line of the account's ledger, as Kraken keeps it: the balance moves by amount - fee."""

    ledger_id: str
    ref_id: str
    time_ns: int
    kind: str  # deposit, withdrawal, trade, transfer, earn ...
    asset: str  # REST key
    amount: Decimal
    fee: Decimal
    balance: Decimal
    wallet_type: str = "spot"
    wallet_id: str = "main"

    def rest(self) -> dict[str, object]:
        """As ``Ledgers`` shows it."""
        return {
            "refid": self.ref_id,
            "time": f"{self.time_ns / 1e9:.4f}",
            "type": self.kind,
            "subtype": "",
            "aclass": "currency",
            "asset": self.asset,
            "amount": _fmt(self.amount, self.asset),
            "fee": _fmt(self.fee, self.asset),
            "balance": _fmt(self.balance, self.asset),
        }

    def ws(self) -> dict[str, object]:
        """As a ``balances`` update carries it (WS v2 asset codes, exact numbers)."""
        return {
            "ledger_id": self.ledger_id,
            "ref_id": self.ref_id,
            "timestamp": format_timestamp(self.time_ns),
            "type": self.kind,
            "asset": ASSETS.get(self.asset, ("", 0, self.asset))[2],
            "asset_class": "currency",
            "category": self.kind,
            "wallet_type": self.wallet_type,
            "wallet_id": self.wallet_id,
            "amount": self.amount,
            "fee": self.fee,
            "balance": self.balance,
        }


class _Dated(Protocol):
    @property
    def time_ns(self) -> int: ...


_D = TypeVar("_D", bound=_Dated)


def _history_window(
    items: Sequence[_D], ids: Sequence[str], start: int | None, end: int | str | None
) -> list[_D]:
    """Kraken's history window, newest first: after ``start`` (unix s, exclusive) up to
    ``end`` (unix s, or an item's id, inclusive).

    Raises:
        SimError: ``end`` names no item.
    """
    if isinstance(end, str):
        if end not in ids:
            raise SimError("EGeneral:Invalid arguments:end")
        items = items[: ids.index(end) + 1]
    elif end is not None:
        items = [item for item in items if item.time_ns <= end * 1_000_000_000]
    return [i for i in reversed(items) if start is None or i.time_ns > start * 1_000_000_000]


@dataclass
class SimExchange:
    """The account behind one API key."""

    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(42))
    api_secret: str = field(
        default_factory=lambda: base64.b64encode(secrets.token_bytes(64)).decode()
    )
    balances: dict[str, Decimal] = field(default_factory=dict)  # REST key → amount
    pairs: dict[str, SimPair] = field(default_factory=lambda: dict(PAIRS))
    prices: dict[str, Decimal] = field(
        default_factory=lambda: {k: p.price for k, p in PAIRS.items()}
    )
    last_nonce: int = 0
    tokens: dict[str, float] = field(default_factory=dict)
    orders: dict[str, dict[str, object]] = field(default_factory=dict)
    trades: list[Trade] = field(default_factory=list)
    recent: deque[Trade] = field(default_factory=lambda: deque(maxlen=SNAPSHOT_TRADES))
    trade_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    ledger: list[LedgerEntry] = field(default_factory=list)

    @classmethod
    def funded(cls, balances: Mapping[str, Decimal] | None = None, **keys: str) -> SimExchange:
        exchange = cls(**keys)  # type: ignore[arg-type]
        for code, amount in (balances or DEFAULT_BALANCES).items():
            exchange.balances[V2_TO_REST.get(code.upper(), code.upper())] = Decimal(amount)
        return exchange

    # -- authentication -------------------------------------------------------------

    def authenticate(
        self, path: str, headers: Mapping[str, str], body: bytes, form: Mapping[str, str]
    ) -> None:
        """Check key, signature and nonce as Kraken does.

        Raises:
            SimError: ``EAPI:Invalid key`` / ``EAPI:Invalid signature`` / ``EAPI:Invalid nonce``.
        """
        if headers.get("api-key") != self.api_key:
            raise SimError("EAPI:Invalid key")
        nonce_text = form.get("nonce", "")
        if not nonce_text.isdigit():
            raise SimError("EAPI:Invalid nonce")
        expected = sign(path, nonce_text, body, self.api_secret)
        if not hmac.compare_digest(expected, headers.get("api-sign", "")):
            raise SimError("EAPI:Invalid signature")
        nonce = int(nonce_text)
        if nonce <= self.last_nonce:
            raise SimError("EAPI:Invalid nonce")
        self.last_nonce = nonce

    def new_token(self) -> str:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + TOKEN_TTL_S
        return token

    def token_valid(self, token: object) -> bool:
        return isinstance(token, str) and self.tokens.get(token, 0) > time.monotonic()

    # -- money ----------------------------------------------------------------------

    def move(
        self,
        asset_code: str,
        amount: Decimal,
        *,
        fee: Decimal = Decimal(0),
        kind: str | None = None,
        ref_id: str | None = None,
        now_ns: int | None = None,
    ) -> LedgerEntry:
        """A deposit (positive) or withdrawal (negative), less ``fee``; its ledger entry.

        Raises:
            SimError: the balance would go below zero.
        """
        key = V2_TO_REST.get(asset_code.upper(), asset_code.upper())
        new = self.balances.get(key, Decimal(0)) + amount - fee
        if new < 0:
            raise SimError("EFunding:Insufficient funds")
        self.balances[key] = new
        return self._entry(
            kind or ("deposit" if amount > 0 else "withdrawal"),
            ref_id or kraken_id("F"), key, amount, fee, now_ns,
        )  # fmt: skip

    def _entry(
        self,
        kind: str,
        ref_id: str,
        key: str,
        amount: Decimal,
        fee: Decimal,
        now_ns: int | None,
    ) -> LedgerEntry:
        entry = LedgerEntry(
            kraken_id("L"), ref_id, now_ns if now_ns is not None else time.time_ns(), kind, key,
            amount, fee, self.balances.get(key, Decimal(0)),
        )  # fmt: skip
        self.ledger.append(entry)
        return entry

    def ledgers(
        self, start: int | None, ofs: int, end: int | str | None = None, kind: str = "all"
    ) -> dict[str, object]:
        """``Ledgers``: newest first, one page of 50, ``start``/``end`` as for trades,
        ``kind`` one entry type (or ``all``).

        Raises:
            SimError: ``end`` names no entry.
        """
        entries = self.ledger if kind == "all" else [e for e in self.ledger if e.kind == kind]
        chosen = _history_window(entries, [e.ledger_id for e in entries], start, end)
        page = chosen[ofs : ofs + TRADES_PAGE]
        return {"ledger": {e.ledger_id: e.rest() for e in page}, "count": len(chosen)}

    def balance_ex(self) -> dict[str, dict[str, str]]:
        return {
            key: {"balance": _fmt(amount, key), "hold_trade": _fmt(Decimal(0), key)}
            for key, amount in self.balances.items()
        }

    def execute(
        self,
        pair_name: str,
        side: str,
        volume: Decimal,
        *,
        ordertype: str = "market",
        price: Decimal | None = None,
        userref: int | None = None,
        cl_ord_id: str | None = None,
        now_ns: int | None = None,
        parts: int = 1,
        unfilled: Decimal = Decimal(0),
        ending: str | None = None,
        amended: bool = False,
    ) -> list[Trade]:
        """Place an order. Market orders, and limit orders that cross, fill at once.

        The order fills in ``parts`` trades, the price drifting between them as
        a book walked through would. Each trade is booked as Kraken books it:
        its cost at the quote asset's decimals (half-even), the fee on that cost
        rounded down. An order for ``volume + unfilled`` fills ``volume`` and
        then ends as ``ending`` (canceled, expired; None: it rests). Returns the
        trades (none for a limit order left open).

        Raises:
            SimError: unknown pair, bad arguments, insufficient funds.
        """
        pair = self.pairs.get(pair_name) or next(
            (p for p in self.pairs.values() if p.altname == pair_name), None
        )
        if pair is None:
            raise SimError("EQuery:Unknown asset pair")
        if side not in ("buy", "sell") or volume <= 0 or ordertype not in ("market", "limit"):
            raise SimError("EGeneral:Invalid arguments")
        if userref is not None and cl_ord_id is not None:
            raise SimError("EGeneral:Invalid arguments:cl_ord_id and userref are exclusive")
        market = self.prices[pair.key]
        order_id = kraken_id("O")
        order: dict[str, object] = {
            "userref": userref,
            "cl_ord_id": cl_ord_id,
            "status": "open",
            "vol": str(volume),
            "descr": {"pair": pair.altname, "type": side, "ordertype": ordertype},
        }
        crosses = ordertype == "market" or (
            price is not None and (price >= market if side == "buy" else price <= market)
        )
        if not crosses:
            self.orders[order_id] = order
            return []
        quote_places = Decimal(1).scaleb(-ASSETS[pair.quote][1])
        lot = Decimal("0.00000001")
        pieces = [(volume / parts).quantize(lot, ROUND_DOWN)] * (parts - 1)
        pieces.append(volume - sum(pieces, Decimal(0)))
        fills: list[tuple[Decimal, Decimal, Decimal, Decimal]] = []
        base_delta = quote_delta = Decimal(0)
        sign = 1 if side == "buy" else -1
        for step, qty in enumerate(pieces):
            if qty <= 0:
                continue
            price = (market * (1 + sign * Decimal(step) / 10_000)).quantize(market)
            cost = (qty * price).quantize(quote_places, ROUND_HALF_EVEN)
            fee = (cost * TAKER_FEE).quantize(quote_places, ROUND_DOWN)
            fills.append((qty, price, cost, fee))
            base_delta += sign * qty
            quote_delta += -sign * cost - fee
        base, quote = pair.base, pair.quote
        if self.balances.get(base, Decimal(0)) + base_delta < 0 or (
            self.balances.get(quote, Decimal(0)) + quote_delta < 0
        ):
            raise SimError("EOrder:Insufficient funds")
        self.balances[base] = self.balances.get(base, Decimal(0)) + base_delta
        self.balances[quote] = self.balances.get(quote, Decimal(0)) + quote_delta
        order["status"] = "closed" if not unfilled else (ending or "open")
        order["vol"] = str(volume + unfilled)
        order["vol_exec"] = str(volume)
        self.orders[order_id] = order
        now = now_ns if now_ns is not None else time.time_ns()
        trades = []
        cum_qty = cum_cost = Decimal(0)
        for qty, price, cost, fee in fills:
            cum_qty += qty
            cum_cost += cost
            trade = Trade(
                kraken_id("T"), order_id, pair, side, qty, price, cost, fee, userref,
                cl_ord_id, now, next(self.trade_ids), cum_qty, cum_cost, volume + unfilled,
                ending, amended,
            )  # fmt: skip
            self.trades.append(trade)
            self.recent.append(trade)
            trades.append(trade)
            # The ledger's two lines per trade (type trade, ref_id the trade's id).
            self._entry("trade", trade.txid, base, sign * qty, Decimal(0), now)
            self._entry("trade", trade.txid, quote, -sign * cost, fee, now)
        return trades

    def drift(self, pair_key: str, rng: random.Random) -> None:
        """Move a pair's price a little, at its own precision (odd prices, odd costs)."""
        price = self.prices[pair_key]
        step = Decimal(rng.randint(-30, 30)) / 100_000
        self.prices[pair_key] = (price * (1 + step)).quantize(price)

    def open_orders(self) -> dict[str, object]:
        return {"open": {k: o for k, o in self.orders.items() if o["status"] == "open"}}

    def trades_history(
        self, start: int | None, ofs: int, end: int | str | None = None
    ) -> dict[str, object]:
        """Newest first, one page of 50: trades after ``start`` (unix s, exclusive) up to
        ``end`` (unix s, or a trade id, inclusive).

        Raises:
            SimError: ``end`` names no trade.
        """
        chosen = _history_window(self.trades, [t.txid for t in self.trades], start, end)
        page = chosen[ofs : ofs + TRADES_PAGE]
        return {"trades": {t.txid: t.rest() for t in page}, "count": len(chosen)}

    def deltas_by_userref(self) -> dict[str, dict[str, str]]:
        """What each userref's trades moved, per WS v2 asset code (fees included)."""
        totals: dict[str, dict[str, Decimal]] = {}
        for trade in self.trades:
            moved = totals.setdefault(str(trade.userref), {})
            base, quote = ASSETS[trade.pair.base][2], ASSETS[trade.pair.quote][2]
            sign = 1 if trade.side == "buy" else -1
            moved[base] = moved.get(base, Decimal(0)) + sign * trade.qty
            moved[quote] = moved.get(quote, Decimal(0)) - sign * trade.cost - trade.fee
        return {ref: {c: str(v) for c, v in moved.items()} for ref, moved in totals.items()}

    def query_orders(self, txids: list[str]) -> dict[str, object]:
        missing = [t for t in txids if t not in self.orders]
        if missing:
            raise SimError("EOrder:Invalid order")
        return {t: self.orders[t] for t in txids}


def _fmt(amount: Decimal, key: str) -> str:
    """At least the asset's decimals, as Kraken shows them, and never fewer than exact."""
    decimals = ASSETS.get(key, ("", 10, ""))[1]
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    return f"{amount.quantize(Decimal(1).scaleb(min(-decimals, exponent))):f}"


def public_assets() -> dict[str, object]:
    return {
        key: {
            "aclass": "currency",
            "altname": alt,
            "decimals": dec,
            "display_decimals": min(dec, 5),
            "status": "enabled",
        }
        for key, (alt, dec, _) in ASSETS.items()
    }


def public_asset_pairs(pairs: Mapping[str, SimPair] = PAIRS) -> dict[str, object]:
    return {
        p.key: {
            "altname": p.altname,
            "wsname": f"{ASSETS[p.base][0]}/{ASSETS[p.quote][0]}",
            "base": p.base,
            "quote": p.quote,
            "pair_decimals": -int(p.price.as_tuple().exponent),
            "lot_decimals": 8,
            "cost_decimals": 5,
            "ordermin": "0.0001",
            "status": "online",
        }
        for p in pairs.values()
    }
