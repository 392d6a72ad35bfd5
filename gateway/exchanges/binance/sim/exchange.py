"""The Binance-compatible simulator's account: balances, symbols, orders, trades, transfers.

Pure bookkeeping, no I/O: the server (``server.py``) turns requests into calls
here and the results into Binance's JSON. Orders fill at once in one or more
trades, each a basis point further from the market than the last: market
orders wholly, limit orders as far as their price allows (a limit that does
not cross rests, ``GTC``, or expires, ``IOC`` and ``FOK``; nothing rests ever
fills later). Each trade books its quote quantity at 8 decimals and a 0.1 %
commission in the asset received (or in BNB, at a quarter off, when asked), as
Binance does by default.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Final

DEFAULT_BALANCES: Final = {
    "USDT": Decimal(100_000),
    "USDC": Decimal(100_000),
    "BTC": Decimal(10),
    "ETH": Decimal(100),
    "BNB": Decimal(10),
}
EIGHT: Final = Decimal("0.00000001")
COMMISSION: Final = Decimal("0.001")
BNB_DISCOUNT: Final = Decimal("0.75")


@dataclass(frozen=True, slots=True)
class SimSymbol:
    name: str
    base: str
    quote: str
    price: Decimal  # the starting price, at the symbol's tick

    def info(self) -> dict[str, object]:
        """The symbol as ``exchangeInfo`` lists it (the fields a client needs)."""
        return {
            "symbol": self.name,
            "status": "TRADING",
            "baseAsset": self.base,
            "baseAssetPrecision": 8,
            "quoteAsset": self.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "MARKET"],
            "isSpotTradingAllowed": True,
            "permissionSets": [["SPOT"]],
        }


SYMBOLS: Final = {
    s.name: s
    for s in (
        SimSymbol("BTCUSDT", "BTC", "USDT", Decimal("60000.00")),
        SimSymbol("ETHUSDT", "ETH", "USDT", Decimal("3000.00")),
        SimSymbol("BTCUSDC", "BTC", "USDC", Decimal("60010.00")),
        SimSymbol("ETHUSDC", "ETH", "USDC", Decimal("3001.00")),
        SimSymbol("ETHBTC", "ETH", "BTC", Decimal("0.05000")),
        SimSymbol("BNBUSDT", "BNB", "USDT", Decimal("600.0")),
    )
}


class SimError(Exception):
    """A refusal, as Binance words it: an HTTP status, an error code and its message."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg


def insufficient() -> SimError:
    return SimError(400, -2010, "Account has insufficient balance for requested action.")


