"""The ledger: slot semantics, fills, ownership, and the invariant under any sequence."""

from __future__ import annotations

import copy
import decimal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.codes import ErrorCode
from gateway.events import (
    CommandApplied,
    FillApplied,
    FillReplayed,
    apply_event,
    decode_event,
    encode_event,
    fill_of,
    replay_events,
)
from gateway.journal import UnreplayableRecordError
from gateway.ledger import (
    SCALE,
    UNIT,
    BalanceCommand,
    CommandKind,
    Fee,
    Fill,
    Ledger,
    Refused,
    Side,
    format_scaled,
    scale_fact,
)
from mmapstore import StoreValueError

S = 8


def _scaled_by_definition(value: Decimal) -> int:
    """A fact at the ledger's decimals, rounded half-even, as the ledger first wrote it."""
    wide = decimal.Context(prec=100, rounding=decimal.ROUND_HALF_EVEN)
    return int(value.quantize(Decimal(1).scaleb(-SCALE), context=wide).scaleb(SCALE, context=wide))


@given(st.integers(-(10**50) + 1, 10**50 - 1), st.integers(-40, 20))
def test_a_fact_is_scaled_and_rounded_half_even_as_defined(coefficient: int, exponent: int) -> None:
    value = Decimal(coefficient).scaleb(exponent)
    assert scale_fact(value) == _scaled_by_definition(value)


def test_a_fact_rounds_half_even_and_one_past_100_digits_is_refused_not_rounded() -> None:
    assert scale_fact(Decimal("0.0000000000000000015")) == 2
    assert scale_fact(Decimal("-0.0000000000000000025")) == -2
    assert scale_fact(Decimal("0.0000000000000000005")) == 0
    with pytest.raises(StoreValueError, match="far beyond any balance"):
        scale_fact(Decimal("1" * 101))


def funded(**totals: int) -> Ledger:
    ledger = Ledger(S)
    ledger.set_totals({c: v * UNIT for c, v in totals.items()})
    return ledger


def cmd(
    kind: str, currency: str, index: int, amount: Decimal | int, strategy: str = "a"
) -> BalanceCommand:
    return BalanceCommand(CommandKind(kind), strategy, currency, index, int(Decimal(amount) * UNIT))


def units(ledger: Ledger, currency: str) -> list[Decimal]:
    return [Decimal(v) / UNIT for v in ledger.slots(currency)]


def test_allocate_moves_from_available_to_strategy() -> None:
    ledger = funded(USD=1000)
    ledger.apply_command(cmd("allocate", "USD", 2, 100))
    assert units(ledger, "USD")[:3] == [1000, 900, 100]
    assert ledger.owner(2) == "a"


def test_release_moves_back_and_frees_the_slot_at_zero() -> None:
    ledger = funded(USD=1000)
    ledger.apply_command(cmd("allocate", "USD", 2, 100))
    ledger.apply_command(cmd("release", "USD", 2, 40))
    assert ledger.owner(2) == "a"
    ledger.apply_command(cmd("release", "USD", 2, 60))
    assert units(ledger, "USD")[:3] == [1000, 1000, 0]
    assert ledger.owner(2) is None
    ledger.apply_command(cmd("allocate", "USD", 2, 1, strategy="b"))
    assert ledger.owner(2) == "b"


def test_slot_stays_bound_while_nonzero_in_any_currency() -> None:
    ledger = funded(USD=1000, BTC=10)
    ledger.apply_command(cmd("allocate", "USD", 2, 100))
    ledger.apply_command(cmd("allocate", "BTC", 2, 1))
    ledger.apply_command(cmd("release", "USD", 2, 100))
    assert ledger.owner(2) == "a"
    with pytest.raises(Refused) as refused:
        ledger.apply_command(cmd("allocate", "USD", 2, 1, strategy="b"))
    assert refused.value.code is ErrorCode.SLOT_OWNED


def test_adjust_index_0_moves_total_and_available() -> None:
    ledger = funded(USD=1000)
    ledger.apply_command(cmd("adjust", "USD", 0, -250))
    assert units(ledger, "USD")[:2] == [750, 750]


