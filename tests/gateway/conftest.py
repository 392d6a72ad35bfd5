"""Fixtures for gateway tests: a real gateway in-process, raw socket clients, real processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import cbor2
import pytest
import trio

from clients.command import IPCCommandSystem
from gateway.config import GatewayConfig
from gateway.launcher import wait_ready
from gateway.ledger import UNIT
from gateway.protocol import LENGTH_PREFIX
from gateway.service import Running, restore_state, run_gateway
from gateway.writer import WriterCore
from mmapstore import StoreWriter
from tests.gateway.fake_exchange import FakeExchange

TOTALS = {"USD": "100000", "USDT": "100000", "BTC": "10", "ETH": "100"}
FAKE_GATEWAY = Path(__file__).parent / "fake_gateway.py"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short path: a Unix socket's path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="hft-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config(tmp_path: Path, short_dir: Path) -> GatewayConfig:
    return GatewayConfig(
        shm_dir=tmp_path / "shm", state_root=tmp_path / "state", run_dir=short_dir / "run"
    )


def open_writer_core(config: GatewayConfig) -> WriterCore:
    """The writer's core on ``config``'s store and journal, holding 1,000 USD and 10 BTC
    (not journalled); close ``core.journal`` and ``core.store`` after."""
    config.shm_dir.mkdir()
    store = StoreWriter.open(
        config.store_path, exchange=config.exchange, strategy_count=config.strategy_count
    )
    ledger, journal, _ = restore_state(config)
    ledger.set_totals({"USD": 1000 * UNIT, "BTC": 10 * UNIT})
    return WriterCore(ledger, journal, store)


@pytest.fixture
def exchange() -> FakeExchange:
    return FakeExchange(TOTALS)


@pytest.fixture
async def gateway(
    config: GatewayConfig, exchange: FakeExchange, nursery: trio.Nursery
) -> AsyncIterator[Running]:
    running: Running = await nursery.start(run_gateway, config, exchange)
    yield running
    running.stop.set()


class RawClient:
    """Speaks bytes to the command socket, to send what a well-behaved client never would."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, path: Path) -> RawClient:
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_json(self) -> dict[str, object]:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(bytes(self.buffer))
            self.buffer += data
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        reply = json.loads(line)
        assert isinstance(reply, dict)
        return reply

    async def json(self, request: dict[str, object] | bytes) -> dict[str, object]:
        data = request if isinstance(request, bytes) else json.dumps(request).encode()
        await self.send(data + b"\n")
        return await self.read_json()

    async def read_cbor(self) -> dict[str, object]:
        while True:
            if len(self.buffer) >= 4:
                (length,) = LENGTH_PREFIX.unpack_from(self.buffer)
                if len(self.buffer) >= 4 + length:
                    reply = cbor2.loads(bytes(self.buffer[4 : 4 + length]))
                    del self.buffer[: 4 + length]
                    assert isinstance(reply, dict)
                    return reply
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(bytes(self.buffer))
            self.buffer += data

    async def cbor(self, request: object) -> dict[str, object]:
        body = cbor2.dumps(request)
        await self.send(LENGTH_PREFIX.pack(len(body)) + body)
        return await self.read_cbor()

    async def is_closed(self) -> bool:
        with trio.fail_after(5):
            return await self.stream.receive_some(1) == b""

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@pytest.fixture
async def raw(gateway: Running, config: GatewayConfig) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(config.socket_path)
    yield client
    await client.aclose()


@pytest.fixture
def client(gateway: Running, config: GatewayConfig) -> Iterator[IPCCommandSystem]:
    system = IPCCommandSystem("tester", run_dir=config.run_dir)
    system.start()
    yield system
    system.close()


class GatewayProcess:
    """The real service in a child process (fake exchange), for crash and CLI tests."""

    def __init__(self, root: Path, run_dir: Path) -> None:
        self.env = {
            **os.environ,
            "HFT_SHM_DIR": str(root / "shm"),
            "HFT_STATE_DIR": str(root / "state"),
            "HFT_RUN_DIR": str(run_dir),
        }
        self.run_dir = run_dir
        self.socket = run_dir / "kraken_gateway.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "gateway.log"

    def start_command(self, *args: str) -> list[str]:
        return [sys.executable, str(FAKE_GATEWAY), json.dumps(TOTALS), *args]

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.start_command(*args),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_ready(self._accepts, self.process, self.log, "the gateway", timeout_s=30)
        return self.process

    def _accepts(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket))
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def gateway_process(tmp_path: Path, short_dir: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path, short_dir / "run")
    yield process
    process.stop()
