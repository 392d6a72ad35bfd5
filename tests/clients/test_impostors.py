"""Commands never go to an impostor (issue 11, finding 8).

Another user who creates the default run directory first, or a symlink there,
must neither break the gateway with a traceback nor receive a strategy's command.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from clients.command import KRAKEN_STRATEGY_BALANCE_CMD, IPCCommandSystem, check_peer
from clients.errors import GatewayUntrustedError
from gateway.errors import ConfigError
from gateway.files import make_own_dir
from tests.conftest import NOBODY

IMPOSTOR = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); data = c.recv(4096)
c.sendall(b'{"ok": true}\\n'); print("got", len(data), flush=True)
"""


def _impostor(sock: Path) -> subprocess.Popen[str]:
    """A listener running as the other user; it prints ready, then what reached it."""
    impostor = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", IMPOSTOR, str(sock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert impostor.stdout is not None and impostor.stdout.readline().strip() == "ready"
    return impostor


def _planted_run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "hft-run"
    run_dir.mkdir(mode=0o777)
    os.chmod(run_dir, 0o777)
    os.chown(run_dir, NOBODY, NOBODY)
    return run_dir


def test_gateway_refuses_a_run_directory_another_user_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="belongs to uid 65534"):
        make_own_dir(_planted_run_dir(tmp_path), 0o700, "run directory", "HFT_RUN_DIR")


def test_gateway_refuses_a_symlinked_run_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="symlink"):
        make_own_dir(tmp_path / "link", 0o700, "run directory", "HFT_RUN_DIR")


def test_client_sends_nothing_to_a_socket_in_another_users_directory(open_dir: Path) -> None:
    run_dir = _planted_run_dir(open_dir)
    impostor = _impostor(run_dir / "kraken_gateway.sock")  # really another user's process
    try:
        system = IPCCommandSystem("victim", run_dir=run_dir)
        system.start()
        with pytest.raises(GatewayUntrustedError, match="owned by uid 65534"):
            system.send_command_blocking(
                "kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, {"cmd": "status"}
            )
        system.close()
    finally:
        impostor.kill()
        out, _ = impostor.communicate(timeout=10)
    assert "got" not in out  # not one byte reached it


def test_client_refuses_a_server_running_as_another_user(open_dir: Path) -> None:
    # A directory the client trusts (the impostor got its socket in some other way, e.g.
    # a gateway user of HFT_GATEWAY_UID gone rogue): SO_PEERCRED still tells.
    os.chmod(open_dir, 0o777)
    impostor = _impostor(open_dir / "kraken_gateway.sock")
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(open_dir / "kraken_gateway.sock"))
            with pytest.raises(GatewayUntrustedError, match="runs as uid 65534"):
                check_peer(sock, os.geteuid())
    finally:
        impostor.kill()
        impostor.communicate(timeout=10)
