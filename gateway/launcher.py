"""One launcher for the demo, the tests and the benchmarks: the simulator and the gateway.

Each runs exactly as in production (``gateway sim``, ``gateway run``), in
directories of its own, and is waited for through its ``--ready-file``: ready
means listening (the simulator) or caught up, published and accepting commands
(the gateway). Never imported by the service itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import httpx

from clients.command import STRATEGY_BALANCE_CMD, IPCCommandSystem
from gateway.exchanges import registry
from gateway.exchanges.registry import DEFAULT_EXCHANGE
from mmapstore import store_path

SIM_START_TIMEOUT_S: Final = 30.0
# A catch-up paced by the exchange's API counter can take a while: ready means caught up.
GATEWAY_START_TIMEOUT_S: Final = 90.0
STOP_GRACE_S: Final = 20.0


class LaunchError(Exception):
    """A child process exited or did not become ready in time; the message holds its log."""


def wait_ready(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    log: Path,
    what: str,
    timeout_s: float,
) -> None:
    """Poll ``ready`` until it holds.

    Raises:
        LaunchError: ``process`` exited first, or ``timeout_s`` passed.
    """
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            raise LaunchError(f"{what} exited ({process.returncode}); its log:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise LaunchError(
                f"{what} was not ready within {timeout_s:g} s; its log:\n{_tail(log)}"
            )
        time.sleep(0.02)


def _tail(log: Path, lines: int = 60) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class LocalStack:
    """A simulator and a gateway in ``root`` (store in ``root/shm``, state in ``root/state``).

    Args:
        root: a directory of the stack's own; logs go there as ``<name>.log``, and the
            store and state directories too unless ``shared`` names another.
        run_dir: the socket directory (short: a Unix socket path has ~100 bytes).
        exchange: which exchange the simulator and the gateway speak.
        log_level: passed to both processes when given.
        own_session: children in sessions of their own, so that a terminal's
            Ctrl-C reaches only this process, which then stops them in order.
    """

    def __init__(
        self,
        root: Path,
        run_dir: Path,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        log_level: str | None = None,
        own_session: bool = False,
        shared: Path | None = None,
    ) -> None:
        self.root = root
        # Where the store and state directories are: another stack's, for gateways of
        # several exchanges side by side (their files are named by exchange).
        self.shared = shared or root
        self.run_dir = run_dir
        self.exchange = exchange
        self.own_session = own_session
        self.cli = [sys.executable, "-m", "gateway"]
        if log_level is not None:
            self.cli += ["--log-level", log_level]
        self.env = {
            **os.environ,
            "HFT_SHM_DIR": str(self.shared / "shm"),
            "HFT_STATE_DIR": str(self.shared / "state"),
            "HFT_RUN_DIR": str(run_dir),
        }
        root.mkdir(parents=True, exist_ok=True)
        (self.shared / "shm").mkdir(parents=True, exist_ok=True)
        self.sim_ready = root / "sim.json"
        self.gateway_ready = root / "gateway.ready"
        self.sim: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.address: dict[str, str] = {}

    # -- places ------------------------------------------------------------------------

    @property
    def service(self) -> str:
        return registry.adapter(self.exchange).service

    @property
    def socket(self) -> Path:
        return self.run_dir / f"{self.service}.sock"

    @property
    def store(self) -> Path:
        return store_path(self.exchange, self.shared / "shm")

    @property
    def state_dir(self) -> Path:
        return self.shared / "state"

    def exports(self) -> str:
        """One shell line that points another terminal's gateway commands at this stack."""
        return (
            f"export HFT_SHM_DIR={self.shared / 'shm'} HFT_RUN_DIR={self.run_dir} "
            f"HFT_STATE_DIR={self.state_dir}"
        )

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    # -- processes -----------------------------------------------------------------------

    def spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``gateway <args>`` as a child, its output appended to ``root/<name>.log``."""
        with open(self.root / f"{name}.log", "ab") as log:  # the child keeps its own copy
            return subprocess.Popen(
                [*self.cli, *args],
                env=env or self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.own_session,
            )

    def start_sim(self, *args: str, timeout_s: float = SIM_START_TIMEOUT_S) -> dict[str, str]:
        """Start ``gateway sim`` with ``args``; return its address (URLs and keys) once it listens.

        Raises:
            LaunchError: it exited or did not listen in time.
        """
        self.sim_ready.unlink(missing_ok=True)
        self.sim = self.spawn(
            "sim", "sim", "--exchange", self.exchange, "--ready-file", str(self.sim_ready), *args
        )
        wait_ready(
            self.sim_ready.exists, self.sim, self.root / "sim.log", "the simulator", timeout_s
        )
        self.address = json.loads(self.sim_ready.read_text())
        return self.address

    def gateway_env(self) -> dict[str, str]:
        """The environment with the simulator's keys, under the exchange's own variables."""
        adapter = registry.adapter(self.exchange)
        return {
            **self.env,
            adapter.key_variable: self.address["api_key"],
            adapter.secret_variable: self.address["api_secret"],
        }

    def start_gateway(
        self, *args: str, timeout_s: float = GATEWAY_START_TIMEOUT_S
    ) -> subprocess.Popen[bytes]:
        """Start ``gateway run`` against the simulator with ``args``; return once it is ready.

        Raises:
            LaunchError: it exited or was not ready in time.
        """
        self.gateway_ready.unlink(missing_ok=True)
        self.gateway = self.spawn(
            "gateway", "run", "--exchange", self.exchange,
            "--rest-url", self.address["rest_url"], "--ws-url", self.address["ws_url"],
            "--ready-file", str(self.gateway_ready), *args, env=self.gateway_env(),
        )  # fmt: skip
        wait_ready(
            self.gateway_ready.exists, self.gateway, self.root / "gateway.log", "the gateway",
            timeout_s,
        )  # fmt: skip
        return self.gateway

    def control(
        self, name: str, body: dict[str, object] | None = None, *, timeout_s: float = 60
    ) -> dict[str, object]:
        """POST to the simulator's ``/sim/<name>`` control endpoint; its JSON reply."""
        response = httpx.post(
            f"{self.address['rest_url']}/sim/{name}", json=body or {}, timeout=timeout_s
        )
        reply = response.json()
        assert isinstance(reply, dict), reply
        return reply

    def status(self) -> dict[str, object]:
        """The running gateway's ``status`` reply, over its command socket."""
        system = IPCCommandSystem("launcher", run_dir=self.run_dir)
        system.start()
        try:
            reply = system.send_command_blocking(
                self.service, STRATEGY_BALANCE_CMD, {"cmd": "status"}
            )
        finally:
            system.close()
        status = reply["status"]
        assert isinstance(status, dict), reply
        return status

    def stop_gateway(self, signum: int = signal.SIGTERM) -> int:
        """Signal the gateway and wait for its exit status."""
        assert self.gateway is not None
        self.gateway.send_signal(signum)
        return self.gateway.wait(timeout=STOP_GRACE_S)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Signal both (gateway first) and wait; kill whatever outlives the grace period."""
        running = [p for p in (self.gateway, self.sim) if p is not None and p.poll() is None]
        for process in running:
            process.send_signal(signum)
        for process in running:
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_GRACE_S)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
