"""Command line of the balance gateway (console script ``gateway``).

Every command exits non-zero with a one-line reason on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

import trio

from clients import (
    CommandError,
    CommandRefusedError,
    CommandTimeoutError,
    StoreError,
    WriterHealth,
)
from clients.command import STRATEGY_BALANCE_CMD, IPCCommandSystem, strategy_balance
from gateway.config import GatewayConfig, default_state_dir
from gateway.errors import GatewayError, only_leaf
from gateway.exchanges import registry
from gateway.files import make_own_dir, write_atomically
from mmapstore import Condition, StoreLockedError, StoreReader, store_path, writer_lock

if TYPE_CHECKING:
    from gateway.exchanges.base import ExchangeSession

# Each command imports what only it uses (the service, the live view, the journal's
# repair, the demo): `gateway status` and `gateway cmd` answer without loading the
# gateway, and `gateway run` starts without the view.

logger = logging.getLogger("gateway")

EXCHANGES: Final = tuple(registry.ADAPTERS)
DEFAULT_EXCHANGE: Final = registry.DEFAULT_EXCHANGE
EXCHANGE_HELP: Final = f"which exchange: {', '.join(EXCHANGES)} ({DEFAULT_EXCHANGE})"
PIPED_WIDTH: Final = 400  # columns when stdout is not a terminal
# A decimal amount as people type it: ASCII digits, one point, an optional exponent.
AMOUNT_PATTERN: Final = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line: what was wrong and where to read more, no usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _amount(text: str) -> Decimal:
    if not AMOUNT_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a decimal amount (digits and one '.', e.g. 1000.5)"
        )
    return Decimal(text)


def _ready_file(text: str) -> Path:
    """A ready file's path, refused now if its directory is missing or not writable:
    not after a whole start, when it is written."""
    path = Path(text)
    parent = path.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no directory {parent} to write it in")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: this user may not write in {parent}")
    return path


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, tz=UTC)
        entry: dict[str, object] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLogFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    # One line per HTTP request is noise at info; failures surface as our own warnings.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Its retries (a script not yet cached, a reconnect) are routine; ours say what matters.
    logging.getLogger("coredis").setLevel(logging.WARNING)


def write_ready_file(path: Path, config: GatewayConfig, state_dir: Path | None = None) -> None:
    """Tell a supervisor (or a test) the gateway is ready: JSON, written atomically."""
    facts = {
        "pid": os.getpid(),
        "socket": str(config.socket_path),
        "store": str(config.store_path),
        "state_dir": str(state_dir or config.state_dir),
    }
    try:
        write_atomically(path, json.dumps(facts) + "\n", 0o644)
    except OSError as exc:  # its directory checked at start, and removed since
        raise GatewayError(f"could not write the ready file {path}: {exc.strerror}") from None


async def serve(
    config: GatewayConfig, exchange: ExchangeSession, ready_file: Path | None = None
) -> None:
    """Run the gateway in the foreground until SIGINT, SIGTERM or SIGHUP, then stop it
    cleanly."""
    from gateway.service import run_gateway  # noqa: PLC0415 - see the note at the top

    ready = partial(write_ready_file, ready_file, config) if ready_file is not None else None
    await _serve_until_signalled(partial(run_gateway, config, exchange), ready)


async def _serve_until_signalled(
    start: Callable[..., Awaitable[object]], ready: Callable[[], None] | None
) -> None:
    """Start a service (``started()`` hands over its ``stop`` and ``stopped`` events) and stop
    it cleanly on SIGINT or SIGTERM, or SIGHUP: a closed terminal (an ssh session that
    drops) sends that, whose default action ends the process mid-write.

    Signals stay caught until the service has stopped: a second one during the
    shutdown is logged, not allowed to kill the process half-way.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(start)
            if ready is not None:
                ready()

            async def stop_on_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if running.stop.is_set():
                        logger.info("received %s: already stopping", name)
                    else:
                        logger.info("received %s: shutting down", name)
                        running.stop.set()

            nursery.start_soon(stop_on_signals)
            await running.stopped.wait()
            nursery.cancel_scope.cancel()


# -- subcommands ---------------------------------------------------------------------


