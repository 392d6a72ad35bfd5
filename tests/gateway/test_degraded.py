"""Degraded modes: a journal that cannot be written, a fill stream that is down."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest
import trio

from gateway.config import GatewayConfig
from gateway.errors import BootstrapError, JournalWriteError
from gateway.journal import Journal
from gateway.ledger import UNIT, BalanceCommand, CommandKind, Fill, Side
from gateway.messages import CommandReceived, ExchangeHealthChanged
from gateway.service import Running, restore_state, run_gateway
from mmapstore import DEFAULT_CAPACITY, Condition, StoreReader
from tests.gateway.conftest import RawClient
from tests.gateway.fake_exchange import FakeExchange

ALLOCATE = {"strategy": "a", "cmd": "allocate", "currency": "usd", "amount": 10, "index": 2}


@contextmanager
def journal_on_a_full_disk(running: Running) -> Iterator[None]:
    """Point the journal's descriptor at /dev/full: every write fails with ENOSPC."""
    fd = running.core.journal._fd
    saved = os.dup(fd)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, fd)
    os.close(full)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


async def test_unwritable_journal_refuses_commands_keeps_fills_and_recovers(
    gateway: Running, raw: RawClient, exchange: FakeExchange, config: GatewayConfig
) -> None:
    assert (await raw.json({**ALLOCATE, "request_id": "before"}))["ok"] is True
    with StoreReader(config.store_path) as reader:
        with journal_on_a_full_disk(gateway):
            refused = await raw.json({**ALLOCATE, "request_id": "during"})
            assert refused["ok"] is False
            assert refused["error"]["code"] == "UNAVAILABLE"  # type: ignore[index]
            assert "nothing was changed" in refused["error"]["message"]  # type: ignore[index]
            assert Condition.JOURNAL_DOWN in reader.writer_status().conditions
            # The command was taken back: the ledger and the store show no trace of it.
            assert reader.record("USD").exact_all()[2] == Decimal(10)
            # Fills are still applied and published.
            fill = Fill("T-degraded", "BTC", "USD", Side.BUY, Decimal(1), Decimal(100),
                        userref=3, timestamp_ns=time.time_ns())  # fmt: skip
            await exchange.push_fill(fill)
            with trio.fail_after(2):
                while reader.record("BTC").exact_all()[3] != 1:
                    await trio.sleep(0.01)
        # The next heartbeat finds the journal writable again.
        with trio.fail_after(5):
            while Condition.JOURNAL_DOWN in reader.writer_status().conditions:
                await trio.sleep(0.05)
        assert (await raw.json({**ALLOCATE, "request_id": "after"}))["ok"] is True
        assert reader.record("USD").exact_all()[2] == Decimal(20)
    status = gateway.core.status()["status"]
    assert isinstance(status, dict)
    assert status["journal"] == "ok" and status["commands_unavailable"] == 1
    # What survives a restart: both acknowledged commands and the fill, not the refused one.
    gateway.stop.set()
    await gateway.stopped.wait()
    ledger, journal, _ = restore_state(config)
    journal.close()
    assert ledger.slots("USD")[2] == 20 * UNIT
    assert ledger.slots("BTC")[3] == 1 * UNIT
    assert "during" not in ledger.replies and {"before", "after"} <= set(ledger.replies)


async def test_feed_down_is_flagged_to_readers(
    gateway: Running, exchange: FakeExchange, config: GatewayConfig
) -> None:
    with StoreReader(config.store_path) as reader:
        assert reader.writer_status().conditions == Condition(0)
        assert exchange._send is not None
        await exchange._send.send(ExchangeHealthChanged(feed_live=False))
        with trio.fail_after(2):
            while not reader.writer_status().balances_may_be_stale:
                await trio.sleep(0.01)
        assert Condition.FEED_DOWN in reader.writer_status().conditions
        await exchange._send.send(ExchangeHealthChanged(feed_live=True))
        with trio.fail_after(2):
            while reader.writer_status().balances_may_be_stale:
                await trio.sleep(0.01)


def _newest_snapshot(config: GatewayConfig) -> int:
    return max((int(p.stem.split("-")[1]) for p in config.state_dir.glob("snapshot-*.cbor")),
               default=0)  # fmt: skip


