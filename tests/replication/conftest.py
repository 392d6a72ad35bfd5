"""Two hosts on one machine: a gateway publishing to a real redis-server, and a mirror.

Each side has its own ``HFT_SHM_DIR``, ``HFT_STATE_DIR`` and ``HFT_RUN_DIR``, as
two hosts would; only Redis, on loopback, joins them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import coredis
import pytest
import trio

from clients.command import STRATEGY_BALANCE_CMD, IPCCommandSystem
from gateway.launcher import STOP_GRACE_S, LocalStack, wait_ready
from mmapstore import StoreReader, store_path
from tests.kraken.stack import KrakenStack

REDIS_START_TIMEOUT_S = 10.0
MIRROR_START_TIMEOUT_S = 30.0


class RedisServer:
    """A redis-server of the test's own on loopback, without persistence (as a cache runs)."""

    def __init__(self, root: Path, password: str | None = None) -> None:
        self.password = password
        if shutil.which("redis-server") is None:
            pytest.fail(
                "redis-server is missing: `make test` installs it (apt-get install redis-server)"
            )
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with open(self.root / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(self.root),
                    *(["--requirepass", self.password] if self.password else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"redis-server did not listen on {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_GRACE_S)

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [
                "redis-cli",
                "-p",
                str(self.port),
                *(["-a", self.password] if self.password else []),
                "--no-auth-warning",
                *args,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()


class MirrorHost:
    """The other host: its own directories, its own ``gateway mirror``."""

    def __init__(self, stack: LocalStack, root: Path, run_dir: Path) -> None:
        self.stack = stack
        self.root = root
        self.run_dir = run_dir
        (root / "shm").mkdir(parents=True, exist_ok=True)
        self.env = {
            **stack.env,
            "HFT_SHM_DIR": str(root / "shm"),
            "HFT_STATE_DIR": str(root / "state"),
            "HFT_RUN_DIR": str(run_dir),
        }
        self.ready = root / "mirror.ready"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def store(self) -> Path:
        return store_path(self.stack.exchange, self.root / "shm")

    def spawn(self, source: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``gateway mirror`` without waiting for it to be ready."""
        self.ready.unlink(missing_ok=True)
        with open(self.root / "mirror.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.stack.cli,
                    "mirror",
                    "--exchange",
                    self.stack.exchange,
                    "--source",
                    source,
                    "--ready-file",
                    str(self.ready),
                    *args,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self.process

    def start(self, source: str, *args: str) -> None:
        self.spawn(source, *args)
        assert self.process is not None
        wait_ready(
            self.ready.exists, self.process, self.root / "mirror.log", "the mirror",
            MIRROR_START_TIMEOUT_S,
        )  # fmt: skip

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_GRACE_S)

    def log(self) -> str:
        return (self.root / "mirror.log").read_text(errors="replace")

    def command(self, payload: dict[str, object], timeout_s: float = 10) -> dict[str, object]:
        system = IPCCommandSystem("mirror-test", run_dir=self.run_dir, timeout_s=timeout_s)
        system.start()
        try:
            return system.send_command_blocking(self.stack.service, STRATEGY_BALANCE_CMD, payload)
        finally:
            system.close()

    def status(self) -> dict[str, object]:
        status = self.command({"cmd": "status"})["status"]
        assert isinstance(status, dict)
        return status

    def status_command(self) -> subprocess.CompletedProcess[str]:
        """``gateway status`` run on this host, as an operator would."""
        return subprocess.run(
            [*self.stack.cli, "status", "--exchange", self.stack.exchange],
            env=self.env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip


def xadd_raw(url: str, key: str, fields: dict[bytes, bytes], entry_id: str = "*") -> None:
    """Add an entry of exact bytes (redis-cli would re-encode them)."""

    async def add() -> None:
        async with coredis.Redis.from_url(url, decode_responses=False) as client:
            await client.xadd(key, fields, identifier=entry_id)

    trio.run(add)


def slots_of(store: Path) -> dict[str, tuple[Decimal, ...]]:
    with StoreReader(store) as reader:
        return {c: reader.record(c).exact_all() for c in reader.currencies()}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


HostsFactory = Callable[..., tuple[KrakenStack, MirrorHost]]


@pytest.fixture
def make_hosts(tmp_path: Path, redis_server: RedisServer) -> Iterator[HostsFactory]:
    """Start a simulator and a replicating gateway ("host A", with ``args``), and give a
    mirror's place ("host B")."""
    made: list[tuple[KrakenStack, MirrorHost]] = []
    run_dirs: list[Path] = []

    def make(*args: str) -> tuple[KrakenStack, MirrorHost]:
        run_a = Path(tempfile.mkdtemp(prefix="hft-a-"))
        run_b = Path(tempfile.mkdtemp(prefix="hft-b-"))
        run_dirs.extend((run_a, run_b))
        stack = KrakenStack(tmp_path / "a", run_a)
        stack.start_sim()
        stack.start_gateway(
            "--replicate", redis_server.url, "--reconcile-interval", "1",
            "--recheck-interval", "0.5", *args,
        )  # fmt: skip
        mirror = MirrorHost(stack, tmp_path / "b", run_b)
        made.append((stack, mirror))
        return stack, mirror

    yield make
    for stack, mirror in made:
        mirror.kill()
        stack.kill()
    for run_dir in run_dirs:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def hosts(make_hosts: HostsFactory) -> tuple[KrakenStack, MirrorHost]:
    return make_hosts()
