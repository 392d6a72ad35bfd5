"""Kraken asset and pair codes, normalised to canonical tickers. Pure.

Kraken names one asset three ways: REST keys (``XXBT``, ``ZUSD``, ``USDT``),
their ``altname`` (``XBT``, ``USD``) and WS v2 codes (``BTC``, ``USD``). The
map is built from the public ``Assets`` and ``AssetPairs`` answers, never by
stripping letters (``XTZ`` and ``ZEC`` start with X and Z, and are Tezos and
Zcash). The only renames are the ones WS v2 makes: ``XBT`` → ``BTC``,
``XDG`` → ``DOGE``.

Balances with a suffix (``XBT.F`` auto-earning, ``ETH2.S`` staked, ``DOT.P``,
``USD.HOLD`` …) are not tradable spot funds. They keep their suffix
(``BTC.F``, ``ETH2.S``), so they appear as currencies of their own and never
mix into the spot balance a strategy trades with.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from gateway.exchanges.kraken.errors import KrakenProtocolError
from gateway.exchanges.numbers import MAX_EXPONENT

logger = logging.getLogger(__name__)

# WS v2 (and every exchange but Kraken's REST) calls these by their common tickers.
V2_RENAMES: Final = {"XBT": "BTC", "XDG": "DOGE"}
# Kraken's longest names (pairs' REST keys, ``XXBTZUSD``) are a dozen characters; every
# name read is kept (the ledger, the journal), so one beyond this is not a name.
MAX_NAME: Final = 32
# Symbols split once each (a fill splits two): an exchange lists a few hundred pairs, and
# what a hostile stream sends beyond this only evicts, never grows the cache.
SYMBOLS_CACHED: Final = 1024


def canonical_from_altname(altname: str) -> str:
    """``XBT`` → ``BTC``; ``XBT.F`` → ``BTC.F``; ``USD`` → ``USD``.

    Raises:
        KrakenProtocolError: not a name (empty, longer than ``MAX_NAME``, or not printable).
    """
    base, dot, suffix = checked_name(altname).upper().partition(".")
    return V2_RENAMES.get(base, base) + dot + suffix


def checked_name(name: str) -> str:
    """``name`` if it can be an asset's or a pair's: 1 to ``MAX_NAME`` printable characters.

    Raises:
        KrakenProtocolError: it cannot.
    """
    if not (0 < len(name) <= MAX_NAME and name.isprintable()):
        raise KrakenProtocolError(f"not an asset or pair name: {name[:40]!r}")
    return name


@dataclass(frozen=True, slots=True)
class Pair:
    """One tradable pair, in canonical codes."""

    rest_name: str  # the AssetPairs key, e.g. XXBTZUSD
    base: str  # e.g. BTC
    quote: str  # e.g. USD

    @property
    def symbol(self) -> str:
        """The WS v2 symbol, e.g. ``BTC/USD``."""
        return f"{self.base}/{self.quote}"


@dataclass
class AssetMap:
    """REST asset keys and pair names → canonical codes."""

    assets: dict[str, str] = field(default_factory=dict)  # REST key → canonical
    pairs: dict[str, Pair] = field(default_factory=dict)  # REST pair key or altname → Pair
    decimals: dict[str, int] = field(default_factory=dict)  # canonical → Kraken's decimals

    @classmethod
    def from_rest(cls, assets: Mapping[str, object], pairs: Mapping[str, object]) -> AssetMap:
        """Build the map from the ``result`` objects of ``Assets`` and ``AssetPairs``."""
        mapping = cls()
        for key, info in assets.items():
            if not isinstance(info, dict):
                logger.warning("Kraken's Assets: %.40r is not an object; left out", key)
                continue
            altname = str(info.get("altname") or key)
            try:
                checked_name(key)
                canonical = canonical_from_altname(altname)
            except KrakenProtocolError as exc:
                logger.warning("Kraken's Assets: %s; left out", exc)
                continue
            mapping.assets[key] = canonical
            mapping.assets.setdefault(altname, canonical)
            decimals = info.get("decimals")
            if type(decimals) is int and 0 <= decimals <= MAX_EXPONENT:
                mapping.decimals[canonical] = decimals
            elif decimals is not None:  # its amounts are booked as Kraken writes them
                logger.warning("Kraken's Assets: %s has %.40r decimals; left out", key, decimals)
        for key, info in pairs.items():
            if not isinstance(info, dict):
                logger.warning("Kraken's AssetPairs: %.40r is not an object; left out", key)
                continue
            try:
                checked_name(key)
                base = mapping.asset(str(info["base"]))
                quote = mapping.asset(str(info["quote"]))
            except KrakenProtocolError as exc:
                logger.warning("Kraken's AssetPairs: %s; left out", exc)
                continue
            pair = Pair(key, base, quote)
            mapping.pairs[key] = pair
            pair_altname = info.get("altname")
            if isinstance(pair_altname, str):
                mapping.pairs.setdefault(pair_altname, pair)
        return mapping

    def asset(self, rest_key: str) -> str:
        """Canonical code of a REST asset key (or altname, or suffixed balance key).

        An unknown key keeps its own name (upper-cased, v2 renames applied): a
        new asset must show up, not vanish.

        Raises:
            KrakenProtocolError: ``rest_key`` is not a name (:func:`checked_name`).
        """
        known = self.assets.get(rest_key)
        if known is not None:
            return known
        base, dot, suffix = checked_name(rest_key).partition(".")
        if dot:
            return self.asset(base).partition(".")[0] + dot + suffix.upper()
        return canonical_from_altname(rest_key)

    def pair(self, name: str) -> Pair:
        """The pair of a REST pair key or altname (``XXBTZUSD``, ``XBTUSD``).

        Raises:
            KeyError: an unknown pair.
        """
        return self.pairs[name]

    @staticmethod
    @functools.lru_cache(maxsize=SYMBOLS_CACHED)
    def split_symbol(symbol: str) -> tuple[str, str]:
        """A WS v2 symbol ``BTC/USD`` → (base, quote), canonical; remembered (a refusal is not).

        Raises:
            ValueError: not of the form ``BASE/QUOTE``.
        """
        base, slash, quote = symbol.partition("/")
        if not slash or not base or not quote:
            raise ValueError(f"not a BASE/QUOTE symbol: {symbol!r}")
        return canonical_from_altname(base), canonical_from_altname(quote)