def _run_config(args: argparse.Namespace) -> GatewayConfig:
    return GatewayConfig.from_env(
        file=args.config,
        exchange=args.exchange,
        strategy_count=args.strategy_count,
        reconcile_interval_s=args.reconcile_interval,
        recheck_s=args.recheck_interval,
        shm_dir=args.shm_dir,
        run_dir=args.run_dir,
        state_root=args.state_dir,
        metrics_port=args.metrics_port,
        rest_url=args.rest_url,
        ws_url=args.ws_url,
        exchange_settings=registry.adapter(
            args.exchange or registry.DEFAULT_EXCHANGE
        ).settings_from_args(args),
        rebind_account=args.rebind_account,
        fresh_state=args.fresh_state,
        replicate=args.replicate,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    adapter = registry.adapter(args.exchange or registry.DEFAULT_EXCHANGE)
    credentials = adapter.credentials(os.environ)  # first: nothing runs without them
    config = _run_config(args)
    # Before the session reads its nonce mark there, and the service its journal.
    make_own_dir(config.state_dir, 0o700, "state directory", "HFT_STATE_DIR")

    async def main() -> None:
        async with adapter.open_session(config, credentials) as session:
            await serve(config, session, args.ready_file)

    trio.run(main)
    return 0


def _cmd_mirror(args: argparse.Namespace) -> int:
    from gateway.replication.mirror import (  # noqa: PLC0415 - the Redis client: only here
        mirror_state_dir,
        run_mirror,
    )

    config = GatewayConfig.from_env(
        exchange=args.exchange,
        shm_dir=args.shm_dir,
        run_dir=args.run_dir,
        state_root=args.state_dir,
    )
    make_own_dir(mirror_state_dir(config), 0o700, "state directory", "HFT_STATE_DIR")
    ready = partial(write_ready_file, args.ready_file, config, mirror_state_dir(config))

    async def main() -> None:
        await _serve_until_signalled(
            partial(run_mirror, config, args.source, command_timeout_s=args.command_timeout),
            ready if args.ready_file else None,
        )

    trio.run(main)
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    return registry.adapter(args.exchange).run_simulator(args)


def _client(args: argparse.Namespace) -> IPCCommandSystem:
    system = IPCCommandSystem("gateway-cli", run_dir=args.run_dir, timeout_s=args.timeout)
    system.start()
    return system


def _cmd_cmd(args: argparse.Namespace) -> int:
    # Our own id, so that a timeout can say which one to resend.
    request_id = args.request_id or f"cli-{uuid.uuid4().hex[:16]}"
    try:
        payload = strategy_balance(
            strategy=args.strategy,
            cmd=args.action,
            currency=args.currency,
            index=args.index,
            amount=args.amount,
            delta=args.delta,
            request_id=request_id,
            ref_id=args.ref_id,
        )
    except ValueError as exc:
        raise SystemExit(f"gateway cmd: {exc}") from None
    system = _client(args)
    try:
        reply = system.send_command_blocking(
            f"{args.exchange}_gateway", STRATEGY_BALANCE_CMD, payload
        )
    except CommandRefusedError as exc:
        print(json.dumps(exc.reply))
        raise SystemExit(f"gateway cmd: refused: {exc}") from None
    except CommandError as exc:
        if exc.request_id is None:
            raise
        what = (
            f"no reply within {args.timeout:g} s"
            if isinstance(exc, CommandTimeoutError)
            else "the connection was lost before the reply"
        )
        raise SystemExit(
            f"gateway cmd: {what}: the {args.action} may have been applied; run the same "
            f"command with --request-id {exc.request_id} to find out (it is applied at most once)"
        ) from None
    finally:
        system.close()
    print(json.dumps(reply))
    return 0


# A failing REST alone is a warning: fills still arrive and commands are durable.
UNHEALTHY_CONDITIONS: Final = (
    Condition.FEED_DOWN
    | Condition.JOURNAL_DOWN
    | Condition.OVERDRAWN
    | Condition.OUT_OF_RANGE
    | Condition.SOURCE_STALE
)


def _plain(value: object) -> str:
    """A value as an operator reads it: no Python reprs."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(map(_plain, value)) if value else "none"
    if isinstance(value, Mapping):
        if not value:
            return "none"
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    return str(value)


def report_lines(report: Mapping[str, object], indent: str = "") -> list[str]:
    """Aligned ``key: value`` lines; a nested section is indented under its name."""
    width = max((len(str(k)) for k in report), default=0) + 1
    lines = []
    for key, value in report.items():
        if isinstance(value, Mapping) and value and indent == "":
            lines.append(f"{key}:")
            lines.extend(report_lines(value, indent + "  "))
        else:
            lines.append(f"{indent}{f'{key}:':<{width}} {_plain(value)}")
    return lines


def _cmd_status(args: argparse.Namespace) -> int:
    """Health from both sides: the store's header and the gateway's own status reply."""
    report: dict[str, object] = {"exchange": args.exchange}
    healthy = True
    try:
        with StoreReader(store_path(args.exchange, args.shm_dir)) as reader:
            writer = reader.writer_status()
        report["writer"] = {
            "health": writer.health.value,
            "pid": writer.pid,
            "generation": writer.generation,
            "heartbeat_age_s": round(writer.heartbeat_age_s, 3),
            "conditions": [c.name for c in Condition if c in writer.conditions],
        }
        healthy = writer.health is WriterHealth.LIVE and not (
            writer.conditions & UNHEALTHY_CONDITIONS
        )
    except StoreError as exc:
        report["writer"] = {"health": "absent", "error": str(exc)}
        healthy = False
    system = _client(args)
    try:
        reply = system.send_command_blocking(
            f"{args.exchange}_gateway", STRATEGY_BALANCE_CMD, {"cmd": "status"}
        )
        report["gateway"] = reply.get("status")
    except CommandError as exc:
        report["gateway"] = {"error": str(exc)}
        healthy = False
    finally:
        system.close()
    report["healthy"] = healthy
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(report_lines(report)))
    if not healthy:
        raise SystemExit(f"gateway status: {args.exchange} gateway is not healthy")
    return 0


def _cmd_balances(args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415 - see the note at the top
    from rich.live import Live  # noqa: PLC0415

    from gateway.view import gather, render, render_panel  # noqa: PLC0415

    path = store_path(args.exchange, args.shm_dir)
    system = IPCCommandSystem("gateway-view", run_dir=args.run_dir, timeout_s=0.5)
    system.start()
    service = f"{args.exchange}_gateway"
    # Piped, nothing is cut to a pretend 80 columns: the tables take the room they need.
    console = Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
    try:
        with StoreReader(path) as reader:
            if args.json:
                print(json.dumps(gather(reader, system, service).as_json(), indent=2))
                return 0
            if not args.watch:
                state = gather(reader, system, service)
                console.print(render(state, console.width, floats=args.floats))
                return 0
            with Live(console=console, refresh_per_second=8) as live:
                while True:
                    state = gather(reader, system, service)
                    live.update(render_panel(state, str(path), console.width, floats=args.floats))
                    time.sleep(args.interval)
    except StoreError as exc:
        raise SystemExit(f"gateway balances: {exc}") from None
    except KeyboardInterrupt:
        return 0
    finally:
        system.close()


def _cmd_journal(args: argparse.Namespace) -> int:
    """Verify the saved state, or salvage it after damage (an explicit operator decision)."""
    from gateway import journal_repair  # noqa: PLC0415 - see the note at the top
    from gateway.journal import lock_state_dir  # noqa: PLC0415

    state_root = args.state_dir or default_state_dir(os.environ)
    directory = state_root / args.exchange
    if not directory.is_dir():
        raise SystemExit(f"gateway journal: no state directory {directory}")
    if args.action == "verify":
        health = journal_repair.verify(directory)
        print("\n".join(health.lines()))
        if health.damaged:
            raise SystemExit(
                f"gateway journal: {directory} is damaged; the gateway refuses it until "
                "`gateway journal salvage` (stop the gateway first)"
            )
        print("sound: the gateway can start on it")
        return 0
    # Refused while a gateway runs: its store's lock, and its state directory's (a
    # gateway whose store is elsewhere, or whose lock file vanished from /dev/shm).
    with writer_lock(store_path(args.exchange, args.shm_dir)):
        state_lock = lock_state_dir(directory)
        try:
            report = journal_repair.salvage(directory)
        finally:
            os.close(state_lock)
    print(
        f"kept {report.kept} sound records, lost {report.lost_bytes} bytes; originals set "
        f"aside as {', '.join(p.name for p in report.set_aside)}; account in {report.record}"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo  # noqa: PLC0415 - see the note at the top

    exchanges = EXCHANGES if args.exchange == "all" else (args.exchange,)
    return run_demo(args.duration, exchanges=exchanges)


# -- parser ----------------------------------------------------------------------------


RUN_EPILOG: Final = """\
credentials (never flags, so they stay out of ps and shell history):
{credentials}
directories:
  HFT_SHM_DIR    the store file (default /dev/shm)
  HFT_STATE_DIR  journal, snapshots, nonces (default ~/.local/state/hft)
  HFT_RUN_DIR    the command socket (default /tmp/hft-<uid>)
docs/operations.md has the TOML keys, a systemd unit and what each condition means."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gateway", description="Balance gateway")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="debug also prints the traceback of a failure (info)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one object per line on stderr, for log shippers (text)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def where(p: argparse.ArgumentParser, *, timeout: bool = True) -> None:
        p.add_argument(
            "--exchange", default=DEFAULT_EXCHANGE, choices=EXCHANGES, help=EXCHANGE_HELP
        )
        p.add_argument(
            "--run-dir", type=Path, default=None, help="the socket's directory ($HFT_RUN_DIR)"
        )
        p.add_argument(
            "--shm-dir", type=Path, default=None, help="the store's directory ($HFT_SHM_DIR)"
        )
        if timeout:
            p.add_argument(
                "--timeout", type=_seconds, default=5.0, help="seconds to wait for a reply (5)"
            )

    run = sub.add_parser(
        "run",
        help="run the gateway in the foreground",
        description="Run the gateway in the foreground until SIGINT or SIGTERM.",
        epilog=RUN_EPILOG.format(
            credentials="\n".join(
                f"  {a.key_variable}, {a.secret_variable}  {a.name}'s API key and its secret"
                for a in registry.ADAPTERS.values()
            )
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where(run, timeout=False)
    run.set_defaults(exchange=None)
    run.add_argument(
        "--strategy-count", type=int, default=None, help="slots per currency, 2..1024 (8)"
    )
    run.add_argument(
        "--reconcile-interval", type=float, default=None, help="seconds between REST checks (60)"
    )
    run.add_argument(
        "--recheck-interval", type=float, default=None, help="seconds before a recheck (3)"
    )
    run.add_argument(
        "--state-dir", type=Path, default=None, help="journal and snapshots ($HFT_STATE_DIR)"
    )
    run.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus on 127.0.0.1:PORT"
    )
    run.add_argument("--config", type=Path, default=None, help="a TOML file (docs/operations.md)")
    defaults = registry.adapter(registry.DEFAULT_EXCHANGE)
    run.add_argument("--rest-url", default=None, help=f"the REST API ({defaults.rest_url})")
    run.add_argument("--ws-url", default=None, help=f"the private websocket ({defaults.ws_url})")
    run.add_argument(
        "--ready-file",
        type=_ready_file,
        default=None,
        help="written once ready: JSON with pid, socket, store and state_dir",
    )
    run.add_argument(
        "--rebind-account",
        action="store_true",
        help="the state directory's account has a new API key: bind the state to this key",
    )
    run.add_argument(
        "--fresh-state",
        action="store_true",
        help="set the state directory aside (renamed, kept) and start with empty slots",
    )
    run.add_argument(
        "--replicate",
        default=None,
        metavar="URL",
        help="also publish the journal to Redis for mirrors (redis://HOST:PORT/DB, rediss://...)",
    )
    run.set_defaults(handler=_cmd_run)

    mirror = sub.add_parser(
        "mirror",
        help="a local copy of a gateway on another host, through Redis",
        description=(
            "Keep this host's store of an exchange in step with a gateway that runs with "
            "--replicate, and forward this host's commands to it."
        ),
    )
    where(mirror, timeout=False)
    mirror.add_argument(
        "--source", required=True, metavar="URL", help="the Redis the gateway publishes to"
    )
    mirror.add_argument(
        "--state-dir", type=Path, default=None, help="the mirror's copy ($HFT_STATE_DIR)"
    )
    mirror.add_argument(
        "--ready-file",
        type=_ready_file,
        default=None,
        help="written once ready: pid, socket, store",
    )
    mirror.add_argument(
        "--command-timeout",
        type=_seconds,
        default=5.0,
        help="seconds a forwarded command waits for the gateway before OUTCOME_UNKNOWN (5)",
    )
    mirror.set_defaults(handler=_cmd_mirror)

    sim = sub.add_parser("sim", help="run an exchange's simulator on loopback")
    sim.add_argument("--exchange", default=DEFAULT_EXCHANGE, choices=EXCHANGES, help=EXCHANGE_HELP)
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sim.add_argument("--port", type=int, default=0, help="REST port (0: any free one)")
    sim.add_argument("--ws-port", type=int, default=0, help="WS port (0: any free one)")
    sim.add_argument(
        "--ws-tls",
        type=Path,
        default=None,
        metavar="PEM",
        help="serve wss:// with this certificate chain and key (PEM); the gateway must trust "
        "its authority (SSL_CERT_FILE)",
    )
    sim.add_argument("--api-key", default=None, help="the key it accepts (default: a new one)")
    sim.add_argument(
        "--api-secret", default=None, help="its private key, base64 (default: a new one)"
    )
    sim.add_argument(
        "--balances", default=None, help='starting balances, JSON: \'{"USD": 1000, "BTC": 1}\''
    )
    sim.add_argument(
        "--ready-file", type=_ready_file, default=None, help="written once listening: URLs and keys"
    )
    sim.add_argument("--latency-ms", type=float, default=0.0, help="REST round trip added")
    sim.add_argument("--jitter-ms", type=float, default=0.0, help="random extra, per request")
    for adapter in registry.ADAPTERS.values():  # each exchange's own options
        adapter.add_arguments(run, sim)
    sim.set_defaults(handler=_cmd_sim)

    cmd = sub.add_parser(
        "cmd",
        help="send one allocate / release / adjust command",
        description="Send one command; an ok means it is journalled and fsynced.",
    )
    where(cmd)
    cmd.add_argument("action", choices=["allocate", "release", "adjust"], help="the command")
    cmd.add_argument("--strategy", required=True, help="the strategy's name")
    cmd.add_argument("--currency", required=True, help="e.g. usd, btc (any case)")
    how_much = cmd.add_mutually_exclusive_group(required=True)
    how_much.add_argument("--amount", type=_amount, help="the amount (allocate, release)")
    how_much.add_argument("--delta", type=_amount, help="the signed change (adjust)")
    cmd.add_argument("--index", required=True, type=int, help="the slot: 2.. (0 for adjust)")
    cmd.add_argument(
        "--request-id",
        default=None,
        help="to resend a command safely: one id is applied at most once (default: a new id)",
    )
    cmd.add_argument(
        "--ref-id", default=None, help="adjust only: the exchange's reference of the transfer"
    )
    cmd.set_defaults(handler=_cmd_cmd)

    status = sub.add_parser("status", help="health of the running gateway (exit 0 if healthy)")
    where(status)
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    status.set_defaults(handler=_cmd_status)

    balances = sub.add_parser("balances", help="read-only view of the shared memory")
    where(balances)
    balances.add_argument("--watch", action="store_true", help="redraw until Ctrl-C")
    balances.add_argument(
        "--interval", type=_seconds, default=0.2, help="seconds between redraws (0.2)"
    )
    balances.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    balances.add_argument(
        "--floats", action="store_true", help="also show the float each reader gets"
    )
    balances.set_defaults(handler=_cmd_balances)

    journal = sub.add_parser("journal", help="verify or salvage the saved state")
    journal.add_argument("action", choices=["verify", "salvage"], help="what to do")
    journal.add_argument(
        "--exchange", default=DEFAULT_EXCHANGE, choices=EXCHANGES, help=EXCHANGE_HELP
    )
    journal.add_argument(
        "--state-dir", type=Path, default=None, help="journal and snapshots ($HFT_STATE_DIR)"
    )
    journal.add_argument(
        "--shm-dir", type=Path, default=None, help="the store's directory ($HFT_SHM_DIR)"
    )
    journal.set_defaults(handler=_cmd_journal)

    demo = sub.add_parser("demo", help="simulator + gateway + live view (Ctrl-C stops)")
    demo.add_argument(
        "--duration",
        type=_seconds,
        default=None,
        help="run headless this long, then print a summary",
    )
    demo.add_argument(
        "--exchange",
        default=DEFAULT_EXCHANGE,
        choices=[*EXCHANGES, "all"],
        help=f"which exchange, or all of them side by side ({DEFAULT_EXCHANGE})",
    )
    demo.set_defaults(handler=_cmd_demo)
    return parser


REPORTED: Final = (GatewayError, StoreLockedError, CommandError, StoreError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level, args.log_format)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except REPORTED as exc:
        logger.debug("the failure's traceback", exc_info=exc)
        raise SystemExit(f"gateway {args.command}: {exc}") from None
    except BaseExceptionGroup as group:
        # Trio's nurseries wrap a task's failure; one known failure is still one line.
        leaf = only_leaf(group)
        if isinstance(leaf, REPORTED):
            logger.debug("the failure's traceback", exc_info=group)
            raise SystemExit(f"gateway {args.command}: {leaf}") from None
        raise


if __name__ == "__main__":
    sys.exit(main())
