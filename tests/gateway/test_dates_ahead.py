"""A fill or transfer dated ahead of the host's clock is booked as of now.

Its date becomes the ledger's position, where the next catch-up starts: a fill dated
in 2150 (inside the exchanges' parse window, 2000-2200) once moved every later
catch-up past the trades made until then, and a restart missed them.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal

import pytest

from gateway.config import GatewayConfig
from gateway.ledger import UNIT, Fill, Side, Transfer
from gateway.messages import FillReceived, TransferReceived
from gateway.service import restore_state
from gateway.writer import AHEAD_TOLERANCE_NS
from tests.gateway.conftest import open_writer_core

YEAR_2150_NS = 5_680_281_600 * 10**9


def _fill(exec_id: str, timestamp_ns: int) -> FillReceived:
    fill = Fill(exec_id, "BTC", "USD", Side.BUY, Decimal(1), Decimal(100), userref=2,
                timestamp_ns=timestamp_ns)  # fmt: skip
    return FillReceived(fill)


def _deposit(ledger_id: str, timestamp_ns: int) -> TransferReceived:
    transfer = Transfer(ledger_id, f"ref-{ledger_id}", "USD", Decimal(5), "deposit", timestamp_ns)
    return TransferReceived(transfer)


def test_dates_ahead_are_booked_as_of_now_and_replay_so(
    config: GatewayConfig, caplog: pytest.LogCaptureFixture
) -> None:
    core = open_writer_core(config)
    ledger = core.ledger
    before = time.time_ns()
    near = before + AHEAD_TOLERANCE_NS // 2  # an exchange clock a little ahead: kept
    with caplog.at_level(logging.WARNING, logger="gateway.writer"):
        core.apply_batch([_fill("T-NEAR", near), _deposit("L-NEAR", near)])
        assert (ledger.position_ns, ledger.transfer_position_ns) == (near, near)
        core.apply_batch([_fill("T-2150", YEAR_2150_NS), _deposit("L-2150", YEAR_2150_NS)])
    after = time.time_ns()
    # Booked, every unit of it, but dated now: the position stays where it was.
    assert ledger.balances["BTC"][2] == 2 * UNIT and ledger.balances["USD"][0] == 810 * UNIT
    assert (ledger.position_ns, ledger.transfer_position_ns) == (near, near)
    assert ledger.last_transfer_ns == near
    assert core.stats.dated_ahead == 2 and core.status()["status"]["dated_ahead"] == 2  # type: ignore[index]
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("fill T-2150 is dated 2150-01-01 00:00:00+00:00, ") for m in said)
    assert any(m.startswith("transfer L-2150 is dated 2150-01-01") for m in said)
    with caplog.at_level(logging.WARNING, logger="gateway.writer"):  # past any date: said too
        core.apply_batch([_fill("T-FAR", 10**30)])
    assert f"fill T-FAR is dated {10**30} ns after the epoch, " in caplog.text
    # A later fill dated now moves the position on as before.
    core.apply_batch([_fill("T-NOW", after + AHEAD_TOLERANCE_NS)])
    assert ledger.position_ns == after + AHEAD_TOLERANCE_NS
    core.journal.commit()
    core.journal.close()
    core.store.close()
    # The journal holds the date booked, not the exchange's: a restart replays the same.
    replayed, again, _ = restore_state(config)
    assert replayed.position_ns == after + AHEAD_TOLERANCE_NS
    assert replayed.transfer_position_ns == near
    assert replayed.balances["BTC"][2] == ledger.balances["BTC"][2] == 4 * UNIT
    again.close()
