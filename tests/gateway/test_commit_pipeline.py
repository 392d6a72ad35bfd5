"""The writer's pipelined commit: replies wait for the sync that covers them, a
failed sync takes back every command applied behind it, never a fill, and no fill
waits for a sync."""

from __future__ import annotations

import itertools
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.writer
from gateway.config import GatewayConfig
from gateway.errors import JournalWriteError
from gateway.journal import Journal, PendingWrite
from gateway.ledger import UNIT, BalanceCommand, CommandKind, Fill, Side
from gateway.messages import (
    BalancesFetched,
    CommandReceived,
    FillReceived,
    HeartbeatTick,
    WriterMessage,
)
from gateway.service import restore_state
from gateway.writer import WriterCore, run_writer
from mmapstore import StoreReader
from tests.gateway.conftest import open_writer_core
from tests.gateway.test_ledger import amounts, currencies, fills, indices, strategies


@dataclass
class HeldSync:
    """A journal whose first write out waits in its worker thread until released."""

    journal: Journal
    fail: bool
    release: threading.Event
    entered: threading.Event
    calls: int = 0

    def install(self) -> None:
        real: Callable[[PendingWrite], None] = self.journal.write_out

        def write_out(write: PendingWrite) -> None:
            self.calls += 1
            if self.calls == 1:
                self.entered.set()
                assert self.release.wait(10), "the test never released the sync"
                if self.fail:
                    raise JournalWriteError("journal: No space left on device")
            real(write)

        self.journal.write_out = write_out  # type: ignore[method-assign]


@dataclass
class Writer:
    core: WriterCore
    send: trio.MemorySendChannel[WriterMessage]
    config: GatewayConfig


@pytest.fixture
async def writer(config: GatewayConfig, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Writer]:
    # One message a batch, so that a queue forms behind the first and the first's
    # sync goes to the worker thread while the writer applies the others.
    monkeypatch.setattr(gateway.writer, "MAX_BATCH", 1)
    core = open_writer_core(config)
    send, receive = trio.open_memory_channel[WriterMessage](16)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_writer, receive, core)
        async with send:
            yield Writer(core, send, config)
    core.journal.close()
    core.store.close()


def _allocate(strategy: str, index: int, amount: int, request_id: str) -> CommandReceived:
    command = BalanceCommand(CommandKind.ALLOCATE, strategy, "USD", index, amount * UNIT)
    return CommandReceived(command, request_id)


def _fill(exec_id: str) -> FillReceived:
    # Booked to slot 1 (no strategy's order): 1 BTC bought for 100 USD.
    fill = Fill(exec_id, "BTC", "USD", Side.BUY, Decimal(1), Decimal(100), timestamp_ns=1)
    return FillReceived(fill)


async def _queue_behind_a_held_sync(
    writer: Writer, held: HeldSync, messages: list[WriterMessage]
) -> None:
    for message in messages:
        writer.send.send_nowait(message)
    try:
        assert await trio.to_thread.run_sync(held.entered.wait, 10)
        with trio.fail_after(5):
            while writer.send.statistics().current_buffer_used:  # the rest applied meanwhile
                await trio.sleep(0.001)
    except BaseException:
        held.release.set()
        raise


async def test_replies_wait_for_the_sync_that_covers_them(writer: Writer) -> None:
    held = HeldSync(writer.core.journal, False, threading.Event(), threading.Event())
    held.install()
    commands = [_allocate("a", 2, 10, "first"), _allocate("b", 3, 20, "second")]
    await _queue_behind_a_held_sync(writer, held, [commands[0], _fill("T1"), commands[1]])
    # Both applied (the store shows them), neither answered: the first's sync is held.
    try:
        assert writer.core.ledger.slots("USD")[2:4] == (10 * UNIT, 20 * UNIT)
        assert writer.core.ledger.slots("BTC")[1] == 11 * UNIT
        with trio.move_on_after(0.2):
            await commands[0].reply.wait()
            pytest.fail("a reply left before its sync returned")
    finally:
        held.release.set()
    with trio.fail_after(5):
        replies = [await command.reply.wait() for command in commands]
    assert [reply["ok"] for reply in replies] == [True, True]
    assert writer.core.journal.synced_seq == writer.core.journal.next_seq


