"""No torn read, ever: a writer at full speed against reader processes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Workers

READS_PER_READER = 200_000


def test_no_torn_read_under_writer_at_full_speed(store_file: Path, workers: Workers) -> None:
    writer = workers.start_ready("torn-writer", store_file, "120")
    readers = [workers.start("torn-reader", store_file, str(READS_PER_READER)) for _ in range(2)]
    reports = []
    for reader in readers:
        out, err = reader.communicate(timeout=300)
        assert reader.returncode == 0, err
        reports.append(json.loads(out))
    writer.kill()
    for report in reports:
        print(f"torn-read report: {report}")
        assert report["reads"] >= READS_PER_READER
        assert report["violations"] == 0
        # The writer really was publishing while this reader read.
        assert report["sequences_seen"] > 1000
