"""The command socket over a real Unix socket: every bad input, limits, permissions."""

from __future__ import annotations

import json
import os
import socket
import struct
from decimal import Decimal

import cbor2
import pytest
import trio

from gateway.config import GatewayConfig
from gateway.service import Running, run_gateway
from mmapstore import StoreReader, WriterHealth
from tests.gateway.conftest import RawClient
from tests.gateway.fake_exchange import FakeExchange

GOOD = {"strategy": "a", "cmd": "allocate", "currency": "usd", "amount": 100, "index": 2}

BAD_JSON_REQUESTS: list[tuple[str, bytes | dict[str, object], str]] = [
    ("not json", b"this is not json", "BAD_FRAME"),
    ("truncated json", b'{"strategy": "a", "cmd": "allo', "BAD_FRAME"),
    ("not a map", b"[1, 2, 3]", "BAD_FRAME"),
    ("unknown cmd", {**GOOD, "cmd": "steal"}, "UNKNOWN_COMMAND"),
    ("unknown currency", {**GOOD, "currency": "XYZ"}, "UNKNOWN_CURRENCY"),
    ("malformed currency", {**GOOD, "currency": "U S D"}, "UNKNOWN_CURRENCY"),
    ("NaN", b'{"strategy":"a","cmd":"allocate","currency":"usd","amount":NaN,"index":2}',
     "INVALID_AMOUNT"),
    ("Infinity", b'{"strategy":"a","cmd":"allocate","currency":"usd","amount":Infinity,"index":2}',
     "INVALID_AMOUNT"),
    ("NaN string", {**GOOD, "amount": "NaN"}, "INVALID_AMOUNT"),
    ("negative", {**GOOD, "amount": -5}, "INVALID_AMOUNT"),
    ("zero", {**GOOD, "amount": 0}, "INVALID_AMOUNT"),
    ("too precise", b'{"strategy":"a","cmd":"allocate","currency":"usd",'
     b'"amount":0.0000000000000000001,"index":2}', "INVALID_AMOUNT"),
    ("huge", b'{"strategy":"a","cmd":"allocate","currency":"usd","amount":1e30,"index":2}',
     "INVALID_AMOUNT"),
    ("not a number string", {**GOOD, "amount": "12abc"}, "INVALID_AMOUNT"),
    ("amount bool", {**GOOD, "amount": True}, "INVALID_REQUEST"),
    ("amount list", {**GOOD, "amount": [1]}, "INVALID_REQUEST"),
    ("index string", {**GOOD, "index": "2"}, "INVALID_REQUEST"),
    ("index float", b'{"strategy":"a","cmd":"allocate","currency":"usd","amount":1,"index":2.0}',
     "INVALID_REQUEST"),
    ("strategy number", {**GOOD, "strategy": 5}, "INVALID_REQUEST"),
    ("currency number", {**GOOD, "currency": 840}, "INVALID_REQUEST"),
    ("missing amount", {k: v for k, v in GOOD.items() if k != "amount"}, "INVALID_REQUEST"),
    ("unknown field", {**GOOD, "amout": 5}, "INVALID_REQUEST"),
    ("request_id number", {**GOOD, "request_id": 7}, "INVALID_REQUEST"),
    ("index out of range", {**GOOD, "index": 8}, "INVALID_INDEX"),
    ("index negative", {**GOOD, "index": -1}, "INVALID_INDEX"),
    ("allocate to total", {**GOOD, "index": 0}, "INVALID_INDEX"),
    ("allocate to available", {**GOOD, "index": 1}, "INVALID_INDEX"),
    ("release from available", {**GOOD, "cmd": "release", "index": 1}, "INVALID_INDEX"),
    ("adjust available", {**GOOD, "cmd": "adjust", "index": 1}, "INVALID_INDEX"),
    ("another strategy's slot", {**GOOD, "strategy": "b", "index": 3}, "SLOT_OWNED"),
    ("more than available", {**GOOD, "amount": 10**9}, "INSUFFICIENT_FUNDS"),
    ("release more than held", {**GOOD, "cmd": "release", "amount": 10**4}, "INSUFFICIENT_FUNDS"),
    ("adjust below zero", {**GOOD, "cmd": "adjust", "index": 0, "amount": -(10**6)},
     "INSUFFICIENT_FUNDS"),
    # Issue 11: bounds before arithmetic, exact limits, text at the edge, strict syntax.
    ("tiny exponent string", {**GOOD, "amount": "1e-999999999"}, "INVALID_AMOUNT"),
    ("tiny exponent number", b'{"strategy":"a","cmd":"allocate","currency":"usd",'
     b'"amount":1e-999999999,"index":2}', "INVALID_AMOUNT"),
    ("ten million digits down", {**GOOD, "amount": "1e-10000000"}, "INVALID_AMOUNT"),
    ("huge exponent", {**GOOD, "amount": "1e999999999"}, "INVALID_AMOUNT"),
    ("past the limit by 1e-18", {**GOOD, "amount": "1000000000000000000.000000000000000001"},
     "INVALID_AMOUNT"),
    ("arabic-indic digits", {**GOOD, "amount": "\u0661\u0662"}, "INVALID_AMOUNT"),
    ("no-break space", {**GOOD, "amount": "\u00a012"}, "INVALID_AMOUNT"),
    ("lone surrogate strategy", b'{"strategy":"\\ud800","cmd":"allocate","currency":"usd",'
     b'"amount":1,"index":2}', "INVALID_REQUEST"),
    ("lone surrogate request_id", b'{"strategy":"a","cmd":"allocate","currency":"usd",'
     b'"amount":1,"index":2,"request_id":"\\udfff"}', "INVALID_REQUEST"),
    ("control character strategy", {**GOOD, "strategy": "a\nb"}, "INVALID_REQUEST"),
    # The reply names the field: UTF-8 cannot hold it, so the reply escapes it.
    ("lone surrogate field name", b'{"strategy":"a","cmd":"allocate","currency":"usd",'
     b'"amount":1,"index":2,"\\ud800":1}', "INVALID_REQUEST"),
    ("duplicate key", b'{"strategy":"a","cmd":"allocate","currency":"usd","amount":1,'
     b'"amount":5,"index":2}', "BAD_FRAME"),
]  # fmt: skip


