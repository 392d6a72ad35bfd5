"""A gateway replicating through a real redis-server to a mirror "on another host".

Each test is one of issue 14's promises, with real processes and sockets: the
two stores equal after fills and commands, read-your-writes through the
mirror, Redis killed and restarted empty, the mirror killed, a gap forced, and
one stream for one gateway only.
"""

from __future__ import annotations

import shutil
import signal
import socket
import time
from decimal import Decimal

import httpx
import pytest

from clients.command import STRATEGY_BALANCE_CMD, IPCCommandSystem
from clients.errors import CommandRefusedError
from gateway.launcher import STOP_GRACE_S
from mmapstore import Condition, StoreReader
from tests.kraken.stack import KrakenStack, settled, wait_until
from tests.replication.conftest import HostsFactory, MirrorHost, RedisServer, slots_of

Hosts = tuple[KrakenStack, MirrorHost]


def converged(stack: KrakenStack, mirror: MirrorHost) -> bool:
    """The mirror has applied every event the gateway journalled, and both files agree."""
    status = mirror.status()
    if status["applied_events"] != stack.status()["journal_events"] or not status["current"]:
        return False
    return slots_of(mirror.store) == slots_of(stack.store)


def trades_done(stack: KrakenStack, orders: int) -> None:
    wait_until(lambda: int(str(stack.control("state")["orders"])) >= orders, 60, "the trades")


def allocate(strategy: str, amount: str, request_id: str, index: int = 2) -> dict[str, object]:
    return {
        "cmd": "allocate", "strategy": strategy, "currency": "USD", "amount": amount,
        "index": index, "request_id": request_id,
    }  # fmt: skip


def test_the_mirror_equals_the_gateway_after_fills_and_commands(
    hosts: Hosts, redis_server: RedisServer
) -> None:
    stack, mirror = hosts
    mirror.start(redis_server.url)
    stack.control("trade-generator", {"rate": 300, "count": 300, "userrefs": [2, 3, 4]})
    for n in range(20):  # commands on both hosts while the fills flow
        assert mirror.command(allocate("remote", "1.5", f"m-{n}", index=3))["ok"]
        assert IPC(stack).command(allocate("local", "2", f"g-{n}"))["ok"]
    trades_done(stack, 300)
    wait_until(lambda: settled(stack), 60, "the gateway to settle")
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge")
    assert slots_of(mirror.store) == slots_of(stack.store)
    query = mirror.command({"cmd": "query"})  # answered by the mirror from its own ledger
    assert query["owners"] == {"2": "local", "3": "remote"}
    with StoreReader(mirror.store) as reader:
        writer = reader.writer_status()
    assert writer.mirror and writer.applied_seq == stack.status()["journal_events"]
    assert writer.source_age_s < 3 and Condition.SOURCE_STALE not in writer.conditions
    with StoreReader(stack.store) as reader:
        assert not reader.writer_status().mirror  # the gateway's own file says so too
    assert mirror.status()["resyncs"] == 0


def test_a_command_through_the_mirror_is_visible_on_it_when_answered(
    hosts: Hosts, redis_server: RedisServer
) -> None:
    stack, mirror = hosts
    mirror.start(redis_server.url)
    for n in range(10):
        reply = mirror.command(allocate("ryw", "10", f"ryw-{n}"))
        assert reply["ok"], reply
        # Read-your-writes: the mirror's own file shows the reply's balances already.
        with StoreReader(mirror.store) as reader:
            assert [str(v) for v in reader.record("USD").exact_all()] == reply["balances"]
    # The same request_id again: the gateway's remembered answer, applied once.
    again = mirror.command(allocate("ryw", "10", "ryw-0"))
    assert again["ok"] and slots_of(stack.store)["USD"][2] == Decimal(100)
    with pytest.raises(CommandRefusedError) as refused:  # slot 2 is ryw's
        mirror.command(allocate("other", "1", "taken"))
    assert refused.value.code == "SLOT_OWNED"
    assert stack.status()["replication"]["remote_commands"] >= 12  # type: ignore[index]


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    assert values, f"{name} is not served"
    return float(values[0])


