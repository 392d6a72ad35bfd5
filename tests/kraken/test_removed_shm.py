"""The store's files vanish under a running gateway.

systemd-logind's ``RemoveIPC`` (on by default) removes a user's files in /dev/shm
at their last logout, and a cleaner may too. Readers already mapping the store
went on reading, but a new one found nothing (the gateway "not running"), and
with the lock file gone a second gateway started on the same state directory:
two writers of one journal.
"""

from __future__ import annotations

from decimal import Decimal

from mmapstore import WriterHealth
from mmapstore._paths import lock_path
from tests.kraken.stack import KrakenStack, wait_until
from tests.kraken.test_cli_startup import run_to_failure


def test_a_removed_store_is_put_back_and_a_second_gateway_still_refused(
    stack: KrakenStack,
) -> None:
    gateway = stack.start_gateway()
    with stack.reader() as early:  # a strategy that mapped the store before
        usd = early.record("USD").exact_all()[0]
        stack.store.unlink()
        lock_path(stack.store).unlink()
        wait_until(
            lambda: stack.store.exists() and lock_path(stack.store).exists(), 5, "the store back"
        )
        stack.control("deposit", {"asset": "USD", "amount": "7"})
        wait_until(
            lambda: early.record("USD").exact_all()[0] == usd + Decimal(7), 10,
            "the deposit, seen by the reader that mapped the removed file",
        )  # fmt: skip
    with stack.reader() as late:  # a strategy started after
        assert late.record("USD").exact_all()[0] == usd + Decimal(7)
        status = late.writer_status()
        assert (status.health, status.pid) == (WriterHealth.LIVE, gateway.pid)
    assert stack.status()["websocket"] == "live"  # `gateway status` finds it again
    urls = ("--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"])
    line, _ = run_to_failure(stack, *urls)
    assert f"state directory {stack.state_dir / 'kraken'} already has a writer" in line, line
    assert f"pid {gateway.pid}" in line
    assert gateway.poll() is None


def test_a_second_gateway_with_a_store_elsewhere_is_refused_the_state_directory(
    stack: KrakenStack,
) -> None:
    """Two gateways on one state directory but with different HFT_SHM_DIR (a copied
    unit file, say) took different store locks and both wrote one journal."""
    gateway = stack.start_gateway()
    elsewhere = stack.root / "other-shm"
    stack.env["HFT_SHM_DIR"] = str(elsewhere)
    urls = ("--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"])
    line, _ = run_to_failure(stack, *urls)
    assert f"state directory {stack.state_dir / 'kraken'} already has a writer" in line, line
    assert f"pid {gateway.pid}" in line
    assert not (elsewhere / stack.store.name).exists()  # refused before it made a store
    assert gateway.poll() is None