async def _balances(raw: RawClient) -> object:
    reply = await raw.json({"cmd": "query"})
    assert reply["ok"] is True
    return reply["balances"]


async def test_every_bad_json_request_gets_its_error_and_changes_nothing(raw: RawClient) -> None:
    # Strategy "c" owns slot 3, so "b" touching it is refused.
    assert (await raw.json({**GOOD, "strategy": "c", "index": 3}))["ok"] is True
    before = await _balances(raw)
    for name, request, code in BAD_JSON_REQUESTS:
        # Each is answered at once: nothing a client sends may stall the event loop.
        with trio.fail_after(1):
            reply = await raw.json(request)
        assert reply["ok"] is False, name
        error = reply["error"]
        assert isinstance(error, dict)
        assert error["code"] == code, (name, error)
        assert error["message"], name
        assert await _balances(raw) == before, name
    # The same connection still works.
    reply = await raw.json(GOOD)
    assert reply["ok"] is True
    assert reply["balances"] == ["100000", "99800", "100", "100", "0", "0", "0", "0"]


async def test_oversize_json_line_is_refused_and_connection_continues(raw: RawClient) -> None:
    reply = await raw.json(b'{"pad": "' + b"x" * 70_000 + b'"}')
    assert reply["error"] == {
        "code": "FRAME_TOO_LARGE",
        "message": "request larger than 65536 bytes",
    }
    assert (await raw.json(GOOD))["ok"] is True


async def test_bad_cbor_frames_get_errors_and_connection_continues(raw: RawClient) -> None:
    good = dict(GOOD)
    body = b"\x00\x00\x00\x05" + b"\xff\xff\xff\xff\xff"
    await raw.send(body)
    assert (await raw.read_cbor())["error"]["code"] == "BAD_FRAME"  # type: ignore[index]
    # A truncated CBOR map inside a correctly sized frame.
    encoded = cbor2.dumps(good)[:-4]
    await raw.send(len(encoded).to_bytes(4, "big") + encoded)
    assert (await raw.read_cbor())["error"]["code"] == "BAD_FRAME"  # type: ignore[index]
    assert (await raw.cbor([1, 2]))["error"]["code"] == "BAD_FRAME"  # type: ignore[index]
    assert (await raw.cbor({**good, "amount": float("nan")}))["error"]["code"] == "INVALID_AMOUNT"  # type: ignore[index]
    assert (await raw.cbor({**good, "amount": -1.5}))["error"]["code"] == "INVALID_AMOUNT"  # type: ignore[index]
    # Issue 11: a decimal fraction with a huge exponent, a 4,300-digit bignum, bytes after
    # the map: each answered at once, with a reply.
    with trio.fail_after(1):
        tiny = cbor2.dumps({**good, "amount": Decimal("1e-999999999")})
        await raw.send(len(tiny).to_bytes(4, "big") + tiny)
        assert (await raw.read_cbor())["error"]["code"] == "INVALID_AMOUNT"  # type: ignore[index]
        huge = {**good, "amount": 10**4300}
        assert (await raw.cbor(huge))["error"]["code"] == "INVALID_AMOUNT"  # type: ignore[index]
    trailing = cbor2.dumps(good) + b"\x00"
    await raw.send(len(trailing).to_bytes(4, "big") + trailing)
    assert (await raw.read_cbor())["error"]["code"] == "BAD_FRAME"  # type: ignore[index]
    # An oversize frame is refused and skipped; the stream stays in step.
    await raw.send((70_000).to_bytes(4, "big") + b"\x00" * 70_000)
    assert (await raw.read_cbor())["error"]["code"] == "FRAME_TOO_LARGE"  # type: ignore[index]
    # A float amount by its shortest repr, and a Decimal.
    reply = await raw.cbor({**good, "amount": 0.1})
    assert reply["ok"] is True and reply["balances"][2] == "0.1"  # type: ignore[index]
    reply = await raw.cbor({**good, "amount": Decimal("0.2")})
    assert reply["balances"][2] == "0.3"  # type: ignore[index]


