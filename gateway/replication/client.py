"""A Redis connection whose every failure comes out as one exception, for both sides."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import coredis
from coredis.exceptions import RedisError

from gateway.replication.keys import CONNECT_TIMEOUT_S, STREAM_TIMEOUT_S, Target

# What a lost, refused or restarted Redis raises: the caller retries, nothing else breaks.
REDIS_FAILURES: Final = (RedisError, OSError)


class RedisDownError(Exception):
    """Redis cannot be reached (or answered with an error): one line, for status and logs."""


@asynccontextmanager
async def connect(target: Target) -> AsyncIterator[coredis.Redis[bytes]]:
    """A connected client; every Redis failure inside comes out as :class:`RedisDownError`."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        target.url,
        decode_responses=False,
        connect_timeout=CONNECT_TIMEOUT_S,
        stream_timeout=STREAM_TIMEOUT_S,
    )
    try:
        async with client:
            yield client
    except REDIS_FAILURES as exc:
        raise RedisDownError(f"redis {target.shown}: {exc}") from None
    except BaseExceptionGroup as group:
        # The client's own task group wraps what is raised in it; unwrap one failure.
        redis, rest = group.split(REDIS_FAILURES)
        if rest is None and redis is not None:
            raise RedisDownError(f"redis {target.shown}: {_first(redis)}") from None
        if rest is not None and redis is None and len(rest.exceptions) == 1:
            leaf = rest.exceptions[0]
            if not isinstance(leaf, BaseExceptionGroup):
                raise leaf from None
        raise


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf
