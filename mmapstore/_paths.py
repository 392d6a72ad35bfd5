"""Where a gateway's store file lives."""

from __future__ import annotations

import os
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
