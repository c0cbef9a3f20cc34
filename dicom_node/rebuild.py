"""`dicom-node rebuild-ledger`: a new ledger made from the spool, when state.db is lost or damaged.

What each series becomes is read by `rebuild_scan`; here the rows are written:

* rejected series stay `rejected` with their reason and detail;
* a synthesized series gets one send job per configured destination: `done` where a delivery record
  says the destination has it (it is not sent again), `pending` elsewhere (sent after the restart);
  the series is `done` when every destination has it, else `sending`;
* everything else is `receiving` with a fresh deadline (now + series.quiet_period_s): processed.

SQLite: the new ledger is built beside the old file and moved into place; the old `state.db` (and
its -wal/-shm) is moved aside as `state.db.damaged-<UTC time>` (`.replaced-` with --force on a sound
file), never deleted. PostgreSQL: the rows are written into an empty database only; a database that
holds series is refused. Either way no node may run meanwhile (`nodelock`).
"""

from __future__ import annotations

import datetime
import logging
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from dicom_node.config import NodeConfig, redact_url
from dicom_node.errors import NodeError
from dicom_node.ledger import InstanceRow, JobState, SendJobRow, SeriesRow, SeriesState, open_engine, upgrade_schema
from dicom_node.ledger.db import MIGRATION_LOCK
from dicom_node.ledger_check import ledger_problem, spool_work, sqlite_path
from dicom_node.nodelock import LockBusyError, NodeLock
from dicom_node.rebuild_scan import SeriesPlan, SpoolScan, scan_spool
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

SIDE_FILES = ("", "-wal", "-shm")       # a SQLite database and its WAL companions move together


