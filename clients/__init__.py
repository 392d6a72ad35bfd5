"""The strategies' API: lock-free balance reads from shared memory.

Written so the seed's examples run with only their imports changed::

    import clients as hft
    q = hft.getSingleQuoteCurrency(hft.Exchange.KRAKEN, hft.DataType.BALANCE, hft.Currency.USDT)
    q.mid
"""

from __future__ import annotations

from clients.errors import (
    GatewayNotRunningError,
    SlotIndexError,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreFormatError,
    StoreNotFoundError,
    StoreVersionError,
    StrategyCountError,
    UnknownCurrencyError,
)
from clients.reader import (
    Currency,
    DataType,
    Exchange,
    SingleQuote,
    StrategyBalanceManager,
    get_single_quote_currency,
    getSingleQuoteCurrency,
)
from mmapstore import BalanceRecord, WriterHealth, WriterStatus

__all__ = [
    "BalanceRecord",
    "Currency",
    "DataType",
    "Exchange",
    "GatewayNotRunningError",
    "SingleQuote",
    "SlotIndexError",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreError",
    "StoreFormatError",
    "StoreNotFoundError",
    "StoreVersionError",
    "StrategyBalanceManager",
    "StrategyCountError",
    "UnknownCurrencyError",
    "WriterHealth",
    "WriterStatus",
    "getSingleQuoteCurrency",
    "get_single_quote_currency",
]
