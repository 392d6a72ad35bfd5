"""The gateway's files vanish under it while it runs.

At a user's last logout systemd-logind removes their files in /dev/shm
(``RemoveIPC``, on by default) and their ``$XDG_RUNTIME_DIR``, where the command
socket lives by default; a cleaner may remove either. Readers already mapping the
store went on reading, but a new one found nothing (the gateway "not running"),
no strategy could send a command again, and with the store's lock file gone a
second gateway started on the same state directory: two writers of one journal.
"""

from __future__ import annotations

import shutil
from decimal import Decimal

from clients.command import STRATEGY_BALANCE_CMD, IPCCommandSystem
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


def test_a_removed_command_socket_and_its_directory_are_made_again(stack: KrakenStack) -> None:
    gateway = stack.start_gateway()
    shutil.rmtree(stack.run_dir)  # as logind removes XDG_RUNTIME_DIR, socket and all
    wait_until(stack.socket.exists, 5, "the command socket back")
    system = IPCCommandSystem("after-logout", run_dir=stack.run_dir)
    system.start()
    try:
        reply = system.send_command_blocking(
            stack.service, STRATEGY_BALANCE_CMD,
            {"strategy": "s1", "cmd": "allocate", "currency": "USD", "index": 2, "amount": 5},
        )  # fmt: skip
    finally:
        system.close()
    assert reply["ok"] is True, reply
    with stack.reader() as reader:
        assert reader.record("USD").exact_all()[2] == Decimal(5)
    assert gateway.poll() is None
    assert stack.stop_gateway() == 0
    assert not stack.socket.exists()  # its own socket removed on the way out, as always