async def test_a_failed_sync_takes_back_every_command_behind_it_and_keeps_fills(
    writer: Writer,
) -> None:
    core = writer.core
    before = list(core.ledger.slots("USD"))
    held = HeldSync(core.journal, True, threading.Event(), threading.Event())
    held.install()
    first, second = _allocate("a", 2, 10, "first"), _allocate("b", 3, 20, "second")
    # The fill lands between the two commands: taking them back must not take it too.
    await _queue_behind_a_held_sync(writer, held, [first, _fill("T1"), second])
    held.release.set()
    with trio.fail_after(5):
        replies = [await first.reply.wait(), await second.reply.wait()]
    assert [reply["error"]["code"] for reply in replies] == ["UNAVAILABLE"] * 2  # type: ignore[index]
    usd = core.ledger.slots("USD")
    assert usd[2:4] == (0, 0) and usd[0] == before[0] - 100 * UNIT  # the fill's cost stays
    assert usd[1] == before[1] - 100 * UNIT
    assert core.ledger.slots("BTC")[:2] == (11 * UNIT, 11 * UNIT)
    assert not core.ledger.owners and not {"first", "second"} & set(core.ledger.replies)
    core.ledger.check_invariant()
    # Nothing of it is durable: a restart finds the ledger as it was before.
    assert core.journal.next_seq == core.journal.synced_seq


async def test_replicating_fills_are_synced_within_the_delay_with_nothing_else_arriving(
    writer: Writer, mock_clock: trio.testing.MockClock
) -> None:
    """Only durable events leave the host: with no command or heartbeat to sync them,
    fills are still synced once FILL_SYNC_DELAY_S has passed (and only then)."""
    core = writer.core
    core.sync_fills = True
    for n in range(3):
        await writer.send.send(_fill(f"replicated-{n}"))
    await trio.testing.wait_all_tasks_blocked()
    assert core.journal.next_seq - core.journal.synced_seq == 3  # held: one sync for many
    mock_clock.jump(gateway.writer.FILL_SYNC_DELAY_S / 2)
    await trio.testing.wait_all_tasks_blocked()
    assert core.journal.synced_seq < core.journal.next_seq
    mock_clock.jump(gateway.writer.FILL_SYNC_DELAY_S)
    for _ in range(1_000_000):  # the sync runs in a worker thread
        if core.journal.synced_seq == core.journal.next_seq:
            break
        await trio.sleep(0)
    assert core.journal.synced_seq == core.journal.next_seq
    assert core.ledger.balances["BTC"][0] == 13 * UNIT


async def test_without_replication_fills_wait_for_the_next_sync(
    writer: Writer, mock_clock: trio.testing.MockClock
) -> None:
    core = writer.core
    await writer.send.send(_fill("alone"))
    await trio.testing.wait_all_tasks_blocked()
    mock_clock.jump(1.0)
    await trio.testing.wait_all_tasks_blocked()
    assert core.journal.synced_seq == core.journal.next_seq - 1  # until a command or a tick


async def _hold_the_heartbeat_sync(writer: Writer, exec_id: str) -> HeldSync:
    """A fill, then the heartbeat, whose sync (of that fill) is held in its thread."""
    held = HeldSync(writer.core.journal, False, threading.Event(), threading.Event())
    held.install()
    await writer.send.send(_fill(exec_id))
    await writer.send.send(HeartbeatTick())
    assert await trio.to_thread.run_sync(held.entered.wait, 10)
    return held


async def test_a_fill_is_applied_and_published_while_the_heartbeat_sync_is_held(
    writer: Writer,
) -> None:
    """The heartbeat's sync of fills has nobody waiting on it: it runs in the worker
    thread (inline, it would hold the loop 1-3 ms here, twice a second), and a fill
    arriving meanwhile is applied and visible at once, not after the disk."""
    core = writer.core
    held = await _hold_the_heartbeat_sync(writer, "before")
    try:
        await writer.send.send(_fill("during"))  # the queue is empty: the writer waits
        allocate = _allocate("a", 2, 10, "during")
        await writer.send.send(allocate)
        with StoreReader(writer.config.store_path) as reader, trio.fail_after(5):
            # Both visible (the command applied, its reply held) while the sync is held.
            wanted = (12 * UNIT, 10 * UNIT)
            while (reader.slot("BTC", 0).scaled, reader.slot("USD", 2).scaled) != wanted:
                await trio.sleep(0.001)
        with trio.move_on_after(0.1):
            await allocate.reply.wait()
            pytest.fail("a reply left before the sync covering it")
    finally:
        held.release.set()
    with trio.fail_after(5):
        assert (await allocate.reply.wait())["ok"] is True
    assert core.journal.synced_seq == core.journal.next_seq