class RebuildError(NodeError):
    """The ledger cannot be rebuilt as asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class RebuildReport:
    database: str                                  # the file, or the URL without its password
    moved_aside: tuple[Path, ...]
    states: tuple[tuple[str, int], ...]            # (series state, count)
    instances: int
    sends: tuple[tuple[str, str, int], ...]        # (destination, job state, count)
    warnings: tuple[str, ...]


def rebuild_ledger(cfg: NodeConfig, *, now: float, force: bool = False) -> RebuildReport:
    """Rebuild the ledger of `cfg` from its spool; raise RebuildError when it must not be done."""
    storage = cfg.storage_dir
    if not storage.is_dir():
        raise RebuildError(f"node.storage_dir {storage} does not exist: there is no spool to rebuild from")
    lock = NodeLock(storage, exclusive=True)
    try:
        lock.acquire()
    except LockBusyError:
        raise RebuildError(f"a node is running on {storage} ({lock.path} is held): stop every node that uses it "
                           "(run and worker), then rebuild") from None
    try:
        path = sqlite_path(cfg.database_url)
        if path is None:
            return _rebuild_server(cfg, now)
        return _rebuild_sqlite(cfg, path, now, force)
    finally:
        lock.release()


def _rebuild_sqlite(cfg: NodeConfig, path: Path, now: float, force: bool) -> RebuildReport:
    problem = ledger_problem(path, spool_work(cfg.storage_dir)) if path.exists() else "is missing"
    sound = not problem and path.stat().st_size > 0
    if sound and not force:
        raise RebuildError(f"ledger {path} passes its checks: rebuilding would lose its history (send attempts, "
                           "failed sends); add --force to rebuild anyway (the current file is kept)")
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    building = path.with_name(f"{path.name}.rebuilding-{stamp}")
    for suffix in SIDE_FILES:
        Path(f"{building}{suffix}").unlink(missing_ok=True)       # a rebuild cut short earlier
    scan = scan_spool(Spool(cfg.storage_dir))
    engine = open_engine(building)
    try:
        upgrade_schema(engine)                                     # creates the schema (Alembic)
        report = _write(engine, scan, cfg, now, str(path), require_empty=False)
    finally:
        engine.dispose()
    conn = sqlite3.connect(building)                               # fold the WAL in: one self-contained file
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    _fsync(building)
    moved = _move_aside(path, "replaced" if sound else "damaged", stamp)
    os.replace(building, path)
    _fsync(path.parent)
    logger.info("rebuilt ledger %s from the spool (it %s)", path,
                "was sound: --force" if sound else problem or "was empty")
    return RebuildReport(report.database, moved, report.states, report.instances, report.sends, report.warnings)


def _move_aside(path: Path, why: str, stamp: str) -> tuple[Path, ...]:
    moved = []
    for suffix in SIDE_FILES:
        source = Path(f"{path}{suffix}")
        if not source.exists():
            continue
        target = source.with_name(f"{source.name}.{why}-{stamp}")
        n = 1
        while target.exists():
            target, n = source.with_name(f"{source.name}.{why}-{stamp}-{n}"), n + 1
        os.replace(source, target)
        moved.append(target)
    return tuple(moved)


def _rebuild_server(cfg: NodeConfig, now: float) -> RebuildReport:
    shown = redact_url(cfg.database_url)
    try:
        engine = open_engine(cfg.database_url)
        try:
            upgrade_schema(engine)
            return _write(engine, scan_spool(Spool(cfg.storage_dir)), cfg, now, shown, require_empty=True)
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise RebuildError(f"database.url {shown}: {first}") from exc


def _job_rows(plan: SeriesPlan, destinations: list[str], now: float) -> list[SendJobRow]:
    assert plan.derived is not None
    have = {d.destination: d for d in plan.derived.delivered}
    jobs = []
    for name in destinations:
        done = have.get(name)
        if done is not None:
            jobs.append(SendJobRow(series_uid=plan.series_uid, destination=name, state=JobState.DONE, attempts=1,
                                   next_attempt_at=done.at, last_status="ok", last_error="",
                                   sent=done.sent or plan.derived.count, total=plan.derived.count,
                                   updated_at=done.at))
        else:
            jobs.append(SendJobRow(series_uid=plan.series_uid, destination=name, state=JobState.PENDING, attempts=0,
                                   next_attempt_at=now, last_status="", last_error="", sent=0,
                                   total=plan.derived.count, updated_at=now))
    return jobs


def _series_row(plan: SeriesPlan, state: SeriesState, cfg: NodeConfig, now: float, updated_at: float) -> SeriesRow:
    times = [i.mtime_ns / 1e9 for i in plan.instances] or [plan.outcome_at or now]
    receiving = state is SeriesState.RECEIVING
    derived = plan.derived
    return SeriesRow(
        series_uid=plan.series_uid, study_uid=plan.study_uid, state=state, reason=plan.reason, detail=plan.detail,
        instance_count=len(plan.instances), duplicate_count=0, generation=1, processed_generation=0 if receiving else 1,
        first_received_at=min(times), last_received_at=max(times),
        deadline_at=now + cfg.series.quiet_period_s if receiving else None, lease_owner=None, lease_expires_at=None,
        derived_series_uid=derived.series_uid if derived else "", derived_count=derived.count if derived else 0,
        synth_seconds=None, calling_ae="", updated_at=updated_at)


def _write(engine: Engine, scan: SpoolScan, cfg: NodeConfig, now: float, shown: str, *,
           require_empty: bool) -> RebuildReport:
    destinations = cfg.destination_names()
    states: Counter[str] = Counter()
    sends: Counter[tuple[str, str]] = Counter()
    warnings = list(scan.warnings)
    instances = 0
    with Session(engine) as s, s.begin():
        if engine.dialect.name == "postgresql":        # no node migrates while we fill it
            s.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
        if require_empty and (held := s.scalar(select(func.count()).select_from(SeriesRow))):
            raise RebuildError(f"database.url {shown} already holds {held} series: rebuild-ledger fills only an "
                               "empty database; restore a backup (pg_restore), or drop and create the database, "
                               "then run rebuild-ledger again")
        for plan in scan.series:
            state, updated_at, jobs = plan.state, now, []
            if plan.state is SeriesState.SENDING:
                jobs = _job_rows(plan, destinations, now)
                times = [plan.outcome_at or now] + [j.updated_at for j in jobs if j.state == JobState.DONE]
                updated_at = max(times)   # retention counts from when it was last delivered, as before
                if all(j.state == JobState.DONE for j in jobs):
                    state = SeriesState.DONE
            elif plan.state is SeriesState.REJECTED:
                updated_at = plan.outcome_at or now
            if plan.derived is not None:
                unknown = sorted({d.destination for d in plan.derived.delivered} - set(destinations))
                if unknown:
                    warnings.append(f"{plan.series_uid}: delivery records for destination(s) no longer configured: "
                                    f"{', '.join(unknown)}")
            s.add(_series_row(plan, state, cfg, now, updated_at))
            s.flush()                                   # the series row before its instances (foreign key)
            s.add_all(InstanceRow(series_uid=plan.series_uid, sop_uid=i.sop_uid, digest=i.digest, size=i.size,
                                  received_at=i.mtime_ns / 1e9, mtime_ns=i.mtime_ns) for i in plan.instances)
            s.add_all(jobs)
            instances += len(plan.instances)
            states[state.value] += 1
            for job in jobs:
                sends[(job.destination, job.state)] += 1
    return RebuildReport(shown, (), tuple(sorted(states.items())), instances,
                         tuple((d, st, n) for (d, st), n in sorted(sends.items())), tuple(warnings))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