async def test_periodic_snapshots_after_fill_only_batches(
    config: GatewayConfig, exchange: FakeExchange, nursery: trio.Nursery
) -> None:
    """Fill-only batches leave records unsynced; the periodic snapshot must sync them first."""
    config = GatewayConfig(**{**config.__dict__, "snapshot_every": 10})
    running: Running = await nursery.start(run_gateway, config, exchange)
    now = time.time_ns()
    for n in range(45):
        fill = Fill(f"T-snap-{n}", "BTC", "USD", Side.BUY, Decimal("0.01"), Decimal(100),
                    userref=2, timestamp_ns=now + n)  # fmt: skip
        await exchange.push_fill(fill)

    # The last snapshot is written after its fills count as applied, by a worker thread;
    # the writer drops the older one once it sees it landed. Where the snapshots fall
    # depends on how the fills were batched: wait until none is being written or due.
    def settled() -> bool:
        journal = running.core.journal
        return (
            running.core.stats.fills_applied == 45
            and journal.snapshot_pending is None
            and journal.events_since_snapshot < config.snapshot_every
            and len(list(config.state_dir.glob("snapshot-*.cbor"))) == 1
        )

    with trio.fail_after(5):
        while not settled():
            await trio.sleep(0.01)
    assert _newest_snapshot(config) >= config.snapshot_every  # taken after fill-only batches
    running.stop.set()
    await running.stopped.wait()
    ledger, journal, _ = restore_state(config)
    journal.close()
    assert ledger.slots("BTC")[2] == 45 * UNIT // 100