def test_redis_killed_then_restarted_empty(
    make_hosts: HostsFactory, redis_server: RedisServer
) -> None:
    with socket.socket() as probe:  # a free port for the gateway's metrics
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stack, mirror = make_hosts("--metrics-port", str(port))
    mirror.start(redis_server.url)
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge")
    assert metric(port, "gateway_replication_publishing") == 1
    redis_server.kill()
    wait_until(lambda: metric(port, "gateway_replication_publishing") == 0, 10, "the metric")
    # The gateway and its local strategies carry on, unaffected.
    assert IPC(stack).command(allocate("local", "7", "during-1"))["ok"]
    before = stack.control("state")["orders"]
    assert isinstance(before, int)
    stack.control("trade-generator", {"rate": 200, "count": 100, "userrefs": [2, 3]})
    # The mirror keeps its last values, flagged stale; its commands fail fast.
    with StoreReader(mirror.store) as reader:
        wait_until(
            lambda: Condition.SOURCE_STALE in reader.writer_status().conditions, 10, "stale flag"
        )
        assert reader.record("USD").exact(0) > 0
    started = time.monotonic()
    with pytest.raises(CommandRefusedError) as refused:
        mirror.command(allocate("remote", "1", "while-down"))
    assert refused.value.code == "UNREACHABLE"
    assert time.monotonic() - started < 1.0
    status = mirror.status_command()
    assert status.returncode != 0 and "not healthy" in status.stderr
    trades_done(stack, before + 100)
    # Back, and empty: the gateway republishes from its journal, the mirror converges
    # to everything that happened meanwhile.
    redis_server.start()
    wait_until(lambda: settled(stack), 60, "the gateway to settle")
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge again")
    assert mirror.command(allocate("remote", "1", "after", index=3))["ok"]
    assert metric(port, "gateway_replication_publishing") == 1
    wait_until(lambda: metric(port, "gateway_replication_behind_events") == 0, 10, "no lag")
    assert metric(port, "gateway_replication_remote_commands_total") >= 1
    ok = mirror.status_command()
    assert "current:                yes" in ok.stdout, ok.stdout


def test_a_mirror_killed_resumes_where_it_was(hosts: Hosts, redis_server: RedisServer) -> None:
    stack, mirror = hosts
    mirror.start(redis_server.url)
    stack.control("trade-generator", {"rate": 300, "count": 400, "userrefs": [2, 3, 4]})
    time.sleep(0.6)
    mirror.kill()  # -9, mid-stream
    time.sleep(0.3)
    mirror.start(redis_server.url)
    assert "resuming from the local copy" in mirror.log()
    trades_done(stack, 400)
    wait_until(lambda: settled(stack), 60, "the gateway to settle")
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge")
    assert mirror.status()["resyncs"] == 0  # it went on from its copy, no resync needed


def test_a_gap_in_the_stream_resyncs_from_the_snapshot(
    hosts: Hosts, redis_server: RedisServer
) -> None:
    stack, mirror = hosts
    mirror.start(redis_server.url)
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge")
    mirror.kill()
    for n in range(5):
        assert IPC(stack).command(allocate("local", "1", f"gap-{n}"))["ok"]
    # Events the stopped mirror has not read are lost from the stream.
    journal_events = stack.status()["journal_events"]
    assert isinstance(journal_events, int)
    redis_server.cli("XDEL", "hft:kraken:log", f"{journal_events - 3}-1")
    mirror.start(redis_server.url)
    wait_until(lambda: mirror.status()["resyncs"] == 1, 30, "a resync")
    assert "asking the gateway to publish everything again" in mirror.log()
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge")


def test_two_gateways_never_publish_into_one_stream(
    hosts: Hosts, redis_server: RedisServer, tmp_path_factory: object
) -> None:
    stack, mirror = hosts
    mirror.start(redis_server.url)
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge")
    # A second gateway (another account's, on its own simulator) pointed at the same stream.
    other = KrakenStack(
        stack.root.parent / "other", stack.run_dir.parent / f"{stack.run_dir.name}-o"
    )
    try:
        other.start_sim()
        other.start_gateway("--replicate", redis_server.url)
        wait_until(
            lambda: str(other.status()["replication"]["state"]).startswith("refused"),  # type: ignore[index]
            30,
            "the second gateway to be refused",
        )
        assert IPC(other).command(allocate("x", "1", "other-1"))["ok"]  # it carries on
        assert IPC(stack).command(allocate("local", "3", "first-1"))["ok"]
        wait_until(lambda: converged(stack, mirror), 30, "the mirror to follow the first only")
        assert mirror.status()["resyncs"] == 0
        # The first stops cleanly: it frees the stream at once (not after the key's TTL).
        assert stack.stop_gateway() == 0
        wait_until(
            lambda: other.status()["replication"]["state"] == "publishing",  # type: ignore[index]
            5,
            "the second gateway to take the stream over",
        )
    finally:
        other.kill()
        shutil.rmtree(other.run_dir, ignore_errors=True)


class IPC:
    """Commands to host A's gateway over its own socket."""

    def __init__(self, stack: KrakenStack) -> None:
        self.stack = stack

    def command(self, payload: dict[str, object]) -> dict[str, object]:
        system = IPCCommandSystem("gateway-test", run_dir=self.stack.run_dir, timeout_s=10)
        system.start()
        try:
            return system.send_command_blocking("kraken_gateway", STRATEGY_BALANCE_CMD, payload)
        finally:
            system.close()


def test_the_gateway_stops_cleanly_while_replicating(
    hosts: Hosts, redis_server: RedisServer
) -> None:
    stack, mirror = hosts
    mirror.start(redis_server.url)
    assert stack.stop_gateway(signal.SIGTERM) == 0
    assert mirror.process is not None
    mirror.process.send_signal(signal.SIGTERM)
    assert mirror.process.wait(timeout=STOP_GRACE_S) == 0
    with StoreReader(mirror.store) as reader:
        assert reader.writer_status().health.value == "stopped"
