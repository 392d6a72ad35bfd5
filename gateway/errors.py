"""Errors of the gateway service.

GatewayError
├── ConfigError               bad flags, environment or file: refuse to start
├── JournalError              the state directory cannot be trusted
│   ├── JournalCorruptError   damage that is not a torn tail, an unreadable snapshot, missing
│   │                         events (a torn journal tail is not an error: it is cut off)
│   └── JournalWriteError     append or fsync failed (disk full, read-only)
├── ExchangeError             the exchange side failed
│   └── BootstrapError        no usable balance snapshot at start
└── CommandProtocolError      a request that cannot be parsed or is not allowed; carries the
                              wire error code the client receives
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of the gateway's own errors."""


class ConfigError(GatewayError):
    """The configuration is unusable; the gateway refuses to start."""


class JournalError(GatewayError):
    """The journal or a snapshot cannot be used."""


class JournalCorruptError(JournalError):
    """The saved state is damaged beyond a torn tail; nothing was changed."""


class JournalWriteError(JournalError):
    """Appending to the journal or syncing it failed."""


class ExchangeError(GatewayError):
    """The exchange side (REST, websocket) failed."""


class BootstrapError(ExchangeError):
    """The start-up balance snapshot could not be obtained."""


class CommandProtocolError(GatewayError):
    """A request refused before it reaches the writer.

    Attributes:
        code: the wire error code (``docs/protocol.md``).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
