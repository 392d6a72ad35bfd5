"""Another local user fills /dev/shm: the gateway neither dies nor starts half-made.

A store file was created sparse, its pages allocated on first write through
the mapping. With the tmpfs full, the first new currency whose record fell in
an unwritten page killed the gateway with SIGBUS: no log line, the store left
"live" with a stale heartbeat, the socket left behind. Any local user can fill
/dev/shm. Here the store's directory is a small tmpfs open to every user, and
the other user is ``nobody``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import fill_as_another_user
from tests.kraken.stack import KrakenStack, wait_until
from tests.kraken.test_cli_startup import run_to_failure

# New assets enough to need 2 more pages of records (15 a page, 5 held at start).
NEW_ASSETS = [f"NEW{n}" for n in range(27)]


@pytest.fixture
def full_shm_stack(open_dir: Path, small_shm: Path) -> Iterator[KrakenStack]:
    """A stack whose store directory is the small tmpfs (``open_dir/shm``)."""
    run_dir = Path(tempfile.mkdtemp(prefix="hft-"))
    stack = KrakenStack(open_dir, run_dir)
    assert stack.store.parent == small_shm
    stack.start_sim()
    yield stack
    stack.kill()
    shutil.rmtree(run_dir, ignore_errors=True)


def test_new_currencies_after_the_shm_is_filled_do_not_kill_the_gateway(
    full_shm_stack: KrakenStack,
) -> None:
    stack = full_shm_stack
    gateway = stack.start_gateway()
    fill_as_another_user(stack.store.parent)
    for asset in NEW_ASSETS:
        stack.control("deposit", {"asset": asset, "amount": "5"})

    def all_booked() -> bool:
        assert gateway.poll() is None, f"the gateway died (exit {gateway.returncode})"
        with stack.reader() as reader:
            return all(reader.record(a).exact_all()[0] == Decimal(5) for a in NEW_ASSETS)

    wait_until(all_booked, 30, "every deposit in shared memory")
    # A restart on the full tmpfs reuses the store in place: its pages are its own.
    assert stack.stop_gateway(signal.SIGTERM) == 0
    stack.start_gateway()
    with stack.reader() as reader:
        assert reader.record("NEW26").exact_all()[0] == Decimal(5)


def test_a_gateway_started_on_a_full_shm_says_so_in_one_line(
    full_shm_stack: KrakenStack,
) -> None:
    stack = full_shm_stack
    fill_as_another_user(stack.store.parent)
    urls = ("--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"])
    line, _ = run_to_failure(stack, *urls)
    assert f"no room for the store {stack.store} in {stack.store.parent}" in line, line
    assert "No space left on device" in line and f"df -h {stack.store.parent}" in line, line
    leftovers = sorted(p.name for p in stack.store.parent.iterdir())
    assert "hft.kraken.balance" not in leftovers and len(leftovers) <= 2, leftovers
    subprocess.run(["rm", "-f", str(stack.store.parent / "filler")], check=True)
    stack.start_gateway()  # room again: it starts
