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
from typing import Final

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
    """Credentials, signature, nonce or permissions were refused; the message says what to do."""

    def __init__(self, errors: Sequence[str], method: str) -> None:
        super().__init__(errors, method)
        compact = " ".join(errors).replace(" ", "")
        self.permission_denied = (
            "EGeneral:Permissiondenied" in compact or "EAccount:Invalidpermissions" in compact
        )
        hint = _auth_hint(errors, method)
        if hint:
            self.args = (f"{self.args[0]} ({hint})",)


# Which key permission each private call needs (Kraken's API-key guide and OpenAPI specs).
PERMISSIONS: Final = {
    "Balance": "Funds: Query",
    "BalanceEx": "Funds: Query",
    "GetWebSocketsToken": "WebSocket interface: On",
    "TradesHistory": "Orders and trades: Query closed orders & trades",
    "QueryTrades": "Orders and trades: Query closed orders & trades",
    "ClosedOrders": "Orders and trades: Query closed orders & trades",
    "QueryOrders": "Orders and trades: Query open orders & trades",
    "OpenOrders": "Orders and trades: Query open orders & trades",
    "Ledgers": "Data: Query ledger entries",
    "QueryLedgers": "Data: Query ledger entries",
}


def _auth_hint(errors: Sequence[str], method: str) -> str:
    text = " ".join(errors).replace(" ", "")
    if "EAPI:Invalidnonce" in text:
        return (
            "this gateway sends its nonces in order, so another program is probably using "
            "the same API key: give each gateway a key of its own"
        )
    if "EAPI:Invalidkey" in text or "EAPI:Invalidsignature" in text:
        return "check KRAKEN_API_KEY and KRAKEN_API_SECRET"
    if "EGeneral:Permissiondenied" in text or "EAccount:Invalidpermissions" in text:
        needed = PERMISSIONS.get(method)
        return f"the API key lacks the permission {needed!r}" if needed else ""
    if "EGeneral:Temporarylockout" in text:
        return "too many failed logins: Kraken locks the key for some minutes"
    return ""


class KrakenRateLimitError(KrakenAPIError):
    """A rate limiter refused the call; ``retry_at`` (unix s) when Kraken named the moment."""

    retryable = True

    def __init__(self, errors: Sequence[str], method: str) -> None:
        super().__init__(errors, method)
        self.retry_at: float | None = None
        for error in errors:
            head, _, moment = error.replace(" ", "").rpartition(":")
            if head.startswith("EService:Throttled") and moment.isdigit():
                self.retry_at = float(moment)


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
