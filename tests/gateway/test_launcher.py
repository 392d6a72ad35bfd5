"""The shared launcher: a child that fails to start is reported with its own words."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from gateway.launcher import LaunchError, LocalStack
from gateway.memory import return_large_buffers


def test_a_simulator_that_exits_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="hft-"))
    stack = LocalStack(tmp_path, run_dir)
    try:
        with pytest.raises(LaunchError) as failure:
            stack.start_sim("--latency-ms", "-1")
    finally:
        stack.kill()
        shutil.rmtree(run_dir, ignore_errors=True)
    assert "the simulator exited" in str(failure.value)
    assert "--latency-ms and --jitter-ms must not be negative" in str(failure.value)


def test_a_gateway_refused_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="hft-"))
    stack = LocalStack(tmp_path, run_dir)
    try:
        stack.start_sim()
        stack.address["api_secret"] = "not base64!!"
        with pytest.raises(LaunchError) as failure:
            stack.start_gateway()
    finally:
        stack.kill()
        shutil.rmtree(run_dir, ignore_errors=True)
    assert "the gateway exited (1)" in str(failure.value)
    assert "KRAKEN_API_SECRET" in str(failure.value)


def test_large_buffers_are_returned_on_glibc() -> None:
    # Debian's python links glibc: the thresholds must be pinned there (gateway/memory.py).
    assert return_large_buffers() is True
