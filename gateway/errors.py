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


class JournalLockedError(JournalError):
    """Another process writes this state directory's journal."""


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


def only_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside nested groups, if there is exactly one.

    Trio's nurseries wrap a task's failure in a group; a caller that handles
    one failure by its type unwraps it with this.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        current = pending.pop()
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    return leaves[0] if len(leaves) == 1 else None