async def test_commands_are_answered_while_a_snapshot_is_written(
    config: GatewayConfig,
    exchange: FakeExchange,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The writer goes on while a worker thread writes the snapshot's file."""
    entered, release = threading.Event(), threading.Event()
    real = Journal.write_snapshot_file

    def held(journal: Journal, data: dict[str, object], seq: int) -> None:
        entered.set()
        assert release.wait(20), "the test never released the snapshot"
        real(journal, data, seq)

    monkeypatch.setattr(Journal, "write_snapshot_file", held)
    config = GatewayConfig(**{**config.__dict__, "snapshot_every": 5})
    running: Running = await nursery.start(run_gateway, config, exchange)
    async with await RawClient.connect(config.socket_path) as raw:
        for n in range(6):
            assert (await raw.json({**ALLOCATE, "request_id": f"s{n}"}))["ok"] is True
        with trio.fail_after(5):
            await trio.to_thread.run_sync(entered.wait)
        before = _newest_snapshot(config)
        with trio.fail_after(5):  # answered, durably, while the snapshot is held
            for n in range(6, 12):
                assert (await raw.json({**ALLOCATE, "request_id": f"s{n}"}))["ok"] is True
        assert _newest_snapshot(config) == before  # still being written
        release.set()
        with trio.fail_after(5):
            while _newest_snapshot(config) == before:
                await trio.sleep(0.01)
    running.stop.set()
    await running.stopped.wait()
    ledger, journal, _ = restore_state(config)
    journal.close()
    assert ledger.slots("USD")[2] == 12 * 10 * UNIT


async def test_a_repeat_in_a_batch_whose_commit_fails_gets_the_same_refusal(
    gateway: Running,
) -> None:
    # Issue 11: the first of two identical requests was refused UNAVAILABLE, the repeat
    # answered ok from the reply just taken back, though nothing was kept.
    core = gateway.core
    command = BalanceCommand(CommandKind.ALLOCATE, "a", "USD", 2, 10 * UNIT)
    first = CommandReceived(command, "twice")
    second = CommandReceived(command, "twice")
    before = list(core.ledger.balances["USD"])
    batch = core.apply_batch([first, second])
    core.journal.discard_pending()  # as a failed commit leaves it
    core.fail_batches([batch], JournalWriteError("disk full"))
    replies = [reply for _, reply in batch.replies]
    assert [r["ok"] for r in replies] == [False, False]
    assert all(r["error"]["code"] == "UNAVAILABLE" for r in replies)  # type: ignore[index]
    assert core.ledger.balances["USD"] == before and "twice" not in core.ledger.replies
    assert core.try_recover()  # the journal itself is fine: back to normal for the fixture


async def test_an_exchange_balance_too_large_for_the_store_is_refused_in_one_line(
    config: GatewayConfig,
) -> None:
    # Issue 11: a balance of 1.7e20 or more killed the bootstrap with a traceback.
    with pytest.raises(BaseExceptionGroup) as raised:
        await run_gateway(config, FakeExchange({"USD": "1e21", "BTC": 1}))
    leaves = raised.value.exceptions
    while len(leaves) == 1 and isinstance(leaves[0], BaseExceptionGroup):
        leaves = leaves[0].exceptions
    assert len(leaves) == 1 and isinstance(leaves[0], BootstrapError)
    assert "USD balance (1E+21) is larger than the store can hold" in str(leaves[0])


async def _until(predicate: Callable[[], bool], timeout: float = 2) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_a_slot_below_zero_is_overdrawn_until_it_is_not(
    gateway: Running, raw: RawClient, exchange: FakeExchange, config: GatewayConfig
) -> None:
    """Issue 11 finding 15: a negative slot is never silent."""
    assert (await raw.json({**ALLOCATE, "request_id": "x"}))["ok"] is True  # USD slot 2: 10
    with StoreReader(config.store_path) as reader:
        assert Condition.OVERDRAWN not in reader.writer_status().conditions
        # Strategy 2 buys BTC for 30 USD with only 10 allocated: slot 2 is -20.
        fill = Fill("T-over", "BTC", "USD", Side.BUY, Decimal("0.3"), Decimal(100),
                    userref=2, timestamp_ns=time.time_ns())  # fmt: skip
        await exchange.push_fill(fill)
        await _until(lambda: Condition.OVERDRAWN in reader.writer_status().conditions)
        status = (await raw.json({"cmd": "status"}))["status"]
        assert isinstance(status, dict) and status["overdrawn"] == {"USD": [2]}
        assert "OVERDRAWN" in status["conditions"]
        # Funding the slot clears it.
        top_up = {**ALLOCATE, "amount": 20, "request_id": "y"}
        assert (await raw.json(top_up))["ok"] is True
        await _until(lambda: Condition.OVERDRAWN not in reader.writer_status().conditions)
        status = (await raw.json({"cmd": "status"}))["status"]
        assert isinstance(status, dict) and status["overdrawn"] == {}


async def test_a_fill_beyond_the_stores_range_degrades_that_currency_without_a_crash(
    gateway: Running, raw: RawClient, exchange: FakeExchange, config: GatewayConfig
) -> None:
    """Facts cannot be refused: the ledger keeps it exactly, the store shows a condition."""
    with StoreReader(config.store_path) as reader:
        before = reader.record("USD").exact_all()
        huge = Fill("T-huge", "BTC", "USD", Side.BUY, Decimal(10) ** 15, Decimal(10) ** 10,
                    userref=3, timestamp_ns=time.time_ns())  # fmt: skip
        await exchange.push_fill(huge)
        await _until(lambda: Condition.OUT_OF_RANGE in reader.writer_status().conditions)
        assert reader.record("USD").exact_all() == before  # last values kept
        assert reader.record("BTC").exact_all()[3] == Decimal(10) ** 15  # BTC still published
        status = (await raw.json({"cmd": "status"}))["status"]
        assert isinstance(status, dict) and status["out_of_range"] == ["USD"]
        # The gateway carries on: commands on other currencies, queries, heartbeats.
        assert (await raw.json({"cmd": "query", "currency": "BTC"}))["ok"] is True
        assert reader.writer_status().alive
        # Selling it back brings USD into range again and republishes it.
        back = Fill("T-back", "BTC", "USD", Side.SELL, Decimal(10) ** 15, Decimal(10) ** 10,
                    userref=3, timestamp_ns=time.time_ns())  # fmt: skip
        await exchange.push_fill(back)
        await _until(lambda: Condition.OUT_OF_RANGE not in reader.writer_status().conditions)
        assert reader.record("USD").exact_all()[:2] == before[:2]


async def test_more_currencies_than_the_store_has_records_degrade_only_the_extra_ones(
    gateway: Running, raw: RawClient, exchange: FakeExchange, config: GatewayConfig
) -> None:
    """Found in review: the store's directory full (1,024 records) stopped the writer at
    the next new currency, and every restart after; now the extra ones are booked, flagged
    and not published, as a currency the store cannot name is."""
    with StoreReader(config.store_path) as reader:
        room = DEFAULT_CAPACITY - len(reader.currencies())
        for n in range(room + 2):
            fill = Fill(f"T-many-{n}", f"C{n}", "USD", Side.BUY, Decimal(1), Decimal(1),
                        userref=2, timestamp_ns=time.time_ns())  # fmt: skip
            await exchange.push_fill(fill)
        await _until(lambda: Condition.OUT_OF_RANGE in reader.writer_status().conditions, 20)
        status = (await raw.json({"cmd": "status"}))["status"]
        assert isinstance(status, dict)
        # Which two are left over depends on the order a batch publishes in.
        flagged = status["out_of_range"]
        assert isinstance(flagged, list) and len(flagged) == 2
        assert set(flagged) <= {f"C{n}" for n in range(room + 2)}
        assert set(flagged).isdisjoint(reader.currencies())
        assert len(reader.currencies()) == DEFAULT_CAPACITY
        assert reader.record("USD").exact_all()[2] == -(room + 2)  # every USD leg booked
        assert (await raw.json({"cmd": "query", "currency": flagged[0]}))["ok"] is True
        assert reader.writer_status().alive