def test_adjust_strategy_slot_moves_total_and_that_slot() -> None:
    ledger = funded(USD=1000)
    ledger.apply_command(cmd("allocate", "USD", 3, 100))
    ledger.apply_command(cmd("adjust", "USD", 3, -30))
    assert units(ledger, "USD")[:4] == [970, 900, 0, 70]


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (cmd("allocate", "USD", 2, 1001), ErrorCode.INSUFFICIENT_FUNDS),
        (cmd("release", "USD", 2, 1), ErrorCode.INSUFFICIENT_FUNDS),
        (cmd("adjust", "USD", 0, -1001), ErrorCode.INSUFFICIENT_FUNDS),
        (cmd("adjust", "USD", 2, -1), ErrorCode.INSUFFICIENT_FUNDS),
        (cmd("allocate", "USD", 1, 1), ErrorCode.INVALID_INDEX),
        (cmd("allocate", "USD", 8, 1), ErrorCode.INVALID_INDEX),
        (cmd("adjust", "USD", 1, 1), ErrorCode.INVALID_INDEX),
        (cmd("allocate", "USD", 2, 0), ErrorCode.INVALID_AMOUNT),
        (cmd("allocate", "USD", 2, -5), ErrorCode.INVALID_AMOUNT),
        (cmd("adjust", "USD", 0, 0), ErrorCode.INVALID_AMOUNT),
        (cmd("allocate", "EUR", 2, 1), ErrorCode.UNKNOWN_CURRENCY),
    ],
)
def test_refusal_leaves_ledger_unchanged(command: BalanceCommand, code: ErrorCode) -> None:
    ledger = funded(USD=1000)
    before = copy.deepcopy(ledger.to_snapshot())
    with pytest.raises(Refused) as refused:
        ledger.apply_command(command)
    assert refused.value.code is code
    assert ledger.to_snapshot() == before


def test_buy_fill_attributed_by_userref_with_fee_in_quote() -> None:
    ledger = funded(USD=100000, BTC=10)
    fill = Fill(
        "T1", "BTC", "USD", Side.BUY, Decimal("0.5"), Decimal("26599.9"),
        (Fee("USD", Decimal("0.3458")),), userref=2,
    )  # fmt: skip
    outcome = ledger.apply_fill(fill)
    assert outcome is not None
    assert outcome.slot == 2
    assert units(ledger, "BTC")[:3] == [Decimal("10.5"), 10, Decimal("0.5")]
    cost = Decimal("13299.95") + Decimal("0.3458")
    assert units(ledger, "USD")[:3] == [100000 - cost, 100000, -cost]
    assert ("USD", 2, -int(cost * UNIT)) in outcome.negative  # reported, not refused
    ledger.check_invariant()


def test_sell_fill_with_fee_in_base_goes_to_slot_1_without_userref() -> None:
    ledger = funded(USD=0, ETH=100)
    fill = Fill(
        "T2", "ETH", "USD", Side.SELL, Decimal("2"), Decimal("1500.25"),
        (Fee("ETH", Decimal("0.001")),), userref=None,
    )  # fmt: skip
    outcome = ledger.apply_fill(fill)
    assert outcome is not None and outcome.slot == 1
    assert units(ledger, "ETH")[:2] == [Decimal("97.999"), Decimal("97.999")]
    assert units(ledger, "USD")[:2] == [Decimal("3000.5"), Decimal("3000.5")]


@pytest.mark.parametrize("userref", [0, 1, 8, 99, -2])
def test_fill_with_userref_outside_strategy_slots_goes_to_slot_1(userref: int) -> None:
    ledger = funded(USD=1000, BTC=1)
    fill = Fill("T3", "BTC", "USD", Side.BUY, Decimal(1), Decimal(1), userref=userref)
    outcome = ledger.apply_fill(fill)
    assert outcome is not None and outcome.slot == 1


def test_fill_applied_once_only() -> None:
    ledger = funded(USD=1000, BTC=1)
    fill = Fill("T4", "BTC", "USD", Side.BUY, Decimal(1), Decimal(10), userref=2)
    assert ledger.apply_fill(fill) is not None
    assert ledger.apply_fill(fill) is None
    assert units(ledger, "USD")[0] == 990


def test_fill_older_than_the_ledger_is_history_not_applied() -> None:
    ledger = funded(USD=1000, BTC=1)
    ledger.epoch_ns = 1_000
    old = Fill(
        "T-old", "BTC", "USD", Side.BUY, Decimal(1), Decimal(10), userref=2, timestamp_ns=999
    )
    assert ledger.apply_fill(old) is None
    assert units(ledger, "BTC")[:3] == [1, 1, 0]
    new = Fill(
        "T-new", "BTC", "USD", Side.BUY, Decimal(1), Decimal(10), userref=2, timestamp_ns=1_001
    )
    assert ledger.apply_fill(new) is not None
    assert units(ledger, "BTC")[:3] == [2, 1, 1]


