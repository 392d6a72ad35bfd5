"""The fill streams' silence limit and hand-off, alone and in both exchanges' stream loops."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio.testing

from gateway.exchanges.binance.parsing import SymbolMap
from gateway.exchanges.binance.rest import BinanceRestClient
from gateway.exchanges.binance.session import PING_AFTER_S, STALE_AFTER_S, BinanceSession
from gateway.exchanges.feed import SilenceTimer, deliver
from gateway.exchanges.kraken.rest import KrakenRestClient
from gateway.exchanges.kraken.session import KrakenSession, StreamStale
from gateway.messages import HeartbeatTick, WriterMessage


def _unreachable(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no REST call expected here: {request.url}")


class FakeWebSocket:
    """What a stream loop uses of a connection: messages in, messages out."""

    def __init__(self) -> None:
        self.incoming, self._receive = trio.open_memory_channel[str](100)
        self.sent: list[tuple[float, str]] = []

    async def get_message(self) -> str:
        return await self._receive.receive()

    async def send_message(self, text: str) -> None:
        self.sent.append((trio.current_time(), text))


async def _talk(ws: FakeWebSocket, message: str, every_s: float, until_s: float) -> float:
    """Send ``message`` every ``every_s`` until ``until_s``; the time of the last one."""
    last = trio.current_time()
    while trio.current_time() + every_s <= until_s:
        await trio.sleep(every_s)
        await ws.incoming.send(message)
        last = trio.current_time()
    return last


async def test_silence_timer_fires_only_after_a_whole_silence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    silence = SilenceTimer(2.0)
    last = trio.current_time()
    with silence.scope:
        # Heard every 0.5 s for a minute: the deadline must keep moving, lazily or not.
        for _ in range(120):
            await trio.sleep(0.5)
            silence.heard()
            last = trio.current_time()
        await trio.sleep(10)
    assert silence.scope.cancelled_caught
    assert last + 1.98 <= trio.current_time() <= last + 2.0


async def test_deliver_waits_only_when_the_writers_queue_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[WriterMessage](1)
    await deliver(send, HeartbeatTick())  # room: taken at once
    delivered = trio.Event()

    async def second() -> None:
        await deliver(send, HeartbeatTick())
        delivered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.sleep(1)
        assert not delivered.is_set()  # full: waits for the writer
        await receive.receive()
        await delivered.wait()


async def test_kraken_stream_is_stale_after_its_heartbeat_timeout_of_silence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rest = KrakenRestClient(
        "https://kraken.test", api_key="KEY", api_secret="c2VjcmV0",
        transport=httpx.MockTransport(_unreachable),
    )  # fmt: skip
    session = KrakenSession(rest, heartbeat_timeout_s=5.0)
    ws = FakeWebSocket()
    send, _receive = trio.open_memory_channel[WriterMessage](10)
    heartbeat = json.dumps({"channel": "heartbeat"})
    async with trio.open_nursery() as nursery:

        async def talk_then_fall_silent() -> None:
            talked.append(await _talk(ws, heartbeat, 1.0, 60.0))

        talked: list[float] = []
        nursery.start_soon(talk_then_fall_silent)
        with pytest.raises(StreamStale), trio.fail_after(300):
            await session._stream(ws, send, {})  # type: ignore[arg-type]
    # A minute of heartbeats kept it alive; five seconds of silence ended it.
    assert talked[0] + 4.95 <= trio.current_time() <= talked[0] + 5.0
    await rest.aclose()


async def test_binance_stream_pings_a_silent_connection_then_gives_it_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rest = BinanceRestClient(
        "https://binance.test", api_key="KEY", api_secret="SECRET",
        transport=httpx.MockTransport(_unreachable),
    )  # fmt: skip
    session = BinanceSession(rest)
    ws = FakeWebSocket()
    send, _receive = trio.open_memory_channel[WriterMessage](10)
    pong = json.dumps({"id": "ping-1", "status": 200, "result": {}})
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_talk, ws, pong, 5.0, 60.0)
        with pytest.raises(Exception, match="nothing for 45 s"), trio.fail_after(300):
            await session._stream(ws, SymbolMap(), send)  # type: ignore[arg-type]
    # Talk every 5 s until 60 s: no ping. Then silence: a ping every 20 s, given up
    # once 45 s of silence are reached (the third 20 s).
    pings = [at - start for at, _ in ws.sent]
    assert all('"method": "ping"' in text for _, text in ws.sent)
    assert len(pings) == 2 and 79.5 <= pings[0] <= 80.0 and 99.5 <= pings[1] <= 100.0
    assert 119.5 <= trio.current_time() - start <= 120.0
    assert PING_AFTER_S == 20.0 and STALE_AFTER_S == 45.0
    await rest.__aexit__(None, None, None)
