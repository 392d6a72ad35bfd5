"""`make bench`'s suite in its smoke mode: every section runs and the report is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "## Goals",
    "## Read path",
    "## Scaling of reads",
    "## Durable commands",
    "## Fills: exchange to visible",
    "## Fills on Binance: exchange to visible",
    "## Memory and CPU under fills",
    "## Startup and recovery",
    "## Plots",
)


def test_bench_suite_smoke_mode_writes_a_report_with_plots(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench_suite.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    for section in SECTIONS:
        assert section in report, section
    assert "get_balance" in report and "| gateway, 1 client(s) |" in report
    assert "| gateway, journal in memory (not durable), 1 client(s) |" in report
    plots = sorted(p.name for p in (tmp_path / "benchmarks").glob("*.png"))
    assert plots == sorted(
        ["commands.png", "read_by_currencies.png", "read_by_readers.png", "read_path.png"]
    )
    assert all((tmp_path / "benchmarks" / p).stat().st_size > 1000 for p in plots)
