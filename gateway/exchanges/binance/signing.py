"""Binance's request signatures: HMAC-SHA256 over the query string (REST) or the sorted params
(WebSocket API), as Binance's API documentation specifies, with its published examples as tests.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

Params = Sequence[tuple[str, str | int]]


def sign_query(query: str, secret: str) -> str:
    """The hex HMAC-SHA256 of a REST request's exact query string (``totalParams``)."""
    return hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()


def signed_query(params: Params, secret: str) -> str:
    """``params`` as a query string (percent-encoded, in order) with its ``signature`` last."""
    query = urlencode(list(params))
    return f"{query}&signature={sign_query(query, secret)}"


def sign_ws_params(params: Mapping[str, str | int], secret: str) -> str:
    """The hex HMAC-SHA256 of a WebSocket API request: every param but ``signature``,
    sorted by name, as ``name=value`` pairs joined by ``&``, in UTF-8 (not percent-encoded).
    """
    payload = "&".join(f"{name}={params[name]}" for name in sorted(params) if name != "signature")
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
