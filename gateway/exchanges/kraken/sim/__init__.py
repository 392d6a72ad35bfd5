"""A Kraken-compatible exchange simulator on loopback, for tests, the demo and benchmarks.

Imported only by the CLI's ``sim`` and ``demo`` commands, tests and tools;
the gateway's service code never knows it exists.
"""
