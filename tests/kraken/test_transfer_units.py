"""Ledger entries as transfers: Kraken's documented messages, the booking rule, exactly once."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from gateway.codes import ErrorCode
from gateway.events import (
    CommandApplied,
    Event,
    TransferApplied,
    apply_event,
    decode_event,
    encode_event,
)
from gateway.exchanges.kraken.assets import AssetMap
from gateway.exchanges.kraken.parsing import (
    SkippedExecution,
    WsBalances,
    parse_rest_ledger_entry,
    parse_ws_message,
)
from gateway.exchanges.kraken.sim.exchange import public_asset_pairs, public_assets
from gateway.ledger import UNIT, BalanceCommand, CommandKind, Ledger, Refused, Transfer

# Kraken's docs example of a balances update (a trade's USD line), verbatim.
KRAKEN_BALANCES_TRADE = """{"channel":"balances","type":"update","sequence":10,"data":[{
 "ledger_id":"A5KS77-LQRMP-SMMN4B","ref_id":"AGBB7L-HT5LX-J3BB4A",
 "timestamp":"2023-09-22T10:33:05.710082Z","type":"trade","asset":"USD",
 "asset_class":"currency","category":"trade","wallet_type":"spot","wallet_id":"main",
 "amount":132.9995,"fee":0.3458,"balance":500}]}"""

# Kraken's docs example of a Ledgers result (two trade lines), verbatim.
KRAKEN_LEDGERS = """{"ledger":{"L4UESK-KG3EQ-UFO4T5":{"refid":"TJKLXX-PGMUI-4NTLXU",
 "time":1688464484.1787,"type":"trade","subtype":"","aclass":"currency","asset":"ZGBP",
 "amount":"-24.5000","fee":"0.0490","balance":"459567.9171"},"LMKZCZ-Z3GVL-CXKK4H":{
 "refid":"TBZIP2-F6QOU-TMB6FY","time":1688444262.8888,"type":"trade","subtype":"",
 "aclass":"currency","asset":"ZUSD","amount":"0.9852","fee":"0.0010","balance":"52732.1132"}},
 "count":2}"""


def _entry(**fields: object) -> str:
    item = json.loads(KRAKEN_BALANCES_TRADE)["data"][0]
    item.update(fields)
    return json.dumps({"channel": "balances", "type": "update", "sequence": 11, "data": [item]})


def _assets() -> AssetMap:
    return AssetMap.from_rest(public_assets(), public_asset_pairs())


def test_krakens_balances_trade_example_is_left_to_executions() -> None:
    message = parse_ws_message(KRAKEN_BALANCES_TRADE)
    assert message == WsBalances(False, (), ())


def test_a_deposit_moves_the_balance_by_amount_less_fee() -> None:
    message = parse_ws_message(_entry(type="deposit", category="deposit", fee=1.5, amount=100))
    assert isinstance(message, WsBalances)
    (transfer,) = message.transfers
    assert transfer == Transfer(
        "A5KS77-LQRMP-SMMN4B", "AGBB7L-HT5LX-J3BB4A", "USD", Decimal("98.5"), "deposit",
        1695378785710082000,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"type": "margin"}, "margin"),
        ({"type": "withdrawal", "wallet_type": "earn", "wallet_id": "bonded"}, "other-wallet"),
        ({"type": "deposit", "amount": "abc"}, "malformed"),
        ({"type": "deposit", "amount": "1e999999"}, "malformed"),
        ({"type": "deposit", "ledger_id": "\x00bad"}, "malformed"),
        ({"type": "deposit", "timestamp": "yesterday"}, "malformed"),
    ],
)
def test_entries_that_are_not_spot_transfers_are_set_aside(
    fields: dict[str, object], kind: str
) -> None:
    message = parse_ws_message(_entry(**fields))
    assert isinstance(message, WsBalances) and not message.transfers
    (skipped,) = message.skipped
    assert isinstance(skipped, SkippedExecution) and skipped.kind == kind


def test_the_auto_earn_wallet_counts_with_its_base_asset() -> None:
    message = parse_ws_message(
        _entry(type="earn", wallet_type="earn", wallet_id="flex", asset="BTC", amount=-0.5, fee=0)
    )
    assert isinstance(message, WsBalances)
    assert [(t.currency, t.amount) for t in message.transfers] == [("BTC", Decimal("-0.5"))]


def test_krakens_ledgers_example_and_rest_transfers() -> None:
    assets = _assets()
    entries = json.loads(KRAKEN_LEDGERS, parse_float=Decimal)["ledger"]
    assert [parse_rest_ledger_entry(k, v, assets) for k, v in entries.items()] == [None, None]
    deposit = {"refid": "FTQcuak-V6Za8qrWnhzTx67yYHz8Tg", "time": "1688464484.1787",
               "type": "deposit", "subtype": "", "aclass": "currency", "asset": "XBT.F",
               "amount": "0.2500000000", "fee": "0.0000000000", "balance": "1.0"}  # fmt: skip
    transfer = parse_rest_ledger_entry("LXXURB-ITI7S-CXVERS", deposit, assets)
    assert isinstance(transfer, Transfer)
    assert (transfer.currency, transfer.amount, transfer.kind) == (
        "BTC",
        Decimal("0.25"),
        "deposit",
    )
    assert transfer.timestamp_ns == 1688464484178700000
    staked = {**deposit, "asset": "DOT.S"}
    parsed = parse_rest_ledger_entry("LSTAKE-00000-000000", staked, assets)
    assert isinstance(parsed, SkippedExecution) and parsed.kind == "other-wallet"


def _ledger() -> Ledger:
    ledger = Ledger(4)
    ledger.set_totals({"USD": 1000 * UNIT})
    return ledger


def _deposit(ledger_id: str, ref: str, amount: str) -> Transfer:
    return Transfer(ledger_id, ref, "USD", Decimal(amount), "deposit", 10**18)


def _adjust(index: int, delta: int, ref: str | None) -> BalanceCommand:
    return BalanceCommand(CommandKind.ADJUST, "s", "USD", index, delta * UNIT, ref)


def test_a_transfer_is_booked_once_by_ledger_id() -> None:
    ledger = _ledger()
    assert ledger.apply_transfer(_deposit("L1", "R1", "50")) == "USD"
    assert ledger.apply_transfer(_deposit("L1", "R1", "50")) is None
    assert ledger.slots("USD") == (1050 * UNIT, 1050 * UNIT, 0, 0)
    ledger.check_invariant()


def test_adjust_after_the_transfer_moves_it_from_slot_1() -> None:
    ledger = _ledger()
    ledger.apply_transfer(_deposit("L1", "R1", "50"))
    ledger.apply_command(_adjust(2, 50, "R1"))
    assert ledger.slots("USD") == (1050 * UNIT, 1000 * UNIT, 50 * UNIT, 0)
    with pytest.raises(Refused) as claimed:
        ledger.apply_command(_adjust(3, 50, "R1"))
    assert claimed.value.code is ErrorCode.TRANSFER_CLAIMED
    ledger.apply_transfer(_deposit("L2", "R2", "7"))
    with pytest.raises(Refused) as wrong:
        ledger.apply_command(_adjust(2, 8, "R2"))
    assert wrong.value.code is ErrorCode.INVALID_AMOUNT
    ledger.check_invariant()


def test_adjust_before_the_transfer_books_only_the_difference_when_it_arrives() -> None:
    ledger = _ledger()
    ledger.apply_command(_adjust(3, 40, "R3"))
    assert ledger.slots("USD") == (1040 * UNIT, 1000 * UNIT, 0, 40 * UNIT)
    ledger.apply_transfer(_deposit("L3", "R3", "39.5"))  # the exchange took a fee
    assert ledger.slots("USD") == (
        1040 * UNIT - UNIT // 2, 1000 * UNIT - UNIT // 2, 0, 40 * UNIT,
    )  # fmt: skip
    ledger.check_invariant()


def test_adjust_without_a_ref_counts_a_streamed_transfer_twice_until_reconciled() -> None:
    """The documented cost of leaving the ref out (docs/protocol.md)."""
    ledger = _ledger()
    ledger.apply_transfer(_deposit("L1", "R1", "50"))
    ledger.apply_command(_adjust(2, 50, None))
    assert ledger.slots("USD") == (1100 * UNIT, 1050 * UNIT, 50 * UNIT, 0)
    ledger.correct("USD", 1050 * UNIT)  # the reconciler's fix touches slots 0 and 1 only
    assert ledger.slots("USD") == (1050 * UNIT, 1000 * UNIT, 50 * UNIT, 0)


def test_transfers_and_claims_survive_the_journal_and_a_snapshot() -> None:
    ledger = _ledger()
    events: list[Event] = [
        TransferApplied(_deposit("L1", "R1", "50")),
        CommandApplied(_adjust(2, 50, "R1"), "req-1"),
        CommandApplied(_adjust(3, 10, "R9"), "req-2"),
    ]
    replayed = _ledger()
    for event in events:
        apply_event(ledger, event)
        apply_event(replayed, decode_event(encode_event(event)))
    restored = Ledger.from_snapshot(replayed.to_snapshot())
    for copy in (replayed, restored):
        assert copy.slots("USD") == ledger.slots("USD")
        assert copy.apply_transfer(_deposit("L1", "R1", "50")) is None
        with pytest.raises(Refused):
            copy.apply_command(_adjust(2, 50, "R1"))
        copy.apply_transfer(_deposit("L9", "R9", "10"))  # booked ahead: changes nothing
        assert copy.slots("USD") == ledger.slots("USD")
