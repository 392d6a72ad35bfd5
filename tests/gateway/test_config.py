"""Configuration: defaults < TOML file < environment < flags, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.errors import ConfigError

FILE = """
strategy_count = 12
state_dir = "/var/lib/hft"
run_dir = "/run/hft"
socket_mode = "0660"
allowed_uids = [1000, 1001]
reconcile_interval_s = 30
metrics_port = 9108

[kraken]
rest_url = "http://127.0.0.1:8080"
"""


def test_file_environment_and_flags_layer_in_order(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(FILE)
    env = {"HFT_RUN_DIR": "/env/run", "HOME": "/home/x"}
    config = GatewayConfig.from_env(env, file=path, reconcile_interval_s=5.0)
    assert config.strategy_count == 12  # file
    assert config.state_root == Path("/var/lib/hft")  # file
    assert config.run_dir == Path("/env/run")  # environment beats file
    assert config.reconcile_interval_s == 5.0  # flag beats file
    assert config.socket_mode == 0o660
    assert config.allowed_uids == frozenset({1000, 1001})
    assert config.metrics_port == 9108
    assert config.rest_url == "http://127.0.0.1:8080"
    assert config.ws_url == "wss://ws-auth.kraken.com/v2"  # default
    assert config.state_dir == Path("/var/lib/hft/kraken")


def test_defaults_follow_xdg_and_home() -> None:
    config = GatewayConfig.from_env({"HOME": "/home/x", "XDG_RUNTIME_DIR": "/run/user/7"})
    assert config.state_root == Path("/home/x/.local/state/hft")
    assert config.run_dir == Path("/run/user/7/hft")
    assert config.shm_dir == Path("/dev/shm")
    assert config.socket_path == Path("/run/user/7/hft/kraken_gateway.sock")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("strategy_cuont = 3", "unknown setting 'strategy_cuont'"),
        ('strategy_count = "8"', "strategy_count has the wrong type"),
        ("strategy_count = 1", "strategy_count must be 2..1024"),
        ('socket_mode = "rw"', "socket_mode must be octal"),
        ('allowed_uids = ["me"]', "allowed_uids must be a list of integers"),
        ("this is not toml", "is not valid TOML"),
        ("[kraken]\napi_secret = 'x'", "unknown setting 'kraken.api_secret'"),
    ],
)
def test_bad_files_are_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        GatewayConfig.from_env({}, file=path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        GatewayConfig.from_env({}, file=tmp_path / "absent.toml")


def test_the_exchanges_own_section_gives_its_settings_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[kraken]\ntier = "pro"\nws_url = "ws://127.0.0.1:9"\n')
    config = GatewayConfig.from_env({"HOME": "/home/x"}, file=path)
    assert config.exchange_settings == {"tier": "pro"}
    assert config.ws_url == "ws://127.0.0.1:9" and config.rest_url == "https://api.kraken.com"
    flagged = GatewayConfig.from_env(
        {"HOME": "/home/x"}, file=path, exchange_settings={"tier": "intermediate"},
        ws_url="wss://elsewhere.test/v2",
    )  # fmt: skip
    assert flagged.exchange_settings == {"tier": "intermediate"}
    assert flagged.ws_url == "wss://elsewhere.test/v2"


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"tier": "platinum"}, "unknown Kraken tier 'platinum'; one of: starter"),
     ({"tire": "pro"}, "kraken has no setting tire; known: rest_url, ws_url, tier")],
)  # fmt: skip
def test_settings_the_exchange_cannot_use_are_refused(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        GatewayConfig.from_env({"HOME": "/home/x"}, exchange_settings=settings)