def test_fill_of_new_currency_adds_it() -> None:
    ledger = funded(USD=1000)
    ledger.apply_fill(Fill("T5", "SOL", "USD", Side.BUY, Decimal(3), Decimal(20)))
    assert units(ledger, "SOL")[:2] == [3, 3]


def test_applied_fill_ids_are_bounded_with_a_watermark() -> None:
    ledger = Ledger(S)
    ledger.applied.capacity = 10
    for i in range(25):
        ledger.apply_fill(
            Fill(f"T{i}", "BTC", "USD", Side.BUY, Decimal(1), Decimal(1), timestamp_ns=i + 1)
        )
    assert len(ledger.applied.ids) == 10
    # Forgotten ids are still recognised by their age.
    old = Fill("T3", "BTC", "USD", Side.BUY, Decimal(1), Decimal(1), timestamp_ns=4)
    assert ledger.apply_fill(old) is None
    assert units(ledger, "BTC")[0] == 25


def test_set_totals_keeps_strategy_slots_and_zeroes_vanished_currency() -> None:
    ledger = funded(USD=1000, DOGE=5)
    ledger.apply_command(cmd("allocate", "USD", 2, 300))
    changed = ledger.set_totals({"USD": 1200 * UNIT, "BTC": 2 * UNIT})
    assert sorted(changed) == ["BTC", "DOGE", "USD"]
    assert units(ledger, "USD")[:3] == [1200, 900, 300]
    assert units(ledger, "DOGE")[:2] == [0, 0]
    assert units(ledger, "BTC")[:2] == [2, 2]


def test_correction_moves_only_total_and_available() -> None:
    ledger = funded(USD=1000)
    ledger.apply_command(cmd("allocate", "USD", 2, 300))
    assert ledger.correct("USD", 1500 * UNIT) == (1000 * UNIT, 1500 * UNIT)
    assert units(ledger, "USD")[:3] == [1500, 1200, 300]


def test_idempotent_command_returns_first_reply_and_conflict_is_refused() -> None:
    ledger = funded(USD=1000)
    first = apply_event(ledger, CommandApplied(cmd("allocate", "USD", 2, 10), "r1"))
    again = apply_event(ledger, CommandApplied(cmd("allocate", "USD", 2, 10), "r1"))
    assert again.reply == first.reply and not again.durable
    assert units(ledger, "USD")[2] == 10
    other = apply_event(ledger, CommandApplied(cmd("allocate", "USD", 2, 11), "r1"))
    assert other.reply is not None and other.reply["ok"] is False
    assert other.reply["error"] == {
        "code": "IDEMPOTENCY_CONFLICT",
        "message": "request_id 'r1' was already used for a different request",
    }


def test_snapshot_round_trip() -> None:
    ledger = funded(USD=1000, BTC=3)
    ledger.apply_command(cmd("allocate", "USD", 2, 10))
    ledger.apply_fill(Fill("T9", "BTC", "USD", Side.SELL, Decimal(1), Decimal(5), timestamp_ns=7))
    ledger.remember_reply("r", ("x",), {"ok": True})
    copy_ = Ledger.from_snapshot(ledger.to_snapshot())
    assert copy_.to_snapshot() == ledger.to_snapshot()


def test_snapshot_of_the_earlier_form_restores_fill_ids_and_replies() -> None:
    # Snapshots written before replies were blobs kept [[id, ns]] and [[id, fingerprint,
    # reply]]: a gateway upgraded in place must read them, replies answering as before.
    ledger = funded(USD=1000)
    first = apply_event(ledger, CommandApplied(cmd("allocate", "USD", 2, 10), "r1"))
    earlier = ledger.to_snapshot()
    del earlier["applied_ids"], earlier["applied_ns"], earlier["reply_ids"], earlier["reply_blobs"]
    earlier["applied"] = [["T1", 5]]
    earlier["replies"] = [["r1", ["allocate", "a", "USD", 2, 10 * UNIT], first.reply]]
    restored = Ledger.from_snapshot(earlier)
    assert restored.applied.seen("T1", 0)
    again = apply_event(restored, CommandApplied(cmd("allocate", "USD", 2, 10), "r1"))
    assert again.reply == first.reply and not again.durable


