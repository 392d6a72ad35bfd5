"""``gateway journal verify`` and ``gateway journal salvage``: the operator's view of damage.

:meth:`gateway.journal.Journal.open` refuses to start on a journal damaged
anywhere but its torn tail, and changes nothing. These two functions are what
comes next: ``verify`` reads every file and says what is sound, ``salvage``
(an explicit decision: events behind the damage are lost) keeps every sound
record on either side of it, moves the originals aside untouched as evidence
and writes down what was lost.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cbor2

from gateway.errors import JournalCorruptError
from gateway.journal import (
    frame,
    load_snapshot,
    next_sound_record,
    scan_records,
    segments_of,
)


@dataclass(frozen=True, slots=True)
class LostRange:
    """Bytes of a journal file that hold no sound record."""

    start: int
    end: int  # exclusive; the file's size when nothing sound follows
    reason: str


@dataclass(slots=True)
class SegmentHealth:
    path: Path
    first_event: int
    size: int
    records: list[bytes] = field(default_factory=list)
    lost: list[LostRange] = field(default_factory=list)

    @property
    def torn_tail_only(self) -> bool:
        """Damaged only at the very end, as a crash leaves it (cut at the next start)."""
        return len(self.lost) == 1 and self.lost[0].end == self.size

    def describe(self) -> str:
        if not self.lost:
            name, count = self.path.name, len(self.records)
            return f"{name}: sound, {count} records (events {self.first_event} on)"
        parts = [f"{self.path.name}: {len(self.records)} sound records"]
        for lost in self.lost:
            parts.append(
                f"{lost.reason} at bytes {lost.start}-{lost.end} "
                f"({lost.end - lost.start} bytes lost)"
            )
        if self.torn_tail_only:
            parts.append("a torn tail: the next start cuts it off (never acknowledged)")
        return "; ".join(parts)


@dataclass(slots=True)
class JournalHealth:
    directory: Path
    snapshot_seq: int
    snapshot_problem: str
    segments: list[SegmentHealth]

    @property
    def damaged(self) -> bool:
        """True when the gateway would refuse to start on this directory."""
        if self.snapshot_problem:
            return True
        return any(
            s.lost and not (s.torn_tail_only and s is self.segments[-1]) for s in self.segments
        )

    def lines(self) -> list[str]:
        head = (
            f"snapshot: unusable ({self.snapshot_problem})"
            if self.snapshot_problem
            else f"snapshot: at event {self.snapshot_seq}"
            if self.snapshot_seq
            else "snapshot: none"
        )
        return [f"{self.directory}", head, *(s.describe() for s in self.segments)]


def _read_segment(path: Path) -> SegmentHealth:
    data = path.read_bytes()
    health = SegmentHealth(path, int(path.stem.split("-", 1)[1]), len(data))
    pos = 0
    while pos < len(data):
        scan = scan_records(data[pos:])
        health.records.extend(scan.records)
        if not scan.problem:
            break
        start = pos + scan.good_end
        resume = next_sound_record(data, start + 1)
        end = len(data) if resume is None else resume
        health.lost.append(LostRange(start, end, scan.problem))
        pos = end
    return health


def _relevant_segments(directory: Path, snapshot_seq: int) -> list[Path]:
    """The segments holding events after the snapshot (older ones are covered by it)."""
    segments = list(segments_of(directory))
    first = 0
    for number, segment in enumerate(segments):
        if int(segment.stem.split("-", 1)[1]) <= snapshot_seq:
            first = number
    return segments[first:]


def verify(directory: Path) -> JournalHealth:
    """Read every snapshot and journal file in ``directory``; change nothing."""
    try:
        _, snapshot_seq = load_snapshot(directory)
        problem = ""
    except JournalCorruptError as exc:
        snapshot_seq, problem = 0, str(exc)
    segments = [_read_segment(p) for p in _relevant_segments(directory, snapshot_seq)]
    return JournalHealth(directory, snapshot_seq, problem, segments)


@dataclass(frozen=True, slots=True)
class SalvageReport:
    kept: int
    lost_bytes: int
    set_aside: list[Path]
    record: Path  # the written account of what was lost


def salvage(directory: Path) -> SalvageReport:
    """Keep every sound record after the snapshot, in order, as one new segment.

    The damaged files are renamed ``*.damaged-<unix time>`` (never altered) and
    ``salvage-<unix time>.txt`` says what was lost. Events inside the damage are
    gone: the reconciler mends the exchange's totals, but commands in it are
    lost, and their request ids are forgotten.

    Raises:
        JournalCorruptError: the snapshot itself is unusable (salvage works on
            the journal only), or nothing is damaged.
    """
    health = verify(directory)
    if health.snapshot_problem:
        raise JournalCorruptError(f"cannot salvage: {health.snapshot_problem}")
    if not health.damaged:
        raise JournalCorruptError(f"{directory}: nothing to salvage, the journal is sound")
    stamp = int(time.time())
    first = health.segments[0].first_event
    target = directory / health.segments[0].path.name
    tmp = directory / f"salvage-{stamp}.tmp"
    kept = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for segment in health.segments:
            for payload in segment.records:
                cbor2.loads(payload)  # a record that checks out but does not decode is not kept
                os.write(fd, frame(payload))
                kept += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    set_aside: list[Path] = []
    for segment in health.segments:
        aside = segment.path.with_name(f"{segment.path.name}.damaged-{stamp}")
        segment.path.rename(aside)
        set_aside.append(aside)
    tmp.rename(target)
    lost_bytes = sum(lost.end - lost.start for s in health.segments for lost in s.lost)
    record = directory / f"salvage-{stamp}.txt"
    record.write_text(
        "\n".join(
            [
                f"salvaged at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(stamp))}",
                *health.lines(),
                f"kept {kept} sound records as {target.name} (events {first} on)",
                f"lost {lost_bytes} bytes; originals kept as "
                + ", ".join(p.name for p in set_aside),
            ]
        )
        + "\n"
    )
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return SalvageReport(kept, lost_bytes, set_aside, record)
