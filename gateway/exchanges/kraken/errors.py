"""Errors of the Kraken adapter, mapped once from Kraken's ``error`` array and httpx.

ExchangeError (gateway.errors)
└── KrakenError
    ├── KrakenAPIError            Kraken answered with a non-empty ``error`` array
    │   ├── KrakenAuthError       bad key, signature or nonce; no permission: do not retry
    │   ├── KrakenRateLimitError  a rate limiter said no: retry later        (retryable)
    │   └── KrakenUnavailableError  EService / EGeneral:Internal error      (retryable)
    ├── KrakenTransportError      timeout, connection failure, HTTP 5xx      (retryable)
    └── KrakenProtocolError       an answer that is not what the API documents
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.errors import ExchangeError

_RATE_LIMITS = (
    "EAPI:Rate limit exceeded",
    "EService:Throttled",
    "EGeneral:Too many requests",
    "EOrder:Rate limit exceeded",
)
_UNAVAILABLE = (
    "EService:Unavailable",
    "EService:Busy",
    "EService:Deadline elapsed",
    "EGeneral:Internal error",
)
_AUTH = (
    "EAPI:Invalid key",
    "EAPI:Invalid signature",
    "EAPI:Invalid nonce",
    "EGeneral:Permission denied",
    "EAccount:Invalid permissions",
    "EGeneral:Temporary lockout",
)


class KrakenError(ExchangeError):
    """Root of the Kraken adapter's errors."""

    retryable = False


class KrakenAPIError(KrakenError):
    """Kraken's ``error`` array was not empty."""

    def __init__(self, errors: Sequence[str], method: str) -> None:
        super().__init__(f"{method}: {', '.join(errors)}")
        self.errors = tuple(errors)
        self.method = method


class KrakenAuthError(KrakenAPIError):
    """Credentials, signature, nonce or permissions were refused."""


class KrakenRateLimitError(KrakenAPIError):
    retryable = True


class KrakenUnavailableError(KrakenAPIError):
    retryable = True


class KrakenTransportError(KrakenError):
    """The request did not get a usable HTTP answer."""

    retryable = True


class KrakenProtocolError(KrakenError):
    """An answer that does not match the documented shape."""


def api_error(errors: Sequence[str], method: str) -> KrakenAPIError:
    """The typed error for an ``error`` array (its most telling entry decides)."""

    # Kraken is not consistent with spaces ("EService: Throttled: 1700000000").
    compact = [e.replace(" ", "") for e in errors]

    def has(prefixes: tuple[str, ...]) -> bool:
        return any(e.startswith(p.replace(" ", "")) for e in compact for p in prefixes)

    if has(_AUTH):
        return KrakenAuthError(errors, method)
    if has(_RATE_LIMITS):
        return KrakenRateLimitError(errors, method)
    if has(_UNAVAILABLE):
        return KrakenUnavailableError(errors, method)
    return KrakenAPIError(errors, method)
