"""A raw command client for the benchmarks: one blocking socket, pre-encoded JSON lines.

    python tools/raw_client.py SOCKET PER_CLIENT NUMBER

Standard library only, so that the dozens started in a run (8 or 32 at a time, each
round) cost ~50 ms of start-up apiece rather than the ~0.4 s that importing Trio and
the clients took. Says READY once connected and starts on a line from its parent, so
that no client's start-up falls inside the measured run; prints its round trips (µs)
as JSON at the end.
"""

from __future__ import annotations

import json
import socket
import sys
import time

REQUESTS = [
    json.dumps(
        {"strategy": "raw{index}", "cmd": cmd, "currency": "USD", "index": "{index}", "amount": 1}
    ).replace('"{index}"', "{index}")
    + "\n"
    for cmd in ("allocate", "release")
]


def run(socket_path: str, per_client: int, number: int) -> list[float]:
    """``per_client`` allocate / release round trips on slot 2 + ``number`` % 6."""
    index = 2 + number % 6
    requests = [line.replace("{index}", str(index)).encode() for line in REQUESTS]
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(socket_path)
    print("READY", flush=True)
    sys.stdin.readline()
    latencies = []
    buffer = b""
    for n in range(per_client):
        start = time.perf_counter_ns()
        sock.sendall(requests[n & 1])
        while b"\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed the connection")
            buffer += chunk
        line, _, buffer = buffer.partition(b"\n")
        latencies.append((time.perf_counter_ns() - start) / 1000)
        if not json.loads(line).get("ok"):
            raise SystemExit(f"refused: {line!r}")
    sock.close()
    return latencies


if __name__ == "__main__":
    path, per_client, number = sys.argv[1:]
    print(json.dumps(run(path, int(per_client), int(number))))
