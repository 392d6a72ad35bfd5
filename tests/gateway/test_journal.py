"""The journal: durable appends, snapshots, and recovery from torn or corrupt records."""

from __future__ import annotations

import errno
import os
from decimal import Decimal
from pathlib import Path

import cbor2
import pytest

from gateway import journal_repair
from gateway.config import GatewayConfig
from gateway.errors import JournalCorruptError
from gateway.events import CommandApplied, FillApplied, TotalsSet, apply_event, encode_event
from gateway.journal import (
    ALLOCATE_BYTES,
    MAX_RECORD_BYTES,
    RECORD_HEADER,
    Journal,
    scan_records,
)
from gateway.ledger import APPLIED_FILLS_KEPT, UNIT, BalanceCommand, CommandKind, Fill, Side
from gateway.service import restore_state


def _config(tmp_path: Path) -> GatewayConfig:
    return GatewayConfig(shm_dir=tmp_path, state_root=tmp_path / "state", run_dir=tmp_path)


def _allocate(n: int) -> CommandApplied:
    return CommandApplied(BalanceCommand(CommandKind.ALLOCATE, "a", "USD", 2, UNIT), f"r{n}")


def _write_events(config: GatewayConfig, count: int, *, snapshot_at: int | None = None) -> None:
    ledger, journal, _ = restore_state(config)
    events = [TotalsSet({"USD": 1000 * UNIT})] + [_allocate(n) for n in range(count)]
    for number, event in enumerate(events):
        apply_event(ledger, event)
        journal.append(encode_event(event))
        journal.commit()
        if snapshot_at is not None and number == snapshot_at:
            journal.write_snapshot(ledger.to_snapshot())
    journal.close()


def _segment(config: GatewayConfig) -> Path:
    (segment,) = sorted(config.state_dir.glob("journal-*.log"))
    return segment


def _records_end(segment: Path) -> int:
    """Where the records end: the segment is allocated ahead, zeros follow."""
    return scan_records(segment.read_bytes()).good_end