async def test_the_channel_ends_while_a_sync_is_held_and_the_writer_waits_for_it(
    writer: Writer,
) -> None:
    core = writer.core
    held = await _hold_the_heartbeat_sync(writer, "last")
    try:
        await writer.send.aclose()
        await trio.sleep(0.05)
        assert core.journal.synced_seq < core.journal.next_seq
    finally:
        held.release.set()
    with trio.fail_after(5):
        while core.journal.synced_seq < core.journal.next_seq:
            await trio.sleep(0.001)


def test_a_batch_is_visible_before_its_records_are_encoded_and_commands_know_their_event(
    config: GatewayConfig,
) -> None:
    """Readers see a batch's changes before the writer encodes its records (a third of
    a fill's time in the writer; docs/performance.md), and a command's ``visible_at`` is
    still the journal's length just after its own record, as a mirror's read-your-writes
    needs."""
    core = open_writer_core(config)
    core.publish_all()
    reader = StoreReader(config.store_path)
    seen: list[tuple[int, int]] = []
    append = core.journal.append

    def noting(payload: bytes) -> None:
        seen.append((reader.slot("BTC", 1).scaled, reader.slot("USD", 2).scaled))
        append(payload)

    core.journal.append = noting  # type: ignore[method-assign]
    start = core.journal.next_seq
    first, second = _allocate("a", 2, 10, "r-1"), _allocate("a", 2, 5, "r-2")
    core.apply_batch([_fill("T-1"), first, _fill("T-2"), second])
    # Every record was encoded with the whole batch visible: 2 BTC bought, 15 USD allocated.
    assert seen == [(12 * UNIT, 15 * UNIT)] * 4
    assert core.journal.next_seq == start + 4
    assert (first.reply.visible_at, second.reply.visible_at) == (start + 2, start + 4)
    reader.close()
    core.journal.close()
    core.store.close()


def test_a_message_that_fails_leaves_what_was_applied_before_it_journalled_once(
    config: GatewayConfig,
) -> None:
    """Records are encoded after the batch is applied: a message that raises midway (a
    bug) must not leave the fills before it applied but unjournalled, nor journal them
    again with the next batch."""
    core = open_writer_core(config)
    start = core.journal.next_seq
    with pytest.raises(AssertionError):
        core.apply_batch([_fill("T-1"), "not a writer message"])  # type: ignore[list-item]
    assert core.journal.next_seq == start + 1
    core.apply_batch([_fill("T-2")])
    assert core.journal.next_seq == start + 2
    core.journal.close()
    core.store.close()


commands = st.builds(
    lambda kind, strategy, currency, index, amount, key: CommandReceived(
        BalanceCommand(kind, strategy, currency, index, int(amount * UNIT)),
        None if key is None else f"r-{key}",
    ),
    st.sampled_from(list(CommandKind)),
    strategies,
    currencies,
    indices,
    amounts,
    st.one_of(st.none(), st.integers(min_value=0, max_value=5)),  # keys repeat: recalled
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(fills.map(FillReceived), commands), max_size=40),
    st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
def test_what_the_writer_journals_batch_by_batch_restores_the_ledger_it_built(
    messages: list[FillReceived | CommandReceived], cuts: list[int]
) -> None:
    """Whatever the mix and however it is cut into batches, the journal the writer leaves
    (records encoded after each batch is applied and published) replays into the ledger
    the writer built: the same slots, owners, fill ids and remembered replies."""
    with tempfile.TemporaryDirectory(prefix="hft-batches-") as root:
        config = GatewayConfig(
            shm_dir=Path(root) / "shm", state_root=Path(root) / "state", run_dir=Path(root)
        )
        core = open_writer_core(config)
        # Its totals journalled too, as a start's bootstrap leaves them.
        core.apply_batch(
            [BalancesFetched({"USD": 1000 * UNIT, "USDT": 1000 * UNIT, "BTC": 10 * UNIT})]
        )
        journal, store = core.journal, core.store
        edges = sorted({0, len(messages), *(c for c in cuts if c < len(messages))})
        for start, end in itertools.pairwise(edges):
            core.apply_batch(list(messages[start:end]))
        journal.commit()
        built = core.ledger.to_snapshot()
        journal.close()
        store.close()
        restored, reopened, _ = restore_state(config)
        reopened.close()
        assert restored.to_snapshot() == built
