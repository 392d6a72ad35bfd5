"""Command line of the balance gateway (console script ``gateway``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point; the subcommands arrive with the gateway's core."""
    print("gateway: no subcommands yet (the core is being built)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
