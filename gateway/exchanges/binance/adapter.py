"""Binance behind the seam: its URLs, its credential variables, its options, its session."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

from gateway.errors import ConfigError
from gateway.exchanges.base import Adapter, Credentials

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.exchanges.base import ExchangeSession

BINANCE_REST_URL: Final = "https://api.binance.com"
BINANCE_WS_URL: Final = "wss://ws-api.binance.com:443/ws-api/v3"


@asynccontextmanager
async def open_session(
    config: GatewayConfig, credentials: Credentials
) -> AsyncIterator[ExchangeSession]:
    """A Binance session for ``config``; owns its REST connection pool and closes it."""
    # Imported here, as the simulator is: the command line's other commands, and a
    # gateway of another exchange, start without Binance's HTTP and websocket stack.
    from gateway.exchanges.binance.rest import BinanceRestClient  # noqa: PLC0415
    from gateway.exchanges.binance.session import BinanceSession  # noqa: PLC0415

    symbols = config.exchange_settings.get("symbols")
    names = [str(s) for s in symbols] if isinstance(symbols, list) and symbols else None
    async with BinanceRestClient(
        config.rest_url, api_key=credentials.api_key, api_secret=credentials.api_secret
    ) as rest:
        yield BinanceSession(rest, config.ws_url, symbols=names)


def run_simulator(args: argparse.Namespace) -> int:
    """``gateway sim --exchange binance``: imported only when asked for."""
    from gateway.exchanges.binance.sim.cli import run_from_args  # noqa: PLC0415

    return run_from_args(args)


def add_arguments(run: argparse.ArgumentParser, sim: argparse.ArgumentParser) -> None:
    """Binance takes no options of its own beyond the shared ones."""


def settings_from_args(args: argparse.Namespace) -> Mapping[str, object]:
    return {}


def check_settings(settings: Mapping[str, object]) -> None:
    """``symbols``: the symbols a catch-up asks for (default: those of the assets held)."""
    symbols = settings.get("symbols")
    if symbols is not None and (
        not isinstance(symbols, list)
        or not all(isinstance(s, str) and s.isalnum() for s in symbols)
    ):
        raise ConfigError('[binance] symbols must be a list of symbol names, like ["BTCUSDT"]')


ADAPTER: Final = Adapter(
    name="binance",
    rest_url=BINANCE_REST_URL,
    ws_url=BINANCE_WS_URL,
    key_variable="BINANCE_API_KEY",
    secret_variable="BINANCE_API_SECRET",
    open_session=open_session,
    run_simulator=run_simulator,
    add_arguments=add_arguments,
    settings_from_args=settings_from_args,
    settings={"symbols": list},
    check_settings=check_settings,
)
