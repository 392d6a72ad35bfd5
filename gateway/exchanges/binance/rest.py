"""Binance's spot REST API for the gateway: signed requests, weights, retries, clock sync.

Signed endpoints carry ``timestamp`` and ``recvWindow`` and an HMAC-SHA256
``signature`` of the query (rest-api.md, "SIGNED endpoint security"). The
used request weight (``X-MBX-USED-WEIGHT-1M``) paces calls under the limit;
429 and 418 are honoured for their ``Retry-After``; ``-1021`` (a timestamp
outside the window) syncs the clock offset with ``/api/v3/time`` and retries.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

import httpx
import trio

from gateway.exchanges.binance.adapter import BINANCE_REST_URL
from gateway.exchanges.binance.errors import (
    BinanceAPIError,
    BinanceAuthError,
    BinanceError,
    BinanceProtocolError,
    BinanceTransportError,
)
from gateway.exchanges.binance.parsing import loads
from gateway.exchanges.binance.signing import sign_ws_params, signed_query
from gateway.exchanges.http import ResponseTooLargeError, send_bounded

logger = logging.getLogger(__name__)

RECV_WINDOW_MS: Final = 5000
ATTEMPTS: Final = 4
BACKOFF_BASE_S: Final = 0.25
BACKOFF_CAP_S: Final = 5.0
RETRY_AFTER_CAP_S: Final = 60.0
WEIGHT_LIMIT_1M: Final = 6000
WEIGHT_HEADROOM: Final = 0.9  # slow down past this share of the minute's weight
AUTH_CODES: Final = frozenset({-2014, -2015, -1022, -2008})
CLOCK_SKEW: Final = -1021

Params = Sequence[tuple[str, str | int]]


class BinanceRestClient:
    """One API key's REST client. Use as ``async with``; it owns its connection pool."""

    def __init__(
        self,
        base_url: str = BINANCE_REST_URL,
        *,
        api_key: str,
        api_secret: str,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._api_secret = api_secret
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(timeout_s), transport=transport
        )
        self.clock_offset_ms = 0  # Binance's clock minus ours, learnt on -1021
        self.used_weight = 0
        self.calls = 0
        self.failures = 0

    @property
    def account(self) -> str:
        """The API's host and a fingerprint of the key: the identity a state dir is bound to."""
        host = urlsplit(self.base_url).netloc
        return f"binance@{host} key {hashlib.sha256(self._api_key.encode()).hexdigest()[:12]}"

    @property
    def api_key(self) -> str:
        return self._api_key

    def sign_ws(self, params: dict[str, str | int]) -> str:
        """The signature of a WebSocket API request's ``params`` (the secret stays here)."""
        return sign_ws_params(params, self._api_secret)

    async def __aenter__(self) -> BinanceRestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    # -- requests ---------------------------------------------------------------------------

    async def public(self, path: str, params: Params = ()) -> object:
        return await self._call("GET", path, params, signed=False)

    async def signed(self, method: str, path: str, params: Params = ()) -> object:
        return await self._call(method, path, params, signed=True)

    async def _call(self, method: str, path: str, params: Params, *, signed: bool) -> object:
        attempt = 0
        while True:
            await self._pace()
            try:
                return await self._once(method, path, params, signed=signed)
            except BinanceAPIError as exc:
                self.failures += 1
                if exc.code == CLOCK_SKEW and attempt == 0:
                    await self.sync_clock()
                elif exc.retry_after_s is not None and attempt + 1 < ATTEMPTS:
                    logger.warning("Binance %s: %s; waiting %.0f s", path, exc, exc.retry_after_s)
                    await trio.sleep(exc.retry_after_s)
                elif not exc.retryable or attempt + 1 >= ATTEMPTS:
                    raise
            except BinanceTransportError:
                self.failures += 1
                if attempt + 1 >= ATTEMPTS:
                    raise
            attempt += 1
            await trio.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)))

    async def _pace(self) -> None:
        """Past 90 % of the minute's weight, wait for the next minute rather than be refused."""
        if self.used_weight >= WEIGHT_LIMIT_1M * WEIGHT_HEADROOM:
            await trio.sleep(60 - time.time() % 60 + 0.1)
            self.used_weight = 0

    async def _once(self, method: str, path: str, params: Params, *, signed: bool) -> object:
        pairs = list(params)
        headers = {}
        if signed:
            now_ms = int(time.time() * 1000) + self.clock_offset_ms
            pairs += [("recvWindow", RECV_WINDOW_MS), ("timestamp", now_ms)]
            query = signed_query(pairs, self._api_secret)
            headers["X-MBX-APIKEY"] = self._api_key
        else:
            query = "&".join(f"{k}={v}" for k, v in pairs)
        url = f"{path}?{query}" if query else path
        self.calls += 1
        try:
            request = self._http.build_request(method, url, headers=headers)
            response, content = await send_bounded(self._http, request)
        except ResponseTooLargeError as exc:
            raise BinanceProtocolError(f"{path}: {exc}") from None
        except httpx.TimeoutException as exc:
            raise BinanceTransportError(f"{path}: timed out") from exc
        except httpx.HTTPError as exc:
            raise BinanceTransportError(f"{path}: {exc!r}") from exc
        weight = response.headers.get("x-mbx-used-weight-1m", "")
        if weight.isdigit():
            self.used_weight = int(weight)
        if response.status_code >= 500:
            raise BinanceTransportError(f"{path}: HTTP {response.status_code}")
        body = loads(content)
        if response.status_code != 200:
            raise _api_error(path, response, body)
        return body

    async def sync_clock(self) -> None:
        """Learn Binance's clock (``/api/v3/time``) so signed timestamps fall in the window."""
        before = time.time()
        answer = await self._once("GET", "/api/v3/time", (), signed=False)
        after = time.time()
        server_ms = answer.get("serverTime") if isinstance(answer, dict) else None
        if not isinstance(server_ms, int):
            raise BinanceProtocolError("time has no serverTime")
        self.clock_offset_ms = server_ms - int((before + after) / 2 * 1000)
        logger.warning("Binance clock offset: %d ms", self.clock_offset_ms)

    # -- endpoints ----------------------------------------------------------------------------

    async def account_info(self) -> object:
        return await self.signed("GET", "/api/v3/account", [("omitZeroBalances", "true")])

    async def exchange_info(self) -> object:
        return await self.public("/api/v3/exchangeInfo")

    async def my_trades(self, symbol: str, *, from_id: int | None, start_ms: int | None) -> object:
        params: list[tuple[str, str | int]] = [("symbol", symbol), ("limit", 1000)]
        if from_id is not None:
            params.append(("fromId", from_id))
        elif start_ms is not None:
            params.append(("startTime", start_ms))
        return await self.signed("GET", "/api/v3/myTrades", params)

    async def all_orders(self, symbol: str, from_order: int) -> object:
        params: list[tuple[str, str | int]] = [
            ("symbol", symbol), ("orderId", from_order), ("limit", 1000),
        ]  # fmt: skip
        return await self.signed("GET", "/api/v3/allOrders", params)


def _api_error(path: str, response: httpx.Response, body: object) -> BinanceAPIError:
    code = body.get("code") if isinstance(body, dict) else None
    msg = body.get("msg") if isinstance(body, dict) else None
    code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    text = f"{path}: HTTP {response.status_code} {code} {str(msg)[:200]}"
    retry_after = response.headers.get("retry-after", "")
    wait = min(float(retry_after), RETRY_AFTER_CAP_S) if retry_after.isdigit() else None
    if response.status_code in (429, 418):
        return BinanceAPIError(text, code, retryable=True, retry_after_s=wait or 1.0)
    if code in AUTH_CODES or response.status_code in (401, 403):
        return BinanceAuthError(
            f"{text} (check BINANCE_API_KEY / BINANCE_API_SECRET and the key's permissions)", code
        )
    return BinanceAPIError(text, code, retryable=False)


__all__ = ["BINANCE_REST_URL", "BinanceError", "BinanceRestClient"]
