"""Kraken's REST API over httpx (on Trio): signing, pacing, errors, retries, timeouts.

Private calls go out one at a time, in nonce order: Kraken refuses a nonce
lower than one it has already seen, so two calls racing over two connections
can refuse each other (a sequencer per key, the only safe way to share one).
Each waits first for the modelled API counter (``ratelimit``) so Kraken never
has to refuse it. Every call has a timeout; retryable failures (``EService``,
timeouts, 5xx) are retried with capped, jittered exponential backoff; every
other error is raised at once. The API secret is never logged or shown.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final
from urllib.parse import urlencode

import httpx
import trio

from gateway.errors import ConfigError
from gateway.exchanges.http import ResponseTooLargeError, send_bounded
from gateway.exchanges.kraken.adapter import KRAKEN_REST_URL
from gateway.exchanges.kraken.errors import (
    KrakenError,
    KrakenProtocolError,
    KrakenRateLimitError,
    KrakenTransportError,
    api_error,
)
from gateway.exchanges.kraken.parsing import loads
from gateway.exchanges.kraken.ratelimit import (
    DEFAULT_TIER,
    TIERS,
    ApiCounter,
    SavedCounter,
    Tier,
    call_cost,
)
from gateway.exchanges.kraken.signing import NonceSource, sign

logger = logging.getLogger(__name__)

USER_AGENT: Final = "hft-balance-gateway/0.1"
Request = Callable[[], Awaitable[tuple[httpx.Response, bytes]]]
# Refusals by the API counter are waited out, not failed on: up to this many in a row.
RATE_LIMIT_RETRIES: Final = 20
THROTTLE_WAIT_MAX_S: Final = 60.0
# A wait for the API counter this long is said at info (once in WAIT_NOTICE_EVERY_S):
# a start that waits half a minute for it must not look hung.
WAIT_NOTICE_S: Final = 1.0
WAIT_NOTICE_EVERY_S: Final = 10.0
Params = Sequence[tuple[str, str | int | Decimal]] | Mapping[str, str | int | Decimal]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Full-jitter backoff: uniform in [half, all] of the capped exponential."""
        ceiling = min(self.cap_s, self.base_s * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)


def _check_secret(secret: str) -> None:
    """Refuse a private key that could never sign, before any request goes out."""
    try:
        decoded = base64.b64decode(secret, validate=True)
    except binascii.Error:
        decoded = b""
    if not decoded:
        raise ConfigError(
            "KRAKEN_API_SECRET is not base64: copy the private key exactly as Kraken showed it"
        )


