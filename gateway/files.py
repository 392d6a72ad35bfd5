"""Small files written whole, safe in a directory other users may write (``/tmp``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` with ``text`` in one step: a reader sees the old file or the new.

    The new file is made at a random name beside ``path`` (``O_EXCL | O_NOFOLLOW``):
    one at a fixed name could be a symlink another user planted in a shared
    directory, and writing through it would overwrite whatever it points to.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), mode)
            file.write(text)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
