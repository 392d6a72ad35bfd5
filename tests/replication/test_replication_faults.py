"""Replication's harder cases: snapshots and trimming mid-stream, hostile entries in the
command stream, a gateway that stops answering, and Redis with a password."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import cbor2
import pytest

from clients.errors import CommandRefusedError
from gateway.events import FillApplied, encode_event
from gateway.ledger import Fill, Side
from tests.kraken.stack import KrakenStack, settled, wait_until
from tests.replication.conftest import (
    HostsFactory,
    MirrorHost,
    RedisServer,
    slots_of,
    xadd_raw,
)
from tests.replication.test_mirror_e2e import IPC, allocate, converged, trades_done


def snapshot_config(tmp_path: Path, every: int) -> str:
    config = tmp_path / "gateway.toml"
    config.write_text(f"snapshot_every = {every}\n")
    return str(config)


def _following(
    hosts: tuple[KrakenStack, MirrorHost], redis_server: RedisServer
) -> tuple[KrakenStack, MirrorHost]:
    """The gateway, and a mirror started on it and caught up."""
    stack, mirror = hosts
    mirror.start(redis_server.url)
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge")
    return stack, mirror


def test_snapshots_mid_stream_rebase_the_mirror_and_trim_the_stream(
    make_hosts: HostsFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    stack, mirror = make_hosts("--config", snapshot_config(tmp_path, 40))
    mirror.start(redis_server.url)
    stack.control("trade-generator", {"rate": 300, "count": 200, "userrefs": [2, 3, 4]})
    trades_done(stack, 200)
    wait_until(lambda: settled(stack), 60, "the gateway to settle")
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge")
    published = stack.status()["replication"]
    assert isinstance(published, dict) and published["snapshots_published"] >= 5
    # Trimmed behind the snapshot before the newest: the stream starts at its marker.
    taken = [int(n) for n in re.findall(r"snapshot at event (\d+) published", stack.log("gateway"))]
    assert int(redis_server.cli("HGET", "hft:kraken:snap", "seq")) == taken[-1]
    first = redis_server.cli("XRANGE", "hft:kraken:log", "-", "+", "COUNT", "1").splitlines()[0]
    assert first == f"{taken[-2]}-0"
    assert mirror.status()["resyncs"] == 0  # every marker was met in order: no resync
    # A mirror stopped while the stream was trimmed past it resyncs from the snapshot.
    mirror.kill()
    stack.control("trade-generator", {"rate": 300, "count": 150, "userrefs": [2, 3]})
    trades_done(stack, 350)
    wait_until(lambda: settled(stack), 60, "the gateway to settle")
    mirror.start(redis_server.url)
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge again")
    assert mirror.status()["resyncs"] == 1
    assert "resyncing from the snapshot" in mirror.log()


def test_hostile_entries_in_the_command_stream_change_nothing(
    hosts: tuple[KrakenStack, MirrorHost], redis_server: RedisServer
) -> None:
    stack, mirror = _following(hosts, redis_server)
    before = slots_of(stack.store)
    far = str(time.time_ns() + 60 * 10**9).encode()
    query = cbor2.dumps({"cmd": "query"})
    hostile: list[dict[bytes, bytes]] = [
        {b"m": b"x", b"r": b"1", b"b": b"\xff\xfe not cbor", b"x": far},
        {b"m": b"../../etc", b"r": b"1", b"b": query, b"x": far},  # a mirror id that is a path
        {b"m": b"ok", b"x": far},  # no correlation, no body
        {b"m": b"ok", b"r": b"2", b"b": b"A" * 70000, b"x": far},  # too large
        {b"m": b"ok", b"r": b"3", b"b": query, b"x": far},  # mirrors answer queries themselves
        {b"junk": b"only"},
        {b"m": b"ok", b"r": b"4", b"b": cbor2.dumps([1, 2]), b"x": b"not a number"},
        {b"m": b"ok", b"r": b"5", b"b": cbor2.dumps({"cmd": "allocate", "amount": "1e999"}),
         b"x": far},
        {b"m": b"ok", b"r": b"6", b"b": b"\x9f" * 5000, b"x": far},  # nested past any limit
    ]  # fmt: skip
    for fields in hostile:
        xadd_raw(redis_server.url, "hft:kraken:cmd", fields)
    # Each well-formed one got its refusal on the reply stream of the mirror it names.
    wait_until(lambda: int(redis_server.cli("XLEN", "hft:kraken:reply:ok")) >= 3, 10, "replies")
    time.sleep(1.0)
    assert stack.gateway is not None and stack.gateway.poll() is None
    assert slots_of(stack.store) == before
    # And it goes on serving: a mirror's command and a local one.
    assert mirror.command(allocate("remote", "2", "after-hostile", index=3))["ok"]
    assert IPC(stack).command(allocate("local", "2", "after-hostile-local"))["ok"]
    log = stack.log("gateway")
    assert "Traceback" not in log and "without a usable mirror id" in log


def test_entries_forged_into_the_log_heal_by_a_new_lineage(
    hosts: tuple[KrakenStack, MirrorHost], redis_server: RedisServer
) -> None:
    stack, mirror = _following(hosts, redis_server)
    lineage = mirror.status()["lineage"]
    # Ids no publisher writes, ahead of the stream: the publisher's next XADD fails.
    redis_server.cli("XADD", "hft:kraken:log", "*", "e", "forged")
    redis_server.cli("XADD", "hft:kraken:log", "99999999999999-7", "e", "forged")
    for n in range(3):
        assert IPC(stack).command(allocate("local", "1", f"forged-{n}"))["ok"]
    wait_until(lambda: mirror.status()["lineage"] != lineage, 30, "a new lineage")
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge again")
    assert stack.gateway is not None and stack.gateway.poll() is None
    assert mirror.process is not None and mirror.process.poll() is None


def _forged_fill(quantity: str, price: str) -> bytes:
    """A fill record of the earlier form (a map, replayed by its decimals)."""
    fill = Fill("T-forged", "BTC", "USD", Side.BUY, Decimal(1), Decimal(100), userref=2)
    body = cbor2.loads(encode_event(FillApplied(fill)))
    return cbor2.dumps({**body, "qty": quantity, "price": price})


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        # An event the gateway never journalled, which mirrors would apply: the publisher
        # carried on after it (it looked only at the entry's id), and every mirror kept
        # 5 BTC more than the gateway, the stream's "one unbroken copy" broken for good.
        ({b"e": _forged_fill("5", "100")}, "applies"),
        # One no exchange number reaches: decimal.Inexact went past the mirror's checks
        # and ended it with a traceback.
        ({b"e": _forged_fill("9" * 60, "9" * 60)}, "cannot apply event"),
        # No payload: the mirror read it again and again, as fast as Redis answered.
        ({b"x": b"1"}, "has no payload"),
    ],
)
def test_an_entry_forged_at_the_next_id_gives_a_new_lineage_the_mirrors_follow(
    hosts: tuple[KrakenStack, MirrorHost],
    redis_server: RedisServer,
    fields: dict[bytes, bytes],
    what: str,
) -> None:
    stack, mirror = _following(hosts, redis_server)
    lineage, position = mirror.status()["lineage"], mirror.status()["applied_events"]
    xadd_raw(redis_server.url, "hft:kraken:log", fields, f"{position}-1")
    time.sleep(1.0)  # the mirror meets it before the gateway writes again
    resyncs = mirror.status()["resyncs"]
    for n in range(3):  # the publisher's next event is refused at that id
        assert IPC(stack).command(allocate("local", "1", f"forged-{what}-{n}"))["ok"]
    wait_until(lambda: mirror.status()["lineage"] != lineage, 30, "a new lineage")
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge again")
    assert mirror.process is not None and mirror.process.poll() is None
    assert stack.gateway is not None and stack.gateway.poll() is None
    assert "Traceback" not in mirror.log()
    if what == "applies":  # found by the publisher's beat, or its write refused at that id
        assert re.search(
            "the stream holds an entry this gateway did not write|"
            "the stream's last event is not this journal's",
            stack.log("gateway"),
        )
    else:  # the mirror is stuck at it: it asks for a new lineage, and does not loop
        assert re.search(f"a mirror asked: [^\n]*{what}", stack.log("gateway"))
        assert int(str(resyncs)) <= 1


def test_an_event_forged_beside_a_quiet_gateway_is_found_by_its_beat(
    hosts: tuple[KrakenStack, MirrorHost], redis_server: RedisServer
) -> None:
    """No fill and no command: the gateway does not write, so only its heartbeat can find
    the entry. Until this, every mirror showed the forged 5 BTC until the next event."""
    stack, mirror = _following(hosts, redis_server)
    lineage, position = mirror.status()["lineage"], mirror.status()["applied_events"]
    forged = {b"e": _forged_fill("5", "100")}
    xadd_raw(redis_server.url, "hft:kraken:log", forged, f"{position}-1")
    wait_until(lambda: mirror.status()["lineage"] != lineage, 10, "a new lineage")
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge again")
    assert stack.status()["journal_events"] == position  # the gateway wrote nothing
    assert "the stream holds an entry this gateway did not write" in stack.log("gateway")


def test_an_event_forged_where_the_publisher_is_behind_is_found_when_it_comes_back(
    hosts: tuple[KrakenStack, MirrorHost], redis_server: RedisServer
) -> None:
    """The publisher cannot write for a while (here its user's writes are revoked), the
    gateway journals on, and someone writes the stream's next entry. By ids alone, the
    publisher came back, took that entry for its own and carried on after it."""
    stack, mirror = _following(hosts, redis_server)
    position = mirror.status()["applied_events"]
    redis_server.cli("ACL", "SETUSER", "admin", "on", ">admin-pw", "~*", "&*", "+@all")
    redis_server.cli("ACL", "SETUSER", "default", "-@write")
    try:
        wait_until(lambda: "replication down" in stack.log("gateway"), 10, "the publisher held")
        for n in range(3):
            assert IPC(stack).command(allocate("local", "1", f"behind-{n}"))["ok"]
        subprocess.run(
            ["redis-cli", "-p", str(redis_server.port), "--user", "admin", "--pass",
             "admin-pw", "--no-auth-warning", "XADD", "hft:kraken:log", f"{position}-1",
             "e", "forged"],
            check=True, capture_output=True,
        )  # fmt: skip
    finally:
        redis_server.cli("ACL", "SETUSER", "default", "+@all")
    wait_until(
        lambda: "the stream's last event is not this journal's" in stack.log("gateway"),
        20,
        "the publisher to find the entry not its own",
    )
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge again")


def test_a_lineage_forged_into_the_meta_is_put_back_by_the_gateway(
    hosts: tuple[KrakenStack, MirrorHost], redis_server: RedisServer
) -> None:
    """Mirrors wait for the snapshot of the lineage the meta names: one no gateway
    published kept every mirror waiting, stale, for ever."""
    stack, mirror = _following(hosts, redis_server)
    lineage = mirror.status()["lineage"]
    redis_server.cli("HSET", "hft:kraken:meta", "lineage", "forged")
    time.sleep(1.0)
    for n in range(2):
        assert IPC(stack).command(allocate("local", "1", f"meta-{n}"))["ok"]
    wait_until(lambda: converged(stack, mirror), 15, "the mirror to converge again")
    assert mirror.status()["lineage"] == lineage
    assert redis_server.cli("HGET", "hft:kraken:meta", "lineage").strip() == lineage


def test_a_forged_snapshot_the_mirror_cannot_load_gives_a_new_lineage(
    hosts: tuple[KrakenStack, MirrorHost], redis_server: RedisServer
) -> None:
    """A snapshot no gateway wrote, named as the published one: the mirror loaded it,
    failed, loaded it again, as fast as Redis answered, and never asked for another."""
    stack, mirror = _following(hosts, redis_server)
    lineage = mirror.status()["lineage"]
    redis_server.cli("HSET", "hft:kraken:snap", "seq", "0", "body", "junk", "lineage", "forged")
    redis_server.cli("HSET", "hft:kraken:meta", "lineage", "forged")
    wait_until(
        lambda: mirror.status()["lineage"] not in (lineage, "forged") and converged(stack, mirror),
        30,
        "a new lineage, and the mirror converged on it",
    )
    assert "the snapshot at 0 is unusable" in mirror.log()
    assert int(str(mirror.status()["resyncs"])) <= 2
    assert "Traceback" not in mirror.log()


def test_requests_to_publish_everything_again_are_taken_at_most_every_ten_seconds(
    hosts: tuple[KrakenStack, MirrorHost], redis_server: RedisServer
) -> None:
    """Each request costs every mirror a resync, and any user who may write the key (every
    mirror's may) could ask twice a second: the gateway took each one."""
    stack, mirror = _following(hosts, redis_server)
    for n in range(4):
        redis_server.cli("SET", "hft:kraken:republish", f"asked {n}")
        time.sleep(1.0)
    asked = re.findall(r"a mirror asked: asked \d", stack.log("gateway"))
    assert asked == ["a mirror asked: asked 0"]
    # The last one is kept, not dropped: it is taken once the interval has passed.
    assert redis_server.cli("GET", "hft:kraken:republish").strip() == "asked 3"
    wait_until(lambda: "a mirror asked: asked 3" in stack.log("gateway"), 15, "the request kept")
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge again")


def test_a_command_the_gateway_never_answers_is_unknown_then_resent_once(
    hosts: tuple[KrakenStack, MirrorHost], redis_server: RedisServer
) -> None:
    stack, mirror = hosts
    mirror.start(redis_server.url, "--command-timeout", "1.5")  # under the 3 s of staleness
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge")
    assert stack.gateway is not None
    os.kill(stack.gateway.pid, signal.SIGSTOP)  # hung: its heartbeat has not yet gone stale
    try:
        with pytest.raises(CommandRefusedError) as unknown:
            mirror.command(allocate("remote", "5", "hung-1", index=3), timeout_s=15)
        assert unknown.value.code == "OUTCOME_UNKNOWN"
        # Once the heartbeat is stale too: refused at once, nothing sent.
        wait_until(
            lambda: "heartbeat" in str(mirror.status()["stale_reason"]), 10, "a stale source"
        )
        with pytest.raises(CommandRefusedError) as unreachable:
            mirror.command(allocate("remote", "5", "hung-2", index=3))
        assert unreachable.value.code == "UNREACHABLE"
    finally:
        os.kill(stack.gateway.pid, signal.SIGCONT)
    # Woken, the gateway finds the first command past its deadline and does not apply it.
    wait_until(lambda: mirror.status()["current"], 30, "the mirror to be current")
    time.sleep(1.0)
    assert "after its deadline: not applied" in stack.log("gateway")
    assert slots_of(stack.store)["USD"][3] == slots_of(mirror.store)["USD"][3]
    owners = mirror.command({"cmd": "query"})["owners"]
    assert "3" not in owners  # type: ignore[operator]
    # Resent with the same request_id: applied, once.
    assert mirror.command(allocate("remote", "5", "hung-1", index=3))["ok"]
    assert mirror.command(allocate("remote", "5", "hung-1", index=3))["ok"]
    wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge")
    assert mirror.command({"cmd": "query"})["owners"] == {"3": "remote"}


# The least privileges docs/replication.md gives each side, as Redis ACL rules.
GATEWAY_ACL = ("~hft:kraken:*", "+@stream", "+@hash", "+@string", "+@scripting", "+@keyspace",
               "+@connection")  # fmt: skip
MIRROR_ACL = ("%R~hft:kraken:*", "%W~hft:kraken:cmd", "%W~hft:kraken:republish", "+@read",
              "+xadd", "+set", "+@connection")  # fmt: skip


def test_least_privilege_users_and_passwords_never_shown(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    redis.cli("ACL", "SETUSER", "gateway", "on", ">gw-s3cret", *GATEWAY_ACL)
    redis.cli("ACL", "SETUSER", "mirror", "on", ">mirror-s3cret", *MIRROR_ACL)
    redis.cli("ACL", "SETUSER", "default", "off")  # nobody else
    stack = KrakenStack(tmp_path / "a", tmp_path / "ra")
    mirror = MirrorHost(stack, tmp_path / "b", tmp_path / "rb")
    as_gateway = f"redis://gateway:gw-s3cret@127.0.0.1:{redis.port}/0"
    as_mirror = f"redis://mirror:mirror-s3cret@127.0.0.1:{redis.port}/0"
    try:
        stack.start_sim()
        stack.start_gateway("--replicate", as_gateway)
        mirror.start(as_mirror)
        stack.control("trade-generator", {"rate": 200, "count": 100, "userrefs": [2]})
        assert mirror.command(allocate("remote", "3", "acl-1", index=3))["ok"]
        trades_done(stack, 100)
        wait_until(lambda: converged(stack, mirror), 30, "the mirror to converge")
        replication = stack.status()["replication"]
        assert isinstance(replication, dict)
        assert replication["target"] == f"redis://gateway:***@127.0.0.1:{redis.port}/0"
        assert mirror.status()["source"] == f"redis://mirror:***@127.0.0.1:{redis.port}/0"
        for log in (stack.log("gateway"), mirror.log()):
            assert "s3cret" not in log
        # The mirror's user cannot write the log: a mirror cannot forge balances.
        forged = subprocess.run(
            ["redis-cli", "-p", str(redis.port), "--user", "mirror", "--pass", "mirror-s3cret",
             "--no-auth-warning", "XADD", "hft:kraken:log", "*", "e", "x"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        assert "NOPERM" in forged.stdout + forged.stderr
        # A wrong password: the mirror waits, saying why in one line, and never crashes.
        other = MirrorHost(stack, tmp_path / "c", tmp_path / "rc")
        process = other.spawn(f"redis://mirror:wrong-pw@127.0.0.1:{redis.port}/0")
        wait_until(lambda: "waiting for the source" in other.log(), 15, "the mirror to say why")
        assert process.poll() is None and "wrong-pw" not in other.log()
        other.kill()
    finally:
        mirror.kill()
        stack.kill()
        redis.kill()
