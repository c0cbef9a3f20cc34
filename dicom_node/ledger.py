"""The job ledger (SQLAlchemy): series and send-job state, persisted deadlines, leases, backoff.

SQLite (WAL, every write transaction BEGIN IMMEDIATE) by default; the same statements run on
PostgreSQL. Claims are conditional UPDATEs checked by row count, so two workers never take one job.
Pixel data stays in files (see `spool`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from dicom_node.spool import StoredInstance

logger = logging.getLogger(__name__)


class SeriesState(enum.StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"            # quiet period over; waiting for the synth worker
    SYNTHESIZING = "synthesizing"
    SENDING = "sending"
    DONE = "done"
    REJECTED = "rejected"            # cannot be processed as received; kept with its reason
    FAILED = "failed"                # processed, but some destination never took it


class JobState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


TERMINAL = (SeriesState.DONE, SeriesState.REJECTED, SeriesState.FAILED)


class Base(DeclarativeBase):
    pass


class SeriesRow(Base):
    __tablename__ = "series"
    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    duplicate_count: Mapped[int] = mapped_column(Integer, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    processed_generation: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[float] = mapped_column(Float)
    last_received_at: Mapped[float] = mapped_column(Float)
    deadline_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    derived_series_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    derived_count: Mapped[int] = mapped_column(Integer, default=0)
    synth_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    updated_at: Mapped[float] = mapped_column(Float)


class InstanceRow(Base):
    __tablename__ = "instances"
    series_uid: Mapped[str] = mapped_column(ForeignKey("series.series_uid"), primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[float] = mapped_column(Float)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, default=0)   # of the spool file, to reconcile after a crash


class RefusedRow(Base):
    """An instance refused for lack of space (0xA700) and not stored since: its series waits for it."""

    __tablename__ = "refused_instances"
    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    refused_at: Mapped[float] = mapped_column(Float, index=True)


class SendJobRow(Base):
    __tablename__ = "send_jobs"
    __table_args__ = (UniqueConstraint("series_uid", "destination"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    series_uid: Mapped[str] = mapped_column(ForeignKey("series.series_uid"), index=True)
    destination: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_status: Mapped[str] = mapped_column(String(32), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    sent: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)


class RecordOutcome(enum.StrEnum):
    NEW = "new"                  # first copy of this instance
    DUPLICATE = "duplicate"      # same SOP Instance UID and same bytes as held
    CHANGED = "changed"          # same SOP Instance UID, different bytes


@dataclass(frozen=True, slots=True)
class SeriesClaim:
    series_uid: str
    study_uid: str
    generation: int
    refused: int = 0          # instances refused (0xA700) and never sent again, after the wait ran out


@dataclass(frozen=True, slots=True)
class SendClaim:
    job_id: int
    series_uid: str
    destination: str
    derived_series_uid: str
    attempts: int


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial_s: float
    max_s: float
    max_attempts: int

    def delay_s(self, attempts: int) -> float:
        """Delay before attempt `attempts + 1`, after `attempts` failures (≥ 1)."""
        return float(min(self.max_s, self.initial_s * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    series_uid: str
    state: str
    reason: str
    detail: str
    instance_count: int
    derived_series_uid: str
    derived_count: int
    synth_seconds: float | None
    sends: tuple[tuple[str, str, int, str], ...]     # (destination, state, attempts, last_status)


def open_engine(url_or_path: str | Path) -> Engine:
    """An engine for a database URL, or for a SQLite file path (WAL, immediate write transactions)."""
    url = str(url_or_path)
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{url}"
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None          # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")   # writers queue instead of failing on upgrade

        return engine
    return create_engine(url, pool_pre_ping=True)


MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def upgrade_schema(engine: Engine) -> None:
    """Bring the database to the newest schema with Alembic (several processes may race: PostgreSQL locks)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(726172)")   # one migrator at a time
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Ledger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        upgrade_schema(engine)
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -- receiving ---------------------------------------------------------------------------
    def record_instance(self, stored: StoredInstance, now: float, quiet_s: float,
                        calling_ae: str = "") -> RecordOutcome:
        """Note one stored instance received at `now`; see `record_instances`."""
        return self.record_instances([(stored, now, calling_ae)], quiet_s)[0]

    def record_instances(self, batch: Sequence[tuple[StoredInstance, float, str]], quiet_s: float,
                         refusals: Sequence[tuple[str, str, float]] = ()) -> list[RecordOutcome]:
        """Note stored instances (each with its receive time and calling AE) in one transaction, and
        push each series' completion deadline forward.

        Re-send policy: identical bytes change nothing; a new or changed instance of a series that
        was already processed re-opens it (the derived series is rebuilt with the same UIDs).
        """
        outcomes: list[RecordOutcome] = []
        with self._tx() as s:
            series_uids = {stored.series_uid for stored, _, _ in batch}
            # Load the batch's rows once; the per-item gets below are then served from the session.
            list(s.scalars(select(SeriesRow).where(SeriesRow.series_uid.in_(series_uids))))
            list(s.scalars(select(InstanceRow).where(
                InstanceRow.series_uid.in_(series_uids),
                InstanceRow.sop_uid.in_({stored.sop_uid for stored, _, _ in batch}))))
            for stored, now, calling_ae in batch:
                outcomes.append(self._record_one(s, stored, now, quiet_s, calling_ae))
            for series_uid in series_uids:          # what was refused before has arrived now
                s.execute(delete(RefusedRow).where(RefusedRow.series_uid == series_uid, RefusedRow.sop_uid.in_(
                    {stored.sop_uid for stored, _, _ in batch if stored.series_uid == series_uid})))
            self._record_refusals(s, refusals, quiet_s)
        return outcomes

    @staticmethod
    def _record_refusals(s: Session, refusals: Sequence[tuple[str, str, float]], quiet_s: float) -> None:
        """Note instances refused for lack of space, as (series UID, SOP UID, when). Their series keeps
        receiving (its deadline moves on) until they arrive or `complete_due`'s wait for them runs out."""
        for series_uid, sop_uid, now in refusals:
            if s.get(InstanceRow, (series_uid, sop_uid)) is not None:
                continue                            # a re-send of what we hold: nothing is missing
            row = s.get(RefusedRow, (series_uid, sop_uid))
            if row is None:
                s.add(RefusedRow(series_uid=series_uid, sop_uid=sop_uid, refused_at=now))
            else:
                row.refused_at = now
            series = s.get(SeriesRow, series_uid)
            if series is not None and series.state in (SeriesState.RECEIVING, SeriesState.COMPLETE):
                series.state = SeriesState.RECEIVING
                series.deadline_at = max(series.deadline_at or 0.0, now + quiet_s)
                series.updated_at = now

    @staticmethod
    def _record_one(s: Session, stored: StoredInstance, now: float, quiet_s: float,
                    calling_ae: str) -> RecordOutcome:
        series = s.get(SeriesRow, stored.series_uid)
        inst = s.get(InstanceRow, (stored.series_uid, stored.sop_uid))
        if inst is not None and inst.digest == stored.digest:
            outcome = RecordOutcome.DUPLICATE
            inst.mtime_ns = stored.mtime_ns
        elif inst is not None:
            outcome = RecordOutcome.CHANGED
            inst.digest, inst.size, inst.received_at = stored.digest, stored.size, now
            inst.mtime_ns = stored.mtime_ns
        else:
            outcome = RecordOutcome.NEW
        if series is None:
            series = SeriesRow(series_uid=stored.series_uid, study_uid=stored.study_uid,
                               state=SeriesState.RECEIVING, first_received_at=now, last_received_at=now,
                               deadline_at=now + quiet_s, calling_ae=calling_ae, updated_at=now,
                               instance_count=0, duplicate_count=0, generation=0, processed_generation=0,
                               reason="", detail="", derived_series_uid="", derived_count=0)
            s.add(series)
            s.flush()                      # the series row before its instances (foreign key)
        if outcome is RecordOutcome.NEW:
            s.add(InstanceRow(series_uid=stored.series_uid, sop_uid=stored.sop_uid, digest=stored.digest,
                              size=stored.size, received_at=now, mtime_ns=stored.mtime_ns))
            series.instance_count += 1
        if outcome is RecordOutcome.DUPLICATE:
            series.duplicate_count += 1
        else:
            series.generation += 1
        series.last_received_at = max(series.last_received_at, now)
        series.updated_at = now
        if series.state == SeriesState.RECEIVING:
            series.deadline_at = max(series.deadline_at or 0.0, now + quiet_s)
        elif series.state == SeriesState.COMPLETE and outcome is not RecordOutcome.DUPLICATE:
            series.state, series.deadline_at = SeriesState.RECEIVING, now + quiet_s   # not started yet
        elif series.state in TERMINAL and outcome is not RecordOutcome.DUPLICATE:
            series.state, series.reason, series.detail = SeriesState.RECEIVING, "", ""
            series.deadline_at = now + quiet_s
        return outcome

    def instance_stamps(self, series_uids: Sequence[str] | None = None) -> dict[tuple[str, str], int]:
        """(series UID, SOP UID) → the spool file's mtime_ns when it was recorded (for reconciliation)."""
        with self._tx() as s:
            query = select(InstanceRow.series_uid, InstanceRow.sop_uid, InstanceRow.mtime_ns)
            if series_uids is not None:
                query = query.where(InstanceRow.series_uid.in_(series_uids))
            return {(str(a), str(b)): int(m) for a, b, m in s.execute(query)}

    def complete_due(self, now: float, refused_wait_s: float = 0.0) -> list[str]:
        """Series whose quiet period is over become `complete`; returns their UIDs. A series with an
        instance refused for lack of space less than `refused_wait_s` ago waits for it to be sent again."""
        with self._tx() as s:
            waiting = select(RefusedRow.series_uid).where(RefusedRow.refused_at > now - refused_wait_s)
            uids = list(s.scalars(select(SeriesRow.series_uid).where(
                SeriesRow.state == SeriesState.RECEIVING, SeriesRow.deadline_at <= now,
                SeriesRow.series_uid.not_in(waiting))))
            if uids:
                s.execute(update(SeriesRow).where(SeriesRow.series_uid.in_(uids),
                                                  SeriesRow.state == SeriesState.RECEIVING)
                          .values(state=SeriesState.COMPLETE, deadline_at=None, updated_at=now))
            return uids

    def next_deadline(self) -> float | None:
        with self._tx() as s:
            value: float | None = s.scalar(select(func.min(SeriesRow.deadline_at)).where(
                SeriesRow.state == SeriesState.RECEIVING))
            return value

    # -- synthesis ---------------------------------------------------------------------------
    def claim_series(self, owner: str, now: float, lease_s: float) -> SeriesClaim | None:
        with self._tx() as s:
            candidates = list(s.scalars(select(SeriesRow.series_uid).where(
                SeriesRow.state == SeriesState.COMPLETE).order_by(SeriesRow.last_received_at).limit(5)
                .with_for_update(skip_locked=True)))
            for uid in candidates:
                claimed = s.execute(update(SeriesRow).where(
                    SeriesRow.series_uid == uid, SeriesRow.state == SeriesState.COMPLETE).values(
                    state=SeriesState.SYNTHESIZING, lease_owner=owner, lease_expires_at=now + lease_s,
                    updated_at=now))
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    row = s.get(SeriesRow, uid)
                    assert row is not None
                    refused = s.scalar(select(func.count()).select_from(RefusedRow)
                                       .where(RefusedRow.series_uid == uid)) or 0
                    return SeriesClaim(uid, row.study_uid, row.generation, int(refused))
            return None

    def renew_owner(self, owner: str, now: float, lease_s: float) -> int:
        """Heartbeat: extend every lease `owner` holds (series and send jobs)."""
        with self._tx() as s:
            n = s.execute(update(SeriesRow).where(SeriesRow.lease_owner == owner).values(
                lease_expires_at=now + lease_s)).rowcount  # type: ignore[attr-defined]
            n += s.execute(update(SendJobRow).where(SendJobRow.lease_owner == owner).values(
                lease_expires_at=now + lease_s)).rowcount  # type: ignore[attr-defined]
            return int(n)

    def release_series(self, claim: SeriesClaim, owner: str, now: float) -> bool:
        """Give a claimed series back to the queue untouched (the machine failed, not the series)."""
        with self._tx() as s:
            released = s.execute(update(SeriesRow).where(
                SeriesRow.series_uid == claim.series_uid, SeriesRow.lease_owner == owner,
                SeriesRow.state == SeriesState.SYNTHESIZING).values(
                state=SeriesState.COMPLETE, lease_owner=None, lease_expires_at=None, updated_at=now))
            return bool(released.rowcount)  # type: ignore[attr-defined]

    def instance_sizes(self, series_uid: str) -> dict[str, int]:
        """SOP UID → size in bytes of every instance the ledger holds for a series."""
        with self._tx() as s:
            return {str(uid): int(size) for uid, size in s.execute(
                select(InstanceRow.sop_uid, InstanceRow.size).where(InstanceRow.series_uid == series_uid))}

    def reject_series(self, claim: SeriesClaim, owner: str, reason: str, detail: str, now: float) -> None:
        with self._tx() as s:
            row = s.get(SeriesRow, claim.series_uid)
            if row is None or row.lease_owner != owner:
                logger.warning("lost the lease on series %s before rejecting it", claim.series_uid)
                return
            row.state, row.reason, row.detail = SeriesState.REJECTED, reason, detail
            row.lease_owner = row.lease_expires_at = None
            row.processed_generation = claim.generation
            row.updated_at = now
            self._reopen_if_changed(row, now)

    def series_synthesized(self, claim: SeriesClaim, owner: str, derived_series_uid: str, derived_count: int,
                           destinations: list[str], synth_seconds: float, now: float) -> None:
        """Record the derived series and (re)create one pending send job per destination."""
        with self._tx() as s:
            row = s.get(SeriesRow, claim.series_uid)
            if row is None or row.lease_owner != owner:
                logger.warning("lost the lease on series %s before recording its result", claim.series_uid)
                return
            row.state = SeriesState.SENDING
            row.derived_series_uid, row.derived_count = derived_series_uid, derived_count
            row.synth_seconds = synth_seconds
            row.lease_owner = row.lease_expires_at = None
            row.processed_generation = claim.generation
            row.reason, row.detail, row.updated_at = "", "", now
            existing = {j.destination: j for j in s.scalars(
                select(SendJobRow).where(SendJobRow.series_uid == claim.series_uid))}
            for name in destinations:
                job = existing.get(name)
                if job is None:
                    s.add(SendJobRow(series_uid=claim.series_uid, destination=name, state=JobState.PENDING,
                                     attempts=0, next_attempt_at=now, total=derived_count, sent=0,
                                     last_status="", last_error="", updated_at=now))
                else:
                    job.state, job.attempts, job.next_attempt_at = JobState.PENDING, 0, now
                    job.total, job.sent, job.last_status, job.last_error = derived_count, 0, "", ""
                    job.lease_owner = job.lease_expires_at = None
                    job.updated_at = now
            s.flush()
            self._settle(s, row, now)

    # -- sending -----------------------------------------------------------------------------
    def claim_send(self, destination: str, owner: str, now: float, lease_s: float) -> SendClaim | None:
        with self._tx() as s:
            candidates = list(s.scalars(select(SendJobRow.id).where(
                SendJobRow.destination == destination, SendJobRow.state == JobState.PENDING,
                SendJobRow.next_attempt_at <= now).order_by(SendJobRow.next_attempt_at).limit(5)
                .with_for_update(skip_locked=True)))
            for job_id in candidates:
                claimed = s.execute(update(SendJobRow).where(
                    SendJobRow.id == job_id, SendJobRow.state == JobState.PENDING).values(
                    state=JobState.SENDING, lease_owner=owner, lease_expires_at=now + lease_s, updated_at=now))
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    job = s.get(SendJobRow, job_id)
                    assert job is not None
                    series = s.get(SeriesRow, job.series_uid)
                    assert series is not None
                    return SendClaim(job_id, job.series_uid, destination, series.derived_series_uid,
                                     job.attempts)
            return None

    def release_send(self, claim: SendClaim, owner: str, now: float) -> bool:
        """Give a claimed send job back without counting an attempt (our side failed, not the peer)."""
        with self._tx() as s:
            released = s.execute(update(SendJobRow).where(
                SendJobRow.id == claim.job_id, SendJobRow.lease_owner == owner,
                SendJobRow.state == JobState.SENDING).values(
                state=JobState.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now))
            return bool(released.rowcount)  # type: ignore[attr-defined]

    def next_send_due(self, destination: str) -> float | None:
        with self._tx() as s:
            value: float | None = s.scalar(select(func.min(SendJobRow.next_attempt_at)).where(
                SendJobRow.destination == destination, SendJobRow.state == JobState.PENDING))
            return value

    def send_finished(self, claim: SendClaim, owner: str, sent: int, status: str, error: str,
                      ok: bool, policy: BackoffPolicy, now: float) -> JobState:
        """Record one attempt; a failure is retried with backoff until the attempts run out."""
        with self._tx() as s:
            job = s.get(SendJobRow, claim.job_id)
            if job is None or job.lease_owner != owner:
                logger.warning("lost the lease on send job %s before recording it", claim.job_id)
                return JobState.PENDING
            job.attempts += 1
            job.sent, job.last_status, job.last_error = sent, status, error
            job.lease_owner = job.lease_expires_at = None
            job.updated_at = now
            if ok:
                job.state = JobState.DONE
            elif job.attempts >= policy.max_attempts:
                job.state = JobState.FAILED
            else:
                job.state = JobState.PENDING
                job.next_attempt_at = now + policy.delay_s(job.attempts)
            state = JobState(job.state)
            series = s.get(SeriesRow, job.series_uid)
            assert series is not None
            s.flush()
            self._settle(s, series, now)
            return state

    def _settle(self, s: Session, series: SeriesRow, now: float) -> None:
        states = list(s.scalars(select(SendJobRow.state).where(SendJobRow.series_uid == series.series_uid)))
        if series.state != SeriesState.SENDING or any(
                st in (JobState.PENDING, JobState.SENDING) for st in states):
            return
        failed = [st for st in states if st == JobState.FAILED]
        series.state = SeriesState.FAILED if failed else SeriesState.DONE
        series.reason = "send_failed" if failed else ""
        series.detail = f"{len(failed)} of {len(states)} destination(s) failed" if failed else ""
        series.updated_at = now
        self._reopen_if_changed(series, now)

    @staticmethod
    def _reopen_if_changed(series: SeriesRow, now: float) -> None:
        """Instances that arrived while the series was being processed: process it again."""
        if series.generation != series.processed_generation and series.state in TERMINAL:
            series.state, series.deadline_at, series.updated_at = SeriesState.RECEIVING, now, now

    # -- recovery and administration ---------------------------------------------------------
    def reclaim_expired(self, now: float, dead_owner_prefix: str | None = None) -> int:
        """Give work whose lease ran out (or whose owner is known dead) back to the queue."""
        with self._tx() as s:
            def lost(owner_col: Any, expires_col: Any) -> Any:
                cond = expires_col < now
                if dead_owner_prefix:
                    cond = cond | owner_col.startswith(dead_owner_prefix)
                return cond
            n = s.execute(update(SeriesRow).where(
                SeriesRow.state == SeriesState.SYNTHESIZING,
                lost(SeriesRow.lease_owner, SeriesRow.lease_expires_at)).values(
                state=SeriesState.COMPLETE, lease_owner=None, lease_expires_at=None, updated_at=now)).rowcount  # type: ignore[attr-defined]
            n += s.execute(update(SendJobRow).where(
                SendJobRow.state == JobState.SENDING,
                lost(SendJobRow.lease_owner, SendJobRow.lease_expires_at)).values(
                state=JobState.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now)).rowcount  # type: ignore[attr-defined]
            return int(n)

    def lease_owners(self) -> set[str]:
        with self._tx() as s:
            owners = set(s.scalars(select(SeriesRow.lease_owner).where(SeriesRow.lease_owner.is_not(None))))
            owners |= set(s.scalars(select(SendJobRow.lease_owner).where(SendJobRow.lease_owner.is_not(None))))
            return {o for o in owners if o}

    def release_owner(self, owner: str, now: float) -> int:
        return self.reclaim_expired(now, dead_owner_prefix=owner)

    def retry(self, series_uid: str, now: float) -> str:
        """Re-queue failed sends of a series, or re-process a rejected series. Returns what was done."""
        with self._tx() as s:
            row = s.get(SeriesRow, series_uid)
            if row is None:
                raise KeyError(f"no series {series_uid} in the ledger")
            if row.state == SeriesState.FAILED:
                jobs = list(s.scalars(select(SendJobRow).where(SendJobRow.series_uid == series_uid,
                                                               SendJobRow.state == JobState.FAILED)))
                for job in jobs:
                    job.state, job.attempts, job.next_attempt_at, job.updated_at = JobState.PENDING, 0, now, now
                row.state, row.reason, row.detail, row.updated_at = SeriesState.SENDING, "", "", now
                return f"re-queued {len(jobs)} failed send(s)"
            if row.state == SeriesState.REJECTED:
                row.state, row.reason, row.detail, row.updated_at = SeriesState.COMPLETE, "", "", now
                return "queued for processing again"
            raise ValueError(f"series {series_uid} is {row.state}; only failed or rejected series can be retried")

    def purge_done(self, finished_before: float) -> list[tuple[str, str]]:
        """Forget `done` series finished before the cutoff; returns (source, derived) UIDs to delete."""
        with self._tx() as s:
            rows = list(s.execute(select(SeriesRow.series_uid, SeriesRow.derived_series_uid).where(
                SeriesRow.state == SeriesState.DONE, SeriesRow.updated_at < finished_before)))
            uids = [r[0] for r in rows]
            if uids:
                s.execute(delete(SendJobRow).where(SendJobRow.series_uid.in_(uids)))
                s.execute(delete(RefusedRow).where(RefusedRow.series_uid.in_(uids)))
                s.execute(delete(InstanceRow).where(InstanceRow.series_uid.in_(uids)))
                s.execute(delete(SeriesRow).where(SeriesRow.series_uid.in_(uids)))
            return [(str(a), str(b)) for a, b in rows]

    def discard(self, series_uid: str) -> str:
        """An administrator's explicit removal of a failed or rejected series from the ledger."""
        with self._tx() as s:
            row = s.get(SeriesRow, series_uid)
            if row is None:
                raise KeyError(f"no series {series_uid} in the ledger")
            if row.state not in (SeriesState.FAILED, SeriesState.REJECTED, SeriesState.DONE):
                raise ValueError(f"series {series_uid} is {row.state}; only done, failed or rejected series "
                                 "can be discarded")
            derived = row.derived_series_uid
            s.execute(delete(SendJobRow).where(SendJobRow.series_uid == series_uid))
            s.execute(delete(RefusedRow).where(RefusedRow.series_uid == series_uid))
            s.execute(delete(InstanceRow).where(InstanceRow.series_uid == series_uid))
            s.delete(row)
            return derived

    def state_counts(self) -> dict[str, int]:
        with self._tx() as s:
            rows = s.execute(select(SeriesRow.state, func.count()).group_by(SeriesRow.state))
            return {str(state): int(n) for state, n in rows}

    def send_counts(self) -> dict[tuple[str, str], int]:
        with self._tx() as s:
            rows = s.execute(select(SendJobRow.destination, SendJobRow.state, func.count())
                             .group_by(SendJobRow.destination, SendJobRow.state))
            return {(str(d), str(state)): int(n) for d, state, n in rows}

    def resend(self, series_uid: str, now: float, destination: str | None = None) -> str:
        """Send a finished series' derived series again (to one destination or all)."""
        with self._tx() as s:
            row = s.get(SeriesRow, series_uid)
            if row is None:
                raise KeyError(f"no series {series_uid} in the ledger")
            if row.state not in (SeriesState.DONE, SeriesState.FAILED):
                raise ValueError(f"series {series_uid} is {row.state}; only done or failed series can be re-sent")
            query = select(SendJobRow).where(SendJobRow.series_uid == series_uid)
            if destination is not None:
                query = query.where(SendJobRow.destination == destination)
            jobs = list(s.scalars(query))
            if not jobs:
                raise ValueError(f"series {series_uid} has no send job for {destination or 'any destination'}")
            for job in jobs:
                job.state, job.attempts, job.next_attempt_at, job.updated_at = JobState.PENDING, 0, now, now
                job.last_status, job.last_error = "", ""
            row.state, row.reason, row.detail, row.updated_at = SeriesState.SENDING, "", "", now
            return f"re-queued {len(jobs)} send(s)"

    def is_derived_series(self, series_uid: str) -> bool:
        with self._tx() as s:
            return s.scalar(select(func.count()).select_from(SeriesRow).where(
                SeriesRow.derived_series_uid == series_uid)) != 0

    def summaries(self, limit: int = 200, series_uid: str | None = None) -> list[SeriesSummary]:
        with self._tx() as s:
            query = select(SeriesRow).order_by(SeriesRow.updated_at.desc()).limit(limit)
            if series_uid is not None:
                query = query.where(SeriesRow.series_uid == series_uid)
            rows = list(s.scalars(query))
            out = []
            for r in rows:
                jobs = s.scalars(select(SendJobRow).where(SendJobRow.series_uid == r.series_uid)
                                 .order_by(SendJobRow.destination))
                out.append(SeriesSummary(r.series_uid, r.state, r.reason, r.detail, r.instance_count,
                                         r.derived_series_uid, r.derived_count, r.synth_seconds,
                                         tuple((j.destination, j.state, j.attempts, j.last_status) for j in jobs)))
            return out

    def summary(self, series_uid: str) -> SeriesSummary | None:
        found = self.summaries(limit=1, series_uid=series_uid)
        return found[0] if found else None
