"""The gateway's configuration: one frozen object, the only reader of the environment."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from clients.command import default_run_dir
from gateway.errors import ConfigError
from gateway.exchanges import registry
from gateway.replication.keys import Target
from mmapstore import DEFAULT_STRATEGY_COUNT, store_path

RECONCILE_INTERVAL_S: Final = 60.0
RECHECK_S: Final = 3.0  # a reconcile pass that met a fill in flight or failed looks again
IDLE_TIMEOUT_S: Final = 300.0
MAX_CONNECTIONS: Final = 256
# One process may not hold more than this many of them (a leak or an attack).
MAX_CONNECTIONS_PER_PEER: Final = 32
# A request begun must be complete this soon: a trickle holds no connection open.
FRAME_DEADLINE_S: Final = 5.0
# A restart replays at most this many events (~0.5 s here); a snapshot with both caches
# full costs the writer ~0.1 s (docs/performance.md).
SNAPSHOT_EVERY_EVENTS: Final = 25_000
SHUTDOWN_GRACE_S: Final = 5.0
HEARTBEAT_INTERVAL_S: Final = 0.5


def default_state_dir(env: Mapping[str, str]) -> Path:
    """``$HFT_STATE_DIR``, else ``$XDG_STATE_HOME/hft``, else ``~/.local/state/hft``."""
    if env.get("HFT_STATE_DIR"):
        return Path(env["HFT_STATE_DIR"])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "hft"
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "hft"


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    """An address the HTTP or websocket client can use, or a one-line ConfigError."""
    try:
        parts = urlsplit(url)
        usable = parts.scheme in schemes and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        usable = False
    if not usable:
        raise ConfigError(
            f"{name} must be an address with a host, starting "
            f"{' or '.join(f'{s}://' for s in schemes)}, not {url!r}"
        )


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway run needs to know; see ``docs/operations.md``."""

    exchange: str = registry.DEFAULT_EXCHANGE
    strategy_count: int = DEFAULT_STRATEGY_COUNT
    shm_dir: Path = Path("/dev/shm")
    state_root: Path = Path("~/.local/state/hft")
    run_dir: Path = Path("/tmp/hft")
    socket_mode: int = 0o600
    run_dir_mode: int = 0o700
    allowed_uids: frozenset[int] = field(default_factory=lambda: frozenset({os.getuid()}))
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER
    idle_timeout_s: float = IDLE_TIMEOUT_S
    frame_deadline_s: float = FRAME_DEADLINE_S
    reconcile_interval_s: float = RECONCILE_INTERVAL_S
    recheck_s: float = RECHECK_S
    shutdown_grace_s: float = SHUTDOWN_GRACE_S
    # A restart replays at most this many events past the last snapshot (~0.5 s here).
    snapshot_every: int = SNAPSHOT_EVERY_EVENTS
    metrics_port: int | None = None  # serve Prometheus metrics on 127.0.0.1:<port>
    # The state directory belongs to one account; these two are explicit operator choices.
    rebind_account: bool = False  # the same account, a new key: take the key as the account's
    fresh_state: bool = False  # set the state directory aside and start with empty slots
    # Publish the journal to Redis for mirrors on other hosts (docs/replication.md).
    replicate: str | None = None

    def __post_init__(self) -> None:
        if not 2 <= self.strategy_count <= 1024:
            raise ConfigError(f"strategy_count must be 2..1024, not {self.strategy_count}")
        if self.reconcile_interval_s < 0 or self.recheck_s <= 0:
            raise ConfigError("reconcile intervals must be positive (0 turns reconciling off)")
        if self.max_connections < 1 or self.max_connections_per_peer < 1:
            raise ConfigError("max_connections and max_connections_per_peer must be at least 1")
        if self.idle_timeout_s <= 0 or self.frame_deadline_s <= 0:
            raise ConfigError("idle_timeout_s and frame_deadline_s must be positive")
        # A port past 65535 is not refused by the resolver but wrapped: 70000 bound 4464.
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(
                f"metrics_port must be 0..65535 (0: any free one), not {self.metrics_port}"
            )
        adapter = registry.adapter(self.exchange)  # ConfigError for an unknown exchange
        # Unset URLs are the exchange's own (frozen: set once, here).
        object.__setattr__(self, "rest_url", self.rest_url or adapter.rest_url)
        object.__setattr__(self, "ws_url", self.ws_url or adapter.ws_url)
        _check_url("rest_url (--rest-url)", self.rest_url, ("http", "https"))
        _check_url("ws_url (--ws-url)", self.ws_url, ("ws", "wss"))
        unknown = set(self.exchange_settings) - set(adapter.settings)
        if unknown:
            raise ConfigError(
                f"{self.exchange} has no setting {', '.join(sorted(unknown))}; "
                f"known: {', '.join(['rest_url', 'ws_url', *adapter.settings])}"
            )
        adapter.check_settings(self.exchange_settings)
        if self.replicate is not None:
            Target.parse(self.replicate, self.exchange)

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

    rest_url: str = ""  # "": the exchange's own (its adapter's default)
    ws_url: str = ""
    # The exchange adapter's own settings: its TOML section beside the URLs, and its flags.
    exchange_settings: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        file: Path | None = None,
        **overrides: object,
    ) -> GatewayConfig:
        """Defaults, then the TOML ``file``, then the environment, then ``overrides`` (flags).

        Raises:
            ConfigError: an unreadable file, an unknown key, or a value of the wrong type.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "shm_dir": Path("/dev/shm"),
            "state_root": default_state_dir({k: v for k, v in env.items() if k != "HFT_STATE_DIR"}),
            "run_dir": default_run_dir({k: v for k, v in env.items() if k != "HFT_RUN_DIR"}),
        }
        sections: dict[str, dict[str, object]] = {}
        if file is not None:
            values.update(read_config_file(file, sections))
        if env.get("HFT_SHM_DIR"):
            values["shm_dir"] = Path(env["HFT_SHM_DIR"])
        if env.get("HFT_STATE_DIR"):
            values["state_root"] = Path(env["HFT_STATE_DIR"])
        if env.get("HFT_RUN_DIR"):
            values["run_dir"] = Path(env["HFT_RUN_DIR"])
        flag_settings = overrides.pop("exchange_settings", None) or {}
        assert isinstance(flag_settings, Mapping)
        values.update({k: v for k, v in overrides.items() if v is not None})
        # The configured exchange's section: its URLs (unless flags gave them), its settings.
        exchange = str(values.get("exchange", registry.DEFAULT_EXCHANGE))
        section = dict(sections.get(exchange, {}))
        for url in ("rest_url", "ws_url"):
            if url in section:
                values.setdefault(url, section.pop(url))
                section.pop(url, None)
        values["exchange_settings"] = {**section, **flag_settings}
        for key in ("shm_dir", "state_root", "run_dir"):
            values[key] = Path(str(values[key])).expanduser()
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(str(exc)) from None


# File key → (field, expected type). Paths and modes are strings in the file.
_FILE_KEYS: Final[dict[str, tuple[str, type | tuple[type, ...]]]] = {
    "exchange": ("exchange", str),
    "strategy_count": ("strategy_count", int),
    "shm_dir": ("shm_dir", str),
    "state_dir": ("state_root", str),
    "run_dir": ("run_dir", str),
    "socket_mode": ("socket_mode", str),
    "allowed_uids": ("allowed_uids", list),
    "max_connections": ("max_connections", int),
    "idle_timeout_s": ("idle_timeout_s", (int, float)),
    "max_connections_per_peer": ("max_connections_per_peer", int),
    "frame_deadline_s": ("frame_deadline_s", (int, float)),
    "reconcile_interval_s": ("reconcile_interval_s", (int, float)),
    "recheck_s": ("recheck_s", (int, float)),
    "shutdown_grace_s": ("shutdown_grace_s", (int, float)),
    "snapshot_every": ("snapshot_every", int),
    "metrics_port": ("metrics_port", int),
    "replicate": ("replicate", str),
}


def read_config_file(
    path: Path, sections: dict[str, dict[str, object]] | None = None
) -> dict[str, object]:
    """Read and check a TOML configuration file (see ``docs/operations.md``).

    Credentials are not read from it: they come from the environment only. A
    table named after an exchange (``[kraken]``) holds that exchange's URLs and
    settings; they are checked against its adapter and put in ``sections``.

    Raises:
        ConfigError: unreadable, not TOML, an unknown key or a wrong type.
    """
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    flat: dict[str, object] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    values: dict[str, object] = {}
    for key, value in flat.items():
        exchange, _, setting = key.partition(".")
        if setting and exchange in registry.ADAPTERS:
            _exchange_setting(path, key, value, (sections if sections is not None else {}))
            continue
        if key not in _FILE_KEYS:
            known = [*_FILE_KEYS, *(f"[{name}] ..." for name in registry.ADAPTERS)]
            raise ConfigError(f"{path}: unknown setting {key!r}; known: {', '.join(known)}")
        field_name, expected = _FILE_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ConfigError(f"{path}: {key} has the wrong type ({type(value).__name__})")
        values[field_name] = _file_value(path, key, value)
    return values


def _exchange_setting(
    path: Path, key: str, value: object, sections: dict[str, dict[str, object]]
) -> None:
    exchange, _, setting = key.partition(".")
    types: dict[str, type] = {"rest_url": str, "ws_url": str, **registry.adapter(exchange).settings}
    expected = types.get(setting)
    if expected is None:
        raise ConfigError(f"{path}: unknown setting {key!r}; [{exchange}] takes {', '.join(types)}")
    if isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{path}: {key} has the wrong type ({type(value).__name__})")
    sections.setdefault(exchange, {})[setting] = value


def _file_value(path: Path, key: str, value: object) -> object:
    if key == "socket_mode":
        try:
            return int(str(value), 8)
        except ValueError:
            raise ConfigError(f'{path}: socket_mode must be octal text like "0600"') from None
    if key == "allowed_uids":
        assert isinstance(value, list)
        if not all(isinstance(u, int) and not isinstance(u, bool) for u in value):
            raise ConfigError(f"{path}: allowed_uids must be a list of integers")
        return frozenset(value)
    return value
