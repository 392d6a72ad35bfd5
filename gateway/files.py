"""Files and directories made safely where other users may write (``/tmp``, ``/dev/shm``)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from gateway.errors import ConfigError


def make_own_dir(directory: Path, mode: int, what: str, variable: str) -> None:
    """Create ``directory`` with ``mode``, or take an existing one only if it is ours.

    Another user who made it first (``/tmp/hft-<uid>``, a state directory under a
    shared one), or a symlink there, could otherwise listen in the gateway's place
    or hand it a journal of their making. ``variable`` names the setting to change.

    Raises:
        ConfigError: the directory cannot be made, or is another user's or a symlink
            (one of ours is set to ``mode``, whatever an older version or a hand left it).
    """
    try:
        directory.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{what} {directory} cannot be made: {exc.strerror} (set {variable})"
        ) from None
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{what} {directory} is a symlink or not a directory: refusing")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"{what} {directory} belongs to uid {info.st_uid}, not to this user: "
            f"refusing (remove it, or set {variable})"
        )
    os.chmod(directory, mode)


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
