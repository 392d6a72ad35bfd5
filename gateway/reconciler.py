"""The reconciler: every interval, REST totals against the ledger, corrected only with care.

Rules (DESIGN.md, Reconciliation):

1. Note the writer's fill count, fetch REST totals, look at the count again.
   The fill stream must have been live (the same connection, caught up) all
   along, or the pass proves nothing: fills may be on their way.
2. Equal (exactly) → verified.
3. Different, but a fill was applied while the request was in flight → the
   comparison proves nothing: check again soon.
4. Different, no fill in flight → a *suspect*. If the next fill-free check
   shows the same difference, correct it (slots 0 and 1 only); a difference
   that changed is suspected afresh.
5. A currency only at the exchange is added; one only in the ledger counts as 0.

REST failures change nothing: the next try backs off and the status says so.
:func:`judge` is the pure part; :func:`run_reconciler` is the loop around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

import trio

from gateway.config import RECHECK_S
from gateway.errors import ExchangeError
from gateway.ledger import format_scaled, scale_fill
from gateway.messages import CorrectionProposed, ExchangeHealthChanged, WriterMessage
from mmapstore import StoreValueError

if TYPE_CHECKING:
    from gateway.exchanges.base import ExchangeSession

logger = logging.getLogger(__name__)


def differences(rest: Mapping[str, int], ledger: Mapping[str, int]) -> dict[str, int]:
    """REST minus ledger for every currency where they differ (a missing one counts as 0)."""
    diffs = {}
    for currency in set(rest) | set(ledger):
        diff = rest.get(currency, 0) - ledger.get(currency, 0)
        if diff:
            diffs[currency] = diff
    return diffs


def judge(
    suspects: Mapping[str, int], diffs: Mapping[str, int]
) -> tuple[dict[str, int], dict[str, int]]:
    """Split fresh differences into (corrections to make, suspects to keep).

    A difference is corrected only when the previous fill-free check saw the
    very same one; any other difference becomes (or stays) a suspect.
    """
    corrections = {c: d for c, d in diffs.items() if suspects.get(c) == d}
    return corrections, {c: d for c, d in diffs.items() if c not in corrections}


@dataclass
class ReconcileStatus:
    """What ``status`` and the live view show of the reconciler."""

    passes: int = 0
    verified_passes: int = 0
    last_pass_ns: int = 0
    last_verified_ns: int = 0
    # waiting | verified | corrected | suspect | fill-in-flight | feed-down | rest-error
    state: str = "waiting"
    suspects: dict[str, str] = field(default_factory=dict)
    corrections: int = 0
    rest_errors: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "reconcile_state": self.state,
            "reconcile_passes": self.passes,
            "reconcile_last_ns": self.last_pass_ns,
            "reconcile_last_verified_ns": self.last_verified_ns,
            "reconcile_suspects": dict(self.suspects),
            "reconcile_corrections": self.corrections,
            "reconcile_rest_errors": self.rest_errors,
            "reconcile_last_error": self.last_error,
        }


def _scaled_totals(totals: Mapping[str, Decimal]) -> dict[str, int]:
    """REST totals as scaled integers; one too large for the store is left out, loudly."""
    scaled = {}
    for currency, amount in totals.items():
        try:
            scaled[currency] = scale_fill(Decimal(amount))
        except StoreValueError:
            logger.error("reconcile: the exchange's %s balance %s does not fit the store; "
                         "not compared", currency, amount)  # fmt: skip
    return scaled


async def run_reconciler(
    exchange: ExchangeSession,
    send: trio.MemorySendChannel[WriterMessage],
    *,
    fills_applied: Callable[[], int],
    ledger_totals: Callable[[], Mapping[str, int]],
    feed_connection: Callable[[], int | None] = lambda: 0,
    interval_s: float,
    recheck_s: float = RECHECK_S,
    status: ReconcileStatus | None = None,
    clock_ns: Callable[[], int] = time.time_ns,
    task_status: trio.TaskStatus[ReconcileStatus] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reconcile every ``interval_s`` until cancelled. Owns and closes ``send``.

    ``fills_applied`` and ``ledger_totals`` read the writer's state; both are
    plain reads in Trio's one thread, taken without an await between them and
    the decision. Supports ``nursery.start``: ``started(status)`` at once.
    """
    status = status or ReconcileStatus()
    suspects: dict[str, int] = {}
    errors_in_a_row = 0
    delay = interval_s
    async with send:
        task_status.started(status)
        while True:
            await trio.sleep(delay)
            before = fills_applied()
            connection = feed_connection()
            if connection is None:
                # Without a live, caught-up fill stream a difference may be fills on their
                # way, so nothing could be concluded: spare the REST call (and the API
                # counter a catch-up is using).
                status.state = "feed-down"
                suspects = {}
                status.suspects = {}
                delay = recheck_s
                continue
            try:
                totals = await exchange.fetch_totals()
            except ExchangeError as exc:
                if errors_in_a_row == 0:
                    await send.send(ExchangeHealthChanged(rest_ok=False))
                errors_in_a_row += 1
                status.rest_errors += 1
                status.state = "rest-error"
                status.last_error = str(exc)
                delay = min(interval_s, recheck_s * 2 ** (errors_in_a_row - 1))
                logger.warning(
                    "reconcile: REST failed (%s); nothing changed; next try in %.0f s", exc, delay
                )
                continue
            if errors_in_a_row:
                await send.send(ExchangeHealthChanged(rest_ok=True))
            errors_in_a_row = 0
            status.passes += 1
            status.last_pass_ns = clock_ns()
            if feed_connection() != connection:
                # Without a live, caught-up fill stream, a difference may be fills on
                # their way: nothing is suspected, let alone corrected.
                status.state = "feed-down"
                suspects = {}
                status.suspects = {}
                delay = recheck_s
                continue
            if fills_applied() != before:
                status.state = "fill-in-flight"
                delay = recheck_s
                logger.info("reconcile: a fill landed during the REST call; checking again soon")
                continue
            ledger = ledger_totals()
            rest = _scaled_totals(totals)
            corrections, suspects = judge(suspects, differences(rest, ledger))
            for currency, diff in sorted(corrections.items()):
                seen = ledger.get(currency, 0)
                status.corrections += 1
                logger.warning(
                    "reconcile: %s differs by %s on two fill-free checks: correcting %s -> %s",
                    currency, format_scaled(diff), format_scaled(seen), format_scaled(seen + diff),
                )  # fmt: skip
                await send.send(CorrectionProposed(currency, seen, seen + diff))
            status.suspects = {c: format_scaled(d) for c, d in sorted(suspects.items())}
            if suspects:
                status.state = "suspect"
                delay = recheck_s
                for currency, diff in sorted(suspects.items()):
                    logger.info(
                        "reconcile: %s differs by %s; suspect", currency, format_scaled(diff)
                    )
            else:
                status.state = "verified" if not corrections else "corrected"
                status.verified_passes += 1
                status.last_verified_ns = status.last_pass_ns
                delay = interval_s
