"""docs/shm-layout.md is enough to read the store from C: the C reader agrees with Python."""

from __future__ import annotations

import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from mmapstore import StoreReader, StoreWriter

SOURCE = Path(__file__).parents[2] / "tools" / "shm_reader.c"
COMPILER = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@pytest.mark.skipif(COMPILER is None, reason="no C compiler (cc, gcc or clang) on PATH")
def test_c_reader_reads_what_python_reads(tmp_path: Path, store_file: Path) -> None:
    assert COMPILER is not None
    binary = tmp_path / "shm_reader"
    subprocess.run(
        [COMPILER, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-o", binary, SOURCE],
        check=True,
    )
    with StoreWriter.open(store_file, exchange="kraken", strategy_count=4) as writer:
        writer.publish_decimal("USD", ["100000.25", "99000.25", "1000", "0"])
        writer.publish_decimal("BTC", ["-0.000000000000000001", "-1", "0.999999999999999999", "0"])
        big = writer.add_currency("ETH", scale=2)
        writer.publish(big, [-(1 << 120), -(1 << 121), 1 << 120, 0])
        writer.mark_live()

    out = subprocess.run([binary, store_file], check=True, capture_output=True, text=True).stdout
    store_file.chmod(0o666)  # anyone could have written it: not read, as in Python
    refused = subprocess.run([binary, store_file], capture_output=True, text=True, check=False)
    assert (refused.returncode, refused.stdout) == (1, ""), refused
    assert "not the gateway's file (owner or mode)" in refused.stderr
    store_file.chmod(0o644)
    lines = out.splitlines()
    with StoreReader(store_file) as reader:
        assert len(lines) == len(reader.currencies()) == 3
        for line, currency in zip(lines, reader.currencies(), strict=True):
            exact_part, float_part = line.split(" | ")
            name, scale, sequence, updated_ns, *values = exact_part.split()
            record = reader.record(currency)
            assert name == currency
            assert int(scale) == record.scale
            assert int(sequence) == record.sequence
            assert int(updated_ns) == record.updated_ns
            assert [Decimal(v) for v in values] == list(record.exact_all())
            assert [float(f) for f in float_part.split()] == list(record.floats)
