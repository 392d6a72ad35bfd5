"""The seam: the registry finds adapters by name, and an adapter reads its own credentials."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.errors import ConfigError
from gateway.exchanges import registry


def test_registry_finds_kraken_in_any_case_and_refuses_others_naming_those_it_has() -> None:
    assert registry.adapter("Kraken") is registry.adapter("kraken")
    assert registry.adapter("kraken").service == "kraken_gateway"
    with pytest.raises(ConfigError, match="unknown exchange 'nasdaq'; one of: kraken"):
        registry.adapter("nasdaq")


def test_credentials_come_from_the_adapters_own_variables_and_never_show() -> None:
    kraken = registry.adapter("kraken")
    credentials = kraken.credentials({"KRAKEN_API_KEY": "k", "KRAKEN_API_SECRET": "c2VjcmV0"})
    assert (credentials.api_key, credentials.api_secret) == ("k", "c2VjcmV0")
    assert repr(credentials) == "Credentials(<hidden>)"
    with pytest.raises(ConfigError, match="KRAKEN_API_KEY and KRAKEN_API_SECRET must be set"):
        kraken.credentials({"KRAKEN_API_KEY": "k"})


def test_the_simulator_options_name_every_permission_the_simulator_knows() -> None:
    # The adapter lists them without importing the simulator (the service never loads it).
    from gateway.exchanges.kraken.adapter import PERMISSION_NAMES  # noqa: PLC0415
    from gateway.exchanges.kraken.sim.server import PERMISSIONS  # noqa: PLC0415

    assert set(PERMISSION_NAMES) == set(PERMISSIONS)


def test_the_service_never_loads_a_simulator() -> None:
    probe = (
        "import sys, gateway.service, gateway.config, gateway.exchanges.registry; "
        "print(any('.sim' in m for m in sys.modules if m.startswith('gateway.')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
