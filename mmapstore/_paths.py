"""Where a gateway's store file lives."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

DEFAULT_SHM_DIR: Final = "/dev/shm"


def shm_dir() -> Path:
    """``$HFT_SHM_DIR``, else ``/dev/shm``: the one place readers and the writer agree on."""
    return Path(os.environ.get("HFT_SHM_DIR") or DEFAULT_SHM_DIR)


def store_path(exchange: str, directory: Path | str | None = None) -> Path:
    """The store file of ``exchange``: ``<dir>/hft.<exchange>.balance``."""
    base = Path(directory) if directory is not None else shm_dir()
    return base / f"hft.{exchange.lower()}.balance"


def lock_path(store: Path) -> Path:
    """The writer's lock file. It is never replaced, so the lock outlives a re-created store."""
    return store.with_name(store.name + ".lock")


def trusted_writers() -> frozenset[int]:
    """The uids a client trusts for the gateway's files (a reader's store, a command
    client's socket directory): its own, root's and ``$HFT_GATEWAY_UID`` (a gateway
    running as a user of its own)."""
    uids = {os.geteuid(), 0}
    gateway_uid = os.environ.get("HFT_GATEWAY_UID", "")
    if gateway_uid.isdigit():
        uids.add(int(gateway_uid))
    return frozenset(uids)


def untrusted_because(info: os.stat_result) -> str | None:
    """Why a reader must not trust a store file with this ``fstat``; None if it may.

    Another local user could make the file first (after a reboot, say) and write
    whatever balances they like into it, heartbeat and all.
    """
    if info.st_uid in trusted_writers() and not info.st_mode & 0o022:
        return None
    return (
        f"is owned by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):04o}: not the "
        "gateway's, so its balances are not read (set HFT_GATEWAY_UID if the gateway runs "
        "as another user)"
    )
