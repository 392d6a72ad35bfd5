"""Kraken's REST request signature (``API-Sign``) and nonces. Pure."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from pathlib import Path
from typing import Final

# How far ahead of the clock the persisted high-water mark is reserved, in nonce ticks (µs).
NONCE_RESERVE: Final = 60_000_000


def sign(uri_path: str, nonce: int | str, postdata: bytes | str, secret_b64: str) -> str:
    """``API-Sign`` for one request: HMAC-SHA512(secret, path + SHA256(nonce + body)), base64.

    ``postdata`` must be exactly the bytes sent as the body.
    """
    body = postdata.encode() if isinstance(postdata, str) else postdata
    digest = hashlib.sha256(str(nonce).encode() + body).digest()
    mac = hmac.new(base64.b64decode(secret_b64), uri_path.encode() + digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode()


class NonceSource:
    """Strictly increasing nonces (µs since the epoch), also across restarts.

    The clock alone would do, unless it steps back between two runs; so a
    high-water mark is kept in ``path``, reserved ``NONCE_RESERVE`` ahead and
    extended before it is reached. One file write per minute of requests at most.
    """

    def __init__(self, path: Path | None = None, clock_us: object = None) -> None:
        self._path = path
        self._clock_us = clock_us if callable(clock_us) else (lambda: time.time_ns() // 1000)
        self._last = 0
        self._reserved = 0
        if path is not None and path.exists():
            text = path.read_text().strip()
            self._last = int(text) if text.isdigit() else 0
            self._reserved = self._last

    def next(self) -> int:
        nonce = max(int(self._clock_us()), self._last + 1)
        if self._path is not None and nonce >= self._reserved:
            self._reserve(nonce + NONCE_RESERVE)
        self._last = nonce
        return nonce

    def _reserve(self, mark: int) -> None:
        assert self._path is not None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{mark}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)
        self._reserved = mark
