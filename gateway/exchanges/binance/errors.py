"""Errors of the Binance adapter.

GatewayError
└── ExchangeError
    └── BinanceError
        ├── BinanceAPIError         an error code from Binance       (retryable: 429, 418)
        │   └── BinanceAuthError    bad key, signature or permissions: check the credentials
        ├── BinanceTransportError   timeout, connection failure, 5xx (retryable)
        └── BinanceProtocolError    an answer or event not as Binance documents it
"""

from __future__ import annotations

from gateway.errors import ExchangeError


class BinanceError(ExchangeError):
    """Something Binance said or did."""

    retryable = False


class BinanceAPIError(BinanceError):
    """An error answer (``{"code": -1022, "msg": ...}``)."""

    def __init__(
        self,
        message: str,
        code: int,
        *,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class BinanceAuthError(BinanceAPIError):
    """The key, its signature or its permissions were refused: never retried."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)


class BinanceTransportError(BinanceError):
    """No answer, or a server error."""

    retryable = True


class BinanceProtocolError(BinanceError):
    """An answer or event outside Binance's documented shape: skipped, logged, counted."""
