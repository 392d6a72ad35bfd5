"""Prometheus metrics over a real TCP socket."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import trio
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway.config import GatewayConfig
from gateway.metrics import RENDER_EVERY_S, Metrics
from gateway.service import Running, run_gateway
from tests.gateway.conftest import RawClient
from tests.gateway.fake_exchange import FakeExchange


async def test_metrics_count_commands_refusals_and_latency(
    config: GatewayConfig, exchange: FakeExchange, nursery: trio.Nursery
) -> None:
    with trio.socket.socket() as probe:  # a free port for the metrics server
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = GatewayConfig(**{**config.__dict__, "metrics_port": port})
    running: Running = await nursery.start(run_gateway, config, exchange)
    async with await RawClient.connect(config.socket_path) as raw:
        good = {"strategy": "a", "cmd": "allocate", "currency": "usd", "amount": 1, "index": 2}
        for _ in range(3):
            assert (await raw.json(good))["ok"] is True
        assert (await raw.json({**good, "amount": 10**9}))["ok"] is False
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert samples[("gateway_commands_total", (("result", "ok"),))] == 3
    assert samples[("gateway_commands_total", (("result", "refused"),))] == 1
    assert samples[("gateway_command_refusals_total", (("code", "INSUFFICIENT_FUNDS"),))] == 1
    assert samples[("gateway_command_latency_seconds_count", (("cmd", "allocate"),))] == 4
    assert samples[("gateway_journal_ok", ())] == 1
    assert samples[("gateway_feed_live", ())] == 1
    assert ("gateway_writer_queue_depth", ()) in samples
    assert ("gateway_reconcile_age_seconds", ()) in samples
    running.stop.set()


def test_a_scrape_within_a_second_of_the_last_gets_the_same_text() -> None:
    """A render costs the gateway's one thread, and any local user may ask for one as
    fast as it can: each scrape rendered the families again."""
    renders = []

    class Counting(Collector):
        def collect(self) -> Iterator[Metric]:
            renders.append(1)
            yield GaugeMetricFamily("renders", "renders so far", value=len(renders))

    now = [100.0]
    metrics = Metrics(clock=lambda: now[0])
    metrics.registry.register(Counting())
    first = metrics.exposition()
    for _ in range(50):
        now[0] += RENDER_EVERY_S / 100
        assert metrics.exposition() == first
    now[0] += RENDER_EVERY_S
    assert metrics.exposition() != first and len(renders) == 2
