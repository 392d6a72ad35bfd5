"""Which exchanges have an adapter: the one place outside the adapters that names them."""

from __future__ import annotations

from typing import Final

from gateway.errors import ConfigError
from gateway.exchanges.base import Adapter
from gateway.exchanges.binance.adapter import ADAPTER as BINANCE
from gateway.exchanges.kraken.adapter import ADAPTER as KRAKEN

ADAPTERS: Final[dict[str, Adapter]] = {adapter.name: adapter for adapter in (KRAKEN, BINANCE)}
DEFAULT_EXCHANGE: Final = KRAKEN.name


def adapter(name: str) -> Adapter:
    """The adapter of exchange ``name``.

    Raises:
        ConfigError: no exchange of that name.
    """
    found = ADAPTERS.get(name.lower())
    if found is None:
        raise ConfigError(f"unknown exchange {name!r}; one of: {', '.join(ADAPTERS)}")
    return found
