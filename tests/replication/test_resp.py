"""The publisher's lean Redis connection, against a real redis-server."""

from __future__ import annotations

from pathlib import Path

import coredis
import pytest
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import ResponseError

from gateway.replication.keys import PUBLISH_EVENTS, Target, pack_events
from gateway.replication.resp import ScriptCaller
from tests.replication.conftest import RedisServer


async def test_the_script_is_loaded_when_missing_and_events_land_in_order(
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis", password="pw")
    redis.start()
    try:
        url = f"redis://default:pw@127.0.0.1:{redis.port}/3"  # AUTH, then SELECT 3
        async with coredis.Redis.from_url(url, decode_responses=False) as client:
            await client.set("hft:kraken:owner", "me")
        caller = await ScriptCaller.connect(Target.parse(url, "kraken"), PUBLISH_EVENTS)
        try:
            keys = ["hft:kraken:owner", "hft:kraken:log"]
            # The first call finds no cached script (NOSCRIPT) and loads it.
            events = [b"zero", b"", b"\x00\xff binary", b"x" * 70_000]
            assert await caller.call(keys, ["me", 0, pack_events(events)]) == 4
            assert await caller.call(keys, ["me", 4, pack_events([b"four"])]) == 1
            with pytest.raises(ResponseError, match="NOTOWNER"):
                await caller.call(keys, ["not me", 5, pack_events([b"five"])])
        finally:
            await caller.aclose()
        async with coredis.Redis.from_url(url, decode_responses=False) as client:
            entries = await client.xrange("hft:kraken:log", "-", "+")
        assert [e.identifier for e in entries] == [b"0-1", b"1-1", b"2-1", b"3-1", b"4-1"]
        assert [e.field_values[b"e"] for e in entries] == [*events, b"four"]
        wrong = Target.parse(f"redis://default:nope@127.0.0.1:{redis.port}/0", "kraken")
        with pytest.raises(ResponseError):
            await ScriptCaller.connect(wrong, PUBLISH_EVENTS)
    finally:
        redis.kill()
    gone = Target.parse(f"redis://127.0.0.1:{redis.port}/0", "kraken")
    with pytest.raises(RedisConnectionError):
        await ScriptCaller.connect(gone, PUBLISH_EVENTS)
