"""Sending balance commands to a gateway over its Unix socket: the seed's IPC names.

``send_command`` works from Trio and from asyncio (it asks sniffio which is
running); ``send_command_blocking`` serves scripts and the CLI. Requests are
newline-delimited JSON with exact decimal strings. Every request carries a
``request_id`` (one is made up if the payload has none), so a request whose
connection broke is resent on a new connection without risk of applying it
twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Final

import sniffio
import trio

from clients.errors import (
    CommandRefusedError,
    CommandTimeoutError,
    GatewayUnavailableError,
    GatewayUntrustedError,
)
from mmapstore import trusted_writers

STRATEGY_BALANCE_CMD: Final = "strategy_balance"  # the command type every gateway takes
KRAKEN_STRATEGY_BALANCE_CMD: Final = "kraken_strategy_balance"  # the seed's, for Kraken's
# Which command types each service takes.
SERVICE_COMMANDS: Final = {
    "kraken_gateway": frozenset({STRATEGY_BALANCE_CMD, KRAKEN_STRATEGY_BALANCE_CMD}),
    "binance_gateway": frozenset({STRATEGY_BALANCE_CMD}),
}
BALANCE_COMMANDS: Final = frozenset({"allocate", "release", "adjust"})
DEFAULT_TIMEOUT_S: Final = 5.0
MAX_REPLY_BYTES: Final = 1 << 20

Payload = dict[str, object]


_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid


def trusted_owner(directory: Path) -> int | None:
    """The uid owning the socket's directory, if a client may trust it; None if it is absent.

    Trusted: not a symlink, not writable by group or others, owned by this user,
    by root, or by ``$HFT_GATEWAY_UID`` (a gateway running as a user of its own).

    Raises:
        GatewayUntrustedError: anything else (another user could stand in for the gateway).
    """
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return None
    allowed = trusted_writers()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise GatewayUntrustedError(f"{directory} is not a directory of the gateway's (a symlink?)")
    if info.st_uid not in allowed or info.st_mode & 0o022:
        raise GatewayUntrustedError(
            f"{directory} is owned by uid {info.st_uid} with mode "
            f"{stat.S_IMODE(info.st_mode):04o}: not the gateway's; nothing was sent "
            "(set HFT_GATEWAY_UID if the gateway runs as another user)"
        )
    return info.st_uid


def check_peer(sock: socket.socket | None, owner: int | None) -> None:
    """The server's uid (``SO_PEERCRED``) must be the directory's owner or root.

    Raises:
        GatewayUntrustedError: another user answers on the gateway's socket.
    """
    if sock is None or owner is None:
        return
    _, uid, _ = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    if uid not in (owner, 0):
        raise GatewayUntrustedError(
            f"the process on the gateway's socket runs as uid {uid}, not {owner}; nothing was sent"
        )


def default_run_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$HFT_RUN_DIR``, else ``$XDG_RUNTIME_DIR/hft``, else ``/tmp/hft-<uid>``."""
    env = os.environ if env is None else env
    if env.get("HFT_RUN_DIR"):
        return Path(env["HFT_RUN_DIR"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "hft"
    return Path(f"/tmp/hft-{os.getuid()}")


def socket_path(service: str, run_dir: Path | str | None = None) -> Path:
    return Path(run_dir if run_dir is not None else default_run_dir()) / f"{service}.sock"


def _wire_amount(value: int | Decimal | str | float) -> int | str:
    if isinstance(value, bool):
        raise TypeError("amount must be a number, not a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        # A float by its shortest repr: 0.1 is "0.1", never 0.1000000000000000055...
        return repr(value)
    if isinstance(value, Decimal | str):
        return str(value)
    raise TypeError(f"amount must be int, Decimal, str or float, not {type(value).__name__}")


def strategy_balance(
    *,
    strategy: str,
    cmd: str,
    currency: str,
    index: int,
    amount: int | Decimal | str | float | None = None,
    delta: int | Decimal | str | float | None = None,
    request_id: str | None = None,
    ref_id: str | None = None,
) -> Payload:
    """Build the seed's payload; the amount comes as ``amount=`` or ``delta=`` (not both).

    ``ref_id`` (adjust only) names the exchange's transfer the adjust is the
    notice of, so the gateway never counts it twice (docs/protocol.md).

    Raises:
        ValueError: an unknown cmd, neither or both of amount and delta, or a
            ref_id on another command than adjust.
        TypeError: an amount of another type.
    """
    if cmd not in BALANCE_COMMANDS:
        raise ValueError(f"cmd must be one of {sorted(BALANCE_COMMANDS)}, not {cmd!r}")
    if (amount is None) == (delta is None):
        raise ValueError("give the amount as amount= or delta=, exactly one of them")
    value = amount if amount is not None else delta
    assert value is not None
    payload: Payload = {
        "strategy": strategy,
        "cmd": cmd,
        "currency": currency,
        "amount": _wire_amount(value),
        "index": index,
    }
    if request_id is not None:
        payload["request_id"] = request_id
    if ref_id is not None:
        if cmd != "adjust":
            raise ValueError("ref_id names a transfer: only adjust takes it")
        payload["ref_id"] = ref_id
    return payload


kraken_strategy_balance = strategy_balance  # the seed's name


def _check_reply(line: bytes) -> Payload:
    """The reply a line holds; GatewayUnavailableError for a line that is not one (the
    gateway never sends such a line: a bug, or not our gateway), never a JSON error."""
    try:
        reply = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        reply = None
    error = (reply.get("error") or {}) if isinstance(reply, dict) else None
    if not isinstance(reply, dict) or "ok" not in reply or not isinstance(error, dict):
        shown = line[:200].decode("utf-8", "replace")
        raise GatewayUnavailableError(f"the gateway sent something that is not a reply: {shown}")
    if not reply["ok"]:
        raise CommandRefusedError(
            str(error.get("code", "UNKNOWN")), str(error.get("message", "")), reply
        )
    return reply


@dataclass
class _Connection:
    """One open connection, for one event loop (or for blocking use)."""

    reader: trio.SocketStream | asyncio.StreamReader | socket.socket
    writer: asyncio.StreamWriter | None
    lock: trio.Lock | asyncio.Lock | None
    buffer: bytearray


class IPCCommandSystem:
    """A strategy's link to gateways' command sockets.

    One connection per service and event loop is kept and reused; a broken
    one is replaced, and the request resent (safe: it carries a request_id).
    """

    def __init__(
        self,
        name: str,
        *,
        run_dir: Path | str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._run_dir = run_dir
        self._started = False
        self._connections: dict[tuple[str, object], _Connection] = {}
        self._gateway_uid: int | None = None  # the socket directory's owner, once checked

    def start(self) -> None:
        """Resolve where the sockets live. Connections open on first use."""
        if self._run_dir is None:
            self._run_dir = default_run_dir()
        self._started = True

    def _prepare(
        self, service: str, command_type: str, payload: Mapping[str, object]
    ) -> tuple[str, bytes]:
        """The request's id (the payload's, or a new one) and its bytes."""
        if not self._started:
            raise RuntimeError("call start() before send_command()")
        allowed = SERVICE_COMMANDS.get(service)
        if allowed is not None and command_type not in allowed:
            raise ValueError(f"{service} does not take {command_type!r} commands")
        body = dict(payload)
        request_id = body.setdefault("request_id", f"{self.name}-{uuid.uuid4().hex}")
        return str(request_id), json.dumps(body, separators=(",", ":")).encode() + b"\n"

    def _path(self, service: str) -> Path:
        """The service's socket, once its directory is known to be the gateway's."""
        path = socket_path(service, self._run_dir)
        self._gateway_uid = trusted_owner(path.parent)
        return path

    def _check_peer(self, sock: socket.socket | None) -> None:
        """Before a byte is sent: the listening process runs as the directory's owner."""
        check_peer(sock, self._gateway_uid)

    # -- async ------------------------------------------------------------------------

    async def send_command(
        self,
        service: str,
        command_type: str,
        payload: Mapping[str, object],
        *,
        timeout_s: float | None = None,
    ) -> Payload:
        """Send one command and return the gateway's reply (``ok`` is true).

        Works under Trio and asyncio.

        Raises:
            GatewayUnavailableError: the gateway is not running or the connection failed twice.
            CommandRefusedError: the gateway refused it (``code``, ``message``).
            CommandTimeoutError: no reply within the timeout.
        """
        request_id, request = self._prepare(service, command_type, payload)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        library = sniffio.current_async_library()
        if library == "trio":
            with trio.move_on_after(timeout) as scope:
                return await self._trio_round_trip(service, request_id, request)
            self._drop(service, trio.lowlevel.current_root_task())
            assert scope.cancelled_caught
        elif library == "asyncio":
            try:
                return await asyncio.wait_for(
                    self._asyncio_round_trip(service, request_id, request), timeout
                )
            except TimeoutError:
                self._drop(service, asyncio.get_running_loop())
        else:
            raise RuntimeError(f"send_command does not support {library}")
        raise _timed_out(service, timeout, request_id)

    async def _trio_round_trip(self, service: str, request_id: str, request: bytes) -> Payload:
        loop_key = trio.lowlevel.current_root_task()
        for attempt in (1, 2):
            connection = self._connections.get((service, loop_key))
            fresh = connection is None
            try:
                if connection is None:
                    stream = await trio.open_unix_socket(str(self._path(service)))
                    try:
                        self._check_peer(stream.socket)  # type: ignore[arg-type]
                    except GatewayUntrustedError:
                        await stream.aclose()
                        raise
                    connection = _Connection(stream, None, trio.Lock(), bytearray())
                    self._connections[(service, loop_key)] = connection
                assert isinstance(connection.reader, trio.SocketStream)
                assert isinstance(connection.lock, trio.Lock)
                async with connection.lock:
                    await connection.reader.send_all(request)
                    line = await self._trio_read_line(connection)
                return _check_reply(line)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, EOFError) as exc:
                self._drop(service, loop_key)
                if fresh or attempt == 2:
                    raise _unavailable(service, self._path(service), exc, request_id) from exc
        raise AssertionError("unreachable")

    @staticmethod
    async def _trio_read_line(connection: _Connection) -> bytes:
        assert isinstance(connection.reader, trio.SocketStream)
        while (line := _take_line(connection.buffer)) is None:
            _extend(connection.buffer, await connection.reader.receive_some(65536))
        return line

    async def _asyncio_round_trip(self, service: str, request_id: str, request: bytes) -> Payload:
        loop_key = asyncio.get_running_loop()
        for attempt in (1, 2):
            connection = self._connections.get((service, loop_key))
            fresh = connection is None
            try:
                if connection is None:
                    reader, writer = await asyncio.open_unix_connection(
                        str(self._path(service)), limit=MAX_REPLY_BYTES
                    )
                    try:
                        self._check_peer(writer.get_extra_info("socket"))
                    except GatewayUntrustedError:
                        writer.close()
                        raise
                    connection = _Connection(reader, writer, asyncio.Lock(), bytearray())
                    self._connections[(service, loop_key)] = connection
                assert isinstance(connection.reader, asyncio.StreamReader)
                assert isinstance(connection.lock, asyncio.Lock)
                assert connection.writer is not None
                async with connection.lock:
                    connection.writer.write(request)
                    await connection.writer.drain()
                    line = await connection.reader.readline()
                if not line.endswith(b"\n"):
                    raise EOFError("the gateway closed the connection")
                return _check_reply(line)
            except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
                self._drop(service, loop_key)
                if fresh or attempt == 2:
                    raise _unavailable(service, self._path(service), exc, request_id) from exc
        raise AssertionError("unreachable")

    # -- blocking -----------------------------------------------------------------------

    def send_command_blocking(
        self,
        service: str,
        command_type: str,
        payload: Mapping[str, object],
        *,
        timeout_s: float | None = None,
    ) -> Payload:
        """``send_command`` for code without an event loop. Same errors."""
        request_id, request = self._prepare(service, command_type, payload)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        for attempt in (1, 2):
            connection = self._connections.get((service, None))
            fresh = connection is None
            try:
                if connection is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(timeout)
                    try:
                        sock.connect(str(self._path(service)))
                        self._check_peer(sock)
                    except (OSError, GatewayUntrustedError):
                        sock.close()
                        raise
                    connection = _Connection(sock, None, None, bytearray())
                    self._connections[(service, None)] = connection
                assert isinstance(connection.reader, socket.socket)
                connection.reader.settimeout(timeout)
                connection.reader.sendall(request)
                return _check_reply(self._blocking_read_line(connection))
            except TimeoutError as exc:
                self._drop(service, None)
                raise _timed_out(service, timeout, request_id) from exc
            except (OSError, EOFError) as exc:
                self._drop(service, None)
                if fresh or attempt == 2:
                    raise _unavailable(service, self._path(service), exc, request_id) from exc
        raise AssertionError("unreachable")

    @staticmethod
    def _blocking_read_line(connection: _Connection) -> bytes:
        assert isinstance(connection.reader, socket.socket)
        while (line := _take_line(connection.buffer)) is None:
            _extend(connection.buffer, connection.reader.recv(65536))
        return line

    # -- lifecycle ---------------------------------------------------------------------

    def _drop(self, service: str, loop_key: object) -> None:
        connection = self._connections.pop((service, loop_key), None)
        if connection is None:
            return
        if isinstance(connection.reader, socket.socket):
            connection.reader.close()
        elif connection.writer is not None:
            connection.writer.close()
        elif isinstance(connection.reader, trio.SocketStream):
            # Closing a Trio stream needs its loop; dropping the socket is enough here.
            connection.reader.socket.close()

    async def aclose(self) -> None:
        """Close the connections of the running event loop (Trio or asyncio), gracefully."""
        library = sniffio.current_async_library()
        loop_key: object = (
            trio.lowlevel.current_root_task() if library == "trio" else asyncio.get_running_loop()
        )
        for service, key in list(self._connections):
            if key is not loop_key:
                continue
            connection = self._connections.pop((service, key))
            if isinstance(connection.reader, trio.SocketStream):
                await connection.reader.aclose()
            elif connection.writer is not None:
                connection.writer.close()
                await connection.writer.wait_closed()

    def close(self) -> None:
        """Close every connection this system holds."""
        for service, loop_key in list(self._connections):
            self._drop(service, loop_key)


def _take_line(buffer: bytearray) -> bytes | None:
    """Remove and return the first complete line of ``buffer``, without its newline."""
    newline = buffer.find(b"\n")
    if newline < 0:
        return None
    line = bytes(buffer[:newline])
    del buffer[: newline + 1]
    return line


def _extend(buffer: bytearray, data: bytes) -> None:
    """Add received bytes; EOFError when the gateway closed or a reply grows absurd."""
    if not data:
        raise EOFError("the gateway closed the connection")
    buffer += data
    if len(buffer) > MAX_REPLY_BYTES:
        raise EOFError("reply too large")


def _timed_out(service: str, timeout: float, request_id: str) -> CommandTimeoutError:
    error = CommandTimeoutError(
        f"{service} did not answer within {timeout} s; the command may have been applied: "
        f"resend it with request_id {request_id!r} to find out"
    )
    error.request_id = request_id
    return error


def _unavailable(
    service: str, path: Path, exc: BaseException, request_id: str
) -> GatewayUnavailableError:
    """Nobody listening (nothing sent), or a connection lost after sending (maybe applied)."""
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return GatewayUnavailableError(
            f"{service} is not running (no one listens on {path}); start the gateway first"
        )
    error = GatewayUnavailableError(
        f"lost the connection to {service} at {path} ({exc}); the command may have been "
        f"applied: resend it with request_id {request_id!r} to find out"
    )
    error.request_id = request_id
    return error
