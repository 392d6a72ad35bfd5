"""`gateway run` against the simulator, started wrong the ways people start it wrong.

Each failure ends in one line that names the cause and the next step; with
``--log-format json`` every log line is a JSON object a shipper can take.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import NOBODY, fill, small_tmpfs
from tests.kraken.stack import KrakenStack

GATEWAY = Path(sys.executable).parent / "gateway"


def run_to_failure(
    stack: KrakenStack, *args: str, key: str | None = None, secret: str | None = None
) -> tuple[str, float]:
    """Start ``gateway run`` and return its last stderr line once it has given up."""
    env = {
        **stack.env,
        "KRAKEN_API_KEY": key or stack.address["api_key"],
        "KRAKEN_API_SECRET": secret or stack.address["api_secret"],
    }
    started = time.monotonic()
    result = subprocess.run(
        [str(GATEWAY), "--log-level", "warning", "run", *args],
        env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1], time.monotonic() - started


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_wrong_websocket_address_names_the_refusal(stack: KrakenStack) -> None:
    rest = stack.address["rest_url"]
    line, _ = run_to_failure(
        stack, "--rest-url", rest, "--ws-url", rest.replace("http://", "ws://") + "/v2"
    )
    assert "could not subscribe to Kraken executions at ws://" in line
    assert "the server refused the websocket: HTTP 404" in line and "(check --ws-url)" in line


def test_wrong_credentials_are_named_at_once(stack: KrakenStack) -> None:
    urls = ("--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"])
    line, seconds = run_to_failure(stack, *urls, secret="d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==")
    assert "EAPI:Invalid signature (check KRAKEN_API_KEY and KRAKEN_API_SECRET)" in line
    assert seconds < 10, "an invalid signature is not retried"
    line, _ = run_to_failure(stack, *urls, key="not-the-key")
    assert "EAPI:Invalid key (check KRAKEN_API_KEY and KRAKEN_API_SECRET)" in line


def test_an_unreachable_rest_address_is_named(stack: KrakenStack) -> None:
    unreachable = f"http://127.0.0.1:{closed_port()}"
    line, _ = run_to_failure(stack, "--rest-url", unreachable, "--ws-url", stack.address["ws_url"])
    assert f"cannot reach {unreachable}" in line and "check --rest-url" in line


def test_an_unreachable_websocket_address_is_named(stack: KrakenStack) -> None:
    unreachable = f"ws://127.0.0.1:{closed_port()}/v2"
    rest = stack.address["rest_url"]
    line, _ = run_to_failure(stack, "--rest-url", rest, "--ws-url", unreachable)
    assert f"could not subscribe to Kraken executions at {unreachable}" in line
    assert "cannot connect: " in line and "Connection refused (check --ws-url)" in line


def test_json_logs_are_one_object_a_line(stack: KrakenStack) -> None:
    env = {
        **stack.env,
        "KRAKEN_API_KEY": stack.address["api_key"],
        "KRAKEN_API_SECRET": stack.address["api_secret"],
    }
    ready = stack.root / "gateway.ready"
    gateway = subprocess.Popen(
        [str(GATEWAY), "--log-format", "json", "run", "--rest-url", stack.address["rest_url"],
         "--ws-url", stack.address["ws_url"], "--ready-file", str(ready)],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert gateway.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        gateway.send_signal(signal.SIGTERM)
        _, stderr = gateway.communicate(timeout=30)
    finally:
        gateway.kill()
        gateway.communicate()
    assert gateway.returncode == 0
    entries = [json.loads(line) for line in stderr.splitlines()]
    assert len(entries) >= 3
    for entry in entries:
        assert set(entry) >= {"time", "level", "logger", "message"} and entry["time"].endswith("Z")
    assert any("shutting down" in entry["message"] for entry in entries)


def test_a_state_directory_another_user_made_is_refused_in_one_line(stack: KrakenStack) -> None:
    """Another user who made the state directory first (under a shared HFT_STATE_DIR)
    could hand the gateway a journal and snapshot of their making: strategy slots,
    owners, applied fills. It was taken as it was."""
    planted = stack.state_dir / "kraken"
    planted.mkdir(parents=True)
    os.chown(planted, NOBODY, NOBODY)
    os.chmod(planted, 0o777)
    urls = ("--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"])
    line, _ = run_to_failure(stack, *urls)
    assert f"state directory {planted} belongs to uid {NOBODY}, not to this user" in line, line
    assert "set HFT_STATE_DIR" in line and not any(planted.iterdir())
    planted.rmdir()
    planted.symlink_to(stack.root)  # a symlink, even to a directory of ours
    line, _ = run_to_failure(stack, *urls)
    assert f"state directory {planted} is a symlink" in line, line


def test_a_full_state_disk_is_said_in_one_line(stack: KrakenStack) -> None:
    with small_tmpfs(stack.state_dir, "size=256k") as state:
        fill(state)
        urls = ("--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"])
        line, _ = run_to_failure(stack, *urls)
    assert line.startswith("gateway run: journal ") and "No space left on device" in line, line


@pytest.mark.parametrize(
    ("variable", "what"),
    [
        ("HFT_SHM_DIR", "the store's directory /proc/hft-none"),
        ("HFT_STATE_DIR", "state directory /proc/hft-none/kraken"),
        ("HFT_RUN_DIR", "run directory /proc/hft-none"),
    ],
)
def test_a_directory_that_cannot_be_made_is_named_in_one_line(
    stack: KrakenStack, variable: str, what: str
) -> None:
    """Each was a traceback (FileNotFoundError, or PermissionError for a user who may
    not write the parent)."""
    stack.env[variable] = "/proc/hft-none"  # nothing can be made in /proc
    urls = ("--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"])
    line, _ = run_to_failure(stack, *urls)
    assert f"{what} cannot be made: No such file or directory (set {variable})" in line, line


def test_a_metrics_port_out_of_range_or_taken_is_named_in_one_line(stack: KrakenStack) -> None:
    """70000 was wrapped by the resolver and served on port 4464 without a word; a port
    taken was a traceback once the gateway had started."""
    urls = ("--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"])
    line, _ = run_to_failure(stack, *urls, "--metrics-port", "70000")
    assert "metrics_port must be 0..65535 (0: any free one), not 70000" in line, line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line, _ = run_to_failure(stack, *urls, "--metrics-port", str(port))
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in line, line
