"""dicom-node: run | worker | check-config | route | echo | list | retry | discard | rebuild-ledger.

The only place that reads the environment. Start-up failures someone can act on (a bad config, a busy
port, unreadable TLS files, an unwritable folder, a damaged ledger, an unreachable database) end in
one line naming the file, key or port, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from dicom_node.config import DEFAULT_CONFIG, NodeConfig, load_config, redact_url, to_dict
from dicom_node.errors import ConfigError, StartupError
from dicom_node.ledger import Ledger
from dicom_node.ledger.db import LedgerSchemaError
from dicom_node.ledger_check import check_ledger
from dicom_node.logcontext import SeriesFilter
from dicom_node.nodelock import LockBusyError, NodeLock, node_running
from synth.seam import BackendLoadError

if TYPE_CHECKING:
    from dicom_node.ledger.schema import SelfCheckRecord

CONFIG_ENV = "DICOM_NODE_CONFIG"
EXIT_CONFIG = 2
EXIT_FAILURE = 1


def _setup_logging(level: str, debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SeriesFilter())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s [%(series)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)   # "job skipped" under load is not news
    logging.getLogger("alembic").setLevel(logging.WARNING)
    for name in ("httpx", "httpcore"):     # a line per STOW-RS request (ours say more); never their DEBUG detail
        logging.getLogger(name).setLevel(logging.WARNING)
    # pydicom logs every failed decoder attempt with a traceback, and its messages can quote element
    # values (patient data); the node reports the outcome itself, as a named reason. (Imported first:
    # importing pydicom sets its logger's level.)
    import pydicom.config

    pydicom.config.logger.setLevel(logging.DEBUG if debug else logging.CRITICAL)


def _load(args: argparse.Namespace) -> NodeConfig:
    path = Path(args.config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    cfg = load_config(path)
    if getattr(args, "port", None) is not None:
        cfg = dataclasses.replace(cfg, node=cfg.node.updated(port=args.port))
    return cfg


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.receive_only:
        cfg = dataclasses.replace(cfg, node=cfg.node.updated(process=False))
    return _run_node(cfg)


def _run_node(cfg: NodeConfig) -> int:
    from dicom_node.preflight import runtime_problems

    problems = runtime_problems(cfg, receive=cfg.node.roles.receive, process=cfg.node.roles.process,
                                check_ports_free=True, keep_created=True)
    for problem in problems:
        print(f"cannot start: {cfg.source}: {problem}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    lock = NodeLock(cfg.storage_dir, exclusive=False)   # held while we live: no ledger rebuild under us
    try:
        lock.acquire()
    except LockBusyError:
        raise StartupError(f"{lock.path} is held: a ledger rebuild is running on node.storage_dir {cfg.storage_dir}; "
                           "start the node when it has finished") from None
    except OSError as exc:
        raise StartupError(f"{lock.path}: cannot open it: {exc.strerror}") from exc
    try:
        _check_ledger(cfg)
        return _run_locked(cfg)
    finally:
        lock.release()


def _check_ledger(cfg: NodeConfig) -> None:
    check_ledger(database_url=cfg.database_url, storage_dir=cfg.storage_dir, config_source=cfg.source)


def _startup_failure(cfg: NodeConfig, exc: Exception) -> StartupError | None:
    """The one line for a start-up failure someone can act on; None for anything else (a bug: traceback)."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        text = str(exc.orig or exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return StartupError(f"database.url {redact_url(cfg.database_url)}: cannot open the ledger ({first})")
    if isinstance(exc, BackendLoadError):
        return StartupError(f"{exc.config_key}: {exc}")
    if isinstance(exc, OSError) and exc.filename:
        return StartupError(f"{exc.filename}: {exc.strerror}")
    return None


