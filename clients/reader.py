"""What strategies call to read balances: the seed's names over a read-only store mapping."""

from __future__ import annotations

import os
from collections.abc import Callable
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Final, NamedTuple

from mmapstore import (
    BalanceRecord,
    SlotIndexError,
    SlotValue,
    StoreReader,
    StrategyCountError,
    WriterStatus,
    from_scaled,
    store_path,
)


class Exchange(StrEnum):
    """Exchanges with a balance gateway. The value names the store file."""

    # Hashed as the str it is (Enum hashes its name, in Python: ~150 ns a dict lookup on
    # the read path), so a member and its value are the same key, as they are equal.
    __hash__ = str.__hash__

    KRAKEN = "kraken"
    BINANCE = "binance"

    @classmethod
    def _missing_(cls, value: object) -> Exchange | None:
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


class DataType(StrEnum):
    """What a quote carries; balances are the only kind a balance gateway writes."""

    __hash__ = str.__hash__  # see Exchange

    BALANCE = "balance"


class Currency(StrEnum):
    """Canonical tickers (BTC, not XBT/XXBT; USD, not ZUSD).

    Any currency in the store can also be named by a plain string, in any case:
    ``"usd"``, ``"USD"`` and ``Currency.USD`` are the same key.
    """

    __hash__ = str.__hash__  # see Exchange

    USD = "USD"
    EUR = "EUR"
    GBP = "GBP"
    CAD = "CAD"
    CHF = "CHF"
    JPY = "JPY"
    AUD = "AUD"
    USDT = "USDT"
    USDC = "USDC"
    DAI = "DAI"
    BNB = "BNB"
    BTC = "BTC"
    ETH = "ETH"
    SOL = "SOL"
    XRP = "XRP"
    ADA = "ADA"
    DOGE = "DOGE"
    DOT = "DOT"
    LTC = "LTC"
    LINK = "LINK"
    AVAX = "AVAX"
    XMR = "XMR"

    @classmethod
    def _missing_(cls, value: object) -> Currency | None:
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


class SingleQuote(NamedTuple):
    """A currency's total balance (slot 0) at one instant.

    ``mid`` is the float the seed reads; ``exact`` the same balance as a Decimal.
    """

    exchange: Exchange
    data_type: DataType
    currency: str
    mid: float
    scaled: int
    scale: int
    updated_ns: int
    sequence: int

    @property
    def exact(self) -> Decimal:
        return from_scaled(self.scaled, self.scale)

    @property
    def timestamp(self) -> float:
        """The record's last update, in seconds since the epoch."""
        return self.updated_ns / 1e9


# One reader per (exchange, shm_dir argument, $HFT_SHM_DIR): mapping a file once serves
# every call, and the key is cheap to build so the cache costs less than a path would.
_readers: dict[tuple[str, object, str | None], StoreReader] = {}
# The seed's call, bound per (exchange, data type, currency, shm_dir) to its reader and
# record: a hit is one dict lookup and one seqlock read. $HFT_SHM_DIR is read on a miss
# only (reading the environment costs more than the whole read), so a process that
# changes it afterwards calls forget_readers() first.
_quoters: dict[tuple[object, object, object, object], Callable[[], SingleQuote]] = {}
QUOTERS_KEPT: Final = 4096  # bounded: a caller naming endless unknown currencies
_new_quote = tuple.__new__


def _shared_reader(exchange: Exchange | str, shm_dir: Path | str | None) -> StoreReader:
    key = (exchange, shm_dir, os.environ.get("HFT_SHM_DIR"))
    reader = _readers.get(key)
    if reader is None:
        # Raises StoreNotFoundError while the gateway is down; the next call tries again.
        reader = StoreReader(store_path(Exchange(exchange).value, shm_dir))
        _readers[key] = reader
    return reader


def forget_readers() -> None:
    """Unmap every store the module-level calls mapped; the next call maps afresh.

    For a process that changes ``HFT_SHM_DIR`` after its first read, and for tests.
    """
    for reader in _readers.values():
        reader.close()
    _readers.clear()
    _quoters.clear()


def _quoter(
    exchange: Exchange | str,
    data_type: DataType | str,
    currency: Currency | str,
    shm_dir: Path | str | None,
) -> Callable[[], SingleQuote]:
    if data_type is not DataType.BALANCE:
        DataType(data_type)  # raises ValueError for anything but a balance
    market = Exchange(exchange)
    name = str(currency).upper()

    def made_of(value: SlotValue) -> SingleQuote:
        scaled, scale, mid, updated_ns, sequence = value
        fields = (market, DataType.BALANCE, name, mid, scaled, scale, updated_ns, sequence)
        made: SingleQuote = _new_quote(SingleQuote, fields)
        return made

    # One call a read: the same quote while the record has not changed. Raises
    # UnknownCurrencyError until the gateway publishes the currency.
    quote = _shared_reader(market, shm_dir).derived_reader(name, 0, made_of)

    if len(_quoters) >= QUOTERS_KEPT:
        _quoters.clear()
    _quoters[exchange, data_type, currency, shm_dir] = quote
    return quote


