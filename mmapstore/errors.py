"""Errors raised by the shared-memory balance store.

StoreError
├── StoreNotFoundError        the file does not exist: no gateway has run here
├── StoreFormatError          the file is not one we can read
│   ├── StoreCorruptError     wrong magic, impossible sizes, truncated file
│   └── StoreVersionError     a layout version this code does not know
├── StoreLockedError          another writer holds the store
├── StoreFullError            the currency directory has no free entry
├── StoreSpaceError           no room for the store where it lives (a full /dev/shm)
├── StoreValueError           a value that cannot be stored exactly
├── StoreUnsafeError          a store or lock file another user owns or may write
├── StoreBusyError            a record stays mid-write (its writer died)
├── UnknownCurrencyError      no record for that currency (also a KeyError)
├── SlotIndexError            a slot index outside 0..strategy_count-1 (also an IndexError)
└── StrategyCountError        a caller expects more slots than the file has
"""

from __future__ import annotations


class StoreError(Exception):
    """Root of every error the store raises."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The store file is missing: its gateway is not running (or never ran here)."""


class StoreStartingError(StoreNotFoundError):
    """The gateway has the file but is still starting: balances are not published yet."""


class StoreFormatError(StoreError):
    """The file exists but cannot be read as a balance store."""


class StoreCorruptError(StoreFormatError):
    """Wrong magic, impossible sizes or a truncated file."""


class StoreVersionError(StoreFormatError):
    """The file's layout version is not the one this code reads."""


class StoreLockedError(StoreError):
    """Another live writer holds the store's lock."""


class StoreFullError(StoreError):
    """No free entry is left in the currency directory."""


class StoreSpaceError(StoreError):
    """The file system holding the store has no room for it (a full ``/dev/shm``).

    Raised at open, never later: every page of the file is allocated then, because
    a page first written through the mapping on a full tmpfs kills the writer with
    SIGBUS, and any local user can fill ``/dev/shm``.
    """


class StoreUnsafeError(StoreError):
    """A store or lock file owned by another user, writable by others, or a symlink.

    Adopting it would let that user write balances readers trust, or keep the
    gateway from starting.
    """


class StoreValueError(StoreError, ValueError):
    """A value would be truncated or overflow its record field: refused."""


class StoreBusyError(StoreError):
    """A record stayed mid-write past the retry budget: its writer died while writing."""


class UnknownCurrencyError(StoreError, KeyError):
    """The store has no record for the currency."""

    def __str__(self) -> str:
        # KeyError would repr() the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class SlotIndexError(StoreError, IndexError):
    """A slot index outside ``0 .. strategy_count - 1``."""


class StrategyCountError(StoreError, ValueError):
    """The caller expects more strategy slots than the file was created with."""