class KrakenRestClient:
    """One API key's REST client. Use as ``async with``; it owns its HTTP connection pool."""

    def __init__(
        self,
        base_url: str = KRAKEN_REST_URL,
        *,
        api_key: str | None = None,
        api_secret: str | None = None,
        nonces: NonceSource | None = None,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        tier: Tier | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        saved_counter: SavedCounter | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if api_secret is not None:
            _check_secret(api_secret)
        self._api_key = api_key
        self._api_secret = api_secret
        self._nonces = nonces or NonceSource()
        self.retry = retry or RetryPolicy()
        self.counter = ApiCounter(tier or TIERS[DEFAULT_TIER])
        self._saved_counter = saved_counter
        if saved_counter is not None:
            saved_counter.restore(self.counter, trio.current_time())
        self._sequencer = trio.Lock()
        self._wait_noticed_at = -math.inf
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        )
        self.calls = 0
        self.failures = 0

    @property
    def account(self) -> str:
        """Who these credentials are: the API's host and a fingerprint of the key.

        The key's public half, hashed: enough to tell accounts (and the simulator)
        apart in a state directory, nothing an attacker could use.
        """
        host = httpx.URL(self.base_url).netloc.decode("ascii")
        fingerprint = hashlib.sha256((self._api_key or "").encode()).hexdigest()[:12]
        return f"kraken@{host} key {fingerprint}"

    def __repr__(self) -> str:
        return f"KrakenRestClient({self.base_url!r}, api_key={'set' if self._api_key else None})"

    async def __aenter__(self) -> KrakenRestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the two kinds of call ------------------------------------------------------

    async def public(self, method: str, params: Params = ()) -> object:
        """GET ``/0/public/<method>``; returns ``result``."""
        path = f"/0/public/{method}"
        query = urlencode(list(params.items()) if isinstance(params, Mapping) else params)
        url = path + ("?" + query if query else "")
        return await self._with_retry(
            method,
            lambda: send_bounded(self._http, self._http.build_request("GET", url)),
            paced=False,
        )

    async def private(self, method: str, params: Params = ()) -> object:
        """POST ``/0/private/<method>``, signed; returns ``result``.

        Raises:
            KrakenAuthError: no credentials, or Kraken refused them.
            KrakenError: as mapped from the answer, after retries where retryable.
        """
        if not self._api_key or not self._api_secret:
            raise api_error(["EAPI:Invalid key"], method)
        path = f"/0/private/{method}"
        pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
        cost = call_cost(method)

        async def request() -> tuple[httpx.Response, bytes]:
            # Held until the answer is in, so nonces reach Kraken in the order they were taken.
            async with self._sequencer:
                wait = self.counter.delay(cost, trio.current_time())
                if wait > 0:
                    self.counter.waited_s += wait
                    self._say_wait(method, wait)
                    await trio.sleep(wait)
                self.counter.charge(cost, trio.current_time())
                nonce = self._nonces.next()  # a fresh nonce for every attempt
                self._save_counter()
                body = urlencode([("nonce", nonce), *pairs])
                assert self._api_key is not None and self._api_secret is not None
                headers = {
                    "API-Key": self._api_key,
                    "API-Sign": sign(path, nonce, body, self._api_secret),
                    "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                }
                post = self._http.build_request(
                    "POST", path, content=body.encode(), headers=headers
                )
                return await send_bounded(self._http, post)

        return await self._with_retry(method, request, paced=True)

    def _say_wait(self, method: str, wait: float) -> None:
        now = trio.current_time()
        noticed = wait >= WAIT_NOTICE_S and now - self._wait_noticed_at >= WAIT_NOTICE_EVERY_S
        if noticed:
            self._wait_noticed_at = now
        tier = self.counter.tier
        logger.log(
            logging.INFO if noticed else logging.DEBUG,
            "Kraken %s waits %.1f s for the API counter (%s tier: at most %g, down %g a second)",
            method, wait, tier.name, tier.max_count, tier.decay_per_s,
        )  # fmt: skip

    def _save_counter(self) -> None:
        if self._saved_counter is not None:
            self._saved_counter.save(self.counter, trio.current_time())

    async def _with_retry(self, method: str, request: Request, *, paced: bool) -> object:
        attempt = refusals = 0
        while True:
            try:
                result = await self._once(method, request)
            except KrakenRateLimitError as exc:
                self.failures += 1
                refusals += 1
                if refusals > RATE_LIMIT_RETRIES:
                    raise
                logger.warning("Kraken %s refused by a rate limiter (%s); waiting", method, exc)
                if exc.retry_at is not None:  # EService:Throttled names the moment
                    await trio.sleep(min(THROTTLE_WAIT_MAX_S, max(0.0, exc.retry_at - time.time())))
                elif paced:
                    # The model was behind Kraken's counter (another user of the key, or a
                    # restart soon after heavy use): take it as full; the pacer then waits.
                    self.counter.refused(trio.current_time())
                    self._save_counter()
                else:
                    await trio.sleep(self.retry.delay(min(refusals, 5)))
            except KrakenError as exc:
                self.failures += 1
                attempt += 1
                if not exc.retryable or attempt == self.retry.attempts:
                    raise
                delay = self.retry.delay(attempt - 1)
                logger.warning(
                    "Kraken %s failed (%s); retry %d in %.1f s", method, exc, attempt, delay
                )
                await trio.sleep(delay)
            else:
                if paced:
                    self.counter.accepted()
                return result

    async def _once(self, method: str, request: Request) -> object:
        self.calls += 1
        try:
            response, content = await request()
        except ResponseTooLargeError as exc:
            raise KrakenProtocolError(f"{method}: {exc}") from None
        except httpx.TimeoutException as exc:
            raise KrakenTransportError(f"{method}: timed out") from exc
        except httpx.TransportError as exc:
            raise KrakenTransportError(
                f"{method}: cannot reach {self.base_url} ({type(exc).__name__}: {exc}); "
                "check --rest-url and the network"
            ) from exc
        if response.status_code >= 500:
            raise KrakenTransportError(f"{method}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise KrakenProtocolError(f"{method}: HTTP {response.status_code}")
        body = loads(content)
        if not isinstance(body, dict):
            raise KrakenProtocolError(f"{method}: the answer is not an object")
        errors = body.get("error") or []
        if not isinstance(errors, list):
            raise KrakenProtocolError(f"{method}: 'error' is not a list")
        hard = [str(e) for e in errors if not str(e).startswith("W")]
        if hard:
            raise api_error(hard, method)
        if "result" not in body:
            raise KrakenProtocolError(f"{method}: no result")
        return body["result"]

    # -- the endpoints the gateway uses ---------------------------------------------------

    async def balance_ex(self) -> dict[str, dict[str, object]]:
        result = await self.private("BalanceEx")
        if not isinstance(result, dict) or not all(isinstance(v, dict) for v in result.values()):
            raise KrakenProtocolError("BalanceEx: result is not an object of objects")
        return result

    async def balance(self) -> dict[str, object]:
        result = await self.private("Balance")
        if not isinstance(result, dict):
            raise KrakenProtocolError("Balance: result is not an object")
        return result

    async def websockets_token(self) -> str:
        result = await self.private("GetWebSocketsToken")
        token = result.get("token") if isinstance(result, dict) else None
        if not isinstance(token, str) or not token:
            raise KrakenProtocolError("GetWebSocketsToken: no token")
        return token

    async def assets(self) -> dict[str, object]:
        result = await self.public("Assets")
        if not isinstance(result, dict):
            raise KrakenProtocolError("Assets: result is not an object")
        return result

    async def asset_pairs(self) -> dict[str, object]:
        result = await self.public("AssetPairs")
        if not isinstance(result, dict):
            raise KrakenProtocolError("AssetPairs: result is not an object")
        return result

    async def trades_history(
        self, *, start: int | None = None, end: str | None = None, ofs: int = 0
    ) -> tuple[dict[str, object], int | None]:
        """One page of trades (newest first, 50 a page): (trades by txid, total count).

        ``start`` is a unix time in whole seconds (exclusive), ``end`` a trade id
        (inclusive), as Kraken documents them.
        """
        return await self._history_page("TradesHistory", "trades", start, end, ofs)

    async def ledgers(
        self,
        *,
        start: int | None = None,
        end: str | None = None,
        ofs: int = 0,
        kind: str = "all",
    ) -> tuple[dict[str, object], int | None]:
        """One page of ledger entries (newest first, 50 a page): (entries by id, count).

        ``start`` and ``end`` as for :meth:`trades_history` (``end`` a ledger id);
        ``kind`` is Kraken's ``type`` filter (one type, or ``all``).
        """
        extra: list[tuple[str, str | int | Decimal]] = [] if kind == "all" else [("type", kind)]
        return await self._history_page("Ledgers", "ledger", start, end, ofs, extra)

    async def _history_page(
        self,
        method: str,
        key: str,
        start: int | None,
        end: str | None,
        ofs: int,
        extra: list[tuple[str, str | int | Decimal]] | None = None,
    ) -> tuple[dict[str, object], int | None]:
        """One page of a history method: its entries, and how many there are in all.

        ``count`` is None when the answer leaves it out, as Kraken's own documented
        examples do; the caller then pages until a short page.
        """
        params: list[tuple[str, str | int | Decimal]] = [("ofs", ofs), *(extra or [])]
        if start is not None:
            params.append(("start", start))
        if end is not None:
            params.append(("end", end))
        result = await self.private(method, params)
        entries = result.get(key) if isinstance(result, dict) else None
        count = result.get("count") if isinstance(result, dict) else None
        if not isinstance(entries, dict):
            raise KrakenProtocolError(f"{method}: result lacks {key}")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
            raise KrakenProtocolError(f"{method}: count is not an integer: {count!r}")
        return entries, count

    async def open_orders(self) -> dict[str, object]:
        result = await self.private("OpenOrders")
        if not isinstance(result, dict):
            raise KrakenProtocolError("OpenOrders: result is not an object")
        return result

    async def query_orders(self, txids: Sequence[str]) -> dict[str, object]:
        result = await self.private("QueryOrders", [("txid", ",".join(txids))])
        if not isinstance(result, dict):
            raise KrakenProtocolError("QueryOrders: result is not an object")
        return result

    async def add_order(
        self,
        *,
        pair: str,
        side: str,
        volume: Decimal | str,
        ordertype: str = "market",
        price: Decimal | str | None = None,
        userref: int | None = None,
        cl_ord_id: str | None = None,
    ) -> dict[str, object]:
        params: list[tuple[str, str | int | Decimal]] = [
            ("ordertype", ordertype), ("pair", pair), ("type", side), ("volume", str(volume)),
        ]  # fmt: skip
        if price is not None:
            params.append(("price", str(price)))
        if userref is not None:
            params.append(("userref", userref))
        if cl_ord_id is not None:
            params.append(("cl_ord_id", cl_ord_id))
        result = await self.private("AddOrder", params)
        if not isinstance(result, dict):
            raise KrakenProtocolError("AddOrder: result is not an object")
        return result
