"""A lean Redis connection for the one call the publisher makes all the time.

Measured under Trio (docs/replication.md): a script call through coredis costs
the gateway's loop about 430 µs of CPU, through redis-py in a worker thread
about 270 µs, and written here straight on a Trio stream a small fraction of
that. The gateway's loop is the writer's too, so the publisher's sends go
through this; everything else (claiming, resuming, snapshots, heartbeats,
mirrors) stays on coredis. It speaks only what that call needs: RESP2 with
AUTH, SELECT, EVALSHA and SCRIPT LOAD, over TCP, TLS or a Unix socket.
"""

from __future__ import annotations

import hashlib
import ssl
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

import trio
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import ResponseError

from gateway.replication.keys import CONNECT_TIMEOUT_S, STREAM_TIMEOUT_S, Target

MAX_LINE: Final = 64 * 1024
_STREAM_FAILURES: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _command(*parts: str | bytes | int) -> bytes:
    """One RESP2 array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        out += [b"$%d\r\n" % len(raw), raw, b"\r\n"]
    return b"".join(out)


class ScriptCaller:
    """One connection that runs one Lua script, by its SHA1 (loading it when Redis lacks it).

    Raises (from :meth:`call`): ``ResponseError`` for Redis's error replies
    (``NOTOWNER ...`` among them), ``coredis.exceptions.ConnectionError`` when the
    connection fails: both are among the failures the publisher retries on.
    """

    def __init__(self, stream: trio.abc.Stream, script: str) -> None:
        self._stream = stream
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, target: Target, script: str) -> ScriptCaller:
        parts = urlsplit(target.url)
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                stream: trio.abc.Stream
                if parts.scheme == "unix":
                    stream = await trio.open_unix_socket(unquote(parts.path))
                    database = parse_qs(parts.query).get("db", ["0"])[0]
                else:
                    stream = await trio.open_tcp_stream(parts.hostname or "", parts.port or 6379)
                    database = parts.path.strip("/") or "0"
                    if parts.scheme == "rediss":
                        stream = trio.SSLStream(
                            stream, ssl.create_default_context(), server_hostname=parts.hostname
                        )
                caller = cls(stream, script)
                try:
                    if parts.password is not None:
                        user = unquote(parts.username) if parts.username else "default"
                        await caller._request(_command("AUTH", user, unquote(parts.password)))
                    if database != "0":
                        await caller._request(_command("SELECT", database))
                except BaseException:
                    await trio.aclose_forcefully(stream)  # refused: never left open
                    raise
        except TimeoutError:
            raise RedisConnectionError(f"no answer from {target.shown}") from None
        except _STREAM_FAILURES as exc:
            raise RedisConnectionError(f"cannot reach {target.shown}: {exc}") from None
        return caller

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def call(self, keys: list[str], args: list[str | bytes | int]) -> object:
        """Run the script with ``keys`` and ``args``; its reply (an integer, here)."""
        request = _command("EVALSHA", self._sha, len(keys), *keys, *args)
        try:
            return await self._request(request)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._request(_command("SCRIPT", "LOAD", self._script))
        return await self._request(request)

    async def _request(self, request: bytes) -> object:
        try:
            with trio.fail_after(STREAM_TIMEOUT_S):
                await self._stream.send_all(request)
                return await self._reply()
        except TimeoutError:
            raise RedisConnectionError("Redis did not answer in time") from None
        except _STREAM_FAILURES as exc:
            raise RedisConnectionError(f"the connection to Redis failed: {exc}") from None

    async def _reply(self) -> object:
        line = await self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return bytes(rest)
        if kind == b"-":
            raise ResponseError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            data = await self._exactly(length + 2)
            return bytes(data[:-2])
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [await self._reply() for _ in range(count)]
        raise RedisConnectionError(f"Redis sent something that is not RESP2: {line[:40]!r}")

    async def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line
            if len(self._buffer) > MAX_LINE:
                raise RedisConnectionError("Redis sent a line too long")
            await self._fill()

    async def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def _fill(self) -> None:
        chunk = await self._stream.receive_some(65536)
        if not chunk:
            raise RedisConnectionError("Redis closed the connection")
        self._buffer += chunk
