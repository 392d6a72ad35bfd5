"""Ready files in a directory other users may write, as ``--ready-file /tmp/...`` puts them.

Both were written at a fixed name beside the file and renamed: the gateway's at
``.<name>.tmp``, the simulator's at ``<stem>.tmp``. Another user could plant a
symlink there, and the process wrote through it, over whatever it pointed to (as
root here: any file; with ``fs.protected_symlinks`` the write fails and the start
with it). Real processes; the other user is ``nobody``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NOBODY, as_user
from tests.kraken.stack import KrakenStack


@pytest.fixture
def shared(open_dir: Path) -> Path:
    """A sticky directory every user may write, as /tmp is."""
    path = open_dir / "tmp"
    path.mkdir()
    os.chmod(path, 0o1777)
    return path


@pytest.fixture
def precious(open_dir: Path) -> Path:
    """A file of the gateway's user that a planted symlink points at."""
    path = open_dir / "precious"
    path.write_text("precious\n")
    return path


@pytest.fixture
def stack(open_dir: Path) -> Iterator[KrakenStack]:
    run_dir = Path(tempfile.mkdtemp(prefix="hft-"))
    stack = KrakenStack(open_dir / "stack", run_dir)
    yield stack
    stack.kill()
    shutil.rmtree(run_dir, ignore_errors=True)


def _plant_symlink(link: Path, target: Path) -> None:
    subprocess.run([*as_user(NOBODY), "ln", "-s", str(target), str(link)], check=True)


def test_the_gateways_ready_file_writes_through_no_planted_symlink(
    stack: KrakenStack, shared: Path, precious: Path
) -> None:
    stack.gateway_ready = shared / "gateway.ready"
    _plant_symlink(shared / ".gateway.ready.tmp", precious)
    stack.start_sim()
    gateway = stack.start_gateway()
    assert json.loads(stack.gateway_ready.read_text())["pid"] == gateway.pid
    assert not stack.gateway_ready.is_symlink()
    assert precious.read_text() == "precious\n"


def test_the_simulators_ready_file_is_private_and_writes_through_no_planted_symlink(
    stack: KrakenStack, shared: Path, precious: Path
) -> None:
    stack.sim_ready = shared / "sim.json"
    _plant_symlink(shared / "sim.tmp", precious)
    address = stack.start_sim()
    assert json.loads(stack.sim_ready.read_text())["api_secret"] == address["api_secret"]
    assert stat.S_IMODE(stack.sim_ready.stat().st_mode) == 0o600  # it holds the secret
    assert precious.read_text() == "precious\n"