def test_restore_replays_every_committed_event(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _write_events(config, 5)
    ledger, journal, report = restore_state(config)
    assert ledger.slots("USD")[:3] == (1000 * UNIT, 995 * UNIT, 5 * UNIT)
    assert report.replayed == 6 and report.dropped_bytes == 0
    assert journal.next_seq == 6
    journal.close()


def test_restore_from_snapshot_then_journal(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _write_events(config, 5, snapshot_at=3)
    assert len(list(config.state_dir.glob("snapshot-*.cbor"))) == 1
    ledger, journal, report = restore_state(config)
    assert report.snapshot_seq == 4
    assert report.replayed == 2
    assert ledger.slots("USD")[2] == 5 * UNIT
    journal.close()


@pytest.mark.parametrize("written", [False, True])
def test_a_crash_while_a_snapshot_is_written_loses_nothing(tmp_path: Path, written: bool) -> None:
    # The writer moves to a new segment at the snapshot's event and goes on while a
    # worker thread writes the file: a crash can come before the file lands, or after
    # it lands and before what it covers is dropped.
    config = _config(tmp_path)
    _write_events(config, 3, snapshot_at=1)
    ledger, journal, _ = restore_state(config)
    data, seq = ledger.to_snapshot(), journal.rotate()
    for n in range(3, 7):  # what the writer applies meanwhile, in the new segment
        event = _allocate(n)
        apply_event(ledger, event)
        journal.append(encode_event(event))
        journal.commit()
    if written:
        journal.write_snapshot_file(data, seq)
    journal.close()  # the crash: nothing dropped
    assert len(list(config.state_dir.glob("journal-*.log"))) == 2
    restored, journal, report = restore_state(config)
    assert restored.slots("USD")[:3] == (1000 * UNIT, 993 * UNIT, 7 * UNIT)
    assert report.snapshot_seq == (seq if written else 2)
    assert journal.next_seq == seq + 4
    if written:  # the next snapshot drops the older files, the new segment stays
        journal.drop_covered(seq)
        assert [p.name for p in sorted(config.state_dir.glob("journal-*.log"))] == [
            f"journal-{seq:020d}.log"
        ]
    journal.close()
    again, journal, _ = restore_state(config)
    assert again.slots("USD") == restored.slots("USD")
    journal.close()


def test_a_sound_record_that_cannot_be_applied_stops_the_start_naming_its_event(
    tmp_path: Path,
) -> None:
    """Counted from the journal's start, past the events the snapshot holds."""
    config = _config(tmp_path)
    _write_events(config, 5, snapshot_at=1)
    _, journal, _ = restore_state(config)
    journal.append(cbor2.dumps(["bf", "T1", 1, 99, [], b""]))  # slot 99: no fill books there
    journal.commit()
    journal.close()
    with pytest.raises(JournalCorruptError, match=r"event 6 passed its checksum but cannot be"):
        restore_state(config)


def test_a_sound_fill_record_beyond_any_number_stops_the_start_in_one_line(
    tmp_path: Path,
) -> None:
    """A fill of the earlier form (a map, replayed by its decimals) whose quantity no
    exchange books: its arithmetic raised decimal.Inexact, and the start ended in a
    traceback instead of naming the record."""
    config = _config(tmp_path)
    _write_events(config, 3)
    _, journal, _ = restore_state(config)
    fill = Fill("T9", "BTC", "USD", Side.BUY, Decimal(1), Decimal(100), userref=2)
    body = cbor2.loads(encode_event(FillApplied(fill)))
    journal.append(cbor2.dumps({**body, "qty": "9" * 60, "price": "9" * 60}))
    journal.commit()
    journal.close()
    with pytest.raises(JournalCorruptError, match=r"event 4 passed its checksum but cannot be"):
        restore_state(config)


@pytest.mark.parametrize(
    "body",
    [
        {"any": "state"},
        {"strategy_count": "8"},
        {"strategy_count": 8, "balances": {"USD": [1.5] * 8}, "owners": {}},
        {"strategy_count": 8, "balances": {"USD": [1, 0, 0, 0, 0, 0, 0, 0]}, "owners": {}},
    ],
)
def test_a_sound_snapshot_of_the_wrong_shape_stops_the_start_in_one_line(
    tmp_path: Path, body: dict[str, object]
) -> None:
    """Its checksum holds, its contents do not: a KeyError or AssertionError came out of
    the start as a traceback instead of naming the file."""
    config = _config(tmp_path)
    journal, _ = Journal.open(config.state_dir, lambda snapshot: None, lambda records: None)
    journal.write_snapshot(body)
    journal.close()
    with pytest.raises(JournalCorruptError, match=r"snapshot-0+\.cbor passed its checksum but"):
        restore_state(config)


def test_torn_last_record_is_cut_off(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _write_events(config, 5)
    segment = _segment(config)
    end = _records_end(segment)
    segment.write_bytes(segment.read_bytes()[: end - 3])  # a crash in the middle of a write
    ledger, journal, report = restore_state(config)
    assert ledger.slots("USD")[2] == 4 * UNIT
    assert report.dropped_reason == "torn record"
    assert segment.stat().st_size < end - 3  # the torn bytes are gone from disk
    # Appending after the cut works and survives another restore.
    apply_event(ledger, _allocate(99))
    journal.append(encode_event(_allocate(99)))
    journal.commit()
    journal.close()
    again, journal, report = restore_state(config)
    assert again.slots("USD")[2] == 5 * UNIT
    assert report.dropped_bytes == 0
    journal.close()


def _flip_payload_byte(segment: Path, record: int) -> bytes:
    """Flip one payload byte of the ``record``-th record; returns the damaged bytes."""
    data = bytearray(segment.read_bytes())
    offset = 0
    for _ in range(record):
        (length, _crc) = RECORD_HEADER.unpack_from(data, offset)
        offset += RECORD_HEADER.size + length
    data[offset + RECORD_HEADER.size + 2] ^= 0x40
    segment.write_bytes(bytes(data))
    return bytes(data)


def test_damage_with_sound_records_after_it_stops_the_start_and_changes_nothing(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    _write_events(config, 5)
    segment = _segment(config)
    damaged = _flip_payload_byte(segment, 3)
    with pytest.raises(JournalCorruptError, match=r"checksum mismatch at byte .* not a torn write"):
        restore_state(config)
    assert segment.read_bytes() == damaged  # the evidence is intact
    assert sorted(p.name for p in config.state_dir.iterdir()) == [segment.name]


def test_zeros_at_the_end_are_space_allocated_ahead_and_writing_goes_on_before_them(
    tmp_path: Path,
) -> None:
    """A segment is allocated ahead of its records; its zeros are neither damage nor a
    tear, and the next record goes right after the last one, not after the zeros."""
    config = _config(tmp_path)
    _write_events(config, 5)
    segment = _segment(config)
    end = _records_end(segment)
    assert segment.stat().st_size >= ALLOCATE_BYTES > end  # allocated ahead
    ledger, journal, report = restore_state(config)
    assert ledger.slots("USD")[2] == 5 * UNIT
    assert report.dropped_bytes == 0 and report.dropped_reason == ""
    apply_event(ledger, _allocate(99))
    journal.append(encode_event(_allocate(99)))
    journal.commit()
    journal.close()
    assert _records_end(segment) > end and segment.stat().st_size >= ALLOCATE_BYTES
    again, journal, report = restore_state(config)
    assert again.slots("USD")[2] == 6 * UNIT and report.replayed == 7
    journal.close()


def test_a_torn_record_in_allocated_space_is_cut_off(tmp_path: Path) -> None:
    """A crash mid-write inside the allocated space: the record's end is still zeros."""
    config = _config(tmp_path)
    _write_events(config, 5)
    segment = _segment(config)
    end = _records_end(segment)
    data = bytearray(segment.read_bytes())
    data[end - 3 : end] = bytes(3)
    segment.write_bytes(bytes(data))
    ledger, journal, report = restore_state(config)
    assert ledger.slots("USD")[2] == 4 * UNIT
    assert report.dropped_reason == "checksum mismatch"
    journal.close()


def test_a_sound_record_after_zeros_is_damage_not_allocated_space(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _write_events(config, 5)
    segment = _segment(config)
    end = _records_end(segment)
    data = segment.read_bytes()
    first = RECORD_HEADER.size + RECORD_HEADER.unpack_from(data, 0)[0]
    # The first record copied again far into the zeros: acknowledged data after a gap.
    damaged = bytearray(data)
    damaged[end + 100 : end + 100 + first] = data[:first]
    segment.write_bytes(bytes(damaged))
    with pytest.raises(JournalCorruptError, match="sound records follow"):
        restore_state(config)


def test_verify_reports_and_salvage_keeps_every_sound_record(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _write_events(config, 5)
    segment = _segment(config)
    damaged = _flip_payload_byte(segment, 3)
    health = journal_repair.verify(config.state_dir)
    assert health.damaged
    (only,) = health.segments
    assert len(only.records) == 5 and len(only.lost) == 1
    assert only.lost[0].reason == "checksum mismatch"
    report = journal_repair.salvage(config.state_dir)
    assert report.kept == 5 and report.lost_bytes > 0
    (aside,) = report.set_aside
    assert aside.read_bytes() == damaged
    assert "checksum mismatch" in report.record.read_text()
    ledger, journal, restored = restore_state(config)
    # The third allocate was in the damage; the two after it are kept.
    assert ledger.slots("USD")[2] == 4 * UNIT
    assert restored.replayed == 5
    ledger.check_invariant()
    journal.close()
    assert not journal_repair.verify(config.state_dir).damaged
    with pytest.raises(JournalCorruptError, match="nothing to salvage"):
        journal_repair.salvage(config.state_dir)


def test_a_torn_tail_is_not_damage_to_verify(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _write_events(config, 5)
    segment = _segment(config)
    segment.write_bytes(segment.read_bytes()[: _records_end(segment) - 3])
    health = journal_repair.verify(config.state_dir)
    assert not health.damaged
    assert "torn tail" in health.lines()[-1]


def test_corrupt_snapshot_with_no_fallback_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _write_events(config, 5, snapshot_at=3)
    (snapshot,) = config.state_dir.glob("snapshot-*.cbor")
    data = bytearray(snapshot.read_bytes())
    data[-5] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    with pytest.raises(JournalCorruptError, match="no readable snapshot"):
        restore_state(config)


def test_fill_events_round_trip_through_the_journal(tmp_path: Path) -> None:
    config = _config(tmp_path)
    ledger, journal, _ = restore_state(config)
    fill = Fill("T1", "BTC", "USD", Side.BUY, Decimal("0.1"), Decimal("30000.5"), userref=3)
    for event in (TotalsSet({"USD": 10000 * UNIT}), FillApplied(fill)):
        apply_event(ledger, event)
        journal.append(encode_event(event))
    journal.commit()
    journal.close()
    restored, journal, _ = restore_state(config)
    assert restored.to_snapshot() == ledger.to_snapshot()
    assert restored.apply_fill(fill) is None  # still known as applied
    journal.close()


def test_state_files_are_private(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _write_events(config, 2, snapshot_at=1)
    assert config.state_dir.stat().st_mode & 0o777 == 0o700
    for path in config.state_dir.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


def test_journal_opened_on_empty_directory_starts_at_zero(tmp_path: Path) -> None:
    journal, report = Journal.open(tmp_path / "new", lambda snapshot: None, lambda p: None)
    assert journal.next_seq == 0 and report.replayed == 0
    journal.close()


def test_snapshot_of_many_megabytes_restores(tmp_path: Path) -> None:
    """A snapshot is one record as large as its file: past the journal's 1 MiB record guard."""
    config = _config(tmp_path)
    ledger, journal, _ = restore_state(config)
    event = TotalsSet({"USD": 1000 * UNIT, "BTC": 10 * UNIT})
    apply_event(ledger, event)
    journal.append(encode_event(event))
    journal.commit()
    for n in range(APPLIED_FILLS_KEPT):
        ledger.applied.add(f"TXXXXX-YYYYY-{n:06d}", 1_700_000_000_000_000_000 + n)
    journal.write_snapshot(ledger.to_snapshot())
    journal.close()
    (snapshot,) = config.state_dir.glob("snapshot-*.cbor")
    assert snapshot.stat().st_size > MAX_RECORD_BYTES  # the guard the old reader applied
    restored, journal, report = restore_state(config)
    journal.close()
    assert len(restored.applied.ids) == APPLIED_FILLS_KEPT
    assert report.snapshot_seq == 1


def test_a_disk_too_full_to_allocate_ahead_still_takes_what_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Allocating ahead is an optimisation: short of room for a step, the journal
    allocates only what the write needs, and with no room at all the write decides."""
    real = os.posix_fallocate
    asked: list[int] = []

    def fallocate(fd: int, offset: int, length: int) -> None:
        asked.append(length)
        if length >= ALLOCATE_BYTES or len(asked) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    config = _config(tmp_path)
    _write_events(config, 3)  # every allocation but the first small one refused
    assert asked[0] >= ALLOCATE_BYTES and asked[1] < ALLOCATE_BYTES
    ledger, journal, report = restore_state(config)
    assert ledger.slots("USD")[2] == 3 * UNIT and report.dropped_bytes == 0
    journal.close()


def test_a_record_longer_than_a_restart_reads_back_is_never_written(tmp_path: Path) -> None:
    """What the edges bound far below: a record over MAX_RECORD_BYTES would read as damage."""
    journal, _ = Journal.open(tmp_path / "state", lambda snapshot: None, lambda p: None)
    with pytest.raises(ValueError, match="beyond any event"):
        journal.append(b"x" * (MAX_RECORD_BYTES + 1))
    assert not journal.has_pending and journal.next_seq == 0
    journal.close()
