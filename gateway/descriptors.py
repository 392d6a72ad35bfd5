"""Sockets read and written through their descriptors, for the two hot paths.

Trio's socket methods try first and wait after: a receive tried while the
peer is still thinking fails (a wasted syscall), and one that succeeds still
yields to the scheduler after it (a trip through the run loop). The command
server and the exchanges' websockets, each woken once a message, wait for the
descriptor first and then read it once: the wait is the checkpoint. Measured
in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import os

import trio

# Below glibc's threshold for allocating by mmap (128 KiB): a larger read's buffer is
# mapped and unmapped on every call, three syscalls and its page faults.
RECEIVE_BYTES = 64 * 1024


async def read_when_ready(fd: int, max_bytes: int = RECEIVE_BYTES) -> bytes:
    """What has arrived on ``fd``, waiting for it; b"" at end of stream.

    Raises:
        trio.ClosedResourceError: the socket was closed while we waited.
        trio.BusyResourceError: another task already waits to read ``fd``.
        OSError: the read failed (a reset connection).
    """
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:  # woken, but another reader or a spurious wake-up
            continue


async def write_all(sock: trio.socket.SocketType, data: bytes | memoryview) -> None:
    """Write ``data`` to ``sock``'s descriptor, waiting only while the peer's buffer is
    full; stop if the socket is closed meanwhile (its number may then name another
    file: a reply's flusher runs beside the connection's task, which closes it).

    No checkpoint when the data leaves at once: callers that need one take it.
    """
    view = memoryview(data)
    while True:
        fd = sock.fileno()
        if fd < 0:
            return
        with contextlib.suppress(BlockingIOError):
            view = view[os.write(fd, view) :]
        if not view:
            return
        await trio.lowlevel.wait_writable(fd)
