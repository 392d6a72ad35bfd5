"""Issue 11 finding 5: damage in the live journal is not a torn tail.

A gateway process acknowledges 100 allocations and is killed; one byte in the
middle of its journal is flipped. The restart must refuse, cut nothing and say
why in one line; ``gateway journal verify`` shows the damage; ``gateway
journal salvage`` keeps every sound record on both sides of it; and resending
every acknowledged request id then applies only the one that was lost.
"""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from clients import KRAKEN_STRATEGY_BALANCE_CMD, IPCCommandSystem, kraken_strategy_balance
from gateway.journal import RECORD_HEADER, scan_records
from tests.gateway.conftest import GatewayProcess

SERVICE = "kraken_gateway"
ACKNOWLEDGED = 100
DAMAGED_RECORD = 30  # after the bootstrap events: one of the allocations


def _allocate(system: IPCCommandSystem, request_id: str) -> dict[str, object]:
    payload = kraken_strategy_balance(
        strategy="s", cmd="allocate", currency="USD", index=2, amount=1, request_id=request_id
    )
    return system.send_command_blocking(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, payload)


def _slot2(system: IPCCommandSystem) -> Decimal:
    reply = system.send_command_blocking(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, {"cmd": "query"})
    balances = reply["balances"]
    assert isinstance(balances, dict)
    return Decimal(balances["USD"][2])


def _journal_cli(process: GatewayProcess, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "journal", action],
        env=process.env,
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )


def _flip_in_record(segment: Path, record: int) -> bytes:
    data = bytearray(segment.read_bytes())
    offset = 0
    for _ in range(record):
        (length, _crc) = RECORD_HEADER.unpack_from(data, offset)
        offset += RECORD_HEADER.size + length
    data[offset + RECORD_HEADER.size + 5] ^= 0x01
    segment.write_bytes(bytes(data))
    return bytes(data)


def test_flipped_byte_mid_journal_is_refused_verified_and_salvaged(
    gateway_process: GatewayProcess,
) -> None:
    gateway_process.start()
    system = IPCCommandSystem("damage", run_dir=gateway_process.run_dir, timeout_s=5)
    system.start()
    ids = [f"r{n}" for n in range(ACKNOWLEDGED)]
    for request_id in ids:
        assert _allocate(system, request_id)["ok"] is True
    assert gateway_process.process is not None
    gateway_process.process.kill()
    gateway_process.process.wait(timeout=10)

    state = Path(gateway_process.env["HFT_STATE_DIR"]) / "kraken"
    (segment,) = state.glob("journal-*.log")
    records = len(scan_records(segment.read_bytes()).records)
    assert records > ACKNOWLEDGED
    damaged = _flip_in_record(segment, DAMAGED_RECORD)

    # The restart refuses in one line and leaves the evidence as it was.
    with open(gateway_process.log, "ab") as log:
        refused = subprocess.run(
            gateway_process.start_command(), env=gateway_process.env, stdout=log,
            stderr=subprocess.STDOUT, timeout=60, check=False,
        )  # fmt: skip
    assert refused.returncode != 0
    assert "this is damage, not a torn write" in gateway_process.log.read_text()
    assert segment.read_bytes() == damaged
    assert sorted(p.name for p in state.glob("journal-*")) == [segment.name]

    verify = _journal_cli(gateway_process, "verify")
    assert verify.returncode == 1, verify
    assert "checksum mismatch" in verify.stdout
    assert f"{records - 1} sound records" in verify.stdout
    assert verify.stderr.strip().count("\n") == 0  # one line

    salvage = _journal_cli(gateway_process, "salvage")
    assert salvage.returncode == 0, salvage
    assert f"kept {records - 1} sound records" in salvage.stdout
    assert _journal_cli(gateway_process, "verify").returncode == 0
    assert any(p.name.startswith(f"{segment.name}.damaged-") for p in state.iterdir())
    assert list(state.glob("salvage-*.txt"))

    gateway_process.start()
    started = time.monotonic()
    while True:
        try:
            held = _slot2(system)
            break
        except Exception:
            assert time.monotonic() - started < 10
            time.sleep(0.05)
    assert held == ACKNOWLEDGED - 1  # one allocation was in the damage; those after it are kept
    # Resending every acknowledged id applies only the lost one.
    for request_id in ids:
        assert _allocate(system, request_id)["ok"] is True
    assert _slot2(system) == ACKNOWLEDGED
    system.close()


def test_salvage_is_refused_while_the_gateway_runs(gateway_process: GatewayProcess) -> None:
    gateway_process.start()
    salvage = _journal_cli(gateway_process, "salvage")
    assert salvage.returncode == 1
    assert "already has a writer" in salvage.stderr
    assert salvage.stderr.strip().count("\n") == 0
