"""The command line as a newcomer meets it: the real console script, in a subprocess.

Every failure is one line on stderr and a non-zero exit, never a traceback;
output is for people (aligned lines, money never cut) or for scripts (--json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console

from gateway.__main__ import build_parser
from gateway.demo import STRATEGIES
from gateway.view import Record, ViewState, render, render_panel
from tests.gateway.conftest import GatewayProcess
from tests.kraken.stack import wait_until

GATEWAY = Path(sys.executable).parent / "gateway"  # the console script pip installed
SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="


def cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GATEWAY), *args], env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def one_line_failure(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The failure's only line on stderr (log lines before it aside)."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines, "no reason given"
    return lines[-1]


def gateway_env(tmp_path: Path, short_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HFT_SHM_DIR": str(tmp_path / "shm"),
        "HFT_STATE_DIR": str(tmp_path / "state"),
        "HFT_RUN_DIR": str(short_dir / "run"),
    }


CMD = ["cmd", "allocate", "--strategy", "a", "--currency", "usd", "--index", "2"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([*CMD, "--amount", "abc"], "'abc' is not a decimal amount"),
        ([*CMD, "--amount", "1,000"], "'1,000' is not a decimal amount"),
        ([*CMD, "--amount", "NaN"], "'NaN' is not a decimal amount"),
        ([*CMD, "--amount", "\u0661\u0660"], "is not a decimal amount"),  # not ASCII digits
        ([*CMD, "--amount", "1", "--delta", "1"], "not allowed with argument"),
        (CMD, "one of the arguments --amount --delta is required"),
        ([*CMD, "--amount", "1", "--timeout", "0"], "'0' is not a positive number of seconds"),
        (["balances", "--watch", "--interval", "-1"], "'-1' is not a positive number"),
        (["balances", "--interval", "nan"], "'nan' is not a positive number"),
        (["demo", "--duration", "-3"], "'-3' is not a positive number"),
        (["run", "--timeout", "3"], "unrecognized arguments: --timeout 3"),
        # Before, a run started in full and then failed with a traceback, writing it.
        (["run", "--ready-file", "/nonexistent/r"], "no directory /nonexistent to write it in"),
        (["mirror", "redis://x", "--ready-file", "/nonexistent/r"], "no directory /nonexistent"),
        (["sim", "--ready-file", "/nonexistent/sim.json"], "no directory /nonexistent"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], fragment: str, short_dir: Path) -> None:
    result = cli(*argv, env={"HFT_RUN_DIR": str(short_dir), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()  # no usage block: one line
    assert fragment in line and line.endswith("--help)"), line


def test_run_refuses_a_bad_secret_or_url_at_once(tmp_path: Path, short_dir: Path) -> None:
    env = {**gateway_env(tmp_path, short_dir), "KRAKEN_API_KEY": "key"}
    cases = [
        ({"KRAKEN_API_SECRET": "not base64!!"}, [], "KRAKEN_API_SECRET is not base64"),
        ({"KRAKEN_API_SECRET": SECRET}, ["--rest-url", "127.0.0.1:1234"], "--rest-url"),
        ({"KRAKEN_API_SECRET": SECRET}, ["--rest-url", "http://:80"], "with a host"),
        ({"KRAKEN_API_SECRET": SECRET}, ["--ws-url", "https://ws.example"], "ws:// or wss://"),
        ({"KRAKEN_API_SECRET": ""}, [], "KRAKEN_API_KEY and KRAKEN_API_SECRET must be set"),
    ]
    for extra_env, argv, fragment in cases:
        started = time.monotonic()
        result = cli("run", *argv, env={**env, **extra_env})
        assert fragment in one_line_failure(result), (argv, result.stderr)
        assert time.monotonic() - started < 10, "refused only after retrying"
    assert not (tmp_path / "state" / "kraken" / "journal").exists()


def test_every_flag_explains_itself_and_run_names_its_variables() -> None:
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"gateway {name} {action.option_strings or action.dest}"
    help_text = cli("run", "--help").stdout
    for variable in ("KRAKEN_API_KEY", "KRAKEN_API_SECRET", "HFT_SHM_DIR", "HFT_STATE_DIR"):
        assert variable in help_text


# What only `gateway run` (the service, an exchange's HTTP and websocket stack), `gateway
# balances` (the live view) or `gateway journal` needs.
NOT_FOR_STATUS = (
    "gateway.service", "gateway.writer", "gateway.journal_repair", "gateway.view",
    "gateway.demo", "gateway.exchanges.kraken.session", "gateway.exchanges.binance.session",
    "httpx", "trio_websocket", "rich", "coredis",
)  # fmt: skip


def test_status_loads_neither_the_service_nor_an_exchange(tmp_path: Path, short_dir: Path) -> None:
    """`gateway status` once took 0.7 s, most of it importing what only `run` uses; an
    operator's (or a health check's) status answers in half that."""
    report = (
        "import sys\n"
        "from gateway.__main__ import main\n"
        "try:\n"
        "    main(['status'])\n"
        "except SystemExit as exc:\n"
        "    assert 'not healthy' in str(exc), exc\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", report], env=gateway_env(tmp_path, short_dir),
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    loaded = set(done.stdout.split())
    assert "gateway.__main__" in loaded and "mmapstore" in loaded
    needless = {m for m in loaded if any(m == h or m.startswith(h + ".") for h in NOT_FOR_STATUS)}
    assert not needless, f"status loaded what it never uses: {sorted(needless)}"


class SilentGateway:
    """A socket where the gateway's would be, which takes a request and never answers
    (or hangs up): what a command sees when the gateway stalls or dies mid-command."""

    def __init__(self, run_dir: Path, *, hang_up: bool) -> None:
        run_dir.mkdir(mode=0o700)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(run_dir / "kraken_gateway.sock"))
        self.listener.listen()
        self.received = b""
        self.hang_up = hang_up
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener, self.listener.accept()[0] as connection:
            while b"\n" not in self.received:
                self.received += connection.recv(4096)
            if not self.hang_up:
                time.sleep(2)  # longer than the client waits

    def request_id(self) -> str:
        request = json.loads(self.received)
        assert isinstance(request, dict)
        return str(request["request_id"])


@pytest.mark.parametrize(
    ("hang_up", "what"),
    [(False, "no reply within 0.5 s"), (True, "the connection was lost before the reply")],
)
def test_a_command_without_reply_names_the_request_id_to_resend(
    short_dir: Path, hang_up: bool, what: str
) -> None:
    silent = SilentGateway(short_dir / "run", hang_up=hang_up)
    env = {"HFT_RUN_DIR": str(short_dir / "run"), "PATH": "/usr/bin:/bin"}
    result = cli(*CMD, "--amount", "1", "--timeout", "0.5", env=env)
    line = one_line_failure(result)
    silent.thread.join(timeout=10)
    assert line.startswith(f"gateway cmd: {what}: the allocate may have been applied")
    assert f"--request-id {silent.request_id()} " in line
    # The id given is the id sent, so the advice can be followed.
    again = SilentGateway(short_dir / "run2", hang_up=True)
    env["HFT_RUN_DIR"] = str(short_dir / "run2")
    result = cli(*CMD, "--amount", "1", "--request-id", "mine-1", env=env)
    assert "--request-id mine-1 " in one_line_failure(result)
    again.thread.join(timeout=10)
    assert again.request_id() == "mine-1"


@pytest.fixture
def running(gateway_process: GatewayProcess) -> Iterator[GatewayProcess]:
    gateway_process.start("--strategy-count", "8")
    yield gateway_process


def test_commands_status_and_balances_read_well(running: GatewayProcess) -> None:
    env = running.env
    unknown = cli("cmd", "allocate", "--strategy", "a", "--currency", "xbt", "--amount", "1",
                  "--index", "2", env=env)  # fmt: skip
    assert "no XBT balance on this account (it holds BTC, ETH, USD, USDT)" in one_line_failure(
        unknown
    )
    names = ["a-strategy-with-a-long-name", "momentum-btc-usd", "arbitrage-eu", "mm-1"]
    for index, name in enumerate(names, start=2):
        amount = f"1234.56789{index}"
        allocated = cli("cmd", "allocate", "--strategy", name, "--currency", "usd",
                        "--amount", amount, "--index", str(index), env=env)  # fmt: skip
        assert allocated.returncode == 0, allocated.stderr
    adjusted = cli("cmd", "adjust", "--strategy", names[0], "--currency", "usd",
                   "--delta", "-0.5", "--index", "2", env=env)  # fmt: skip
    assert json.loads(adjusted.stdout)["balances"][2] == "1234.067892"

    status = cli("status", env=env)
    assert status.returncode == 0, status.stderr
    assert "{" not in status.stdout and "None" not in status.stdout
    for line in status.stdout.splitlines():
        assert re.fullmatch(r"( {2})?[a-z_]+: *( \S.*)?", line), line
    assert "healthy:" in status.stdout and "yes" in status.stdout.splitlines()[-1]

    as_json = cli("balances", "--json", env=env)
    report = json.loads(as_json.stdout)
    usd = report["balances"]["USD"]["slots"]
    assert usd[:6] == ["99999.5", "95061.728426", "1234.067892", "1234.567893",
                       "1234.567894", "1234.567895"]  # fmt: skip
    assert report["owners"]["2"] == names[0] and report["slots_sum_to_total"] is True

    piped = cli("balances", env=env)  # not a terminal: nothing cut to 80 columns
    assert piped.returncode == 0, piped.stderr
    assert "…" not in piped.stdout
    usd_row = next(line for line in piped.stdout.splitlines() if line.strip().startswith("USD"))
    assert usd_row.split()[1:] == usd[:6]  # the unused slots 6 and 7 are left out
    for index, name in enumerate(names, start=2):
        assert f"{index} {name}" in piped.stdout


def test_a_stopped_store_says_so(running: GatewayProcess) -> None:
    assert running.process is not None
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=30) == 0
    view = cli("balances", env=running.env)
    assert view.returncode == 0, view.stderr
    assert "STOPPED" in view.stdout and "not live" in view.stdout
    assert "?" not in view.stdout
    status = cli("status", env=running.env)
    assert "gateway status: kraken gateway is not healthy" in one_line_failure(status)
    assert re.search(r"^  health: +stopped$", status.stdout, re.M), status.stdout


def _state(slots: int, value: str, used: Collection[int] = ()) -> ViewState:
    used = used or range(slots)
    exact = tuple(Decimal(value) * (i + 1) if i in used else Decimal(0) for i in range(slots))
    records = {
        currency: Record(exact, tuple(float(v) for v in exact), 7, time.time_ns())
        for currency in ("BTC", "ETH", "USD", "USDC", "USDT")
    }
    owners = {str(i): f"strategy-{i}" for i in used if i >= 2}
    return ViewState("kraken", "live", 1, 1, 0.1, records, owners=owners, answered=True)


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_view_never_cuts_money_and_fits_the_terminal(width: int) -> None:
    state = _state(8, "100609.123456789012")
    for frame in (render(state, width, floats=True), render_panel(state, "t", width)):
        out = io.StringIO()
        Console(file=out, width=width, color_system=None).print(frame)
        text = out.getvalue()
        assert max(map(len, text.splitlines())) <= width
        assert "…" not in text
        for value in state.records["USD"].exact:
            assert f"{value:f}" in text, (value, text)  # whole, on one line


def test_the_view_fits_80_by_24_for_the_demo() -> None:
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(
        render_panel(
            _state(8, "20000.12345678", used=(0, 1, *(i for _, i in STRATEGIES))),
            "gateway demo: Ctrl-C stops everything",
            80,
        )
    )
    assert len(out.getvalue().splitlines()) <= 24, out.getvalue()


def test_the_demo_says_how_to_reach_it_and_leaves_slot_2_free() -> None:
    demo = subprocess.Popen(
        [str(GATEWAY), "demo", "--duration", "8"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert demo.stdout is not None
        lines = [demo.stdout.readline() for _ in range(2)]
        exports = lines[1].split()
        assert exports[0] == "export", lines
        env = {**os.environ, **dict(item.split("=", 1) for item in exports[1:])}
        status = cli("status", "--json", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        # The README's first example runs beside the demo's strategies.
        readme_example = cli(*CMD, "--amount", "100", env=env)
        assert readme_example.returncode == 0, readme_example.stderr
        rest = demo.stdout.read()  # the line of advice, then the summary
        summary = json.loads(rest[rest.index("{") :])
        assert demo.wait(timeout=30) == 0
        assert summary["invariant_held"] is True and summary["fills_applied"] > 0
    finally:
        demo.kill()
        demo.communicate()  # waits and closes the pipe


def _fills_applied(env: Mapping[str, str]) -> int:
    report = json.loads(cli("status", "--json", env=env).stdout)
    return int(report["gateway"]["fills_applied"])


def _processes_naming(text: str) -> list[int]:
    """The live processes whose command line names ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            if text.encode() in cmdline:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_the_demo_stopped_by_a_signal_stops_what_it_started(signum: signal.Signals) -> None:
    # Its simulator and gateway run in sessions of their own: SIGTERM, or SIGHUP from a
    # closed terminal, ended the demo alone and left both running, orphaned.
    demo = subprocess.Popen(
        [str(GATEWAY), "demo", "--duration", "120"], stdout=subprocess.PIPE, text=True
    )
    root = "/nowhere/"
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()  # "demo: stores, sockets and state in <root>; ..."
        root = first.split(" in ", 1)[1].split(";", 1)[0]
        exports = demo.stdout.readline().split()[1:]
        env = {**os.environ, **dict(item.split("=", 1) for item in exports)}
        wait_until(lambda: _fills_applied(env) > 0, 30, "the demo's first fills")  # running
        assert len(_processes_naming(root)) == 2, first  # the simulator and the gateway
        demo.send_signal(signum)
        rest = demo.stdout.read()  # the line of advice, then the summary
        summary = json.loads(rest[rest.index("{") :])
        assert demo.wait(timeout=60) == 0
        assert summary["gateway_exit"] == 0 and summary["invariant_held"] is True
        assert _processes_naming(root) == []
    finally:
        demo.kill()
        demo.communicate()
        for orphan in _processes_naming(root):  # what a failing run left
            os.kill(orphan, signal.SIGKILL)


def test_the_demo_runs_for_binance_too() -> None:
    demo = subprocess.run(
        [str(GATEWAY), "demo", "--exchange", "binance", "--duration", "6"],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    assert "status --exchange binance" in demo.stdout
    summary = json.loads(demo.stdout[demo.stdout.index("{") :])
    assert summary["invariant_held"] is True and summary["fills_applied"] > 0
    assert summary["allocations_sent"] == 15  # 3 strategies x 5 currencies held


def test_the_demo_runs_every_exchange_side_by_side() -> None:
    demo = subprocess.run(
        [str(GATEWAY), "demo", "--exchange", "all", "--duration", "6"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    summary = json.loads(demo.stdout[demo.stdout.index("{") :])
    assert summary["invariant_held"] is True
    assert set(summary["exchanges"]) == {"kraken", "binance"}
    assert all(each["fills_applied"] > 0 for each in summary["exchanges"].values())
    exports = demo.stdout.splitlines()[1].split()
    assert exports[0] == "export"  # one line reaches both gateways