def _missing(name: str) -> SimError:
    return SimError(
        400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


@dataclass(frozen=True, slots=True)
class SimTrade:
    symbol: SimSymbol
    trade_id: int
    order_id: int
    client_order_id: str
    side: str  # BUY | SELL
    qty: Decimal
    price: Decimal
    quote_qty: Decimal
    commission: Decimal
    commission_asset: str
    time_ms: int
    strategy_id: int | None
    order_qty: Decimal
    cum_qty: Decimal
    cum_quote: Decimal

    def rest(self) -> dict[str, object]:
        """The ``myTrades`` entry."""
        return {
            "symbol": self.symbol.name, "id": self.trade_id, "orderId": self.order_id,
            "orderListId": -1, "price": str(self.price), "qty": str(self.qty),
            "quoteQty": str(self.quote_qty), "commission": str(self.commission),
            "commissionAsset": self.commission_asset, "time": self.time_ms,
            "isBuyer": self.side == "BUY", "isMaker": False, "isBestMatch": True,
        }  # fmt: skip

    def report(self, order: Mapping[str, object]) -> dict[str, object]:
        """The ``executionReport`` of this trade of ``order``."""
        done = self.cum_qty >= self.order_qty
        return order_report(
            order, "TRADE", "FILLED" if done else "PARTIALLY_FILLED", self.time_ms,
            last=(self.qty, self.price, self.quote_qty), cum=(self.cum_qty, self.cum_quote),
            fee=(self.commission, self.commission_asset), trade_id=self.trade_id,
        )  # fmt: skip


def order_report(
    order: Mapping[str, object],
    execution: str,
    status: str,
    time_ms: int,
    *,
    last: tuple[Decimal, Decimal, Decimal] = (Decimal(0), Decimal(0), Decimal(0)),
    cum: tuple[Decimal, Decimal] = (Decimal(0), Decimal(0)),
    fee: tuple[Decimal, str | None] = (Decimal(0), None),
    trade_id: int = -1,
) -> dict[str, object]:
    """An ``executionReport``: ``NEW``, ``TRADE`` or ``EXPIRED`` of ``order``."""
    trade = execution == "TRADE"
    event: dict[str, object] = {
        "e": "executionReport", "E": time_ms, "s": order["symbol"],
        "c": order["clientOrderId"], "S": order["side"], "o": order["type"],
        "f": order["timeInForce"], "q": order["origQty"], "p": order["price"],
        "P": "0.00000000", "F": "0.00000000", "g": -1, "C": "", "x": execution, "X": status,
        "r": "NONE", "i": order["orderId"],
        "l": f"{last[0]:.8f}", "z": f"{cum[0]:.8f}", "L": f"{last[1]:.8f}",
        "n": str(fee[0]) if trade else "0", "N": fee[1] if trade else None,
        "T": time_ms, "t": trade_id, "I": trade_id * 2 if trade else time_ms,
        "w": status in ("NEW", "PARTIALLY_FILLED") and not trade, "m": False, "M": trade,
        "O": order["time"], "Z": f"{cum[1]:.8f}", "Y": f"{last[2]:.8f}", "Q": "0.00000000",
        "W": order["workingTime"], "V": order["selfTradePreventionMode"],
    }  # fmt: skip
    if "strategyId" in order:
        event["j"] = order["strategyId"]
    return event


@dataclass(frozen=True, slots=True)
class Placed:
    """What an order did: its record (as ``allOrders`` lists it), its trades, its events."""

    order: dict[str, object]
    trades: list[SimTrade]
    expired: bool  # the part not filled expired (IOC, FOK)


@dataclass
class SimAccount:
    """The account behind one API key."""

    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    api_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    balances: dict[str, Decimal] = field(default_factory=dict)
    symbols: dict[str, SimSymbol] = field(default_factory=lambda: dict(SYMBOLS))
    prices: dict[str, Decimal] = field(
        default_factory=lambda: {name: s.price for name, s in SYMBOLS.items()}
    )
    trades: list[SimTrade] = field(default_factory=list)
    orders: dict[int, dict[str, object]] = field(default_factory=dict)
    trade_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(5000))
    order_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(700))
    by_strategy: dict[int, dict[str, Decimal]] = field(default_factory=dict)

    @classmethod
    def funded(cls, balances: Mapping[str, Decimal] | None = None, **keys: str) -> SimAccount:
        account = cls(**keys)  # type: ignore[arg-type]
        for asset, amount in (balances or DEFAULT_BALANCES).items():
            account.balances[asset.upper()] = Decimal(amount)
        return account

    def account(self, omit_zero: bool) -> dict[str, object]:
        """``GET /api/v3/account``."""
        balances = [
            {"asset": asset, "free": f"{amount:.8f}", "locked": "0.00000000"}
            for asset, amount in sorted(self.balances.items())
            if amount or not omit_zero
        ]
        return {
            "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0,
            "sellerCommission": 0, "canTrade": True, "canWithdraw": True, "canDeposit": True,
            "brokered": False, "requireSelfTradePrevention": False, "preventSor": False,
            "updateTime": int(time.time() * 1000), "accountType": "SPOT", "balances": balances,
            "permissions": ["SPOT"], "uid": 354937868,
        }  # fmt: skip

    def move(self, asset: str, delta: Decimal) -> None:
        """A deposit (delta > 0) or a withdrawal; refused if the balance would go below 0."""
        asset = asset.upper()
        if self.balances.get(asset, Decimal(0)) + delta < 0:
            raise insufficient()
        self.balances[asset] = self.balances.get(asset, Decimal(0)) + delta

    def place(
        self,
        symbol_name: str,
        side: str,
        qty: Decimal,
        *,
        order_type: str = "MARKET",
        limit_price: Decimal | None = None,
        time_in_force: str | None = None,
        strategy_id: int | None = None,
        client_order_id: str | None = None,
        parts: int = 1,
        fee_in_bnb: bool = False,
        now_ms: int | None = None,
    ) -> Placed:
        """An order for ``qty`` base, filled at once in up to ``parts`` trades.

        A ``LIMIT`` order trades only the parts priced within ``limit_price``;
        the rest rests (``GTC``) or expires (``IOC``; ``FOK`` expires whole
        unless all of it can fill).

        Raises:
            SimError: unknown symbol (-1121), a mandatory parameter missing or
                malformed (-1102, -1100), or funds (-2010).
        """
        symbol = self.symbols.get(symbol_name)
        if symbol is None:
            raise SimError(400, -1121, "Invalid symbol.")
        if side not in ("BUY", "SELL"):
            raise SimError(400, -1100, "Illegal characters found in parameter 'side'.")
        if qty <= 0 or qty != qty.quantize(EIGHT):
            raise SimError(400, -1100, "Illegal characters found in parameter 'quantity'.")
        if order_type == "LIMIT":
            if limit_price is None:
                raise _missing("price")
            if time_in_force not in ("GTC", "IOC", "FOK"):
                raise _missing("timeInForce")
        market = self.prices[symbol.name]
        sign = 1 if side == "BUY" else -1
        pieces = [(qty / parts).quantize(EIGHT, ROUND_DOWN)] * (parts - 1)
        pieces.append(qty - sum(pieces, Decimal(0)))
        fills: list[tuple[Decimal, Decimal, Decimal, Decimal, str]] = []
        deltas: dict[str, Decimal] = {}
        for step, piece in enumerate(p for p in pieces if p > 0):
            price = (market * (1 + sign * Decimal(step) / 10_000)).quantize(market)
            if limit_price is not None and sign * (price - limit_price) > 0:
                break  # beyond the limit: the rest does not trade
            quote = (piece * price).quantize(EIGHT, ROUND_HALF_EVEN)
            received, amount = (symbol.base, piece) if side == "BUY" else (symbol.quote, quote)
            if fee_in_bnb:
                fee_asset = "BNB"
                fee = quote * COMMISSION * BNB_DISCOUNT / self._bnb_price(symbol.quote)
                fee = fee.quantize(EIGHT, ROUND_DOWN)
            else:
                fee_asset, fee = received, (amount * COMMISSION).quantize(EIGHT, ROUND_DOWN)
            deltas[symbol.base] = deltas.get(symbol.base, Decimal(0)) + sign * piece
            deltas[symbol.quote] = deltas.get(symbol.quote, Decimal(0)) - sign * quote
            deltas[fee_asset] = deltas.get(fee_asset, Decimal(0)) - fee
            fills.append((piece, price, quote, fee, fee_asset))
        executed = sum((piece for piece, *_ in fills), Decimal(0))
        if time_in_force == "FOK" and executed < qty:
            fills, deltas, executed = [], {}, Decimal(0)
        if any(self.balances.get(a, Decimal(0)) + d < 0 for a, d in deltas.items()):
            raise insufficient()
        for asset, delta in deltas.items():
            self.balances[asset] = self.balances.get(asset, Decimal(0)) + delta
            if strategy_id is not None:
                book = self.by_strategy.setdefault(strategy_id, {})
                book[asset] = book.get(asset, Decimal(0)) + delta
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        order_id = next(self.order_ids)
        client_order_id = client_order_id or secrets.token_urlsafe(16)
        expired = executed < qty and time_in_force in ("IOC", "FOK")
        if executed == qty:
            status = "FILLED"
        elif expired:
            status = "EXPIRED"
        else:
            status = "PARTIALLY_FILLED" if executed else "NEW"
        order: dict[str, object] = {
            "symbol": symbol.name, "orderId": order_id, "orderListId": -1,
            "clientOrderId": client_order_id,
            "price": f"{limit_price:.8f}" if limit_price is not None else "0.00000000",
            "origQty": f"{qty:.8f}", "executedQty": f"{executed:.8f}",
            "cummulativeQuoteQty": f"{sum((f[2] for f in fills), Decimal(0)):.8f}",
            "status": status, "timeInForce": time_in_force or "GTC", "type": order_type,
            "side": side, "stopPrice": "0.00000000", "icebergQty": "0.00000000",
            "time": now, "updateTime": now, "isWorking": status in ("NEW", "PARTIALLY_FILLED"),
            "workingTime": now, "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "EXPIRE_MAKER",
            **({"strategyId": strategy_id} if strategy_id is not None else {}),
        }  # fmt: skip
        self.orders[order_id] = order
        trades = []
        cum_qty = cum_quote = Decimal(0)
        for piece, price, quote, fee, fee_asset in fills:
            cum_qty += piece
            cum_quote += quote
            trade = SimTrade(
                symbol, next(self.trade_ids), order_id, client_order_id, side, piece, price,
                quote, fee, fee_asset, now, strategy_id, qty, cum_qty, cum_quote,
            )  # fmt: skip
            trades.append(trade)
            self.trades.append(trade)
        return Placed(order, trades, expired)

    def _bnb_price(self, quote: str) -> Decimal:
        """BNB in ``quote``: through BNBUSDT, USDT and USDC at par, BTC through BTCUSDT."""
        bnb = self.prices["BNBUSDT"]
        if quote in ("USDT", "USDC"):
            return bnb
        return (bnb / self.prices[f"{quote}USDT"]).quantize(EIGHT)

    def my_trades(
        self, symbol: str, from_id: int | None, start_ms: int | None, limit: int
    ) -> list[dict[str, object]]:
        """``GET /api/v3/myTrades``: from ``fromId`` on, else the newest ``limit`` (after
        ``startTime`` when given), oldest first."""
        if symbol not in self.symbols:
            raise SimError(400, -1121, "Invalid symbol.")
        trades = [t for t in self.trades if t.symbol.name == symbol]
        if from_id is not None:
            chosen = [t for t in trades if t.trade_id >= from_id][:limit]
        elif start_ms is not None:
            chosen = [t for t in trades if t.time_ms >= start_ms][:limit]
        else:
            chosen = trades[-limit:]
        return [t.rest() for t in chosen]

    def all_orders(self, symbol: str, from_order: int | None, limit: int) -> list[object]:
        """``GET /api/v3/allOrders``: orders of ``symbol`` from ``orderId`` on."""
        if symbol not in self.symbols:
            raise SimError(400, -1121, "Invalid symbol.")
        chosen = [
            order for order_id, order in sorted(self.orders.items())
            if order["symbol"] == symbol and (from_order is None or order_id >= from_order)
        ]  # fmt: skip
        return list(chosen[:limit])