def getSingleQuoteCurrency(  # noqa: N802 - the seed's name
    exchange: Exchange | str,
    data_type: DataType | str,
    currency: Currency | str,
    *,
    shm_dir: Path | str | None = None,
) -> SingleQuote:
    """The total balance (slot 0) of ``currency`` on ``exchange``.

    Raises:
        StoreNotFoundError: the exchange's gateway is not running.
        UnknownCurrencyError: the gateway has no balance of that currency.
        ValueError: an unknown exchange or data type.
    """
    quote = _quoters.get((exchange, data_type, currency, shm_dir))
    if quote is None:
        quote = _quoter(exchange, data_type, currency, shm_dir)
    return quote()


get_single_quote_currency = getSingleQuoteCurrency


class StrategyBalanceManager:
    """Per-strategy balances of one exchange: slot 0 total, 1 available, 2.. one per strategy.

    Reads are lock-free seqlock reads of the gateway's shared memory. If the
    gateway is not running yet, construction still succeeds and each read
    raises ``StoreNotFoundError`` until it is.

    Raises (on construction or first read):
        StrategyCountError: ``strategy_count`` exceeds the store's.
    """

    def __init__(
        self,
        exchange: Exchange | str,
        strategy_count: int = 8,
        *,
        shm_dir: Path | str | None = None,
    ) -> None:
        if strategy_count < 1:
            raise StrategyCountError(f"strategy_count must be at least 1, not {strategy_count}")
        self.exchange = Exchange(exchange)
        self.strategy_count = strategy_count
        self.path = store_path(self.exchange.value, shm_dir)
        self._reader: StoreReader | None = None
        # get_balance is an attribute: while the manager and the store agree on the slot
        # count it is the reader's own seqlock read, one Python call on the hot path
        # instead of two (0.28 -> ~0.2 µs, docs/performance.md).
        self.get_balance: Callable[..., float] = self._get_balance
        if os.path.exists(self.path):
            self._connect()

    def _connect(self) -> StoreReader:
        reader = StoreReader(self.path)
        if self.strategy_count > reader.strategy_count:
            reader.close()
            raise StrategyCountError(
                f"asked for {self.strategy_count} slots but {self.path} has "
                f"{reader.strategy_count}; pass strategy_count <= {reader.strategy_count} "
                "or start the gateway with more"
            )
        self._reader = reader
        if self.strategy_count == reader.strategy_count:
            self.get_balance = reader.slot_float
        return reader

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.strategy_count:
            raise SlotIndexError(
                f"index {index} is out of range: this manager has slots "
                f"0..{self.strategy_count - 1}"
            )

    def _get_balance(self, currency: Currency | str, index: int = 0) -> float:
        """Slot ``index`` of ``currency`` as a float (index 0 total, 1 available)."""
        reader = self._reader or self._connect()
        if not 0 <= index < self.strategy_count:
            self._check_index(index)
        return reader.slot_float(currency, index)

    def get_balance_exact(self, currency: Currency | str, index: int = 0) -> Decimal:
        """Slot ``index`` of ``currency``, exactly."""
        reader = self._reader or self._connect()
        self._check_index(index)
        return reader.slot(currency, index).exact

    def get_balances(self, currency: Currency | str) -> tuple[float, ...]:
        """Every slot of ``currency`` as floats, from one consistent read."""
        reader = self._reader or self._connect()
        return reader.floats(currency)[: self.strategy_count]

    def get_balances_exact(self, currency: Currency | str) -> tuple[Decimal, ...]:
        """Every slot of ``currency`` exactly, from one consistent read."""
        return self.record(currency).exact_all()[: self.strategy_count]

    def record(self, currency: Currency | str) -> BalanceRecord:
        """The full record: exact and float slots, update time and sequence."""
        reader = self._reader or self._connect()
        return reader.record(currency)

    def currencies(self) -> list[str]:
        reader = self._reader or self._connect()
        return reader.currencies()

    def writer_status(self) -> WriterStatus:
        """Whether the gateway writing these balances is live, stopped, dead or stale."""
        reader = self._reader or self._connect()
        return reader.writer_status()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.get_balance = self._get_balance
