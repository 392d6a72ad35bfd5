"""Store roles run as separate processes by the multi-process tests.

python store_worker.py hold PATH             writer: publish, go live, print READY, wait
python store_worker.py try-open PATH         writer: try to open; exit 3 with the error if refused
python store_worker.py open-on-cue PATH      writer: print READY, then try-open on a line from stdin
python store_worker.py crash-mid-write PATH  writer: leave a record odd, then kill -9 itself
python store_worker.py torn-writer PATH SECS writer: publish as fast as possible for SECS
python store_worker.py torn-reader PATH N    reader: N checked reads, print a JSON report
python store_worker.py grow PATH N           writer: print READY, then on a line from stdin
                                             publish N currencies more and print DONE
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from decimal import Decimal

from mmapstore import StoreError, StoreReader, StoreWriter
from mmapstore._layout import R_SEQ

STRATEGY_COUNT = 8
BIG = 1 << 100  # values past 64 bits, so both int128 halves change
SMALL = 1 << 40  # integer floats stay exact, so float sums can be checked exactly


def hold(path: str) -> None:
    writer = StoreWriter.open(path, exchange="kraken", strategy_count=STRATEGY_COUNT)
    writer.publish_decimal("USD", [Decimal("300.5"), Decimal("100.5"), Decimal(200)] + [0] * 5)
    writer.mark_live()
    print("READY", writer.generation, flush=True)
    while True:
        time.sleep(0.2)
        writer.heartbeat()


def try_open(path: str) -> None:
    try:
        StoreWriter.open(path, exchange="kraken", strategy_count=STRATEGY_COUNT)
    except StoreError as exc:  # refused: said in one line
        print(f"{type(exc).__name__}: {exc}", flush=True)
        sys.exit(3)
    print("OPENED", flush=True)


def crash_mid_write(path: str) -> None:
    writer = StoreWriter.open(path, exchange="kraken", strategy_count=STRATEGY_COUNT)
    writer.publish_decimal("USD", [Decimal(1), Decimal(1)] + [0] * 6)
    index = writer.currencies["USD"]
    words = writer._map.words  # the test simulates a crash between the two seq stores
    seq_word = writer._geometry.record_offset(index) // 8 + R_SEQ
    words[seq_word] = words[seq_word] + 1
    os.kill(os.getpid(), signal.SIGKILL)


def _invariant_values(rng: random.Random, bound: int) -> list[int]:
    slots = [rng.randrange(-bound, bound) for _ in range(STRATEGY_COUNT - 1)]
    return [sum(slots), *slots]


def torn_writer(path: str, seconds: float) -> None:
    writer = StoreWriter.open(path, exchange="kraken", strategy_count=STRATEGY_COUNT)
    big = writer.add_currency("BTC", scale=18)
    small = writer.add_currency("USD", scale=0)
    writer.publish(big, _invariant_values(random.Random(0), BIG), updated_ns=0)
    writer.publish(small, [0] * STRATEGY_COUNT, updated_ns=0)
    writer.mark_live()
    print("READY", flush=True)
    rng = random.Random(1)
    deadline = time.monotonic() + seconds
    published = 0
    while time.monotonic() < deadline:
        for _ in range(1000):
            values = _invariant_values(rng, BIG)
            # updated_ns carries a checksum of the slots, so a tear between them shows.
            writer.publish(big, values, updated_ns=hash(tuple(values)))
            writer.publish(small, _invariant_values(rng, SMALL))
            published += 2
        writer.heartbeat()
    writer.close()
    print(json.dumps({"published": published}), flush=True)


MIN_SEQUENCES = 1000  # distinct records seen: the writer really was publishing
OVERLAP_DEADLINE_S = 120.0


def torn_reader(path: str, reads: int) -> None:
    """At least ``reads`` checked reads, and on until the writer has been seen publishing
    (a busy machine may leave the writer off the CPU for a whole short run)."""
    reader = StoreReader(path)
    violations = 0
    sequences_seen = 0
    last_sequence = -1
    deadline = time.monotonic() + OVERLAP_DEADLINE_S
    i = 0
    while i < reads or (sequences_seen <= MIN_SEQUENCES and time.monotonic() < deadline):
        i += 1
        if i % 2 == 0:
            record = reader.record("BTC")
            scaled = record.scaled
            consistent = (
                scaled[0] == sum(scaled[1:])
                and (record.updated_ns == hash(scaled) or record.sequence <= 1)
                and all(f == v / 10**18 for f, v in zip(record.floats, scaled, strict=True))
            )
            if record.sequence != last_sequence:
                sequences_seen += 1
                last_sequence = record.sequence
        else:
            floats = reader.floats("USD")
            consistent = floats[0] == sum(floats[1:])
        if not consistent:
            violations += 1
    report = {
        "reads": i,
        "violations": violations,
        "retries": reader.retries,
        "sequences_seen": sequences_seen,
    }
    print(json.dumps(report), flush=True)


def grow(path: str, count: int) -> None:
    """New currencies after a pause in which the test may fill the file system."""
    writer = StoreWriter.open(path, exchange="kraken", strategy_count=STRATEGY_COUNT)
    writer.mark_live()
    print("READY", flush=True)
    sys.stdin.readline()
    for n in range(count):
        writer.publish_decimal(f"C{n}", [Decimal(n), Decimal(n)] + [0] * 6)
    writer.close()
    print("DONE", flush=True)


def main() -> None:
    role, path, *rest = sys.argv[1:]
    if role == "hold":
        hold(path)
    elif role == "try-open":
        try_open(path)
    elif role == "open-on-cue":
        print("READY", flush=True)
        sys.stdin.readline()
        try_open(path)
    elif role == "crash-mid-write":
        crash_mid_write(path)
    elif role == "torn-writer":
        torn_writer(path, float(rest[0]))
    elif role == "torn-reader":
        torn_reader(path, int(rest[0]))
    elif role == "grow":
        grow(path, int(rest[0]))
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    main()
