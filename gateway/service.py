"""The gateway service: owns every task, in the order that keeps state right.

The writer runs in the outer nursery and the producers (fills, bootstrap,
heartbeat, command server, reconciler) in an inner one, so a shutdown cancels
the producers and leaves the writer free to drain what they sent.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from gateway.commands import serve_commands
from gateway.config import HEARTBEAT_INTERVAL_S, GatewayConfig
from gateway.errors import BootstrapError, ConfigError, ExchangeError
from gateway.events import replay_events
from gateway.exchanges.base import ExchangeSession
from gateway.journal import Journal, RestoreReport, lock_state_dir
from gateway.ledger import Ledger, scale_fill
from gateway.memory import return_large_buffers
from gateway.messages import BalancesFetched, HeartbeatTick, WriterMessage
from gateway.metrics import Metrics, serve_metrics
from gateway.reconciler import ReconcileStatus, run_reconciler
from gateway.replication.keys import Target
from gateway.writer import WriterCore, run_writer
from mmapstore import StoreValueError, StoreWriter

if TYPE_CHECKING:
    from gateway.replication.publisher import ReplicationStatus

logger = logging.getLogger(__name__)

WRITER_QUEUE = 4096
BOOTSTRAP_ATTEMPTS = 3


@dataclass
class Running:
    """Handed to ``task_status.started()``: the live gateway's parts, for callers and tests."""

    core: WriterCore
    restore: RestoreReport
    stop: trio.Event  # set it to stop the gateway
    stopped: trio.Event  # set once it has stopped: journal flushed, store marked stopped


def restore_state(config: GatewayConfig) -> tuple[Ledger, Journal, RestoreReport]:
    """The ledger as the journal left it (snapshot + replay)."""
    holder: list[Ledger] = []

    def restore(snapshot: dict[str, object] | None) -> None:
        if snapshot is None:
            holder.append(Ledger(config.strategy_count))
            return
        ledger = Ledger.from_snapshot(snapshot)
        if ledger.strategy_count != config.strategy_count:
            raise ConfigError(
                f"the saved state has {ledger.strategy_count} slots, the configuration "
                f"{config.strategy_count}; run with --strategy-count {ledger.strategy_count}"
            )
        holder.append(ledger)

    def replay(records: Sequence[bytes]) -> None:
        replay_events(holder[0], records)

    journal, report = Journal.open(config.state_dir, restore, replay)
    holder[0].check_invariant()
    return holder[0], journal, report


async def run_heartbeat(send: trio.MemorySendChannel[HeartbeatTick]) -> None:
    """Ask the writer to refresh the store's heartbeat, twice a second."""
    async with send:
        while True:
            await send.send(HeartbeatTick())
            await trio.sleep(HEARTBEAT_INTERVAL_S)