@pytest.mark.parametrize(
    ("scaled", "text"),
    [(0, "0"), (UNIT, "1"), (-UNIT // 2, "-0.5"), (1, "0.000000000000000001"), (123 * UNIT, "123")],
)
def test_format_scaled(scaled: int, text: str) -> None:
    assert format_scaled(scaled) == text


# -- any sequence of events ---------------------------------------------------------

currencies = st.sampled_from(["USD", "BTC", "ETH"])
amounts = st.decimals(min_value=Decimal("-500"), max_value=Decimal(500), places=6)
indices = st.integers(min_value=-1, max_value=S)
strategies = st.sampled_from(["a", "b", "c"])


class LedgerMachine(RuleBasedStateMachine):
    """Random commands, fills, totals and corrections; the invariant always holds."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = funded(USD=1000, BTC=10)
        self.fill_ids = 0

    @rule(
        kind=st.sampled_from(list(CommandKind)),
        strategy=strategies,
        currency=currencies,
        index=indices,
        amount=amounts,
    )
    def command(
        self, kind: CommandKind, strategy: str, currency: str, index: int, amount: Decimal
    ) -> None:
        command = BalanceCommand(kind, strategy, currency, index, int(amount * UNIT))
        before = copy.deepcopy(self.ledger.to_snapshot())
        try:
            self.ledger.apply_command(command)
        except Refused:
            assert self.ledger.to_snapshot() == before

    @rule(
        base=currencies,
        side=st.sampled_from(list(Side)),
        qty=st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(5), places=8),
        price=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(50000), places=2),
        fee=st.decimals(min_value=Decimal(0), max_value=Decimal(3), places=4),
        userref=st.one_of(st.none(), st.integers(min_value=-1, max_value=S + 1)),
        replay=st.booleans(),
    )
    def fill(
        self, base: str, side: Side, qty: Decimal, price: Decimal, fee: Decimal,
        userref: int | None, replay: bool,
    ) -> None:  # fmt: skip
        if not replay:
            self.fill_ids += 1
        fill = Fill(
            f"T{self.fill_ids}", base, "USDT", side, qty, price, (Fee("USDT", fee),), userref
        )
        self.ledger.apply_fill(fill)

    @rule(currency=currencies, total=st.integers(min_value=0, max_value=10**6))
    def correction(self, currency: str, total: int) -> None:
        self.ledger.correct(currency, total * UNIT)

    @rule(usd=st.integers(min_value=0, max_value=10**6), btc=st.integers(0, 100))
    def totals(self, usd: int, btc: int) -> None:
        self.ledger.set_totals({"USD": usd * UNIT, "BTC": btc * UNIT})

    @invariant()
    def slot_zero_is_the_sum(self) -> None:
        self.ledger.check_invariant()


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# -- replay by what a fill booked ----------------------------------------------------


fills = st.builds(
    lambda n, base, quote, side, qty, price, fee, fee_asset, userref: Fill(
        f"T{n}",
        base,
        quote,
        side,
        qty,
        price,
        (Fee(fee_asset, fee),),
        userref,
        timestamp_ns=1_700_000_000_000_000_000 + n,
    ),
    st.integers(min_value=0, max_value=30),  # repeats: the same id must book once
    currencies,
    st.sampled_from(["USDT", "USD"]),
    st.sampled_from(list(Side)),
    st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(5), places=8),
    st.decimals(min_value=Decimal("0.00001"), max_value=Decimal(50000), places=5),
    st.decimals(min_value=Decimal(0), max_value=Decimal(3), places=8),
    currencies,
    st.one_of(st.none(), st.integers(min_value=-1, max_value=S + 1)),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            fills,
            st.builds(
                lambda kind, strategy, currency, index, amount: BalanceCommand(
                    kind, strategy, currency, index, int(amount * UNIT)
                ),
                st.sampled_from(list(CommandKind)),
                strategies,
                currencies,
                indices,
                amounts,
            ),
        ),
        max_size=40,
    )
)
def test_replaying_a_journal_by_what_fills_booked_rebuilds_the_same_ledger(
    events: list[Fill | BalanceCommand],
) -> None:
    """The writer journals each fill with what it booked; replay applies that booking
    instead of the decimals again: the ledger must come out the same, by either way in
    (``apply_event(decode_event(...))`` and ``replay_events``), and the same as replaying
    the records' earlier forms: a map with its booking as digits, and a map without one,
    which redoes the arithmetic."""
    live, booked, fast, mapped, earlier = (funded(USD=1000, USDT=1000, BTC=10) for _ in range(5))
    for ledger in (live, booked, fast, mapped, earlier):
        ledger.applied.capacity = 3  # every way forgets the oldest ids, and the same ones
    records = []
    for item in events:
        event = FillApplied(item) if isinstance(item, Fill) else CommandApplied(item)
        outcome = apply_event(live, event)
        if outcome.durable:
            records.append(encode_event(event, outcome.fill))
    half = len(records) // 2  # the journal hands replay a segment at a time
    replay_events(fast, records[:half])
    replay_events(fast, records[half:])
    for record in records:
        replayed = decode_event(record)
        apply_event(booked, replayed)
        assert encode_event(replayed) == record  # a replayed record encodes as it was
        item = cbor2.loads(record)
        if isinstance(item, list):  # a booked fill: the fill itself is nested, whole
            _, exec_id, timestamp_ns, slot, flat, detail = item
            body = cbor2.loads(detail)
            assert (body["id"], body["ts"]) == (exec_id, timestamp_ns)
            assert fill_of(record) == decode_event(detail).fill  # type: ignore[union-attr]
            changes = [[flat[i], str(_scaled(flat[i + 1]))] for i in range(0, len(flat), 2)]
            apply_event(mapped, decode_event(cbor2.dumps({**body, "book": [slot, changes]})))
        else:
            body = item
            apply_event(mapped, decode_event(record))
        apply_event(earlier, decode_event(cbor2.dumps(body)))
    assert booked.to_snapshot() == live.to_snapshot() == fast.to_snapshot()
    assert mapped.to_snapshot() == earlier.to_snapshot() == live.to_snapshot()
    assert any(isinstance(decode_event(r), FillReplayed) for r in records) == any(
        isinstance(item, Fill) for item in events
    )


def _scaled(value: object) -> int:
    if isinstance(value, bytes):
        return int.from_bytes(value, "big", signed=True)
    assert isinstance(value, int)
    return value


def test_replay_books_a_fill_once_as_the_live_path_does() -> None:
    """A journal record repeated (by a salvage, say) or older than the fill ids the ledger
    forgot is skipped by replay, by either way in, as the live path skips such a fill."""
    live, fast, decoded = (funded(USD=1000) for _ in range(3))
    for ledger in (live, fast, decoded):
        ledger.applied.capacity = 2
    records = []
    for n in range(4):
        bought = FillApplied(
            Fill(f"T{n}", "BTC", "USD", Side.BUY, Decimal(1), Decimal(10), userref=2,
                 timestamp_ns=1_000 + n)
        )  # fmt: skip
        records.append(encode_event(bought, apply_event(live, bought).fill))
    # T0 and T1 are forgotten by now (the watermark is T1's time); T3 is still known.
    replayed = [*records, records[3], records[0]]
    replay_events(fast, replayed)
    for record in replayed:
        apply_event(decoded, decode_event(record))
    assert fast.to_snapshot() == decoded.to_snapshot() == live.to_snapshot()
    assert live.slots("BTC")[2] == 4 * UNIT


@pytest.mark.parametrize(
    "booking",
    [
        ["bf", "T1", 1, 9, ["USD", 1], b""],
        ["bf", "T1", 1, 2, ["USD", 1.5], b""],
        ["bf", "T1", 1, 2, ["USD"], b""],
        ["bf", "T1", 1, "2", [], b""],
        ["bf", "T1", "1", 2, [], b""],
        ["bf", 7, 1, 2, [], b""],
        ["bf", "T1", 1, 2, [5, 1], b""],
        ["bf", "T1", 1, 2, ["USD", "1" * 81], b""],
        ["bf", "T1", 1, 2, ["USD", bytes(35)], b""],
        ["bf", "T1", 1, 2, "USD", b""],
        ["bf", "T1", 1, 2, [], "not bytes"],
        ["bf", "T1", 1, 2, []],
        ["xx", "T1", 1, 2, [], b""],
        # Two currencies, the shape replay books without a call: every part checked.
        ["bf", "T1", 1, 0, ["USD", 1, "BTC", -1], b""],
        ["bf", "T1", 1, 8, ["USD", 1, "BTC", -1], b""],
        ["bf", "T1", 1, True, ["USD", 1, "BTC", -1], b""],
        ["bf", "T1", 1.0, 2, ["USD", 1, "BTC", -1], b""],
        ["bf", b"T1", 1, 2, ["USD", 1, "BTC", -1], b""],
        ["bf", "T1", 1, 2, ["USD", 1, "BTC", -1], "not bytes"],
        ["xx", "T1", 1, 2, ["USD", 1, "BTC", -1], b""],
        ["bf", "T1", 1, 2, ["USD", 1, 7, -1], b""],
        ["bf", "T1", 1, 2, [b"USD", 1, "BTC", -1], b""],
        ["bf", "T1", 1, 2, ["USD", 1, "BTC", -1.5], b""],
        ["bf", "T1", 1, 2, ["USD", True, "BTC", -1], b""],
        ["bf", "T1", 1, 2, ["USD", 1, "BTC", bytes(35)], b""],
        ["bf", "T1", 1, 2, ["USD", "1" * 81, "BTC", -1], b""],
    ],
)
def test_a_booked_fill_record_of_a_wrong_shape_is_refused(booking: list[object]) -> None:
    """Refused by every way in, and by replay before it changes anything: a restart
    names the record (its index among those it was given) and stops."""
    ledger = funded(USD=1000)
    with pytest.raises(ValueError):
        apply_event(ledger, decode_event(cbor2.dumps(booking)))
    bought = FillApplied(Fill("T0", "BTC", "USD", Side.BUY, Decimal(1), Decimal(10), userref=2))
    sound = encode_event(bought, apply_event(funded(USD=1000), bought).fill)
    replay_events(ledger, [sound])
    before = ledger.to_snapshot()
    with pytest.raises(UnreplayableRecordError) as refused:
        replay_events(ledger, [sound, cbor2.dumps(booking)])
    assert refused.value.index == 1 and isinstance(refused.value.__cause__, ValueError)
    assert ledger.to_snapshot() == before


@pytest.mark.parametrize(
    "book",
    [
        [9, [["USD", 1]]],
        [2, [["USD", "1.5"]]],
        [2, [["USD", 1.5]]],
        [2, "USD"],
        ["2", []],
        [2, [["USD"]]],
    ],
)
def test_a_fill_record_with_a_malformed_booking_is_refused(book: object) -> None:
    fill = Fill("T1", "BTC", "USD", Side.BUY, Decimal(1), Decimal(100), userref=2)
    body = cbor2.loads(encode_event(FillApplied(fill)))
    body["book"] = book
    ledger = funded(USD=1000)
    with pytest.raises(ValueError):
        apply_event(ledger, decode_event(cbor2.dumps(body)))


def _snapshot_changed(change: str) -> dict[str, object]:
    snapshot = funded(USD=1000).to_snapshot()
    usd = snapshot["balances"]["USD"]  # type: ignore[index]
    if change == "total":
        usd[0] += 1  # the total no longer the sum of the rest
    elif change == "slots":
        usd.pop()  # one slot short
    elif change == "count":
        snapshot["strategy_count"] = 0
    elif change == "ids":
        snapshot["applied_ns"] = [1]  # a time without its id
    elif change == "owners":
        snapshot["owners"] = [["2", "a"]]
    return snapshot


@pytest.mark.parametrize("change", ["total", "slots", "count", "ids", "owners"])
def test_a_snapshot_of_the_wrong_shape_is_refused_even_under_python_dash_o(
    change: str, tmp_path: Path
) -> None:
    """Its checks were asserts, which ``python -O`` (or ``PYTHONOPTIMIZE``) drops: a
    snapshot whose slots did not add up, or fell one short, was taken as it was."""
    with pytest.raises(ValueError, match="a snapshot"):
        Ledger.from_snapshot(_snapshot_changed(change))
    path = tmp_path / "snapshot.cbor"
    path.write_bytes(cbor2.dumps(_snapshot_changed(change)))
    code = (
        "import sys, cbor2\nfrom gateway.ledger import Ledger\n"
        "try:\n    Ledger.from_snapshot(cbor2.loads(open(sys.argv[1], 'rb').read()))\n"
        "except ValueError as exc:\n    print('refused:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-O", "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("refused: a snapshot"), done.stdout + done.stderr
