"""The seam between the service and an exchange: what an adapter provides, and how it is opened.

The service knows exchanges only through :class:`ExchangeSession`; the command
line finds an exchange's :class:`Adapter` in :mod:`gateway.exchanges.registry`
by name and opens its session. An adapter package owns everything else about
its exchange: URLs, credential variables, persistent state, wire formats.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

import trio

from gateway.errors import ConfigError

if TYPE_CHECKING:
    import argparse

    from gateway.config import GatewayConfig
    from gateway.messages import WriterMessage


class ExchangeSession(Protocol):
    """What the service needs from an exchange adapter."""

    async def fetch_totals(self) -> Mapping[str, Decimal]:
        """The account's total balance per canonical currency (one REST snapshot).

        Raises:
            BootstrapError: after the adapter's own retries are exhausted.
        """
        ...

    async def run_fills(
        self,
        send: trio.MemorySendChannel[WriterMessage],
        *,
        position_ns: Callable[[], int],
        transfer_position_ns: Callable[[], int],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Stream fills (and transfers, where the exchange streams them) to ``send``.

        ``send`` is owned and closed by it; it runs until cancelled.
        ``started()`` once subscribed and caught up: every fill since
        ``position_ns()`` (the ledger's epoch or last fill, whichever is later)
        sent, so no fill after that moment is missed, however long that takes.
        Transfers since ``transfer_position_ns()`` may follow (those before the
        bootstrap's request are in its totals); ``feed_connection`` is None
        until they have.
        """
        ...

    def health(self) -> ExchangeHealth:
        """The exchange side's health, read by ``status``, the view and the metrics."""
        ...

    def account(self) -> str:
        """Which exchange account the credentials reach, as stable text.

        The state directory is bound to it: slots of one account must never be
        applied to another (another key, the simulator). A fingerprint of the
        key, and the exchange's own account id where one exists; never a secret.
        """
        ...

    def feed_connection(self) -> int | None:
        """A number naming the live, caught-up fill connection; None while there is none.

        The reconciler trusts a comparison only if the same connection was live
        before and after it: otherwise fills may be on their way.
        """
        ...


@dataclass(frozen=True, slots=True)
class ExchangeHealth:
    """How the exchange side is doing, in the terms every adapter shares.

    ``details`` holds the adapter's own figures (REST counters, catch-up
    progress …); ``status`` shows them after the shared ones.
    """

    feed: str  # the fill stream: "live", "connecting", "catching up", "disconnected" …
    feed_live: bool  # live and caught up: balances follow the exchange
    reconnects: int = 0
    rest_failures: int = 0
    last_error: str | None = None
    details: Mapping[str, object] = field(default_factory=dict)

    def as_status(self) -> dict[str, object]:
        """The fields of the ``status`` reply, under the names it has always used."""
        return {
            "websocket": self.feed,
            "ws_reconnects": self.reconnects,
            "rest_failures": self.rest_failures,
            "exchange_last_error": self.last_error,
            **self.details,
        }


@dataclass(frozen=True, slots=True)
class Credentials:
    """An API key and its secret, read from the environment; never logged."""

    api_key: str
    api_secret: str

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"


@dataclass(frozen=True, slots=True)
class Adapter:
    """One exchange as the command line sees it.

    ``open_session(config, credentials)`` is an async context manager that
    owns the session's connections and closes them on exit.
    """

    name: str
    rest_url: str  # the REST base when --rest-url is not given
    ws_url: str  # the private websocket when --ws-url is not given
    key_variable: str  # e.g. KRAKEN_API_KEY
    secret_variable: str  # e.g. KRAKEN_API_SECRET
    open_session: Callable[
        [GatewayConfig, Credentials], AbstractAsyncContextManager[ExchangeSession]
    ]
    # ``gateway sim --exchange <name>``: serves the exchange's simulator from the parsed
    # options until a signal; returns the exit status.
    run_simulator: Callable[[argparse.Namespace], int]
    # Adds the exchange's own options to ``gateway run`` and ``gateway sim``.
    add_arguments: Callable[[argparse.ArgumentParser, argparse.ArgumentParser], None]
    # Its settings given by those ``run`` options (those not given left out).
    settings_from_args: Callable[[argparse.Namespace], Mapping[str, object]]
    # The adapter's own settings (its TOML section beside rest_url and ws_url): name → type.
    settings: Mapping[str, type] = field(default_factory=dict)
    # Refuses settings that cannot work (ConfigError), before anything starts.
    check_settings: Callable[[Mapping[str, object]], None] = lambda settings: None

    @property
    def service(self) -> str:
        """The command socket's name: ``<exchange>_gateway``."""
        return f"{self.name}_gateway"

    def credentials(self, environ: Mapping[str, str]) -> Credentials:
        """The key and secret from ``environ``.

        Raises:
            ConfigError: either is missing or empty (the gateway never runs without).
        """
        api_key = environ.get(self.key_variable, "")
        api_secret = environ.get(self.secret_variable, "")
        if not api_key or not api_secret:
            raise ConfigError(
                f"{self.key_variable} and {self.secret_variable} must be set "
                "(the gateway never runs without credentials)"
            )
        return Credentials(api_key, api_secret)
