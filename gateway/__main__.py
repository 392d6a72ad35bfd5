"""Command line of the balance gateway (console script ``gateway``).

Every command exits non-zero with a one-line reason on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Final

import trio
from rich.console import Console
from rich.live import Live

from clients import CommandError, CommandRefusedError, StoreError, WriterHealth
from clients.command import KRAKEN_STRATEGY_BALANCE_CMD, IPCCommandSystem, kraken_strategy_balance
from gateway import journal_repair
from gateway.config import GatewayConfig, default_state_dir
from gateway.demo import run_demo
from gateway.errors import GatewayError, only_leaf
from gateway.exchanges.kraken.ratelimit import DEFAULT_TIER, TIERS, tier_named
from gateway.exchanges.kraken.rest import KRAKEN_REST_URL, KrakenRestClient
from gateway.exchanges.kraken.session import KRAKEN_WS_URL, KrakenSession
from gateway.exchanges.kraken.signing import NonceSource
from gateway.service import ExchangeSession, run_gateway
from gateway.sim.exchange import SimExchange
from gateway.sim.server import PERMISSIONS as SIM_PERMISSIONS
from gateway.sim.server import SimRules, Simulator, run_simulator
from gateway.view import gather, render, render_panel
from mmapstore import Condition, StoreLockedError, StoreReader, store_path, writer_lock

logger = logging.getLogger("gateway")

EXCHANGES: Final = ("kraken",)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request is noise at info; failures surface as our own warnings.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def write_ready_file(path: Path, config: GatewayConfig) -> None:
    """Tell a supervisor (or a test) the gateway is ready: JSON, written atomically."""
    facts = {
        "pid": os.getpid(),
        "socket": str(config.socket_path),
        "store": str(config.store_path),
        "state_dir": str(config.state_dir),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(facts) + "\n")
    tmp.replace(path)


async def serve(
    config: GatewayConfig, exchange: ExchangeSession, ready_file: Path | None = None
) -> None:
    """Run the gateway in the foreground until SIGINT or SIGTERM, then stop it cleanly.

    Signals stay caught until the gateway has stopped: a second one during the
    shutdown is logged, not allowed to kill the process half-way.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(run_gateway, config, exchange)
            if ready_file is not None:
                write_ready_file(ready_file, config)

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
        kraken_tier=args.kraken_tier,
        rebind_account=args.rebind_account,
        fresh_state=args.fresh_state,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    api_key = os.environ.get("KRAKEN_API_KEY", "")
    api_secret = os.environ.get("KRAKEN_API_SECRET", "")
    if not api_key or not api_secret:
        raise SystemExit(
            "gateway run: KRAKEN_API_KEY and KRAKEN_API_SECRET must be set "
            "(the gateway never runs without credentials)"
        )
    config = _run_config(args)

    async def main() -> None:
        nonces = NonceSource(config.state_dir / "kraken.nonce")
        async with KrakenRestClient(
            config.rest_url,
            api_key=api_key,
            api_secret=api_secret,
            nonces=nonces,
            tier=tier_named(config.kraken_tier),
        ) as rest:
            await serve(config, KrakenSession(rest, config.ws_url), args.ready_file)

    trio.run(main)
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    balances = None
    if args.balances:
        try:
            balances = {k: Decimal(str(v)) for k, v in json.loads(args.balances).items()}
        except (ValueError, ArithmeticError, AttributeError) as exc:
            raise SystemExit(f"gateway sim: --balances must be a JSON object: {exc}") from exc
    keys = {}
    if args.api_key:
        keys["api_key"] = args.api_key
    if args.api_secret:
        keys["api_secret"] = args.api_secret
    permissions = frozenset(p for p in args.permissions.split(",") if p)
    unknown = permissions - set(SIM_PERMISSIONS)
    if unknown:
        raise SystemExit(
            f"gateway sim: unknown permission(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(SIM_PERMISSIONS)}"
        )
    if args.latency_ms < 0 or args.jitter_ms < 0:
        raise SystemExit("gateway sim: --latency-ms and --jitter-ms must not be negative")
    rules = SimRules(
        latency_s=args.latency_ms / 1000,
        jitter_s=args.jitter_ms / 1000,
        tier=None if args.tier == "unlimited" else tier_named(args.tier),
        permissions=permissions,
    )
    simulator = Simulator(SimExchange.funded(balances, **keys), rules)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                address = await nursery.start(
                    partial(
                        run_simulator,
                        host=args.host,
                        port=args.port,
                        ws_port=args.ws_port,
                        ready_file=args.ready_file,
                    ),
                    simulator,
                )
                print(json.dumps(address.__dict__), flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return 0


def _client(args: argparse.Namespace) -> IPCCommandSystem:
    system = IPCCommandSystem("gateway-cli", run_dir=args.run_dir, timeout_s=args.timeout)
    system.start()
    return system


def _cmd_cmd(args: argparse.Namespace) -> int:
    payload = kraken_strategy_balance(
        strategy=args.strategy,
        cmd=args.action,
        currency=args.currency,
        index=args.index,
        amount=args.amount,
        request_id=args.request_id,
        ref_id=args.ref_id,
    )
    system = _client(args)
    try:
        reply = system.send_command_blocking(
            f"{args.exchange}_gateway", KRAKEN_STRATEGY_BALANCE_CMD, payload
        )
    except CommandRefusedError as exc:
        print(json.dumps(exc.reply))
        raise SystemExit(f"gateway cmd: refused: {exc}") from None
    finally:
        system.close()
    print(json.dumps(reply))
    return 0


# A failing REST alone is a warning: fills still arrive and commands are durable.
UNHEALTHY_CONDITIONS: Final = (
    Condition.FEED_DOWN | Condition.JOURNAL_DOWN | Condition.OVERDRAWN | Condition.OUT_OF_RANGE
)


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
            f"{args.exchange}_gateway", KRAKEN_STRATEGY_BALANCE_CMD, {"cmd": "status"}
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
        for key, value in report.items():
            print(f"{key}: {value}")
    if not healthy:
        raise SystemExit(f"gateway status: {args.exchange} gateway is not healthy")
    return 0


def _cmd_balances(args: argparse.Namespace) -> int:
    path = store_path(args.exchange, args.shm_dir)
    system = IPCCommandSystem("gateway-view", run_dir=args.run_dir, timeout_s=0.5)
    system.start()
    service = f"{args.exchange}_gateway"
    console = Console()
    try:
        with StoreReader(path) as reader:
            if not args.watch:
                console.print(render(gather(reader, system, service)))
                return 0
            with Live(console=console, refresh_per_second=8) as live:
                while True:
                    live.update(render_panel(gather(reader, system, service), str(path)))
                    time.sleep(args.interval)
    except StoreError as exc:
        raise SystemExit(f"gateway balances: {exc}") from None
    except KeyboardInterrupt:
        return 0
    finally:
        system.close()


def _cmd_journal(args: argparse.Namespace) -> int:
    """Verify the saved state, or salvage it after damage (an explicit operator decision)."""
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
    with writer_lock(store_path(args.exchange, args.shm_dir)):  # refused while it runs
        report = journal_repair.salvage(directory)
    print(
        f"kept {report.kept} sound records, lost {report.lost_bytes} bytes; originals set "
        f"aside as {', '.join(p.name for p in report.set_aside)}; account in {report.record}"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.duration)


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Balance gateway")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--exchange", default="kraken", choices=EXCHANGES)
        p.add_argument("--run-dir", type=Path, default=None, help="default: $HFT_RUN_DIR")
        p.add_argument("--shm-dir", type=Path, default=None, help="default: $HFT_SHM_DIR")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")

    run = sub.add_parser("run", help="run the gateway in the foreground")
    common(run)
    run.set_defaults(exchange=None)
    run.add_argument("--strategy-count", type=int, default=None)
    run.add_argument("--reconcile-interval", type=float, default=None, help="seconds (60)")
    run.add_argument("--recheck-interval", type=float, default=None, help="seconds (3)")
    run.add_argument("--state-dir", type=Path, default=None, help="default: $HFT_STATE_DIR")
    run.add_argument("--metrics-port", type=int, default=None, help="Prometheus on 127.0.0.1")
    run.add_argument("--config", type=Path, default=None, help="a TOML file (docs/operations.md)")
    run.add_argument("--rest-url", default=None, help=f"default {KRAKEN_REST_URL}")
    run.add_argument("--ws-url", default=None, help=f"default {KRAKEN_WS_URL}")
    run.add_argument(
        "--ready-file", type=Path, default=None, help="gets JSON (pid, socket, store) once ready"
    )
    run.add_argument(
        "--kraken-tier",
        default=None,
        choices=sorted(TIERS),
        help=f"the account's verification tier, which sets Kraken's API counter ({DEFAULT_TIER})",
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
    run.set_defaults(handler=_cmd_run)

    sim = sub.add_parser("sim", help="run the Kraken-compatible simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=0, help="REST port (0: any free one)")
    sim.add_argument("--ws-port", type=int, default=0, help="WS port (0: any free one)")
    sim.add_argument("--api-key", default=None)
    sim.add_argument("--api-secret", default=None)
    sim.add_argument("--balances", default=None, help='JSON, e.g. \'{"USD": 1000, "BTC": 1}\'')
    sim.add_argument("--ready-file", type=Path, default=None)
    sim.add_argument(
        "--tier",
        default=DEFAULT_TIER,
        choices=[*sorted(TIERS), "unlimited"],
        help=f"the API counter to enforce, as Kraken does per tier ({DEFAULT_TIER})",
    )
    sim.add_argument("--latency-ms", type=float, default=0.0, help="REST round trip added")
    sim.add_argument("--jitter-ms", type=float, default=0.0, help="random extra, per request")
    sim.add_argument(
        "--permissions",
        default=",".join(SIM_PERMISSIONS),
        help="the key's permissions, comma-separated (default: all)",
    )
    sim.set_defaults(handler=_cmd_sim)

    cmd = sub.add_parser("cmd", help="send one allocate / release / adjust command")
    common(cmd)
    cmd.add_argument("action", choices=["allocate", "release", "adjust"])
    cmd.add_argument("--strategy", required=True)
    cmd.add_argument("--currency", required=True)
    cmd.add_argument("--amount", required=True, type=Decimal)
    cmd.add_argument("--index", required=True, type=int)
    cmd.add_argument("--request-id", default=None)
    cmd.add_argument(
        "--ref-id", default=None, help="adjust only: the exchange's reference of the transfer"
    )
    cmd.set_defaults(handler=_cmd_cmd)

    status = sub.add_parser("status", help="health of the running gateway (exit 0 if healthy)")
    common(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_cmd_status)

    balances = sub.add_parser("balances", help="read-only view of the shared memory")
    common(balances)
    balances.add_argument("--watch", action="store_true")
    balances.add_argument("--interval", type=float, default=0.2)
    balances.set_defaults(handler=_cmd_balances)

    journal = sub.add_parser("journal", help="verify or salvage the saved state")
    journal.add_argument("action", choices=["verify", "salvage"])
    journal.add_argument("--exchange", default="kraken", choices=EXCHANGES)
    journal.add_argument("--state-dir", type=Path, default=None, help="default: $HFT_STATE_DIR")
    journal.add_argument("--shm-dir", type=Path, default=None, help="default: $HFT_SHM_DIR")
    journal.set_defaults(handler=_cmd_journal)

    demo = sub.add_parser("demo", help="simulator + gateway + live view (Ctrl-C stops)")
    demo.add_argument(
        "--duration", type=float, default=None, help="run headless this long, then print a summary"
    )
    demo.set_defaults(handler=_cmd_demo)
    return parser


REPORTED: Final = (GatewayError, StoreLockedError, CommandError, StoreError)


def _only_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside nested groups, if there is exactly one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        current = pending.pop()
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    return leaves[0] if len(leaves) == 1 else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except REPORTED as exc:
        raise SystemExit(f"gateway {args.command}: {exc}") from None
    except BaseExceptionGroup as group:
        # Trio's nurseries wrap a task's failure; one known failure is still one line.
        leaf = only_leaf(group)
        if isinstance(leaf, REPORTED):
            raise SystemExit(f"gateway {args.command}: {leaf}") from None
        raise


if __name__ == "__main__":
    sys.exit(main())
