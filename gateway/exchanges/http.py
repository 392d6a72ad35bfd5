"""An exchange's REST answer, read with a bound on its size.

httpx reads a whole body into memory, and its timeout is per read: a server
that streams without end (or a small gzip body that inflates without end)
would grow the gateway until the kernel kills it, and again after every
restart. Bodies are read here instead, decoded, and refused past
``MAX_RESPONSE_BYTES`` before more is held.
"""

from __future__ import annotations

import contextlib
from typing import Final

import httpx

# Kraken's largest answer (AssetPairs, every pair) is about 1 MB; a page of trades or
# ledger entries is tens of kB. Far above any of them, far below harm.
MAX_RESPONSE_BYTES: Final = 32 << 20


class ResponseTooLargeError(Exception):
    """The answer's body passed ``MAX_RESPONSE_BYTES``; what was read is dropped."""


async def send_bounded(
    client: httpx.AsyncClient, request: httpx.Request, limit: int = MAX_RESPONSE_BYTES
) -> tuple[httpx.Response, bytes]:
    """Send ``request``; the response and its decoded body, at most ``limit`` bytes.

    Raises:
        ResponseTooLargeError: the body (as declared, or as read) is larger.
        httpx.HTTPError: as ``client.send`` raises.
    """
    response = await client.send(request, stream=True)
    try:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLargeError(f"the answer declares {int(declared):,} bytes")
        body = bytearray()
        chunks = response.aiter_bytes()
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                # Closed first, the stream ends the generators' loops, which then finish
                # rather than being left for the garbage collector mid-iteration.
                await response.aclose()
                with contextlib.suppress(httpx.HTTPError, httpx.StreamError):
                    async for _ in chunks:
                        pass
                raise ResponseTooLargeError(f"the answer is larger than {limit >> 20} MiB")
    finally:
        await response.aclose()
    return response, bytes(body)
