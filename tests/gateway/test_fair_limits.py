"""Issue 11 finding 11: no client can lock the others out of the command socket.

Real processes over the real socket: hogs that open every connection they can
and sit idle, and one that trickles a request a byte at a time, against a
gateway process with small limits. A well-behaved client in a process of its
own must still be answered at once.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import KRAKEN_STRATEGY_BALANCE_CMD, IPCCommandSystem
from tests.gateway.conftest import GatewayProcess

MAX_CONNECTIONS = 8
PER_PEER = 4
FRAME_DEADLINE_S = 0.5

# Opens connections until refused, keeps them open, prints how many it holds.
HOG = """
import json, socket, sys, time
held, refused = [], None
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.settimeout(0.2)
    try:
        reply = s.recv(4096)
    except TimeoutError:
        held.append(s)  # admitted: nothing said
        continue
    refused = json.loads(reply)["error"]["code"]
    s.close()
print(json.dumps({"held": len(held), "refused": refused}), flush=True)
time.sleep(60)
"""


@pytest.fixture
def limited_gateway(gateway_process: GatewayProcess, tmp_path: Path) -> Iterator[GatewayProcess]:
    config = tmp_path / "limits.toml"
    config.write_text(
        f"max_connections = {MAX_CONNECTIONS}\n"
        f"max_connections_per_peer = {PER_PEER}\n"
        f"frame_deadline_s = {FRAME_DEADLINE_S}\n"
    )
    gateway_process.start("--config", str(config))
    yield gateway_process


def _hog(gateway: GatewayProcess, attempts: int) -> tuple[subprocess.Popen[str], dict[str, object]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOG, str(gateway.socket), str(attempts)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def _status_ok(gateway: GatewayProcess) -> bool:
    system = IPCCommandSystem("fair", run_dir=gateway.run_dir, timeout_s=2)
    system.start()
    try:
        reply = system.send_command_blocking(
            "kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, {"cmd": "status"}
        )
    finally:
        system.close()
    return reply["ok"] is True


def test_idle_hogs_cannot_lock_out_a_client(limited_gateway: GatewayProcess) -> None:
    hogs = []
    try:
        for _ in range(3):  # 3 x 4 idle connections > 8 places
            process, held = _hog(limited_gateway, attempts=PER_PEER + 2)
            hogs.append(process)
            # Each process gets its share and no more.
            assert held == {"held": PER_PEER, "refused": "TOO_MANY_CONNECTIONS"}
        started = time.monotonic()
        assert _status_ok(limited_gateway)  # admitted by closing an idle hog connection
        assert time.monotonic() - started < 1.5
    finally:
        for process in hogs:
            process.kill()
            process.wait()
            assert process.stdout is not None
            process.stdout.close()


def test_a_trickled_request_is_cut_at_the_frame_deadline(limited_gateway: GatewayProcess) -> None:
    slow = socket.socket(socket.AF_UNIX)
    slow.connect(str(limited_gateway.socket))
    request = json.dumps({"cmd": "status"}).encode()
    started = time.monotonic()
    closed_after = None
    for byte in request * 10:  # never a newline
        try:
            slow.send(bytes([byte]))
        except OSError:
            closed_after = time.monotonic() - started
            break
        time.sleep(0.05)
    slow.close()
    assert closed_after is not None, "the trickle was never cut off"
    assert FRAME_DEADLINE_S <= closed_after < FRAME_DEADLINE_S + 1.5
    assert _status_ok(limited_gateway)


def test_a_complete_request_waits_the_idle_timeout_not_the_frame_deadline(
    limited_gateway: GatewayProcess,
) -> None:
    """Between requests, a connection may be quiet: only a half-sent one is timed."""
    quiet = socket.socket(socket.AF_UNIX)
    quiet.connect(str(limited_gateway.socket))
    quiet.sendall(b'{"cmd": "status"}\n')
    quiet.settimeout(5)
    assert b'"ok": true' in quiet.recv(65536).replace(b'"ok":true', b'"ok": true')
    time.sleep(FRAME_DEADLINE_S * 3)
    quiet.sendall(b'{"cmd": "status"}\n')
    assert quiet.recv(65536)
    quiet.close()
