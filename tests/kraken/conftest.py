"""Fixtures of the Kraken end-to-end tests and drills."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kraken.stack import KrakenStack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[KrakenStack]:
    run_dir = Path(tempfile.mkdtemp(prefix="hft-"))
    kraken = KrakenStack(tmp_path, run_dir)
    kraken.start_sim()
    yield kraken
    kraken.kill()
    shutil.rmtree(run_dir, ignore_errors=True)