async def run_gateway(
    config: GatewayConfig,
    exchange: ExchangeSession,
    *,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until its ``stop`` event is set (or it fails).

    Supports ``nursery.start``: ``started(Running)`` once balances are published
    and the command socket accepts. On stop, the producers are cancelled, the
    writer drains within ``config.shutdown_grace_s``, a snapshot is written and
    the store is marked stopped.

    Raises:
        JournalLockedError: another gateway writes this state directory.
        StoreLockedError: another gateway for this exchange is running.
        BootstrapError: the exchange's balances could not be fetched.
        JournalCorruptError: the saved state cannot be trusted.
    """
    return_large_buffers()  # snapshots' encodings must not stay resident (gateway/memory.py)
    # The state directory's lock first, then the store's: a second gateway is refused
    # before it touches the journal, or the store (its file may have vanished under the
    # first, and a new one at the path would hide the first's from new readers).
    state_lock = lock_state_dir(config.state_dir)
    try:
        store = StoreWriter.open(
            config.store_path, exchange=config.exchange, strategy_count=config.strategy_count
        )
    except BaseException:
        os.close(state_lock)
        raise
    try:
        if config.fresh_state:
            _set_state_aside(config.state_dir)  # the lock goes aside with it: take the new one's
            aside, state_lock = state_lock, lock_state_dir(config.state_dir)
            os.close(aside)
        ledger, journal, report = restore_state(config)
        try:
            _check_account(ledger, exchange.account(), config)
        except BaseException:
            journal.close()
            raise
    except BaseException:
        store.close()
        os.close(state_lock)
        raise
    reconcile_status = ReconcileStatus()
    replication: ReplicationStatus | None = None
    if config.replicate is not None:
        # Imported only when asked for: the Redis client costs ~0.3 s to import.
        from gateway.replication.publisher import ReplicationStatus  # noqa: PLC0415

        replication = ReplicationStatus(Target.parse(config.replicate, config.exchange).shown)

    def status_extra() -> dict[str, object]:
        extra = {**exchange.health().as_status(), **reconcile_status.as_dict()}
        if replication is not None:
            extra.update(replication.as_dict())
        return extra

    core = WriterCore(
        ledger, journal, store, snapshot_every=config.snapshot_every, status_extra=status_extra
    )
    # Only durable events leave the host: with mirrors waiting, fills are synced at once.
    core.sync_fills = replication is not None
    # A first start that fails before it is ready leaves no state behind: its slot
    # count, epoch and files would otherwise bind (or refuse) the next start.
    fresh = ledger.epoch_ns == 0 and report.snapshot_seq == 0 and report.replayed == 0
    ready = False
    if ledger.epoch_ns == 0:
        core.open_ledger(time.time_ns())
    if ledger.account != exchange.account():
        if ledger.account:
            logger.warning(
                "state %s re-bound from %s to %s (--rebind-account)",
                config.state_dir, ledger.account, exchange.account(),
            )  # fmt: skip
        else:
            logger.info("state %s bound to %s", config.state_dir, exchange.account())
        core.bind_account(exchange.account())
    core.publish_all()  # restored values, marked "starting" until the bootstrap lands
    stop, stopped = trio.Event(), trio.Event()
    send, receive = trio.open_memory_channel[WriterMessage](WRITER_QUEUE)
    try:
        async with trio.open_nursery() as outer:
            await outer.start(run_writer, receive, core)
            async with send, trio.open_nursery() as producers:
                # Subscribe to fills before the REST snapshot, so no fill falls between them.
                # A catch-up never starts past this host's clock: the writer books what is
                # dated ahead as of now, but a journal from before it did may hold such a
                # date (starting earlier only fetches again what the writer knows by id).
                await producers.start(
                    partial(
                        exchange.run_fills,
                        position_ns=lambda: min(ledger.position_ns, time.time_ns()),
                        transfer_position_ns=lambda: min(
                            ledger.transfer_position_ns, time.time_ns()
                        ),
                    ),
                    send.clone(),
                )
                await _bootstrap(exchange, send, core)
                store.mark_live()
                producers.start_soon(run_heartbeat, send.clone())
                if config.reconcile_interval_s > 0:
                    await producers.start(
                        partial(
                            run_reconciler,
                            fills_applied=lambda: core.stats.fills_applied,
                            feed_connection=exchange.feed_connection,
                            ledger_totals=lambda: {c: s[0] for c, s in ledger.balances.items()},
                            interval_s=config.reconcile_interval_s,
                            recheck_s=config.recheck_s,
                            status=reconcile_status,
                        ),
                        exchange,
                        send.clone(),
                    )
                metrics = None
                if config.metrics_port is not None:
                    metrics = Metrics()
                    metrics.watch(
                        core, lambda: send.statistics().current_buffer_used, exchange.health
                    )
                    await producers.start(serve_metrics, metrics, config.metrics_port)
                await producers.start(serve_commands, config, send.clone(), metrics)
                if replication is not None and config.replicate is not None:
                    from gateway.replication.publisher import (  # noqa: PLC0415
                        Publisher,
                        serve_remote_commands,
                    )

                    target = Target.parse(config.replicate, config.exchange)
                    publisher = Publisher(
                        target,
                        journal,
                        epoch_ns=ledger.epoch_ns,
                        strategy_count=ledger.strategy_count,
                        conditions=lambda: int(core.conditions),
                        status=replication,
                    )
                    await producers.start(publisher.run)
                    await producers.start(
                        serve_remote_commands,
                        target,
                        send.clone(),
                        ledger.strategy_count,
                        replication,
                    )
                logger.info(
                    "gateway ready: %d currencies, %d slots", len(ledger.balances),
                    config.strategy_count,
                )  # fmt: skip
                ready = True
                task_status.started(Running(core, report, stop, stopped))
                await stop.wait()
                logger.info("stopping: closing the command socket and the streams")
                producers.cancel_scope.cancel()
            # The writer now drains what the producers sent, then sees the channel end.
            outer.cancel_scope.deadline = trio.current_time() + config.shutdown_grace_s
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(config.shutdown_grace_s):
            if ready or not fresh:
                await _close_core(core)
            else:
                logger.warning(
                    "the first start failed before the gateway was ready: %s is left "
                    "without a journal, so the next start begins afresh", config.state_dir,
                )  # fmt: skip
                core.journal.abandon()
                core.store.close()
        os.close(state_lock)  # once the journal is closed
        stopped.set()


def _check_account(ledger: Ledger, account: str, config: GatewayConfig) -> None:
    """Refuse a state directory that belongs to another account.

    Raises:
        ConfigError: it is bound to another account and no re-bind was asked for.
    """
    if not ledger.account or ledger.account == account or config.rebind_account:
        return
    raise ConfigError(
        f"{config.state_dir} holds the slots of {ledger.account}, but these credentials are "
        f"{account}: give this account its own --state-dir (or HFT_STATE_DIR), pass "
        "--rebind-account if it is the same account with a new key, or --fresh-state "
        "to set the old state aside and start with empty slots"
    )


def _set_state_aside(state_dir: Path) -> None:
    """Move a state directory out of the way (never delete it): ``--fresh-state``."""
    if not state_dir.exists():
        return
    aside = state_dir.with_name(f"{state_dir.name}.set-aside-{time.strftime('%Y%m%dT%H%M%S')}")
    state_dir.rename(aside)
    logger.warning("--fresh-state: %s set aside as %s; starting with empty slots", state_dir, aside)


async def _bootstrap(
    exchange: ExchangeSession, send: trio.MemorySendChannel[WriterMessage], core: WriterCore
) -> None:
    """Take the exchange's totals as the ledger's, once no fill raced the request.

    A fill or transfer applied while the REST call was in flight may or may not be in its
    answer, so such an answer is fetched again (a few times, then taken: the
    reconciler mends what is left).

    Raises:
        BootstrapError: the totals could not be fetched.
    """

    def moved() -> int:
        return core.stats.fills_applied + core.stats.transfers_applied

    for attempt in range(BOOTSTRAP_ATTEMPTS):
        before = moved()
        requested_ns = time.time_ns()
        try:
            totals = await exchange.fetch_totals()
        except ExchangeError as exc:
            raise BootstrapError(f"could not fetch the exchange's balances: {exc}") from exc
        if moved() == before or attempt + 1 == BOOTSTRAP_ATTEMPTS:
            break
        logger.info(
            "bootstrap: a fill or transfer landed during the balance request; fetching again"
        )
    scaled = {}
    for currency, amount in totals.items():
        try:
            scaled[currency] = scale_fill(amount)
        except StoreValueError:
            raise BootstrapError(
                f"the exchange's {currency} balance ({amount}) is larger than the store can hold"
            ) from None
    bootstrap = BalancesFetched(scaled, requested_ns)
    await send.send(bootstrap)
    await bootstrap.applied.wait()


async def _close_core(core: WriterCore) -> None:
    try:
        await trio.to_thread.run_sync(core.journal.commit)
        if core.journal.events_since_snapshot:
            data = core.ledger.to_snapshot()
            await trio.to_thread.run_sync(core.journal.write_snapshot, data)
    finally:
        core.journal.close()
        core.store.close()
