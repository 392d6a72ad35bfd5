"""A journal outage while replicating: the recovery snapshot reaches Redis.

In-process (the gateway's own service with the test suite's fake exchange at the
edge, and a real redis-server), for the journal is made unwritable from inside.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import cbor2
import coredis
import trio

from gateway.config import GatewayConfig
from gateway.ledger import UNIT, Fill, Ledger, Side
from gateway.service import Running, run_gateway
from mmapstore import Condition, StoreReader
from tests.gateway.conftest import TOTALS
from tests.gateway.fake_exchange import FakeExchange
from tests.gateway.test_degraded import journal_on_a_full_disk
from tests.replication.conftest import RedisServer


async def published(url: str) -> tuple[int, bytes, str]:
    async with coredis.Redis.from_url(url, decode_responses=False) as redis:
        snap = await redis.hgetall("hft:kraken:snap")
        lineage = await redis.hget("hft:kraken:meta", "lineage")
    return int(snap.get(b"seq", -1)), bytes(snap.get(b"body", b"")), (lineage or b"").decode()


async def test_a_snapshot_taken_again_after_a_journal_outage_is_published(
    tmp_path: Path, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """Snapshotting after every batch, the outage begins right after a snapshot: the
    recovery snapshot (with the fill applied during the outage) falls on a sequence
    already published, and still reaches Redis, as a new lineage."""
    run_dir = Path(tempfile.mkdtemp(prefix="hft-"))  # short: a socket path has ~100 bytes
    config = GatewayConfig(
        shm_dir=tmp_path / "shm", state_root=tmp_path / "state", run_dir=run_dir,
        replicate=redis_server.url, snapshot_every=1, reconcile_interval_s=0,
    )  # fmt: skip
    exchange = FakeExchange(TOTALS)
    gateway: Running = await nursery.start(run_gateway, config, exchange)
    try:
        with trio.fail_after(10):
            while (await published(redis_server.url))[0] != gateway.core.journal.next_seq:
                await trio.sleep(0.05)
        seq, _, lineage = await published(redis_server.url)
        with StoreReader(config.store_path) as reader:
            with journal_on_a_full_disk(gateway):
                fill = Fill("T-outage", "BTC", "USD", Side.BUY, Decimal(1), Decimal(100),
                            userref=3, timestamp_ns=time.time_ns())  # fmt: skip
                await exchange.push_fill(fill)
                with trio.fail_after(5):
                    while Condition.JOURNAL_DOWN not in reader.writer_status().conditions:
                        await trio.sleep(0.01)
            with trio.fail_after(5):
                while Condition.JOURNAL_DOWN in reader.writer_status().conditions:
                    await trio.sleep(0.05)
        assert gateway.core.journal.next_seq == seq  # the fill was never journalled
        with trio.fail_after(10):
            while (await published(redis_server.url))[2] == lineage:
                await trio.sleep(0.05)
        new_seq, body, _ = await published(redis_server.url)
        assert new_seq == seq
        assert Ledger.from_snapshot(cbor2.loads(body)).slots("BTC")[3] == 1 * UNIT
    finally:
        gateway.stop.set()
        await gateway.stopped.wait()
        shutil.rmtree(run_dir, ignore_errors=True)
