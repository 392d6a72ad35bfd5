"""Fixtures shared by every test package."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# `make test` replays the same examples every run, so a change is judged on
# known inputs and CI cannot fail on a draw no one can repeat; `make fuzz`
# (HFT_FUZZ_EXAMPLES set) draws new ones, and what it finds becomes a test.
settings.register_profile("make-test", derandomize=True)
settings.register_profile("fuzz", derandomize=False)
settings.load_profile("fuzz" if "HFT_FUZZ_EXAMPLES" in os.environ else "make-test")

STORE_WORKER = Path(__file__).parent / "mmapstore" / "store_worker.py"
NOBODY = 65534  # the other local user of the security cases (setpriv, as root)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="hft-open-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def small_tmpfs(mount: Path, options: str = "size=1m,mode=1777") -> Iterator[Path]:
    """A small tmpfs at ``mount`` for the body (mounting takes root, as the tests run)."""
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


@pytest.fixture
def small_shm(open_dir: Path) -> Iterator[Path]:
    """A tmpfs of 1 MiB that every user may write, as /dev/shm is."""
    with small_tmpfs(open_dir / "shm") as mount:
        yield mount


def as_user(uid: int | None) -> list[str]:
    """The command prefix that runs a program as ``uid`` (nothing for None)."""
    if uid is None:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def fill_as_another_user(directory: Path) -> None:
    """Another local user takes every byte left there, as anyone may in /dev/shm."""
    fill(directory, NOBODY)
    assert (directory / "filler").stat().st_uid == NOBODY


def fill(directory: Path, uid: int | None = None) -> None:
    """Every byte left in ``directory``'s file system taken (by ``uid``, when given)."""
    subprocess.run(
        [*as_user(uid), "dd", "if=/dev/zero", f"of={directory / 'filler'}", "bs=4k"],
        capture_output=True, check=False,  # dd stops at "No space left on device"
    )  # fmt: skip
    assert os.statvfs(directory).f_bavail == 0, "the file system still has room"


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    """Where a test's Kraken store lives: its own directory, never /dev/shm."""
    return tmp_path / "hft.kraken.balance"


class Workers:
    """Starts store worker processes and kills any still running at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, role: str, *args: str | Path, uid: int | None = None) -> subprocess.Popen[str]:
        """Start a worker, as ``uid`` when given (setpriv execs it: same pid)."""
        process = subprocess.Popen(
            [*as_user(uid), sys.executable, str(STORE_WORKER), role, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(process)
        return process

    def start_ready(
        self, role: str, *args: str | Path, uid: int | None = None
    ) -> subprocess.Popen[str]:
        """Start a worker and wait for its READY line."""
        process = self.start(role, *args, uid=uid)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY"):
            process.kill()
            _, err = process.communicate(timeout=10)
            raise AssertionError(f"{role} worker did not start: {line!r} {err}")
        return process


@pytest.fixture
def workers() -> Iterator[Workers]:
    pool = Workers()
    yield pool
    for process in pool.started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
