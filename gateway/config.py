"""The gateway's configuration: one frozen object, the only reader of the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from clients.command import default_run_dir
from gateway.errors import ConfigError
from gateway.reconciler import RECHECK_S
from mmapstore import DEFAULT_STRATEGY_COUNT, store_path

RECONCILE_INTERVAL_S: Final = 60.0
IDLE_TIMEOUT_S: Final = 300.0
MAX_CONNECTIONS: Final = 256
SHUTDOWN_GRACE_S: Final = 5.0
HEARTBEAT_INTERVAL_S: Final = 0.5


def default_state_dir(env: Mapping[str, str]) -> Path:
    """``$HFT_STATE_DIR``, else ``$XDG_STATE_HOME/hft``, else ``~/.local/state/hft``."""
    if env.get("HFT_STATE_DIR"):
        return Path(env["HFT_STATE_DIR"])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "hft"
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "hft"


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway run needs to know; see ``docs/operations.md``."""

    exchange: str = "kraken"
    strategy_count: int = DEFAULT_STRATEGY_COUNT
    shm_dir: Path = Path("/dev/shm")
    state_root: Path = Path("~/.local/state/hft")
    run_dir: Path = Path("/tmp/hft")
    socket_mode: int = 0o600
    run_dir_mode: int = 0o700
    allowed_uids: frozenset[int] = field(default_factory=lambda: frozenset({os.getuid()}))
    max_connections: int = MAX_CONNECTIONS
    idle_timeout_s: float = IDLE_TIMEOUT_S
    reconcile_interval_s: float = RECONCILE_INTERVAL_S
    recheck_s: float = RECHECK_S
    shutdown_grace_s: float = SHUTDOWN_GRACE_S
    snapshot_every: int = 100_000
    metrics_port: int | None = None  # serve Prometheus metrics on 127.0.0.1:<port>

    def __post_init__(self) -> None:
        if not 2 <= self.strategy_count <= 1024:
            raise ConfigError(f"strategy_count must be 2..1024, not {self.strategy_count}")
        if self.reconcile_interval_s < 0 or self.recheck_s <= 0:
            raise ConfigError("reconcile intervals must be positive (0 turns reconciling off)")
        if self.max_connections < 1:
            raise ConfigError("max_connections must be at least 1")

    @property
    def service(self) -> str:
        return f"{self.exchange}_gateway"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / f"{self.service}.sock"

    @property
    def store_path(self) -> Path:
        return store_path(self.exchange, self.shm_dir)

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.exchange

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> GatewayConfig:
        """Defaults from the environment (``HFT_SHM_DIR``, ``HFT_STATE_DIR``, ``HFT_RUN_DIR``…)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "shm_dir": Path(env.get("HFT_SHM_DIR") or "/dev/shm"),
            "state_root": default_state_dir(env),
            "run_dir": default_run_dir(env),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "state_root" in overrides and overrides["state_root"] is not None:
            values["state_root"] = Path(str(overrides["state_root"]))
        return cls(**values)  # type: ignore[arg-type]
