"""Errors of the Binance adapter.

GatewayError
└── ExchangeError
    └── BinanceError
        └── BinanceProtocolError   an answer or event that is not what Binance documents
"""

from __future__ import annotations

from gateway.errors import ExchangeError


class BinanceError(ExchangeError):
    """Something Binance said or did."""


class BinanceProtocolError(BinanceError):
    """An answer or event outside Binance's documented shape: skipped, logged, counted."""
