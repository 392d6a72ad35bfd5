"""A small HTTP/1.1 server (h11 over Trio) for the exchange simulators: one handler per request.

Only the simulators use it (tests, the demo, benchmarks); the gateway's own
code never imports it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import h11
import trio

logger = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1 << 20
# The tests' own control requests may carry what no exchange would (an execution of
# megabytes, to inject): the websocket's bound (4 MiB a message) is theirs.
MAX_CONTROL_BODY_BYTES: Final = 8 << 20


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str  # path and query, as sent
    headers: Mapping[str, str]  # names lower-case
    body: bytes


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    payload: object  # JSON-encoded unless it is a str already
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[HttpRequest], Awaitable[HttpAnswer]]


async def serve_http_connection(stream: trio.SocketStream, handle: Handler) -> None:
    """Serve one client connection; a client that goes away mid-request ends only this task."""
    try:
        await _serve(stream, handle)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
        logger.debug("an HTTP client went away: %r", exc)


async def _serve(stream: trio.SocketStream, handle: Handler) -> None:
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            request: h11.Request | None = None
            body = bytearray()
            limit = MAX_BODY_BYTES
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.DONE:
                        return
                    continue
                if isinstance(event, h11.Request):
                    request = event
                    control = request.target.startswith(b"/sim/")
                    limit = MAX_CONTROL_BODY_BYTES if control else MAX_BODY_BYTES
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        return
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
            assert request is not None
            answer = await handle(
                HttpRequest(
                    request.method.decode(),
                    request.target.decode(),
                    {k.decode().lower(): v.decode() for k, v in request.headers},
                    bytes(body),
                )
            )
            payload = answer.payload
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
            headers += list(answer.headers.items())
            response = h11.Response(status_code=answer.status, headers=headers)
            await stream.send_all(conn.send(response) or b"")
            await stream.send_all(conn.send(h11.Data(data=data)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
