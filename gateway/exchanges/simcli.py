"""What every simulator's ``gateway sim`` shares: the common options read, served until a signal."""

from __future__ import annotations

import argparse
import dataclasses
import decimal
import json
import signal
import ssl
from collections.abc import Awaitable, Callable
from decimal import Decimal
from functools import partial
from pathlib import Path

import trio
from trio_websocket import WebSocketRequest, serve_websocket

from gateway.exchanges.simhttp import Handler, serve_http_connection
from gateway.files import write_atomically

# A simulator's run function: serves until cancelled; ``started(address)`` once listening.
Serve = Callable[..., Awaitable[None]]


def starting_balances(args: argparse.Namespace) -> dict[str, Decimal] | None:
    """``--balances`` as a mapping, or None for the simulator's default account.

    Raises:
        SystemExit: not a JSON object of numbers, in one line.
    """
    if not args.balances:
        return None
    try:
        return {k: Decimal(str(v)) for k, v in json.loads(args.balances).items()}
    except (ValueError, ArithmeticError, AttributeError) as exc:
        raise SystemExit(f"gateway sim: --balances must be a JSON object: {exc}") from exc


def keys(args: argparse.Namespace) -> dict[str, str]:
    """The key and secret the simulator accepts, where given (else it makes new ones)."""
    given = {"api_key": args.api_key, "api_secret": args.api_secret}
    return {name: value for name, value in given.items() if value}


def check_latency(args: argparse.Namespace) -> tuple[float, float]:
    """``--latency-ms`` and ``--jitter-ms`` in seconds. Raises SystemExit if negative."""
    if args.latency_ms < 0 or args.jitter_ms < 0:
        raise SystemExit("gateway sim: --latency-ms and --jitter-ms must not be negative")
    return args.latency_ms / 1000, args.jitter_ms / 1000


@dataclasses.dataclass(frozen=True)
class SimAddress:
    """Where a simulator listens and the key it accepts (``--ready-file`` holds these)."""

    rest_url: str
    ws_url: str
    api_key: str
    api_secret: str


async def serve_rest_and_ws(
    nursery: trio.Nursery,
    rest: Handler,
    ws: Callable[[WebSocketRequest], Awaitable[None]],
    *,
    host: str,
    port: int,
    ws_port: int,
    ws_path: str,
    api_key: str,
    api_secret: str,
    ready_file: Path | None,
    ws_tls: Path | None = None,
) -> SimAddress:
    """Listen for REST and websocket clients in ``nursery``; return once both listen.

    ``ready_file`` (if given) gets the address as JSON, written atomically.
    ``ws_tls`` (a PEM file with the certificate chain and its key) serves the
    websocket as ``wss://``, as the real exchanges do.
    """
    ssl_context = None
    if ws_tls is not None:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(ws_tls)
    listeners = await nursery.start(
        partial(trio.serve_tcp, host=host), partial(serve_http_connection, handle=rest), port
    )
    rest_port = listeners[0].socket.getsockname()[1]
    ws_server = await nursery.start(
        lambda task_status: serve_websocket(
            ws, host, ws_port, ssl_context=ssl_context, task_status=task_status
        )
    )
    scheme = "ws" if ssl_context is None else "wss"
    address = SimAddress(
        f"http://{host}:{rest_port}",
        f"{scheme}://{host}:{ws_server.port}{ws_path}",
        api_key,
        api_secret,
    )
    if ready_file is not None:
        write_ready_file(ready_file, address)
    return address


def write_ready_file(path: Path, address: object) -> None:
    """The simulator's address (a dataclass) as JSON, written atomically; private to its
    user, as it holds the simulator's API secret."""
    facts = dataclasses.asdict(address)  # type: ignore[call-overload]
    write_atomically(path, json.dumps(facts), 0o600)


def serve_until_signalled(serve: Serve, simulator: object, args: argparse.Namespace) -> int:
    """Run ``serve(simulator, ...)`` until SIGINT or SIGTERM; print its address once up."""

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                address = await nursery.start(
                    partial(serve, host=args.host, port=args.port, ws_port=args.ws_port,
                            ready_file=args.ready_file, ws_tls=args.ws_tls),
                    simulator,
                )  # fmt: skip
                print(json.dumps(dataclasses.asdict(address)), flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    # An exchange books exactly: balances past the default context's 28 digits are not
    # rounded here either (trio's tasks inherit this context).
    decimal.setcontext(decimal.Context(prec=200, traps=[decimal.InvalidOperation]))
    trio.run(main)
    return 0
