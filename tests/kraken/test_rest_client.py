"""The Kraken REST client against httpx.MockTransport: signing on the wire, errors, retries."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

import httpx
import pytest

from gateway.exchanges.kraken.errors import (
    KrakenAPIError,
    KrakenAuthError,
    KrakenProtocolError,
    KrakenRateLimitError,
    KrakenTransportError,
    KrakenUnavailableError,
)
from gateway.exchanges.kraken.rest import KrakenRestClient, RetryPolicy
from gateway.exchanges.kraken.signing import sign

SECRET = "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg=="
FAST = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002)


def _client(handler: httpx.MockTransport, **kwargs: object) -> KrakenRestClient:
    return KrakenRestClient(
        "https://kraken.test", api_key="KEY", api_secret=SECRET, retry=FAST, transport=handler,
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_private_call_is_signed_over_the_exact_body() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"error": [], "result": {"ZUSD": {"balance": "1.5"}}})

    async with _client(httpx.MockTransport(answer)) as client:
        result = await client.balance_ex()
        await client.balance_ex()
    assert result == {"ZUSD": {"balance": "1.5"}}
    request = seen[0]
    body = request.content.decode()
    nonce = parse_qs(body)["nonce"][0]
    assert request.url.path == "/0/private/BalanceEx"
    assert request.headers["API-Key"] == "KEY"
    assert request.headers["API-Sign"] == sign("/0/private/BalanceEx", nonce, body, SECRET)
    second_nonce = int(parse_qs(seen[1].content.decode())["nonce"][0])
    assert second_nonce > int(nonce)


@pytest.mark.parametrize(
    ("errors", "kind"),
    [
        (["EAPI:Invalid key"], KrakenAuthError),
        (["EAPI:Invalid nonce"], KrakenAuthError),
        (["EGeneral:Permission denied"], KrakenAuthError),
        (["EAPI:Rate limit exceeded"], KrakenRateLimitError),
        (["EService: Throttled: 1700000000"], KrakenRateLimitError),
        (["EService:Unavailable"], KrakenUnavailableError),
        (["EGeneral:Internal error:123"], KrakenUnavailableError),
        (["EOrder:Insufficient funds"], KrakenAPIError),
    ],
)
async def test_error_array_maps_to_typed_errors(
    errors: list[str], kind: type[KrakenAPIError]
) -> None:
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json={"error": errors})

    async with _client(httpx.MockTransport(answer)) as client:
        with pytest.raises(kind) as raised:
            await client.balance_ex()
    assert type(raised.value) is kind
    # Retryable errors are retried (3 attempts); the rest fail at once.
    assert calls == (3 if raised.value.retryable else 1)


async def test_transient_failures_are_retried_then_succeed() -> None:
    answers = iter([
        httpx.Response(503, text="<html>busy</html>"),
        httpx.Response(200, json={"error": ["EService:Busy"]}),
        httpx.Response(200, json={"error": [], "result": {"token": "abc", "expires": 900}}),
    ])  # fmt: skip
    async with _client(httpx.MockTransport(lambda r: next(answers))) as client:
        assert await client.websockets_token() == "abc"
        assert client.failures == 2


async def test_timeouts_and_connection_errors_are_transport_errors() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with _client(httpx.MockTransport(timeout)) as client:
        with pytest.raises(KrakenTransportError, match="timed out"):
            await client.public("Time")

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with _client(httpx.MockTransport(refused)) as client:
        with pytest.raises(KrakenTransportError, match="ConnectError"):
            await client.public("Time")


async def test_malformed_answers_are_protocol_errors() -> None:
    for response in (
        httpx.Response(200, text="not json"),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(200, json={"error": []}),
        httpx.Response(404, text="nope"),
    ):
        async with _client(httpx.MockTransport(lambda r, resp=response: resp)) as client:
            with pytest.raises(KrakenProtocolError):
                await client.public("Assets")


async def test_warnings_alone_are_not_errors() -> None:
    answer = httpx.Response(200, json={"error": ["WGeneral:Something"], "result": {"x": 1}})
    async with _client(httpx.MockTransport(lambda r: answer)) as client:
        assert await client.public("Time") == {"x": 1}


async def test_the_secret_is_never_logged_or_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answers = iter([httpx.Response(200, json={"error": ["EService:Unavailable"]})] * 2 + [
        httpx.Response(200, json={"error": [], "result": {}}),
    ])  # fmt: skip
    async with _client(httpx.MockTransport(lambda r: next(answers))) as client:
        await client.balance()
        assert SECRET not in repr(client)
    assert SECRET not in caplog.text
    assert "retry" in caplog.text


async def test_no_credentials_is_an_auth_error_without_a_request() -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request should be sent")

    async with KrakenRestClient(
        "https://kraken.test", transport=httpx.MockTransport(never)
    ) as client:
        with pytest.raises(KrakenAuthError):
            await client.balance_ex()
