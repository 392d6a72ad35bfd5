"""The gateway as a whole: concurrency, crashes, the seed's examples, fills, the CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import trio

import clients as hft
from clients import (
    KRAKEN_STRATEGY_BALANCE_CMD,
    CommandRefusedError,
    GatewayUnavailableError,
    IPCCommandSystem,
    kraken_strategy_balance,
)
from gateway.config import GatewayConfig
from gateway.ledger import Fee, Fill, Side
from gateway.service import Running, run_gateway
from mmapstore import StoreReader
from tests.gateway.conftest import GatewayProcess
from tests.gateway.fake_exchange import FakeExchange

SERVICE = "kraken_gateway"
CLIENTS = 16
PAIRS = 500


async def test_concurrent_clients_allocate_and_release_exactly(
    config: GatewayConfig, exchange: FakeExchange, nursery: trio.Nursery
) -> None:
    config = GatewayConfig(**{**config.__dict__, "strategy_count": CLIENTS + 2})
    running: Running = await nursery.start(run_gateway, config, exchange)
    replies: list[dict[str, object]] = []

    async def strategy(number: int) -> None:
        system = IPCCommandSystem(f"s{number}", run_dir=config.run_dir)
        system.start()
        index = number + 2
        for pair in range(PAIRS):
            for cmd in ("allocate", "release"):
                payload = kraken_strategy_balance(
                    strategy=f"s{number}", cmd=cmd, currency="USD", index=index,
                    amount=Decimal("1.5"), request_id=f"s{number}-{pair}-{cmd}",
                )  # fmt: skip
                reply = await system.send_command(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, payload)
                replies.append(reply)
            if pair == PAIRS // 2:
                # Mid-run, the slot holds exactly this strategy's open allocation... or none.
                with StoreReader(config.store_path) as reader:
                    assert reader.record("USD").scaled[index] in (0, 15 * 10**17)
        system.close()

    with trio.fail_after(120):
        async with trio.open_nursery() as clients:
            for number in range(CLIENTS):
                clients.start_soon(strategy, number)

    assert len(replies) == CLIENTS * PAIRS * 2
    assert all(reply["ok"] is True for reply in replies)
    ids = [reply["request_id"] for reply in replies]
    assert len(set(ids)) == len(ids)  # every request answered exactly once
    status = running.core.status()["status"]
    assert isinstance(status, dict)
    assert status["commands_applied"] == CLIENTS * PAIRS * 2
    with StoreReader(config.store_path) as reader:
        record = reader.record("USD")
    assert record.exact_all()[:2] == (Decimal(100000), Decimal(100000))
    assert all(v == 0 for v in record.scaled[2:])
    running.core.ledger.check_invariant()
    # Group commit: far fewer batches (and fsyncs) than commands.
    assert running.core.stats.batches < CLIENTS * PAIRS * 2


def _send_blocking(system: IPCCommandSystem, request_id: str) -> dict[str, object]:
    payload = kraken_strategy_balance(
        strategy="crash", cmd="allocate", currency="USD", index=2, amount=1, request_id=request_id
    )
    return system.send_command_blocking(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, payload)


def test_sigkill_mid_stream_keeps_every_acknowledged_command_exactly_once(
    gateway_process: GatewayProcess,
) -> None:
    gateway_process.start()
    system = IPCCommandSystem("crash", run_dir=gateway_process.run_dir, timeout_s=5)
    system.start()
    acknowledged: list[str] = []
    sent: list[str] = []
    killed_after = 150
    for n in range(400):
        request_id = f"c{n}"
        sent.append(request_id)
        if n == killed_after:
            # Kill while this request is in flight: send it without waiting, then kill.
            in_flight = {
                "strategy": "crash", "cmd": "allocate", "currency": "USD", "amount": 1,
                "index": 2, "request_id": request_id,
            }  # fmt: skip
            raw = socket.socket(socket.AF_UNIX)
            raw.connect(str(gateway_process.socket))
            raw.sendall(json.dumps(in_flight).encode() + b"\n")
            assert gateway_process.process is not None
            gateway_process.process.send_signal(signal.SIGKILL)
            gateway_process.process.wait(timeout=10)
            raw.close()
            break
        reply = _send_blocking(system, request_id)
        assert reply["ok"] is True
        acknowledged.append(request_id)

    with pytest.raises(GatewayUnavailableError):
        _send_blocking(system, "after-death")

    gateway_process.start()
    query = system.send_command_blocking(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, {"cmd": "query"})
    balances = query["balances"]
    assert isinstance(balances, dict)
    held = Decimal(balances["USD"][2])
    # Every acknowledged command is there; the one in flight may or may not be.
    assert len(acknowledged) <= held <= len(sent)
    # Resending everything with the same ids applies each exactly once.
    for request_id in sent:
        assert _send_blocking(system, request_id)["ok"] is True
    query = system.send_command_blocking(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, {"cmd": "query"})
    balances = query["balances"]
    assert isinstance(balances, dict)
    assert Decimal(balances["USD"][2]) == len(sent)
    assert Decimal(balances["USD"][0]) == 100000
    system.close()


async def _seed_example(command_system: IPCCommandSystem) -> list[dict[str, object]]:
    """The seed's IPC example, with only its imports changed."""
    replies = []
    payload = kraken_strategy_balance(
        strategy="a", cmd="allocate", currency="usd", index=2, amount=100
    )
    replies.append(
        await command_system.send_command("kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, payload)
    )
    payload = kraken_strategy_balance(
        strategy="a", cmd="release", currency="usd", index=2, amount=100
    )
    replies.append(
        await command_system.send_command("kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, payload)
    )
    payload = kraken_strategy_balance(
        strategy="a", cmd="adjust", currency="usd", delta=-1000, index=0
    )
    replies.append(
        await command_system.send_command("kraken_gateway", KRAKEN_STRATEGY_BALANCE_CMD, payload)
    )
    return replies


async def test_seed_ipc_examples_from_trio_and_asyncio(gateway_process: GatewayProcess) -> None:
    await trio.to_thread.run_sync(gateway_process.start)
    command_system = IPCCommandSystem("my_strategy", run_dir=gateway_process.run_dir)
    command_system.start()
    trio_replies = await _seed_example(command_system)
    assert [r["balances"] for r in trio_replies] == [
        ["100000", "99900", "100"] + ["0"] * 5,
        ["100000", "100000", "0"] + ["0"] * 5,
        ["99000", "99000", "0"] + ["0"] * 5,
    ]

    def under_asyncio() -> list[dict[str, object]]:
        async def example() -> list[dict[str, object]]:
            system = IPCCommandSystem("my_strategy", run_dir=gateway_process.run_dir)
            system.start()
            try:
                return await _seed_example(system)
            finally:
                await system.aclose()

        return asyncio.run(example())

    asyncio_replies = await trio.to_thread.run_sync(under_asyncio)
    assert asyncio_replies[-1]["balances"][:2] == ["98000", "98000"]  # type: ignore[index]
    # The strategy sees the result in shared memory, as the seed's reader example does.
    manager = hft.StrategyBalanceManager(
        hft.Exchange.KRAKEN, strategy_count=8, shm_dir=gateway_process.env["HFT_SHM_DIR"]
    )
    assert manager.get_balance(hft.Currency.USD, index=0) == 98000.0
    manager.close()
    await command_system.aclose()


async def test_refusal_raises_with_code_and_message(client: IPCCommandSystem) -> None:
    payload = kraken_strategy_balance(
        strategy="a", cmd="allocate", currency="usd", index=2, amount=10**7
    )
    with pytest.raises(CommandRefusedError) as refused:
        await client.send_command(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, payload)
    assert refused.value.code == "INSUFFICIENT_FUNDS"
    assert "slot 1 has only 100000" in refused.value.message


async def test_the_exchange_neutral_command_type_and_builder_work_like_the_seeds(
    client: IPCCommandSystem,
) -> None:
    payload = hft.strategy_balance(strategy="a", cmd="allocate", currency="usd", index=2, amount=5)
    assert payload == kraken_strategy_balance(
        strategy="a", cmd="allocate", currency="usd", index=2, amount=5
    )
    reply = await client.send_command(SERVICE, hft.STRATEGY_BALANCE_CMD, payload)
    assert reply["ok"] is True and reply["balances"][2] == "5"  # type: ignore[index]
    with pytest.raises(ValueError, match="does not take 'binance_strategy_balance'"):
        await client.send_command(SERVICE, "binance_strategy_balance", payload)


async def test_client_reports_gateway_not_running(short_dir: Path) -> None:
    system = IPCCommandSystem("lonely", run_dir=short_dir)
    system.start()
    payload = kraken_strategy_balance(
        strategy="a", cmd="allocate", currency="usd", index=2, amount=1
    )
    with pytest.raises(GatewayUnavailableError, match="not running"):
        await system.send_command(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, payload)
    with pytest.raises(GatewayUnavailableError, match="not running"):
        system.send_command_blocking(SERVICE, KRAKEN_STRATEGY_BALANCE_CMD, payload)


def test_client_reconnects_after_gateway_restart(gateway_process: GatewayProcess) -> None:
    gateway_process.start()
    system = IPCCommandSystem("restart", run_dir=gateway_process.run_dir)
    system.start()
    assert _send_blocking(system, "before")["ok"] is True
    assert gateway_process.process is not None
    gateway_process.process.send_signal(signal.SIGTERM)
    assert gateway_process.process.wait(timeout=15) == 0
    gateway_process.start()
    # The cached connection is dead; the client notices, reconnects and resends.
    assert _send_blocking(system, "after")["balances"][2] == "2"  # type: ignore[index]
    system.close()


def test_a_closed_terminal_stops_the_gateway_cleanly(gateway_process: GatewayProcess) -> None:
    # SIGHUP (an ssh session that drops, a terminal closed) ended the process mid-write by
    # its default action: the store stayed "live" with a stale heartbeat, no snapshot.
    process = gateway_process.start()
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=15) == 0
    store = Path(gateway_process.env["HFT_SHM_DIR"]) / "hft.kraken.balance"
    with StoreReader(store) as reader:
        assert reader.writer_status().health is hft.WriterHealth.STOPPED
    assert not gateway_process.socket.exists()
    assert "received SIGHUP: shutting down" in gateway_process.log.read_text()


def test_payload_builder_takes_amount_or_delta() -> None:
    built = kraken_strategy_balance(strategy="a", cmd="adjust", currency="usd", index=0, delta=-1)
    assert built == {"strategy": "a", "cmd": "adjust", "currency": "usd", "amount": -1, "index": 0}
    built = kraken_strategy_balance(
        strategy="a", cmd="allocate", currency="usd", index=2, amount=0.1
    )
    assert built["amount"] == "0.1"
    built = kraken_strategy_balance(
        strategy="a", cmd="allocate", currency="usd", index=2, amount=Decimal("1.01")
    )
    assert built["amount"] == "1.01"
    with pytest.raises(ValueError, match="exactly one"):
        kraken_strategy_balance(strategy="a", cmd="allocate", currency="usd", index=2)
    with pytest.raises(ValueError, match="exactly one"):
        kraken_strategy_balance(
            strategy="a", cmd="allocate", currency="usd", index=2, amount=1, delta=1
        )
    with pytest.raises(ValueError, match="cmd must be"):
        kraken_strategy_balance(strategy="a", cmd="steal", currency="usd", index=2, amount=1)


async def test_fills_reach_shared_memory_and_are_applied_once(
    gateway: Running, exchange: FakeExchange, config: GatewayConfig
) -> None:
    fill = Fill(
        "TGBB7L-HT5LX-J3BZ4A", "BTC", "USD", Side.SELL, Decimal("0.005"), Decimal("26599.9"),
        (Fee("USD", Decimal("0.3458")),), userref=3, timestamp_ns=time.time_ns(),
    )  # fmt: skip
    with StoreReader(config.store_path) as reader:
        before = reader.record("USD").sequence
        await exchange.push_fill(fill)
        await exchange.push_fill(fill)  # a replay (reconnect snapshot): skipped
        with trio.fail_after(5):
            while reader.record("USD").sequence == before:
                await trio.sleep(0.001)
        await trio.sleep(0.05)
        usd = reader.record("USD").exact_all()
        btc = reader.record("BTC").exact_all()
    assert usd[0] == Decimal(100000) + Decimal("132.9995") - Decimal("0.3458")
    assert usd[3] == Decimal("132.9995") - Decimal("0.3458")
    assert btc[0] == Decimal("9.995") and btc[3] == Decimal("-0.005")
    assert gateway.core.stats.fills_applied == 1
    assert gateway.core.stats.fills_duplicate == 1


def test_cli_cmd_and_status_exit_codes(gateway_process: GatewayProcess) -> None:
    def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            env=gateway_process.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    down = gateway_cli("status")
    assert down.returncode != 0
    assert "not healthy" in down.stderr.strip().splitlines()[-1]
    gateway_process.start()
    ok = gateway_cli(
        "cmd", "allocate", "--strategy", "a", "--currency", "usd", "--amount", "5", "--index", "2"
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["balances"][2] == "5"
    refused = gateway_cli(
        "cmd", "release", "--strategy", "a", "--currency", "usd", "--amount", "6", "--index", "2"
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "gateway cmd: refused: INSUFFICIENT_FUNDS: release 6 USD: slot 2 has only 5"
    )
    status = gateway_cli("status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["healthy"] is True and report["writer"]["health"] == "live"
    balances = gateway_cli("balances")
    assert balances.returncode == 0, balances.stderr
    assert "2 a" in balances.stdout  # slot 2's column, headed by its owner
    usd_row = next(line for line in balances.stdout.splitlines() if line.startswith("USD "))
    assert usd_row.split() == ["USD", "100000", "99995", "5"]
