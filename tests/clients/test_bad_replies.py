"""A line from the gateway's socket that is not a reply is one typed error, in every client.

The gateway never sends one; a bug, or a process that is not our gateway, could. A line
that was not JSON came out as a json error, and an error that was not a map as an
AssertionError (or, under ``python -O``, an AttributeError).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from clients.command import KRAKEN_STRATEGY_BALANCE_CMD, IPCCommandSystem
from clients.errors import CommandRefusedError, GatewayUnavailableError

SERVER = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(4); print("ready", flush=True)
for line in sys.argv[2:]:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(line.encode("latin-1") + b"\\n")
    c.close()
"""

NOT_REPLIES = [
    "not json at all",
    '{"ok": false, "error": "a string"}',
    '{"ok": false, "error": [1, 2]}',
    '["ok", true]',
    '{"no": "ok"}',
    "\xff\xfe",  # not UTF-8
]


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    yield directory


def _serve(run_dir: Path, *lines: str) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(run_dir / "kraken_gateway.sock"), *lines],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    return server


def _system(run_dir: Path) -> IPCCommandSystem:
    system = IPCCommandSystem("tester", run_dir=run_dir, timeout_s=5)
    system.start()
    return system


STATUS = {"cmd": "status"}


def test_the_blocking_client_names_a_line_that_is_not_a_reply(run_dir: Path) -> None:
    server = _serve(run_dir, *NOT_REPLIES, '{"ok": false, "error": {"code": "X", "message": "m"}}')
    system = _system(run_dir)
    try:
        for _ in NOT_REPLIES:
            with pytest.raises(GatewayUnavailableError, match="not a reply"):
                system.send_command_blocking("kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, STATUS)
            system.close()  # the server answers one line a connection
        with pytest.raises(CommandRefusedError):  # and a real refusal is still one
            system.send_command_blocking("kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, STATUS)
    finally:
        system.close()
        server.kill()
        server.communicate(timeout=10)


@pytest.mark.parametrize("library", ["trio", "asyncio"])
def test_the_async_clients_name_a_line_that_is_not_a_reply(run_dir: Path, library: str) -> None:
    server = _serve(run_dir, *NOT_REPLIES)

    async def ask_each() -> None:
        system = _system(run_dir)
        for _ in NOT_REPLIES:
            with pytest.raises(GatewayUnavailableError, match="not a reply"):
                await system.send_command("kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, STATUS)
            await system.aclose()

    try:
        if library == "trio":
            trio.run(ask_each)
        else:
            asyncio.run(ask_each())
    finally:
        server.kill()
        server.communicate(timeout=10)
