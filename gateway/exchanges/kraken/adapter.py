"""Kraken behind the seam: its URLs, its credential variables, and how a session is opened."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

from gateway.exchanges.base import Adapter, Credentials
from gateway.exchanges.kraken.ratelimit import DEFAULT_TIER, TIERS, SavedCounter, tier_named

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.exchanges.base import ExchangeSession

KRAKEN_REST_URL: Final = "https://api.kraken.com"
KRAKEN_WS_URL: Final = "wss://ws-auth.kraken.com/v2"


@asynccontextmanager
async def open_session(
    config: GatewayConfig, credentials: Credentials
) -> AsyncIterator[ExchangeSession]:
    """A Kraken session for ``config``; owns its REST connection pool and closes it.

    Nonces stay increasing across restarts through ``kraken.nonce``, and the API
    counter is taken up where the last process left it (``kraken.counter``),
    both in the state directory.

    Raises:
        ConfigError: the secret is not base64, or the tier is unknown.
    """
    # Imported here, as the simulator is: the command line's other commands, and a
    # gateway of another exchange, start without Kraken's HTTP and websocket stack.
    from gateway.exchanges.kraken.rest import KrakenRestClient  # noqa: PLC0415
    from gateway.exchanges.kraken.session import KrakenSession  # noqa: PLC0415
    from gateway.exchanges.kraken.signing import NonceSource  # noqa: PLC0415

    async with KrakenRestClient(
        config.rest_url,
        api_key=credentials.api_key,
        api_secret=credentials.api_secret,
        nonces=NonceSource(config.state_dir / "kraken.nonce"),
        tier=tier_named(str(config.exchange_settings.get("tier", DEFAULT_TIER))),
        saved_counter=SavedCounter(config.state_dir / "kraken.counter"),
    ) as rest:
        yield KrakenSession(rest, config.ws_url)


def run_simulator(args: argparse.Namespace) -> int:
    """``gateway sim``: imported only when asked for, so the service never loads it."""
    from gateway.exchanges.kraken.sim.cli import run_from_args  # noqa: PLC0415

    return run_from_args(args)


def add_arguments(run: argparse.ArgumentParser, sim: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--kraken-tier",
        default=None,
        choices=sorted(TIERS),
        help=f"the account's verification tier, which sets Kraken's API counter ({DEFAULT_TIER})",
    )
    sim.add_argument(
        "--tier",
        default=DEFAULT_TIER,
        choices=[*sorted(TIERS), "unlimited"],
        help=f"Kraken: the API counter to enforce, as Kraken does per tier ({DEFAULT_TIER})",
    )
    sim.add_argument(
        "--permissions",
        default=",".join(PERMISSION_NAMES),
        help="Kraken: the key's permissions, comma-separated (default: all)",
    )


def settings_from_args(args: argparse.Namespace) -> Mapping[str, object]:
    tier = getattr(args, "kraken_tier", None)
    return {"tier": tier} if tier else {}


def check_settings(settings: Mapping[str, object]) -> None:
    """``tier``: the account's verification tier, which sets Kraken's API counter."""
    tier_named(str(settings.get("tier", DEFAULT_TIER)))  # ConfigError naming the tiers


# The key permissions the simulator knows (gateway/exchanges/kraken/sim/server.py).
PERMISSION_NAMES: Final = ("funds", "websocket", "closed-orders", "open-orders", "ledger", "trade")

ADAPTER: Final = Adapter(
    name="kraken",
    rest_url=KRAKEN_REST_URL,
    ws_url=KRAKEN_WS_URL,
    key_variable="KRAKEN_API_KEY",
    secret_variable="KRAKEN_API_SECRET",
    open_session=open_session,
    run_simulator=run_simulator,
    add_arguments=add_arguments,
    settings_from_args=settings_from_args,
    settings={"tier": str},
    check_settings=check_settings,
)
