"""Errors a strategy sees from the client API.

Reading balances raises the store's errors (``mmapstore.errors``):

    StoreError
    ├── StoreNotFoundError (= GatewayNotRunningError)  no store file: the gateway is not running
    │   └── StoreStartingError                         the gateway is starting: not published yet
    ├── StoreFormatError → StoreCorruptError, StoreVersionError
    ├── StoreBusyError                                 a record stuck mid-write by a dead writer
    ├── StoreUnsafeError                               a store file another user could have made
    │                                                  (HFT_GATEWAY_UID: a gateway's own user)
    ├── UnknownCurrencyError                           no balance of that currency
    ├── SlotIndexError                                 index out of range
    └── StrategyCountError                             more slots asked for than the store has

Sending commands raises:

    CommandError
    ├── GatewayUnavailableError   no socket, connection refused or lost: the gateway is not running
    ├── GatewayUntrustedError     the socket's directory or its server is not the gateway's:
    │                             another user's, writable by others, or a symlink
    ├── CommandRefusedError       the gateway answered ok=false; ``code`` and ``message`` say why
    └── CommandTimeoutError       no reply in time (the command may or may not have been applied:
                                  resend it with the same request_id to find out)
"""

from __future__ import annotations

from mmapstore.errors import (
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

GatewayNotRunningError = StoreNotFoundError


class CommandError(Exception):
    """Root of the errors of sending a command.

    ``request_id`` is set when the request may have reached the gateway (a
    timeout, a connection lost after sending): resending it with that id tells
    whether it was applied, and never applies it twice.
    """

    request_id: str | None = None


class GatewayUnavailableError(CommandError, ConnectionError):
    """The gateway's socket is missing, refuses connections, or dropped ours."""


class GatewayUntrustedError(CommandError):
    """The socket is not the gateway's: nothing was sent (another user may listen there)."""


class CommandRefusedError(CommandError):
    """The gateway refused the command; nothing changed."""

    def __init__(self, code: str, message: str, reply: dict[str, object]) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reply = reply


class CommandTimeoutError(CommandError, TimeoutError):
    """No reply in time."""


__all__ = [
    "CommandError",
    "CommandRefusedError",
    "CommandTimeoutError",
    "GatewayNotRunningError",
    "GatewayUnavailableError",
    "SlotIndexError",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreError",
    "StoreFormatError",
    "StoreNotFoundError",
    "StoreStartingError",
    "StoreUnsafeError",
    "StoreVersionError",
    "StrategyCountError",
    "UnknownCurrencyError",
]