async def test_connection_that_starts_with_garbage_is_refused_then_closed(
    raw: RawClient, config: GatewayConfig
) -> None:
    await raw.send(b"GET / HTTP/1.1\r\n\r\n")
    assert (await raw.read_json())["error"]["code"] == "BAD_FRAME"  # type: ignore[index]
    assert await raw.is_closed()
    async with await RawClient.connect(config.socket_path) as other:
        assert (await other.json(GOOD))["ok"] is True


async def test_truncated_frame_at_eof_is_answered(raw: RawClient) -> None:
    await raw.send(b'{"cmd": "query"')
    await raw.stream.send_eof()
    assert (await raw.read_json())["error"]["code"] == "BAD_FRAME"  # type: ignore[index]


async def test_request_id_repeats_return_the_first_reply(raw: RawClient) -> None:
    first = await raw.json({**GOOD, "request_id": "x-1"})
    again = await raw.json({**GOOD, "request_id": "x-1"})
    assert first == again
    assert first["request_id"] == "x-1"
    conflict = await raw.json({**GOOD, "amount": 5, "request_id": "x-1"})
    assert conflict["error"]["code"] == "IDEMPOTENCY_CONFLICT"  # type: ignore[index]
    assert conflict["request_id"] == "x-1"
    balances = await _balances(raw)
    assert balances["USD"][2] == "100"  # type: ignore[index]


async def test_query_and_status(raw: RawClient, gateway: Running) -> None:
    query = await raw.json({"cmd": "query", "currency": "btc"})
    assert query == {"ok": True, "balances": {"BTC": ["10", "10"] + ["0"] * 6}, "owners": {}}
    status = await raw.json({"cmd": "status"})
    assert status["ok"] is True
    assert status["status"]["pid"] == os.getpid()  # type: ignore[index]
    unknown = await raw.json({"cmd": "query", "currency": "doge"})
    assert unknown["error"]["code"] == "UNKNOWN_CURRENCY"  # type: ignore[index]


async def test_socket_and_directory_permissions(gateway: Running, config: GatewayConfig) -> None:
    assert config.socket_path.stat().st_mode & 0o777 == 0o600
    assert config.run_dir.stat().st_mode & 0o777 == 0o700


async def test_peer_with_disallowed_uid_is_refused(
    config: GatewayConfig, exchange: FakeExchange, nursery: trio.Nursery
) -> None:
    config = GatewayConfig(**{**config.__dict__, "allowed_uids": frozenset({os.getuid() + 1})})
    running = await nursery.start(run_gateway, config, exchange)
    async with await RawClient.connect(config.socket_path) as raw:
        reply = await raw.read_json()
        assert reply["error"]["code"] == "PERMISSION_DENIED"  # type: ignore[index]
        assert await raw.is_closed()
    running.stop.set()


async def test_connection_limit_evicts_the_longest_idle_and_idle_timeout(
    config: GatewayConfig, exchange: FakeExchange, nursery: trio.Nursery
) -> None:
    config = GatewayConfig(**{**config.__dict__, "max_connections": 2, "idle_timeout_s": 0.5})
    running = await nursery.start(run_gateway, config, exchange)
    async with (
        await RawClient.connect(config.socket_path) as first,
        await RawClient.connect(config.socket_path) as second,
    ):
        assert (await first.json({"cmd": "status"}))["ok"] is True
        await trio.sleep(0.01)
        assert (await second.json({"cmd": "status"}))["ok"] is True
        # Full: the newcomer is admitted and the connection idle the longest goes.
        async with await RawClient.connect(config.socket_path) as third:
            assert (await third.json({"cmd": "status"}))["ok"] is True
            assert await first.is_closed()
            # Idle connections are closed, which frees their places.
            assert await second.is_closed()
            assert await third.is_closed()
    async with await RawClient.connect(config.socket_path) as fourth:
        assert (await fourth.json({"cmd": "status"}))["ok"] is True
    running.stop.set()


