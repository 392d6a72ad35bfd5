"""The reconciler's rules, each branch on Trio's MockClock."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from functools import partial

import pytest
import trio
import trio.testing

from gateway.errors import ExchangeError
from gateway.ledger import UNIT
from gateway.messages import CorrectionProposed, ExchangeHealthChanged, WriterMessage
from gateway.reconciler import ReconcileStatus, differences, judge, run_reconciler

INTERVAL = 60.0
RECHECK = 3.0


def test_judge_corrects_only_a_repeated_difference() -> None:
    corrections, suspects = judge({}, {"USD": 5})
    assert corrections == {} and suspects == {"USD": 5}
    corrections, suspects = judge(suspects, {"USD": 5, "BTC": 1})
    assert corrections == {"USD": 5} and suspects == {"BTC": 1}
    corrections, suspects = judge({"USD": 5}, {"USD": 6})
    assert corrections == {} and suspects == {"USD": 6}


def test_differences_treat_missing_currencies_as_zero() -> None:
    assert differences({"USD": 10, "SOL": 3}, {"USD": 10, "DOGE": 2}) == {"SOL": 3, "DOGE": -2}


class ScriptedExchange:
    """REST totals from a script; each entry is totals, or an exception to raise."""

    def __init__(self, script: Sequence[Mapping[str, str] | Exception]) -> None:
        self.script: Iterator[Mapping[str, str] | Exception] = iter(script)
        self.calls = 0
        self.during_call: list[object] = []

    async def fetch_totals(self) -> dict[str, Decimal]:
        self.calls += 1
        await trio.sleep(0.1)  # the REST round trip
        for hook in self.during_call:
            assert callable(hook)
            hook()
        self.during_call.clear()
        step = next(self.script)
        if isinstance(step, Exception):
            raise step
        return {c: Decimal(v) for c, v in step.items()}


class Harness:
    def __init__(self, exchange: ScriptedExchange, ledger: dict[str, int]) -> None:
        self.exchange = exchange
        self.ledger = ledger
        self.fills = 0
        self.feed: int | None = 1
        self.send, self.receive = trio.open_memory_channel[WriterMessage](100)
        self.status = ReconcileStatus()
        self.health: list[ExchangeHealthChanged] = []

    def corrections(self) -> list[CorrectionProposed]:
        found: list[CorrectionProposed] = []
        while True:
            try:
                message = self.receive.receive_nowait()
            except trio.WouldBlock:
                return found
            if isinstance(message, ExchangeHealthChanged):
                self.health.append(message)
                continue
            assert isinstance(message, CorrectionProposed)
            found.append(message)

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(
            partial(
                run_reconciler,
                fills_applied=lambda: self.fills,
                ledger_totals=lambda: self.ledger,
                feed_connection=lambda: self.feed,
                interval_s=INTERVAL,
                recheck_s=RECHECK,
                status=self.status,
            ),
            self.exchange,
            self.send,
        )


def usd(amount: int) -> int:
    return amount * UNIT


async def test_equal_totals_are_verified_every_interval(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    harness = Harness(ScriptedExchange([{"USD": "100"}] * 5), {"USD": usd(100)})
    await harness.start(nursery)
    await trio.sleep(INTERVAL * 5 + 1)
    assert harness.exchange.calls == 5
    assert harness.status.state == "verified" and harness.status.verified_passes == 5
    assert harness.corrections() == []


async def test_difference_is_corrected_after_two_fill_free_checks(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    harness = Harness(ScriptedExchange([{"USD": "150"}] * 2 + [{"USD": "150"}]), {"USD": usd(100)})
    await harness.start(nursery)
    await trio.sleep(INTERVAL + 1)
    assert harness.exchange.calls == 1
    assert harness.status.state == "suspect" and harness.corrections() == []
    # The second check comes soon, not a whole interval later.
    await trio.sleep(RECHECK + 0.5)
    assert harness.exchange.calls == 2
    assert harness.corrections() == [CorrectionProposed("USD", usd(100), usd(150))]
    assert harness.status.corrections == 1


async def test_changing_difference_is_suspected_again_not_corrected(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    script: list[Mapping[str, str] | Exception] = [{"USD": "150"}, {"USD": "160"}, {"USD": "160"}]
    harness = Harness(ScriptedExchange(script), {"USD": usd(100)})
    await harness.start(nursery)
    await trio.sleep(INTERVAL + RECHECK + 1)
    assert harness.exchange.calls == 2 and harness.corrections() == []
    await trio.sleep(RECHECK)
    assert harness.corrections() == [CorrectionProposed("USD", usd(100), usd(160))]


async def test_fill_during_the_request_means_check_again_soon(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    exchange = ScriptedExchange([{"USD": "150"}, {"USD": "150"}, {"USD": "150"}])
    harness = Harness(exchange, {"USD": usd(100)})

    def fill_lands() -> None:
        harness.fills += 1

    await harness.start(nursery)
    exchange.during_call.append(fill_lands)
    await trio.sleep(INTERVAL + 1)
    assert harness.status.state == "fill-in-flight"
    await trio.sleep(RECHECK)  # the quick recheck: a first fill-free look, a suspect
    assert exchange.calls == 2 and harness.corrections() == []
    await trio.sleep(RECHECK)
    assert exchange.calls == 3
    assert harness.corrections() == [CorrectionProposed("USD", usd(100), usd(150))]


async def test_new_and_vanished_currencies(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    script: list[Mapping[str, str] | Exception] = [{"USD": "100", "SOL": "3"}] * 2
    harness = Harness(ScriptedExchange(script), {"USD": usd(100), "DOGE": usd(7)})
    await harness.start(nursery)
    await trio.sleep(INTERVAL + RECHECK + 1)
    assert sorted(harness.corrections(), key=lambda c: c.currency) == [
        CorrectionProposed("DOGE", usd(7), 0),
        CorrectionProposed("SOL", 0, usd(3)),
    ]


async def test_rest_failures_change_nothing_and_back_off(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    failure = ExchangeError("EService:Unavailable")
    script: list[Mapping[str, str] | Exception] = [failure, failure, failure, {"USD": "100"}]
    harness = Harness(ScriptedExchange(script), {"USD": usd(100)})
    await harness.start(nursery)
    await trio.sleep(INTERVAL + 1)
    assert harness.status.state == "rest-error" and harness.status.rest_errors == 1
    await trio.sleep(RECHECK + 0.5)  # first retry after RECHECK
    assert harness.exchange.calls == 2
    await trio.sleep(2 * RECHECK + 0.5)  # then after twice that
    assert harness.exchange.calls == 3
    await trio.sleep(4 * RECHECK + 0.5)
    assert harness.exchange.calls == 4
    assert harness.status.state == "verified"
    assert harness.corrections() == []
    assert harness.status.last_error == "EService:Unavailable"
    # Readers were told REST was down, once, and that it is back.
    assert harness.health == [
        ExchangeHealthChanged(rest_ok=False),
        ExchangeHealthChanged(rest_ok=True),
    ]


@pytest.mark.parametrize("passes", [1, 3, 10])
async def test_exactly_n_passes_in_n_intervals(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, passes: int
) -> None:
    harness = Harness(ScriptedExchange([{"USD": "1"}] * (passes + 1)), {"USD": usd(1)})
    await harness.start(nursery)
    await trio.sleep(INTERVAL * passes + INTERVAL / 2)
    assert harness.status.passes == passes


async def test_no_correction_while_the_fill_stream_is_down_or_reconnects(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    exchange = ScriptedExchange([{"USD": "150"}] * 10)
    harness = Harness(exchange, {"USD": usd(100)})
    harness.feed = None  # the websocket is down: fills may be on their way
    await harness.start(nursery)
    await trio.sleep(INTERVAL + RECHECK * 4 + 1)
    # Nothing could be concluded, so REST is not even asked (its counter serves a catch-up).
    assert exchange.calls == 0
    assert harness.corrections() == [] and harness.status.state == "feed-down"

    def reconnects() -> None:
        harness.feed = 2  # a new connection came up during the REST call

    harness.feed = 1
    exchange.during_call.append(reconnects)
    await trio.sleep(RECHECK)
    assert harness.corrections() == [] and harness.status.state == "feed-down"
    # Live and steady now: the usual two fill-free checks, then the correction.
    await trio.sleep(RECHECK * 2)
    assert harness.corrections() == [CorrectionProposed("USD", usd(100), usd(150))]
