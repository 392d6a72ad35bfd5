"""A client-side model of Kraken's REST API counter, so private calls are paced, not refused.

Kraken keeps one counter per API key: every private call adds to it (ledger
and trade-history calls 2, others 1; ``AddOrder`` / ``CancelOrder`` use the
trading limiter instead), it decays at a rate set by the account's tier, and
a call that would take it past the tier's maximum is refused with
``EAPI:Rate limit exceeded``, restricting the key longer while calls go on
(docs.kraken.com, "Spot REST Rate Limits"). The model charges each call
before it is sent and says how long to wait first. Pure: the caller passes
the clock.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Tier:
    """One verification tier's counter: its maximum and its decay per second."""

    name: str
    max_count: float
    decay_per_s: float


TIERS: Final = {
    tier.name: tier
    for tier in (
        Tier("starter", 15, 0.33),
        Tier("intermediate", 20, 0.5),
        Tier("pro", 20, 1.0),
    )
}
DEFAULT_TIER: Final = "starter"
# Kraken lowers the counter "every couple of seconds", in steps; a model that decays
# smoothly runs ahead of it by up to one step, so it keeps this much below the maximum.
HEADROOM: Final = 1.0
HISTORY_METHODS: Final = frozenset({"TradesHistory", "QueryTrades", "Ledgers", "QueryLedgers"})
TRADING_METHODS: Final = frozenset(
    {"AddOrder", "AddOrderBatch", "AmendOrder", "EditOrder", "CancelOrder", "CancelOrderBatch"}
)


def tier_named(name: str) -> Tier:
    """The tier called ``name`` (case-insensitive).

    Raises:
        ConfigError: no such tier.
    """
    tier = TIERS.get(name.lower())
    if tier is None:
        raise ConfigError(f"unknown Kraken tier {name!r}; one of: {', '.join(TIERS)}")
    return tier


def call_cost(method: str) -> int:
    """What one call of ``method`` adds to the API counter."""
    if method in TRADING_METHODS:
        return 0
    return 2 if method in HISTORY_METHODS else 1


class ApiCounter:
    """The counter as Kraken keeps it for one key, as far as this process can know."""

    def __init__(self, tier: Tier, *, headroom: float = HEADROOM) -> None:
        self.tier = tier
        self.ceiling = tier.max_count - headroom
        self._level = 0.0
        self._at = 0.0
        self.waited_s = 0.0  # time spent waiting for the counter, for status
        self.refusals = 0
        self._refused_in_a_row = 0

    def level(self, now: float) -> float:
        """The counter's value at ``now``, decayed since the last call."""
        return max(0.0, self._level - (now - self._at) * self.tier.decay_per_s)

    def delay(self, cost: int, now: float) -> float:
        """Seconds to wait before a call of ``cost`` stays within the ceiling."""
        excess = self.level(now) + cost - self.ceiling
        return max(0.0, excess / self.tier.decay_per_s)

    def charge(self, cost: int, now: float) -> None:
        """Count a call being sent at ``now``."""
        self._level = self.level(now) + cost
        self._at = now

    def refused(self, now: float) -> None:
        """Kraken said the counter is full: believe it (another program may share the key).

        How far past full is unknown, and each refused call adds to it; so each
        refusal in a row assumes twice the excess of the one before.
        """
        self.refusals += 1
        self._refused_in_a_row += 1
        excess = min(self.tier.max_count, 2 ** (self._refused_in_a_row - 1) - 1)
        self._level = max(self.level(now), self.tier.max_count + excess)
        self._at = now

    def resume(self, level: float, now: float) -> None:
        """Take up a level another process left (see :class:`SavedCounter`)."""
        self._level = max(self.level(now), min(level, 2 * self.tier.max_count))
        self._at = now

    def accepted(self) -> None:
        """A call went through: the model and Kraken agree again."""
        self._refused_in_a_row = 0


class SavedCounter:
    """The counter as the last process left it, kept in a file so a restart starts there.

    A new process that believed the counter empty would be refused a few times
    by a counter its predecessor filled, and Kraken restricts a key longer
    while refused calls go on. The level is saved after every call with the
    wall-clock time (the Trio clock is per process) and, read back, decays by
    the time since. Best effort: no fsync, and a missing or unreadable file
    means an empty counter, as before.
    """

    def __init__(self, path: Path, wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self._wall = wall

    def restore(self, counter: ApiCounter, now: float) -> None:
        """Start ``counter`` at the saved level, decayed to ``now`` (a Trio clock time)."""
        try:
            level_text, wall_text = self.path.read_text().split()
            level, saved_at = float(level_text), float(wall_text)
        except (OSError, ValueError):
            return
        elapsed = max(0.0, self._wall() - saved_at)
        counter.resume(max(0.0, level - elapsed * counter.tier.decay_per_s), now)

    def save(self, counter: ApiCounter, now: float) -> None:
        tmp = self.path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, f"{counter.level(now)!r} {self._wall()!r}\n".encode())
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
