"""Shared-memory balance store: one writer process, any number of lock-free read-only readers.

Never imports Trio: readers live in strategy processes of any kind.
"""

from __future__ import annotations

from mmapstore._layout import (
    DEFAULT_CAPACITY,
    DEFAULT_SCALE,
    DEFAULT_STRATEGY_COUNT,
    INT128_MAX,
    INT128_MIN,
    LAYOUT_VERSION,
    Condition,
    WriterRole,
    WriterState,
    from_scaled,
    to_scaled,
)
from mmapstore._paths import shm_dir, store_path, trusted_writers
from mmapstore._reader import (
    BalanceRecord,
    SlotValue,
    StoreReader,
    WriterHealth,
    WriterStatus,
    pid_alive,
)
from mmapstore._writer import StoreWriter, writer_lock
from mmapstore.errors import (
    SlotIndexError,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreFormatError,
    StoreFullError,
    StoreLockedError,
    StoreNotFoundError,
    StoreSpaceError,
    StoreStartingError,
    StoreUnsafeError,
    StoreValueError,
    StoreVersionError,
    StrategyCountError,
    UnknownCurrencyError,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_SCALE",
    "DEFAULT_STRATEGY_COUNT",
    "INT128_MAX",
    "INT128_MIN",
    "LAYOUT_VERSION",
    "BalanceRecord",
    "Condition",
    "SlotIndexError",
    "SlotValue",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreError",
    "StoreFormatError",
    "StoreFullError",
    "StoreLockedError",
    "StoreNotFoundError",
    "StoreReader",
    "StoreSpaceError",
    "StoreStartingError",
    "StoreUnsafeError",
    "StoreValueError",
    "StoreVersionError",
    "StoreWriter",
    "StrategyCountError",
    "UnknownCurrencyError",
    "WriterHealth",
    "WriterRole",
    "WriterState",
    "WriterStatus",
    "from_scaled",
    "pid_alive",
    "shm_dir",
    "store_path",
    "to_scaled",
    "trusted_writers",
    "writer_lock",
]