def _run_locked(cfg: NodeConfig) -> int:
    from dicom_node.app import Node, run_until_signalled

    try:
        node = Node(cfg)
    except Exception as exc:  # the start-up boundary: one line for what an administrator can fix
        failure = _startup_failure(cfg, exc)
        if failure is None:
            raise
        raise failure from exc
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    run_until_signalled(node, stop)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    cfg = _load(args)
    args_cfg = dataclasses.replace(cfg, node=cfg.node.updated(receive=False))
    return _run_node(args_cfg)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from dicom_node.preflight import database_problem, runtime_problems

    cfg = _load(args)
    running = cfg.storage_dir.is_dir() and node_running(cfg.storage_dir)
    problems = runtime_problems(cfg, receive=cfg.node.roles.receive, process=cfg.node.roles.process,
                                check_ports_free=not running, keep_created=False)
    if (db := database_problem(cfg)) is not None:
        problems.append(db)
    for problem in problems:
        print(f"config error: {cfg.source}: {problem}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    for deprecation in cfg.deprecations:
        print(f"warning: {cfg.source}: {deprecation}")
    note = " (a node is running on this storage_dir: its ports were not probed)" if running else ""
    print(f"# {cfg.source}: valid{note}")
    print(json.dumps(to_dict(cfg), indent=2))
    return 0


def _cmd_route(args: argparse.Namespace) -> int:
    from dicom_node.routecheck import dry_run

    cfg = _load(args)
    try:
        return dry_run(cfg, [Path(p) for p in args.paths], calling_ae=args.calling_ae, out=sys.stdout)
    except ValueError as exc:
        print(f"route: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _cmd_echo(args: argparse.Namespace) -> int:
    from dicom_node.config import DestinationSection
    from dicom_node.senders.dimse import echo

    cfg = _load(args)
    if args.host:
        targets = [DestinationSection("cli", args.aec, args.host, args.remote_port)]
    else:
        targets = [d for d in cfg.destinations if args.destination in (None, d.name)]
        if not targets:
            print(f"no destination named {args.destination!r} in {cfg.source}" if args.destination
                  else f"no [[destinations]] in {cfg.source}", file=sys.stderr)
            return EXIT_FAILURE
    failures = 0
    for dest in targets:
        started = time.monotonic()
        status = echo(dest, cfg.node.identity.ae_title, timeout_s=args.timeout)
        took_ms = (time.monotonic() - started) * 1000
        if status == 0:
            print(f"{dest.name}: {dest.ae_title}@{dest.host}:{dest.port} C-ECHO success ({took_ms:.0f} ms)")
        else:
            failures += 1
            what = "no association" if status is None else f"status 0x{status:04X}"
            print(f"{dest.name}: {dest.ae_title}@{dest.host}:{dest.port} C-ECHO failed ({what})")
    return EXIT_FAILURE if failures else 0


def _open_ledger(cfg: NodeConfig) -> Ledger:
    """The ledger for a command that does not serve: checked, never migrated (nor made afresh)."""
    from dicom_node.ledger import open_ledger

    _check_ledger(cfg)           # never make a fresh ledger over a damaged one
    return open_ledger(cfg.database_url, migrate=False)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from dicom_node.ledger import head_revision, open_engine, schema_revision, upgrade_schema

    cfg = _load(args)
    _check_ledger(cfg)
    engine = open_engine(cfg.database_url)
    before = schema_revision(engine)
    upgrade_schema(engine)
    print(f"{redact_url(cfg.database_url)}: schema {before or 'none'} -> {head_revision()}")
    return 0


def _cmd_rebuild_ledger(args: argparse.Namespace) -> int:
    from dicom_node.rebuild import RebuildError, rebuild_ledger

    cfg = _load(args)
    try:
        report = rebuild_ledger(cfg, now=time.time(), force=args.force)
    except RebuildError as exc:
        print(f"rebuild-ledger: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    total = sum(n for _, n in report.states)
    states = ", ".join(f"{n} {state}" for state, n in report.states) or "none"
    print(f"rebuilt ledger {report.database} from the spool: {total} series ({states}), "
          f"{report.instances} instances")
    if report.sends:
        print("sends: " + ", ".join(f"{dest} {state} {n}" for dest, state, n in report.sends))
    for path in report.moved_aside:
        print(f"old file kept as {path}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from dicom_node.ledger import queries

    ledger = _open_ledger(_load(args))
    try:
        rows, total = queries.list_series(ledger.engine, state=args.state, limit=args.limit)
    except ValueError as exc:                    # an unknown state or a limit out of range
        print(f"list: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return 0
    print(f"{'series':<64} {'state':<12} {'inst':>5} {'out':>5}  reason / sends; self-check")
    for r in rows:
        sends = ", ".join(f"{j.destination}={j.state}({j.attempts})" for j in r.sends)
        print(f"{r.series_uid:<64} {r.state:<12} {r.instance_count:>5} {r.derived_count:>5}  "
              f"{r.reason or sends}{_check_text(r.self_check)}")
    if total > len(rows):
        print(f"({len(rows)} of {total}; --limit shows more)")
    return 0


def _check_text(check: SelfCheckRecord | None) -> str:
    """`; <backend> <consistency> dB[, <lung bias> HU][, off-axis +<gain> dB]` of the volume that was written."""
    if check is None:
        return ""
    parts = [f"{check.backend} {check.consistency_db:.1f} dB"]
    if check.lung_bias_hu is not None:
        parts.append(f"lung {check.lung_bias_hu:+.1f} HU")
    if check.offaxis_psnr_db is not None and check.offaxis_bis_psnr_db is not None:
        parts.append(f"off-axis {check.offaxis_psnr_db - check.offaxis_bis_psnr_db:+.1f} dB vs BIS")
    return "; " + ", ".join(parts) + ("" if check.passed else f" (failed: {check.failure})")


def _cmd_action(args: argparse.Namespace) -> int:
    """retry | resend | discard, through dicom_node.admin (the web's actions do the same)."""
    from dicom_node import admin
    from dicom_node.spool import Spool

    cfg = _load(args)
    ledger = _open_ledger(cfg)
    try:
        done = admin.perform(ledger, Spool(cfg.storage_dir), args.command, args.series_uid, now=time.time(),
                             destinations=cfg.destination_names(), destination=getattr(args, "destination", None))
    except admin.AdminError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_FAILURE
    print(f"{args.series_uid}: {done.message}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-node", description="Thick-to-thin CT DICOM node")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--debug", action="store_true", help="also log pynetdicom's DIMSE detail")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help=f"TOML config (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})")
        return p

    run = with_config(sub.add_parser("run", help="receive, synthesize and send until SIGTERM"))
    run.add_argument("--port", type=int, help="override node.port")
    run.add_argument("--receive-only", action="store_true",
                     help="only receive and queue; `dicom-node worker` processes (shared database and storage)")
    run.set_defaults(func=_cmd_run)
    worker = with_config(sub.add_parser("worker", help="only synthesize and send (one per GPU; shared ledger)"))
    worker.set_defaults(func=_cmd_worker)
    check = with_config(sub.add_parser("check-config", help="validate and print the resolved config"))
    check.set_defaults(func=_cmd_check_config)
    rte = with_config(sub.add_parser("route", help="dry run: which rule each series under PATH... falls under"))
    rte.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders (searched recursively)")
    rte.add_argument("--calling-ae", help="the calling AE title to assume for CallingAE conditions")
    rte.set_defaults(func=_cmd_route)
    echo = with_config(sub.add_parser("echo", help="C-ECHO the configured destinations (or one host)"))
    echo.add_argument("--destination", help="only this destination name")
    echo.add_argument("--host", help="echo this host instead of the configured destinations")
    echo.add_argument("--remote-port", type=int, default=104)
    echo.add_argument("--aec", default="ANY-SCP", help="called AE title with --host")
    echo.add_argument("--timeout", type=float, default=10.0)
    echo.set_defaults(func=_cmd_echo)
    lst = with_config(sub.add_parser("list", help="series in the ledger with state, reason and sends"))
    lst.add_argument("--state", help="only series in this state")
    lst.add_argument("--limit", type=int, default=200)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_cmd_list)
    retry = with_config(sub.add_parser(
        "retry", help="re-queue a failed series, or process a rejected, no_rule or thin_series_exists one again"))
    retry.add_argument("series_uid")
    retry.set_defaults(func=_cmd_action)
    resend = with_config(sub.add_parser("resend", help="send a done or failed series' derived series again"))
    resend.add_argument("series_uid")
    resend.add_argument("--destination", help="only to this destination (default: every one it went to)")
    resend.set_defaults(func=_cmd_action)
    discard = with_config(sub.add_parser(
        "discard", help="remove a finished (done, failed, rejected, no_rule, thin_series_exists) series and its files"))
    discard.add_argument("series_uid")
    discard.set_defaults(func=_cmd_action)
    migrate = with_config(sub.add_parser("migrate", help="bring the ledger's schema up to date (the node also "
                                                         "does at start-up)"))
    migrate.set_defaults(func=_cmd_migrate)
    rebuild = with_config(sub.add_parser(
        "rebuild-ledger", help="make a new ledger from the spool when state.db is lost or damaged (nodes stopped)"))
    rebuild.add_argument("--force", action="store_true", help="rebuild even a ledger that passes its checks")
    rebuild.set_defaults(func=_cmd_rebuild_ledger)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.debug)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"cannot start: {exc}" if args.command in ("run", "worker") else f"{args.command}: {exc}",
              file=sys.stderr)
        return EXIT_FAILURE
    except LedgerSchemaError as exc:             # a read-only command on a ledger that needs `migrate`
        print(f"{args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return result
