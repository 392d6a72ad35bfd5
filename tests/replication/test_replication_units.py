"""The parts of replication that need no Redis: the journal's tail, ids, addresses, forwarding."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.journal import Journal
from gateway.ledger import BalanceCommand, CommandKind
from gateway.protocol import parse_request, request_body
from gateway.replication.keys import Target, parse_id, position_after, read_from
from gateway.replication.publisher import JournalTail, SnapshotNeededError


def open_journal(directory: Path) -> Journal:
    journal, _ = Journal.open(directory, lambda _: None, lambda _: None)
    return journal


def test_the_tail_reads_in_order_and_never_past_durable(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)
    tail = JournalTail(tmp_path)
    seen: list[bytes] = []
    for n in range(2000):
        journal.append(b"%d" % n)
        if n % 5 == 4:
            journal.commit()
        # Read whatever is durable, a little at a time, as the publisher does.
        seen += tail.read(len(seen), journal.synced_seq, 3)
        assert len(seen) <= journal.synced_seq
    while len(seen) < journal.synced_seq:
        seen += tail.read(len(seen), journal.synced_seq, 512)
    assert seen == [b"%d" % n for n in range(len(seen))]


def test_the_tail_follows_a_snapshot_into_the_next_segment(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)
    tail = JournalTail(tmp_path)
    for n in range(10):
        journal.append(b"a%d" % n)
    journal.commit()
    assert tail.read(0, journal.synced_seq, 4) == [b"a0", b"a1", b"a2", b"a3"]
    journal.write_snapshot({"any": "state"})  # deletes journal-0 (the tail keeps it open)
    for n in range(5):
        journal.append(b"b%d" % n)
    journal.commit()
    records = tail.read(4, journal.synced_seq, 100)
    assert records == [*(b"a%d" % n for n in range(4, 10)), *(b"b%d" % n for n in range(5))]
    # A new reader behind the snapshot cannot find those events any more: it is told so.
    with pytest.raises(SnapshotNeededError):
        JournalTail(tmp_path).read(3, journal.synced_seq, 10)
    assert JournalTail(tmp_path).read(10, journal.synced_seq, 10)[0] == b"b0"


def test_entry_ids_put_a_snapshot_just_before_its_event() -> None:
    assert parse_id(b"7-1") == (7, False) and parse_id(b"7-0") == (7, True)
    assert position_after(b"7-1") == 8 and position_after(b"7-0") == 7
    assert read_from(0) == "0-0" and read_from(8) == "7-1"  # reads from 8-0 on
    with pytest.raises(ValueError):
        parse_id(b"7-2")


def test_redis_addresses_are_checked_and_passwords_never_shown() -> None:
    target = Target.parse("rediss://gw:s3cret@redis.internal:6380/2", "kraken")
    assert target.shown == "rediss://gw:***@redis.internal:6380/2"
    assert target.key("log") == "hft:kraken:log"
    assert Target.parse("unix:///run/redis.sock", "binance").prefix == "hft:binance"
    for bad in ("http://h:1/0", "redis://", "redis://h:port/0", "h:6379"):
        with pytest.raises(ConfigError):
            Target.parse(bad, "kraken")


amounts = st.decimals(min_value=Decimal("1e-18"), max_value=Decimal(10**17), places=18)


@given(
    kind=st.sampled_from(list(CommandKind)),
    amount=amounts,
    negative=st.booleans(),
    index=st.integers(2, 7),
    request_id=st.none() | st.text("abc123-", min_size=1, max_size=20),
)
def test_a_forwarded_command_parses_back_to_itself(
    kind: CommandKind, amount: Decimal, negative: bool, index: int, request_id: str | None
) -> None:
    scaled = int(amount * 10**18)
    if kind is CommandKind.ADJUST and negative:
        scaled = -scaled
    command = BalanceCommand(kind, "strat", "USD", index, scaled)
    assert parse_request(request_body(command, request_id), 8) == (command, request_id)


def test_snapshots_keep_the_segments_a_lagging_reader_still_needs(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)
    tail = JournalTail(tmp_path)
    position = 0
    journal.retain_from = lambda: position
    expected: list[bytes] = []
    for round_ in range(4):  # four snapshots while the reader has read nothing
        for n in range(5):
            expected.append(b"%d.%d" % (round_, n))
            journal.append(expected[-1])
        journal.commit()
        journal.write_snapshot({"round": round_})
    records = tail.read(0, journal.synced_seq, 1000)
    assert records == expected
    position = len(records)
    journal.write_snapshot({"round": "last"})  # the reader has passed: now they go
    assert [p.name for p in tmp_path.glob("journal-*.log")] == [f"journal-{20:020d}.log"]
    assert len(list(tmp_path.glob("snapshot-*.cbor"))) == 1
