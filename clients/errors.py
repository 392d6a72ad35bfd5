"""Errors a strategy sees from the client API.

Reading balances raises the store's errors (``mmapstore.errors``):

    StoreError
    ├── StoreNotFoundError (= GatewayNotRunningError)  no store file: the gateway is not running
    ├── StoreFormatError → StoreCorruptError, StoreVersionError
    ├── StoreBusyError                                 a record stuck mid-write by a dead writer
    ├── UnknownCurrencyError                           no balance of that currency
    ├── SlotIndexError                                 index out of range
    └── StrategyCountError                             more slots asked for than the store has
"""

from __future__ import annotations

from mmapstore.errors import (
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

GatewayNotRunningError = StoreNotFoundError

__all__ = [
    "GatewayNotRunningError",
    "SlotIndexError",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreError",
    "StoreFormatError",
    "StoreNotFoundError",
    "StoreVersionError",
    "StrategyCountError",
    "UnknownCurrencyError",
]
