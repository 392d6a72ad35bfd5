"""The strategies' API: lock-free balance reads from shared memory.

Written so the seed's examples run with only their imports changed::

    import clients as hft
    q = hft.getSingleQuoteCurrency(hft.Exchange.KRAKEN, hft.DataType.BALANCE, hft.Currency.USDT)
    q.mid

    cs = hft.IPCCommandSystem("my_strategy"); cs.start()
    payload = hft.kraken_strategy_balance(strategy="a", cmd="allocate", currency="usd",
                                          index=2, amount=100)
    reply = await cs.send_command("kraken_gateway", hft.KRAKEN_STRATEGY_BALANCE_CMD, payload)
"""

from __future__ import annotations

from clients.command import (
    KRAKEN_STRATEGY_BALANCE_CMD,
    STRATEGY_BALANCE_CMD,
    IPCCommandSystem,
    kraken_strategy_balance,
    socket_path,
    strategy_balance,
)
from clients.errors import (
    CommandError,
    CommandRefusedError,
    CommandTimeoutError,
    GatewayNotRunningError,
    GatewayUnavailableError,
    SlotIndexError,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreFormatError,
    StoreNotFoundError,
    StoreStartingError,
    StoreUnsafeError,
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
from mmapstore import BalanceRecord, Condition, WriterHealth, WriterStatus

__all__ = [
    "KRAKEN_STRATEGY_BALANCE_CMD",
    "STRATEGY_BALANCE_CMD",
    "BalanceRecord",
    "CommandError",
    "CommandRefusedError",
    "CommandTimeoutError",
    "Condition",
    "Currency",
    "DataType",
    "Exchange",
    "GatewayNotRunningError",
    "GatewayUnavailableError",
    "IPCCommandSystem",
    "SingleQuote",
    "SlotIndexError",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreError",
    "StoreFormatError",
    "StoreNotFoundError",
    "StoreStartingError",
    "StoreUnsafeError",
    "StoreVersionError",
    "StrategyBalanceManager",
    "StrategyCountError",
    "UnknownCurrencyError",
    "WriterHealth",
    "WriterStatus",
    "getSingleQuoteCurrency",
    "get_single_quote_currency",
    "kraken_strategy_balance",
    "socket_path",
    "strategy_balance",
]
