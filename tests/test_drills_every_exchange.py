"""Fault drills whose behaviour is the same for every exchange, run for each one.

Real processes over real sockets: each exchange's simulator and `gateway run`
against it, started by the launcher in directories of their own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from gateway.exchanges import registry
from gateway.launcher import LocalStack
from tests.kraken.stack import wait_until
from tests.replication.conftest import MirrorHost, RedisServer, slots_of

QUICK = ("--reconcile-interval", "1", "--recheck-interval", "0.5")
# How each simulator's generator is told which strategy ids to tag (Kraken's userref).
TAGS = {"kraken": "userrefs", "binance": "strategy_ids"}
# The seed's currency each default account holds 100,000 of.
FUNDED = {"kraken": "USD", "binance": "USDT"}


@pytest.fixture(params=sorted(registry.ADAPTERS))
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalStack]:
    exchange = request.param
    assert exchange in TAGS, f"tell these drills how to drive {exchange}'s simulator"
    run_dir = Path(tempfile.mkdtemp(prefix="hft-"))
    launched = LocalStack(tmp_path, run_dir, exchange=exchange)
    launched.start_sim()
    yield launched
    launched.kill()
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (chain and key, PEM) and the authority that signed it."""
    signer = trustme.CA()
    root = tmp_path_factory.mktemp("tls")
    server, trusted = root / "server.pem", root / "authority.pem"
    signer.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(server)
    )
    signer.cert_pem.write_to_path(str(trusted))
    return server, trusted


@pytest.mark.parametrize("exchange", sorted(registry.ADAPTERS))
def test_the_stream_runs_over_tls_and_an_untrusted_certificate_is_named(
    exchange: str, tmp_path: Path, authority: tuple[Path, Path]
) -> None:
    """The real exchanges are wss://: the whole stream over TLS, the certificate checked."""
    server, trusted = authority
    run_dir = Path(tempfile.mkdtemp(prefix="hft-"))
    stack = LocalStack(tmp_path, run_dir, exchange=exchange)
    try:
        stack.start_sim("--ws-tls", str(server))
        assert stack.address["ws_url"].startswith("wss://127.0.0.1:")
        untrusted = subprocess.run(
            [sys.executable, "-m", "gateway", "run", "--exchange", exchange,
             "--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"]],
            env=stack.gateway_env(), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        verdict = untrusted.stderr.strip().splitlines()[-1]  # the error itself, in one line
        assert untrusted.returncode != 0 and verdict.startswith("gateway run: "), untrusted.stderr
        refusal = "TLS certificate refused: unable to get local issuer certificate"
        assert refusal in verdict
        # At the first try: another would be refused the same, and spend the API's counter.
        assert untrusted.stderr.count(refusal) == 1, untrusted.stderr
        stack.env["SSL_CERT_FILE"] = str(trusted)  # as an operator would point at a private CA
        stack.start_gateway(*QUICK)
        stack.control("trade-generator", {"rate": 100, "count": 200, TAGS[exchange]: [2, 3]})

        def every_trade_applied() -> bool:
            applied = stack.status()["fills_applied"]
            return applied != 0 and applied == stack.control("state")["trades"]

        wait_until(every_trade_applied, 30, "every fill, over TLS")
        assert stack.stop_gateway() == 0
    finally:
        stack.kill()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_a_second_gateway_is_refused_in_one_line_and_the_first_is_unharmed(
    stack: LocalStack,
) -> None:
    stack.start_gateway(*QUICK)
    first = stack.gateway
    assert first is not None
    second = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--exchange", stack.exchange,
         "--rest-url", stack.address["rest_url"], "--ws-url", stack.address["ws_url"]],
        env=stack.gateway_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert "already has a writer" in lines[0] and f"pid {first.pid}" in lines[0]
    assert first.poll() is None and stack.status()["pid"] == first.pid
    stack.control("trade-generator", {"rate": 50, "count": 50, TAGS[stack.exchange]: [2]})

    def every_trade_applied() -> bool:
        applied = stack.status()["fills_applied"]
        return applied != 0 and applied == stack.control("state")["trades"]

    wait_until(every_trade_applied, 30, "the first gateway's fills")


def test_a_reader_started_before_the_gateway_waits_then_reads(stack: LocalStack) -> None:
    exchange, currency = stack.exchange.upper(), FUNDED[stack.exchange]
    script = (
        "import time, clients as hft\n"
        f"m = hft.StrategyBalanceManager(hft.Exchange.{exchange})\n"
        "said = False\n"
        "while True:\n"
        "    try:\n"
        f"        print('BALANCE', m.get_balance(hft.Currency.{currency}), flush=True); break\n"
        "    except hft.GatewayNotRunningError as e:\n"
        "        if not said: print('NOT RUNNING:', e, flush=True); said = True\n"
        "        time.sleep(0.05)\n"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", script], env=stack.env, stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout is not None
    first = reader.stdout.readline()
    assert first.startswith("NOT RUNNING:") and "gateway is not running" in first
    stack.start_gateway(*QUICK)
    out, _ = reader.communicate(timeout=30)
    assert out.strip() == "BALANCE 100000.0"


def test_a_mirror_through_redis_follows_fills_and_commands(
    stack: LocalStack, tmp_path: Path
) -> None:
    """The mirror names no exchange: what works for one works for each (docs/replication.md)."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    mirror = MirrorHost(stack, tmp_path / "mirror", tmp_path / "mirror-run")
    try:
        stack.start_gateway(*QUICK, "--replicate", redis.url)
        mirror.start(redis.url)
        stack.control("trade-generator", {"rate": 100, "count": 100, TAGS[stack.exchange]: [2, 3]})
        payload = {
            "cmd": "allocate", "strategy": "remote", "currency": FUNDED[stack.exchange],
            "amount": "25", "index": 4, "request_id": f"mirror-{stack.exchange}",
        }  # fmt: skip
        reply = mirror.command(payload)
        assert reply["ok"] and reply["balances"][4] == "25"  # type: ignore[index]

        def converged() -> bool:
            status = mirror.status()
            return bool(
                status["current"]
                and status["applied_events"] == stack.status()["journal_events"]
                and int(str(stack.status()["fills_applied"])) >= 100
                and slots_of(mirror.store) == slots_of(stack.store)
            )

        wait_until(converged, 60, "the mirror to follow the gateway")
    finally:
        mirror.kill()
        redis.kill()
