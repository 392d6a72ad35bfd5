"""The Kraken REST client against httpx.MockTransport: signing on the wire, errors, retries."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
import trio
import trio.testing

from gateway.exchanges.kraken.errors import (
    KrakenAPIError,
    KrakenAuthError,
    KrakenProtocolError,
    KrakenRateLimitError,
    KrakenTransportError,
    KrakenUnavailableError,
    api_error,
)
from gateway.exchanges.kraken.ratelimit import TIERS, ApiCounter, SavedCounter, Tier, call_cost
from gateway.exchanges.kraken.rest import RATE_LIMIT_RETRIES, KrakenRestClient, RetryPolicy
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
    errors: list[str], kind: type[KrakenAPIError], autojump_clock: trio.testing.MockClock
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
    # Rate limits are waited out (the pacer believes Kraken), other retryable errors are
    # retried (3 attempts); the rest fail at once.
    expected = RATE_LIMIT_RETRIES + 1 if kind is KrakenRateLimitError else 3
    assert calls == (expected if raised.value.retryable else 1)


def test_auth_errors_say_what_to_do() -> None:
    assert "another program" in str(api_error(["EAPI:Invalid nonce"], "BalanceEx"))
    assert "KRAKEN_API_SECRET" in str(api_error(["EAPI:Invalid signature"], "BalanceEx"))
    denied = api_error(["EGeneral:Permission denied"], "TradesHistory")
    assert isinstance(denied, KrakenAuthError) and denied.permission_denied
    assert "Query closed orders & trades" in str(denied)


class StrictCounter:
    """Kraken's API counter as the server keeps it: over the maximum is refused, and counts."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self.level = 0.0
        self.at = 0.0
        self.refused = 0
        self.last_nonce = 0
        self.nonce_errors = 0

    async def answer(self, request: httpx.Request) -> httpx.Response:
        await trio.sleep(random.uniform(0, 0.04))  # the way in: jitter reorders requests
        now = trio.current_time()
        self.level = max(0.0, self.level - (now - self.at) * self.tier.decay_per_s)
        self.at = now
        nonce = int(parse_qs(request.content.decode())["nonce"][0])
        if nonce <= self.last_nonce:
            self.nonce_errors += 1
            return httpx.Response(200, json={"error": ["EAPI:Invalid nonce"]})
        self.last_nonce = nonce
        self.level += call_cost(request.url.path.rsplit("/", 1)[1])
        if self.level > self.tier.max_count:
            self.refused += 1
            return httpx.Response(200, json={"error": ["EAPI:Rate limit exceeded"]})
        result = {"trades": {}, "count": 0} if "Trades" in request.url.path else {}
        return httpx.Response(200, json={"error": [], "result": result})


async def test_concurrent_private_calls_reach_kraken_in_nonce_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = StrictCounter(TIERS["pro"])
    client = _client(httpx.MockTransport(server.answer), tier=TIERS["pro"])
    async with client, trio.open_nursery() as nursery:
        for _ in range(40):
            nursery.start_soon(client.balance_ex)
    assert server.nonce_errors == 0 and server.refused == 0


@pytest.mark.parametrize("tier", ["starter", "pro"])
async def test_private_calls_are_paced_within_the_counter_and_near_its_bound(
    tier: str, autojump_clock: trio.testing.MockClock
) -> None:
    server = StrictCounter(TIERS[tier])
    async with _client(httpx.MockTransport(server.answer), tier=TIERS[tier]) as client:
        started = trio.current_time()
        for _ in range(30):
            await client.trades_history(start=0)
        elapsed = trio.current_time() - started
    assert server.refused == 0 and client.counter.refusals == 0
    bound = (30 * 2 - TIERS[tier].max_count) / TIERS[tier].decay_per_s
    assert bound <= elapsed <= 1.2 * bound


async def test_a_long_wait_for_the_counter_is_said_at_info_not_at_every_call(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A start soon after another waited 20 s at Starter with nothing at info: the
    operator saw a gateway that seemed hung. Long waits are said, once in 10 s."""
    caplog.set_level(logging.INFO, logger="gateway.exchanges.kraken.rest")
    server = StrictCounter(TIERS["starter"])
    async with _client(httpx.MockTransport(server.answer), tier=TIERS["starter"]) as client:
        for _ in range(7):  # 14 of the ceiling's 14: no wait yet
            await client.trades_history(start=0)
        assert not caplog.records
        for _ in range(4):  # each waits ~6 s: said at the first and the third, 12 s on
            await client.trades_history(start=0)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(said) == 2, said
    assert said[0].startswith("Kraken TradesHistory waits ")
    assert said[0].endswith(" s for the API counter (starter tier: at most 15, down 0.33 a second)")
    assert server.refused == 0


async def test_a_counter_used_by_someone_else_is_believed_and_waited_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = StrictCounter(TIERS["pro"])
    server.level = 25.0  # another program has been using the key
    async with _client(httpx.MockTransport(server.answer), tier=TIERS["pro"]) as client:
        await client.balance_ex()
        await client.balance_ex()
    # Each refusal adds to Kraken's counter: the client backs off harder each time in a row.
    assert server.refused <= 3 and client.counter.refusals == server.refused


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


async def test_a_restart_starts_at_the_counter_the_last_process_left(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The first process spends the Starter counter (15) to its ceiling; a second one,
    # started 3 s later by the wall clock, must wait for Kraken's decay before its
    # first history call instead of being refused by a counter it thought empty.
    wall = [1_000_000.0]
    path = tmp_path / "kraken.counter"

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"error": [], "result": {"ZUSD": {"balance": "1"}}})

    starter = TIERS["starter"]
    first = _client(httpx.MockTransport(answer), tier=starter,
                    saved_counter=SavedCounter(path, wall=lambda: wall[0]))  # fmt: skip
    async with first:
        for _ in range(14):
            await first.balance_ex()
    assert first.counter.waited_s == 0
    wall[0] += 3.0  # ~1 unit decays at 0.33/s
    second = _client(httpx.MockTransport(answer), tier=starter,
                     saved_counter=SavedCounter(path, wall=lambda: wall[0]))  # fmt: skip
    async with second:
        started = trio.current_time()
        await second.balance_ex()
        await second.balance_ex()
    # 14 - 1 decayed + 2 calls is past the ceiling (14): the second call waited.
    assert trio.current_time() - started > 2.0 and second.counter.waited_s > 2.0


async def test_a_missing_or_damaged_saved_counter_means_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "kraken.counter"
    path.write_text("not a counter")
    counter = ApiCounter(TIERS["pro"])
    SavedCounter(path).restore(counter, 0.0)
    assert counter.level(0.0) == 0.0
    SavedCounter(tmp_path / "absent").restore(counter, 0.0)
    assert counter.level(0.0) == 0.0
