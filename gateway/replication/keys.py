"""What the gateway and its mirrors agree on in Redis: keys, entry ids, scripts.

One gateway's keys, under ``hft:<exchange>``:

    :log          stream: event ``s`` as entry ``<s>-1`` (field ``e``: the journal
                  record's payload); a snapshot at ``S`` as entry ``<S>-0`` (field
                  ``s``), just before event ``S``; trimmed behind the snapshot
                  before the newest, so a mirror up to one interval behind reads on
    :snap         hash: the newest snapshot (``seq``, ``body``, ``lineage``)
    :meta         hash: ``lineage``, ``epoch``, the source's heartbeat and progress
    :owner        string with a time to live: the one gateway that may publish
    :cmd          stream: commands mirrors forward to the gateway
    :reply:<id>   stream: the gateway's replies to one mirror
    :republish    string: a mirror's request to publish everything again

A *lineage* names one unbroken copy of one journal in Redis: a publisher that
finds Redis empty, another ledger's events, or events its journal does not have
starts a new one, and mirrors that see it change resync from the snapshot.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from gateway.errors import ConfigError

CONNECT_TIMEOUT_S: Final = 2.0
STREAM_TIMEOUT_S: Final = 5.0  # longer than any blocking read we make
BLOCK_MS: Final = 500
RETRY_S: Final = 1.0  # between attempts to reach Redis
OWNER_TTL_MS: Final = 10_000  # a gateway killed with -9 holds the stream this long
BEAT_INTERVAL_S: Final = 0.5
SOURCE_STALE_AFTER_S: Final = 3.0  # a mirror calls its source stale after this silence
MIRROR_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True, slots=True)
class Target:
    """A Redis address and the key prefix of one gateway's stream."""

    url: str
    prefix: str

    @classmethod
    def parse(cls, url: str, exchange: str) -> Target:
        """Check ``url`` (``redis://``, ``rediss://`` or ``unix://``; user and password allowed).

        Raises:
            ConfigError: not a Redis address.
        """
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("redis", "rediss", "unix")
            or (parts.scheme != "unix" and not parts.hostname)
        ):
            raise ConfigError(
                f"a Redis address is redis://HOST:PORT/DB, rediss://... or unix://PATH, not {url!r}"
            )
        return cls(url, f"hft:{exchange}")

    @property
    def shown(self) -> str:
        """The address without its password, for logs and status."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = f"{parts.username or ''}:***@{parts.hostname}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def reply_key(self, mirror_id: str) -> str:
        return f"{self.prefix}:reply:{mirror_id}"


def as_bytes(value: str | bytes) -> bytes:
    """A stream id or field as bytes (the client gives str or bytes by its settings)."""
    return value if isinstance(value, bytes) else value.encode()


def event_id(seq: int) -> str:
    return f"{seq}-1"


def parse_id(raw: bytes) -> tuple[int, bool]:
    """``(seq, is_snapshot)`` of a log entry id; ValueError for one we never write."""
    first, _, second = raw.decode("ascii").partition("-")
    if second not in ("0", "1"):
        raise ValueError(f"log entry id {raw!r} is not one of ours")
    return int(first), second == "0"


def position_after(raw: bytes) -> int:
    """The next event number once the entry ``raw`` is applied."""
    seq, is_snapshot = parse_id(raw)
    return seq if is_snapshot else seq + 1


def read_from(position: int) -> str:
    """The id to read the log after, to get the entries for events ``position`` on."""
    return event_id(position - 1) if position else "0-0"


# Scripts: each checks the owner key first, so that only the owning gateway writes.

CLAIM: Final = """
local current = redis.call('GET', KEYS[1])
if (not current) or current == ARGV[1]
   or string.sub(current, 1, string.len(ARGV[2]) + 1) == ARGV[2] .. '|' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 'OK'
end
return current
"""

# KEYS owner; ARGV token. A gateway stopping cleanly frees its stream for a successor.
RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_FENCE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOTOWNER this gateway no longer owns the stream')
end
"""

# KEYS owner, log; ARGV token, the first event's number, and the events as one string of
# ``u32 length | payload`` records: one argument however many events, for a client's
# cost grows with its arguments (Redis 7's Lua has the struct library).
PUBLISH_EVENTS: Final = (
    _FENCE
    + """
local seq = tonumber(ARGV[2])
local blob = ARGV[3]
local pos = 1
local count = 0
while pos <= #blob do
  local length = struct.unpack('>I4', blob, pos)
  redis.call('XADD', KEYS[2], string.format('%d-1', seq),
             'e', string.sub(blob, pos + 4, pos + 3 + length))
  seq = seq + 1
  count = count + 1
  pos = pos + 4 + length
end
return count
"""
)


def pack_events(payloads: list[bytes]) -> bytes:
    """The events as :data:`PUBLISH_EVENTS` takes them."""
    return b"".join(_LENGTH.pack(len(payload)) + payload for payload in payloads)


_LENGTH: Final = struct.Struct(">I")

# KEYS owner, log, snap, meta, republish; ARGV token, seq, body, lineage, reset, epoch,
# strategy_count. A reset answers every request to publish everything again.
PUBLISH_SNAPSHOT: Final = (
    _FENCE
    + """
local previous = redis.call('HGET', KEYS[3], 'seq')
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[2], KEYS[5])
  previous = false
end
redis.call('HSET', KEYS[3], 'seq', ARGV[2], 'body', ARGV[3], 'lineage', ARGV[4])
if ARGV[2] ~= '0' then
  redis.call('XADD', KEYS[2], ARGV[2] .. '-0', 's', ARGV[2])
end
if previous then
  redis.call('XTRIM', KEYS[2], 'MINID', previous .. '-0')
end
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[4], 'lineage', ARGV[4], 'epoch', ARGV[6], 'strategy_count', ARGV[7])
end
return 1
"""
)

# KEYS owner, meta, snap; ARGV token, ttl_ms, beat_ns, durable, published, conditions,
# lineage. The lineage goes back into meta while the published snapshot is of it: another
# written there by someone else would have mirrors wait for its snapshot for ever.
BEAT: Final = (
    _FENCE
    + """
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'beat_ns', ARGV[3], 'durable', ARGV[4], 'published', ARGV[5],
           'conditions', ARGV[6])
if redis.call('HGET', KEYS[3], 'lineage') == ARGV[7] then
  redis.call('HSET', KEYS[2], 'lineage', ARGV[7])
end
return 1
"""
)
