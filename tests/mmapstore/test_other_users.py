"""Files planted by other local users are refused, never adopted (issue 11, findings 6 and 7).

The planted files belong to another uid (``nobody``); making them takes root (as
the tests and CI run here), as an attacker's own files would be theirs.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from mmapstore import StoreReader, StoreUnsafeError, StoreWriter
from mmapstore._paths import lock_path
from tests.conftest import NOBODY, Workers, as_user

# The gateway's user in the cases where it must not be root, who may remove anyone's file.
GATEWAY_USER = 1234


def _planted_store(path: Path) -> None:
    """A valid store, then handed to another user and opened to everyone."""
    writer = StoreWriter.open(path, exchange="kraken")
    writer.close()
    lock_path(path).unlink()
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, 0o666)


def test_a_store_file_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "hft.kraken.balance"
    _planted_store(store)
    with pytest.raises(StoreUnsafeError, match="owned by uid 65534 with mode 0666"):
        StoreWriter.open(store, exchange="kraken")
    assert os.stat(store).st_uid == NOBODY  # refused, not rewritten


def test_a_store_file_others_may_write_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "hft.kraken.balance"
    StoreWriter.open(store, exchange="kraken").close()
    os.chmod(store, 0o646)
    with pytest.raises(StoreUnsafeError, match="mode 0646"):
        StoreWriter.open(store, exchange="kraken")


def test_a_symlinked_store_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"")
    store = tmp_path / "hft.kraken.balance"
    store.symlink_to(elsewhere)
    with pytest.raises(StoreUnsafeError, match="symlink"):
        StoreWriter.open(store, exchange="kraken")


def test_the_lock_file_is_private_to_its_user(tmp_path: Path) -> None:
    store = tmp_path / "hft.kraken.balance"
    lock = lock_path(store)
    lock.write_text("")
    os.chmod(lock, 0o644)  # as an older version left it: anyone could open it and flock it
    writer = StoreWriter.open(store, exchange="kraken")
    try:
        assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600
        with StoreReader(store) as reader:  # readers are not hindered
            assert reader.currencies() == []
    finally:
        writer.close()


def test_a_lock_file_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "hft.kraken.balance"
    lock = lock_path(store)
    lock.write_text("")
    os.chown(lock, NOBODY, NOBODY)
    with pytest.raises(StoreUnsafeError, match="lock file"):
        StoreWriter.open(store, exchange="kraken")


def test_a_file_planted_at_the_writers_temporary_name_does_not_keep_it_from_starting(
    open_dir: Path, workers: Workers
) -> None:
    """The new file was made at ``.<name>.<pid>.tmp``: another user who planted that
    name in the sticky directory (as /dev/shm is) kept the writer from starting, with
    a traceback (it may not remove another user's file there). Pids are predictable."""
    shared = open_dir / "shm"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    store = shared / "hft.kraken.balance"
    writer = workers.start_ready("open-on-cue", store, uid=GATEWAY_USER)
    planted = shared / f".{store.name}.{writer.pid}.tmp"
    subprocess.run([*as_user(NOBODY), "touch", str(planted)], check=True)
    assert writer.stdin is not None
    writer.stdin.write("go\n")
    writer.stdin.flush()
    out, err = writer.communicate(timeout=30)
    assert (writer.returncode, out.strip()) == (0, "OPENED"), err
    assert store.stat().st_uid == GATEWAY_USER
    assert planted.stat().st_uid == NOBODY  # left alone


def _shared_dir(open_dir: Path) -> Path:
    """A sticky directory every user may write, as /dev/shm is."""
    shared = open_dir / "shm"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    return shared


def _made_by_nobody(path: Path, mode: int = 0o644) -> None:
    subprocess.run([*as_user(NOBODY), "sh", "-c", f"echo planted > {path}; chmod {mode:o} {path}"],
                   check=True)  # fmt: skip


@pytest.mark.parametrize("planted", ["hft.kraken.balance", "hft.kraken.balance.lock"])
def test_a_gateway_that_is_not_root_refuses_another_users_file_in_one_line(
    open_dir: Path, workers: Workers, planted: str
) -> None:
    """Root opens any file and then refuses it; the gateway's own user may not open another
    user's (mode 0644) at all, and that was a PermissionError with a traceback."""
    shared = _shared_dir(open_dir)
    _made_by_nobody(shared / planted)
    opener = workers.start("try-open", shared / "hft.kraken.balance", uid=GATEWAY_USER)
    out, err = opener.communicate(timeout=30)
    assert opener.returncode == 3, err
    assert out.startswith("StoreUnsafeError: ") and "owned by uid 65534 with mode 0644" in out


def test_a_reader_refuses_a_store_another_user_made(
    open_dir: Path, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user who makes the store file first (after a reboot, say) could feed every
    strategy the balances they like, heartbeat and all: a reader trusts its own user's
    files, root's and ``$HFT_GATEWAY_UID``'s only."""
    shared = _shared_dir(open_dir)
    store = shared / "hft.kraken.balance"
    workers.start_ready("hold", store, uid=NOBODY)  # a live writer, run by another user
    monkeypatch.delenv("HFT_GATEWAY_UID", raising=False)
    with pytest.raises(StoreUnsafeError, match="uid 65534 with mode 0644: not the gateway"):
        StoreReader(store)
    monkeypatch.setenv("HFT_GATEWAY_UID", str(NOBODY))  # that user runs the gateway here
    with StoreReader(store) as reader:
        assert reader.slot_float("USD", 0) == 300.5


def test_a_reader_refuses_a_store_others_may_write_or_a_symlink(tmp_path: Path) -> None:
    store = tmp_path / "hft.kraken.balance"
    StoreWriter.open(store, exchange="kraken").close()
    os.chmod(store, 0o666)
    with pytest.raises(StoreUnsafeError, match="mode 0666"):
        StoreReader(store)
    os.chmod(store, 0o644)
    link = tmp_path / "hft.link.balance"
    link.symlink_to(store)
    with pytest.raises(StoreUnsafeError, match="symlink"):
        StoreReader(link)
