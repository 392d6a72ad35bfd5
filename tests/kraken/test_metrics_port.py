"""The metrics port against the other users of the host: it listens on loopback, where
any local user may connect (and the gateway cannot tell users apart)."""

from __future__ import annotations

import os
import socket
import time

import httpx

from gateway.metrics import MAX_SCRAPERS
from tests.kraken.stack import KrakenStack, wait_until


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_to_the_metrics_port_hold_no_more_than_a_few_descriptors(
    stack: KrakenStack,
) -> None:
    """Each connection held a descriptor for 5 s: a local user who kept opening them
    could take every descriptor the gateway may have, and with them its journal's next
    segment and its sockets to the exchange."""
    port = _free_port()
    gateway = stack.start_gateway("--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    assert httpx.get(url, timeout=5).status_code == 200
    before = _descriptors(gateway.pid)
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(1.0)  # every one accepted by now
        held = _descriptors(gateway.pid) - before
        assert held <= MAX_SCRAPERS + 2, held
        # The gateway serves on: a command is answered.
        assert stack.status()["journal"] is not None
    finally:
        for connection in idle:
            connection.close()
    wait_until(lambda: _scraped(url), 10, "a scrape once the idle ones are gone")
    assert gateway.poll() is None


def _scraped(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