async def test_stop_removes_socket_and_marks_store_stopped(
    config: GatewayConfig, exchange: FakeExchange
) -> None:
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(run_gateway, config, exchange)
        assert config.socket_path.exists()
        running.stop.set()
    assert not config.socket_path.exists()
    with StoreReader(config.store_path) as reader:
        assert reader.writer_status().health is WriterHealth.STOPPED
        assert reader.record("USD").floats[0] == 100000.0


@pytest.mark.parametrize("framing", ["json", "cbor"])
async def test_pipelined_requests_are_answered_in_order(raw: RawClient, framing: str) -> None:
    requests = [{**GOOD, "amount": n, "request_id": f"p{n}"} for n in range(1, 21)]
    if framing == "json":
        await raw.send(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
        replies = [await raw.read_json() for _ in requests]
    else:
        frames = [cbor2.dumps(r) for r in requests]
        await raw.send(b"".join(len(f).to_bytes(4, "big") + f for f in frames))
        replies = [await raw.read_cbor() for _ in requests]
    assert [r["request_id"] for r in replies] == [f"p{n}" for n in range(1, 21)]
    assert replies[-1]["balances"][2] == str(sum(range(1, 21)))  # type: ignore[index]


async def test_adjusts_past_the_store_range_are_refused_and_the_gateway_lives(
    raw: RawClient,
) -> None:
    # Issue 11: 171 adjusts of 1e18 took slot 0 past the store's signed 128-bit range;
    # publishing crashed the writer and the journalled command bricked every restart.
    adjust = {"strategy": "a", "cmd": "adjust", "currency": "usd", "index": 0,
              "amount": 10**18}  # fmt: skip
    codes = []
    for _ in range(200):
        reply = await raw.json(adjust)
        codes.append("ok" if reply["ok"] else reply["error"]["code"])  # type: ignore[index]
    assert codes.count("ok") == 170 and set(codes[170:]) == {"INVALID_AMOUNT"}
    query = await raw.json({"cmd": "query", "currency": "usd"})
    assert query["ok"] is True


@pytest.mark.parametrize("kind", ["command", "query"])
async def test_a_client_that_never_reads_its_replies_stalls_only_itself(
    raw: RawClient, config: GatewayConfig, kind: str
) -> None:
    # Command replies are written from the writer's side, what the socket does not
    # take by a flusher task; query replies by the connection's own task.
    hog = await RawClient.connect(config.socket_path)
    count = 2000  # far past what the socket buffers hold
    request = {"cmd": "status"} if kind == "query" else {**GOOD, "strategy": "hog", "amount": 1}
    await hog.send(b"".join(
        json.dumps({**request, "request_id": f"h{n}"}).encode() + b"\n" for n in range(count)
    ))  # fmt: skip
    await trio.sleep(0.5)  # the gateway has filled the hog's socket and waits on it
    with trio.fail_after(5):
        reply = await raw.json({**GOOD, "index": 3, "request_id": "meanwhile"})
    assert reply["ok"] is True
    with trio.fail_after(60):  # the hog reads at last: every reply, whole and in order
        replies = [await hog.read_json() for _ in range(count)]
    assert [r["request_id"] for r in replies] == [f"h{n}" for n in range(count)]
    assert all(r["ok"] is True for r in replies)
    after = await hog.json({"cmd": "query", "currency": "usd"})
    applied = count if kind == "command" else 0
    assert after["balances"]["USD"][2] == str(applied)  # type: ignore[index]
    await hog.aclose()


async def test_a_half_closed_peer_still_gets_its_reply(
    config: GatewayConfig, gateway: Running
) -> None:
    # The end of stream can reach the connection's task before the writer applies the
    # command (Trio runs a batch of tasks in either order): repeated, so that it does.
    for n in range(20):
        client = await RawClient.connect(config.socket_path)
        await client.send(json.dumps({**GOOD, "request_id": f"last{n}"}).encode() + b"\n")
        await client.stream.send_eof()
        with trio.fail_after(5):
            reply = await client.read_json()
        assert reply["ok"] is True and reply["request_id"] == f"last{n}"
        assert await client.is_closed()
        await client.aclose()


async def test_peers_gone_before_their_replies_leave_everything_applied(
    raw: RawClient, config: GatewayConfig
) -> None:
    for n in range(50):
        client = await RawClient.connect(config.socket_path)
        await client.send(json.dumps({**GOOD, "amount": 1, "request_id": f"g{n}"}).encode() + b"\n")
        client.stream.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )  # closed with a reset, its reply still to come
        await client.aclose()
    with trio.fail_after(5):
        for n in range(50):  # each was applied once, and a resend is recognised
            again = await raw.json({**GOOD, "amount": 1, "request_id": f"g{n}"})
            assert again["ok"] is True
    assert again["balances"][2] == "50"  # type: ignore[index]
