"""Prometheus metrics: read from the gateway's own counters at scrape time, served over Trio.

Counters live where they are counted (the writer's stats, the exchange
session, the reconciler), so the hot paths pay nothing for metrics; a scrape
turns them into Prometheus families. The one histogram, command latency, is
observed by the command server.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

import trio
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.exchanges.base import ExchangeHealth
    from gateway.writer import WriterCore

logger = logging.getLogger(__name__)

LATENCY_BUCKETS_S: Final = (
    0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
)  # fmt: skip
MAX_REQUEST_BYTES: Final = 8192
# The port is open to every local user: each connection holds a descriptor and each render
# costs the gateway's one thread. Past this many at once, a connection is closed unread
# (descriptors are what the journal and the exchange's sockets need), and a scrape within
# RENDER_EVERY_S of the last gets the same text (Prometheus scrapes every 15 s or so).
MAX_SCRAPERS: Final = 8
RENDER_EVERY_S: Final = 1.0
SCRAPE_DEADLINE_S: Final = 5.0


class GatewayCollector(Collector):
    """Everything but the latency histogram, taken from live state on each scrape."""

    def __init__(
        self,
        core: WriterCore,
        queue_depth: Callable[[], int],
        health: Callable[[], ExchangeHealth],
    ) -> None:
        self._core = core
        self._queue_depth = queue_depth
        self._health = health

    def collect(self) -> Iterator[Metric]:
        core = self._core
        stats = core.stats
        status = core.status()["status"]
        assert isinstance(status, dict)
        health = self._health()

        def counter(name: str, doc: str, value: object) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=float(str(value or 0)))

        yield counter("gateway_fills", "Fills applied to the ledger", stats.fills_applied)
        yield counter(
            "gateway_fills_duplicate", "Fills skipped as already applied", stats.fills_duplicate
        )
        commands = CounterMetricFamily("gateway_commands", "Commands by result", labels=["result"])
        commands.add_metric(["ok"], stats.commands_applied)
        commands.add_metric(["refused"], stats.commands_refused)
        commands.add_metric(["unavailable"], stats.commands_unavailable)
        yield commands
        refusals = CounterMetricFamily(
            "gateway_command_refusals", "Refusals by code", labels=["code"]
        )
        for code, count in sorted(stats.refusals.items()):
            refusals.add_metric([code], count)
        yield refusals
        yield counter("gateway_corrections", "Reconcile corrections applied", stats.corrections)
        yield counter("gateway_ws_reconnects", "Exchange websocket reconnects", health.reconnects)
        yield counter(
            "gateway_rest_failures", "Exchange REST calls that failed", health.rest_failures
        )
        last = status.get("reconcile_last_verified_ns")
        age = GaugeMetricFamily(
            "gateway_reconcile_age_seconds", "Seconds since the last verified reconcile (-1: never)"
        )
        age.add_metric([], time.time() - last / 1e9 if isinstance(last, int) and last else -1.0)
        yield age
        depth = GaugeMetricFamily("gateway_writer_queue_depth", "Messages waiting for the writer")
        depth.add_metric([], float(self._queue_depth()))
        yield depth
        journal = GaugeMetricFamily("gateway_journal_ok", "1 while the journal can be written")
        journal.add_metric([], 0.0 if core.journal_error else 1.0)
        yield journal
        overdrawn = GaugeMetricFamily(
            "gateway_overdrawn_slots", "Slots below zero, per currency", labels=["currency"]
        )
        for currency, slots in sorted(core.overdrawn.items()):
            overdrawn.add_metric([currency], float(len(slots)))
        yield overdrawn
        out_of_range = GaugeMetricFamily(
            "gateway_out_of_range_currencies", "Currencies with a balance the store cannot hold"
        )
        out_of_range.add_metric([], float(len(core.out_of_range)))
        yield out_of_range
        feed = GaugeMetricFamily("gateway_feed_live", "1 while the exchange fill stream is live")
        feed.add_metric([], 1.0 if health.feed_live else 0.0)
        yield feed
        replication = status.get("replication")
        if isinstance(replication, dict):  # --replicate (docs/replication.md)
            publishing = GaugeMetricFamily(
                "gateway_replication_publishing", "1 while the journal is being published to Redis"
            )
            publishing.add_metric([], 1.0 if replication["state"] == "publishing" else 0.0)
            yield publishing
            behind = GaugeMetricFamily(
                "gateway_replication_behind_events", "Durable events not yet published to Redis"
            )
            behind.add_metric([], float(str(replication["behind"])))
            yield behind
            yield counter(
                "gateway_replication_remote_commands",
                "Commands mirrors forwarded through Redis",
                replication["remote_commands"],
            )


class Metrics:
    """The registry a gateway serves, and the histogram the command server feeds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self.command_latency = Histogram(
            "gateway_command_latency_seconds",
            "From a command's frame arriving to its reply being sent (with the fsync)",
            ["cmd"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._rendered = b""
        self._rendered_at = float("-inf")

    def watch(
        self,
        core: WriterCore,
        queue_depth: Callable[[], int],
        health: Callable[[], ExchangeHealth],
    ) -> None:
        self.registry.register(GatewayCollector(core, queue_depth, health))

    def exposition(self) -> bytes:
        """The families as Prometheus text, rendered at most once every RENDER_EVERY_S."""
        now = self._clock()
        if now - self._rendered_at >= RENDER_EVERY_S:
            self._rendered, self._rendered_at = generate_latest(self.registry), now
        return self._rendered


async def _answer(metrics: Metrics, stream: trio.SocketStream) -> None:
    async with stream:
        with trio.move_on_after(SCRAPE_DEADLINE_S):  # reading the request and sending it all
            await _answer_within(metrics, stream)


async def _answer_within(metrics: Metrics, stream: trio.SocketStream) -> None:
    request = b""
    while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST_BYTES:
        data = await stream.receive_some(4096)
        if not data:
            return
        request += data
    line = request.split(b"\r\n", 1)[0].split()
    if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] in (b"/metrics", b"/"):
        body, status = metrics.exposition(), b"200 OK"
        content_type = b"text/plain; version=0.0.4; charset=utf-8"
    else:
        body, status, content_type = b"not found\n", b"404 Not Found", b"text/plain"
    head = (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(head + body)


async def serve_metrics(
    metrics: Metrics,
    port: int,
    host: str = "127.0.0.1",
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` until cancelled; ``started(port)`` once listening (0: any port)."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise GatewayError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror} (choose another --metrics-port)"
        ) from None
    bound = listeners[0].socket.getsockname()[1]
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    serving = 0

    async def answer(stream: trio.SocketStream) -> None:
        nonlocal serving
        if serving >= MAX_SCRAPERS:
            await trio.aclose_forcefully(stream)
            return
        serving += 1
        try:
            await _answer(metrics, stream)
        finally:
            serving -= 1

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, answer, listeners)
        task_status.started(bound)
