"""The ledger's one read model: typed views of series and send jobs, counts and throughput, used by
the dashboard and API, the metrics and `dicom-node list`.

On SQLite the dashboard reads through its own engine with `query_only` set and no `BEGIN IMMEDIATE`,
so a page load never takes the write lock the pipeline needs (WAL lets readers run beside writers).
On PostgreSQL it shares the ledger's engine.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.orm import Session

from dicom_node.ledger.schema import (
    TERMINAL,
    InstanceRow,
    JobState,
    SelfCheckRecord,
    SelfCheckRow,
    SendJobRow,
    SeriesRow,
    SeriesState,
)

ACTIVE_SEND_STATES = (JobState.PENDING, JobState.SENDING)
MAX_LIMIT = 1000
MAX_OFFSET = 10**9             # far beyond any ledger, far below SQLite's 64-bit integers
SERIES_STATES = tuple(s.value for s in SeriesState)
JOB_STATES = tuple(s.value for s in JobState)


@dataclass(frozen=True, slots=True)
class SendView:
    series_uid: str
    destination: str
    state: str
    attempts: int
    sent: int
    total: int
    last_status: str
    last_error: str
    next_attempt_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class SeriesView:
    series_uid: str
    study_uid: str
    state: str
    reason: str
    detail: str
    calling_ae: str
    instance_count: int
    duplicate_count: int
    first_received_at: float
    last_received_at: float
    updated_at: float
    deadline_at: float | None
    derived_series_uid: str
    derived_count: int
    synth_seconds: float | None
    sends: tuple[SendView, ...]
    rule: str = ""                            # the rule that routed it ("" without [[rules]])
    route_destinations: tuple[str, ...] = ()  # that rule's destinations (where sending goes)
    backend: str = ""                         # the synthesis backend that made (or was to make) it
    series_description: str = ""              # of the first instance: not patient data (PS3.15)
    convolution_kernel: str = ""
    slice_thickness_mm: float | None = None
    checks: tuple[SelfCheckRecord, ...] = ()  # the self-checks of its derived volumes, the one used first

    @property
    def self_check(self) -> SelfCheckRecord | None:
        """The self-check of the volume that became the derived series (None when none was written)."""
        return next((c for c in self.checks if c.used), None)

    @property
    def receive_seconds(self) -> float:
        return self.last_received_at - self.first_received_at

    @property
    def total_seconds(self) -> float | None:
        """From the first instance received to the last state change, once the series is finished."""
        if self.state in TERMINAL:
            return self.updated_at - self.first_received_at
        return None


@dataclass(frozen=True, slots=True)
class Throughput:
    window_s: float
    series_received: int
    instances_received: int
    series_done: int
    series_failed: int
    series_rejected: int
    derived_slices: int
    synth_median_s: float | None
    synth_max_s: float | None
    latency_median_s: float | None     # first instance received → done

    @property
    def series_per_hour(self) -> float:
        return self.series_done * 3600.0 / self.window_s


def read_engine(ledger_engine: Engine) -> Engine:
    """An engine for dashboard reads: a separate read-only one on a SQLite file, else the ledger's."""
    url = ledger_engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return ledger_engine
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA query_only=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return engine


def ping(engine: Engine) -> None:
    """Raise if the ledger's database does not answer."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _send_view(j: SendJobRow) -> SendView:
    return SendView(j.series_uid, j.destination, j.state, j.attempts, j.sent, j.total, j.last_status,
                    j.last_error, j.next_attempt_at, j.updated_at)


def _check_record(c: SelfCheckRow) -> SelfCheckRecord:
    return SelfCheckRecord(backend=c.backend, consistency_db=c.consistency_db, lung_bias_hu=c.lung_bias_hu,
                           passed=c.passed, used=c.used, failure=c.failure, offaxis_psnr_db=c.offaxis_psnr_db,
                           offaxis_bis_psnr_db=c.offaxis_bis_psnr_db, budget_s=c.budget_s, finetune_s=c.finetune_s)


def _series_view(r: SeriesRow, sends: list[SendJobRow], checks: list[SelfCheckRow]) -> SeriesView:
    return SeriesView(
        series_uid=r.series_uid, study_uid=r.study_uid, state=r.state, reason=r.reason, detail=r.detail,
        calling_ae=r.calling_ae, instance_count=r.instance_count, duplicate_count=r.duplicate_count,
        first_received_at=r.first_received_at, last_received_at=r.last_received_at, updated_at=r.updated_at,
        deadline_at=r.deadline_at, derived_series_uid=r.derived_series_uid, derived_count=r.derived_count,
        synth_seconds=r.synth_seconds, sends=tuple(_send_view(j) for j in sends), rule=r.rule,
        route_destinations=_names(r.destinations), backend=r.backend, series_description=r.series_description,
        convolution_kernel=r.convolution_kernel, slice_thickness_mm=r.slice_thickness_mm,
        checks=tuple(_check_record(c) for c in sorted(checks, key=lambda c: (not c.used, c.checked_at, c.backend))))


def _names(stored: str) -> tuple[str, ...]:
    """The destinations column: a JSON list of names ("" before any rule chose)."""
    try:
        names = json.loads(stored) if stored else []
    except ValueError:
        return ()
    return tuple(str(n) for n in names) if isinstance(names, list) else ()


def _attach_sends(s: Session, rows: list[SeriesRow]) -> list[SeriesView]:
    uids = [r.series_uid for r in rows]
    by_series: dict[str, list[SendJobRow]] = {uid: [] for uid in uids}
    checks: dict[str, list[SelfCheckRow]] = {uid: [] for uid in uids}
    if uids:
        for job in s.scalars(select(SendJobRow).where(SendJobRow.series_uid.in_(uids))
                             .order_by(SendJobRow.destination)):
            by_series[job.series_uid].append(job)
        for check in s.scalars(select(SelfCheckRow).where(SelfCheckRow.series_uid.in_(uids))):
            checks[check.series_uid].append(check)
    return [_series_view(r, by_series[r.series_uid], checks[r.series_uid]) for r in rows]


def list_series(engine: Engine, *, state: str | None = None, limit: int = 100,
                offset: int = 0) -> tuple[list[SeriesView], int]:
    """Series, most recently changed first, with their send jobs; and how many match in all."""
    if state is not None and state not in SERIES_STATES:
        raise ValueError(f"state must be one of {SERIES_STATES}, got {state!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1-{MAX_LIMIT}, got {limit}")
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"offset must be 0-{MAX_OFFSET}, got {offset}")
    with Session(engine) as s:
        query = select(SeriesRow)
        count = select(func.count()).select_from(SeriesRow)
        if state is not None:
            query = query.where(SeriesRow.state == state)
            count = count.where(SeriesRow.state == state)
        total = int(s.scalar(count) or 0)
        rows = list(s.scalars(query.order_by(SeriesRow.updated_at.desc(), SeriesRow.series_uid)
                              .limit(limit).offset(offset)))
        return _attach_sends(s, rows), total


def get_series(engine: Engine, series_uid: str) -> SeriesView | None:
    with Session(engine) as s:
        row = s.get(SeriesRow, series_uid)
        return None if row is None else _attach_sends(s, [row])[0]


def send_jobs(engine: Engine, *, destination: str | None = None, states: tuple[str, ...] = (),
              limit: int = 500) -> list[SendView]:
    """Send jobs (optionally of one destination and some states), most urgent first."""
    with Session(engine) as s:
        query = select(SendJobRow)
        if destination is not None:
            query = query.where(SendJobRow.destination == destination)
        if states:
            query = query.where(SendJobRow.state.in_(states))
        query = query.order_by(SendJobRow.next_attempt_at, SendJobRow.id).limit(limit)
        return [_send_view(j) for j in s.scalars(query)]


def series_counts(engine: Engine) -> dict[str, int]:
    """Series by state, every state present (zero when none)."""
    with Session(engine) as s:
        found = {str(st): int(n) for st, n in s.execute(
            select(SeriesRow.state, func.count()).group_by(SeriesRow.state))}
    return {st: found.get(st, 0) for st in SERIES_STATES}


def send_counts(engine: Engine, destinations: list[str]) -> dict[str, dict[str, int]]:
    """Send jobs by destination and state; configured destinations are listed even with no jobs."""
    with Session(engine) as s:
        rows = s.execute(select(SendJobRow.destination, SendJobRow.state, func.count())
                         .group_by(SendJobRow.destination, SendJobRow.state))
        out: dict[str, dict[str, int]] = {name: dict.fromkeys(JOB_STATES, 0) for name in destinations}
        for dest, st, n in rows:
            out.setdefault(str(dest), dict.fromkeys(JOB_STATES, 0))[str(st)] = int(n)
    return out


def throughput(engine: Engine, now: float, window_s: float = 3600.0) -> Throughput:
    """What the node did in the last `window_s` seconds (series received and finished, timings)."""
    since = now - window_s
    with Session(engine) as s:
        received = int(s.scalar(select(func.count()).select_from(SeriesRow)
                                .where(SeriesRow.first_received_at >= since)) or 0)
        instances = int(s.scalar(select(func.count()).select_from(InstanceRow)
                                 .where(InstanceRow.received_at >= since)) or 0)
        finished = list(s.execute(select(SeriesRow.state, SeriesRow.derived_count, SeriesRow.synth_seconds,
                                         SeriesRow.first_received_at, SeriesRow.updated_at)
                                  .where(SeriesRow.updated_at >= since,
                                         SeriesRow.state.in_((SeriesState.DONE, SeriesState.FAILED,
                                                              SeriesState.REJECTED)))))
    done = [r for r in finished if r[0] == SeriesState.DONE]
    synth = [float(r[2]) for r in finished if r[2] is not None and r[0] != SeriesState.REJECTED]
    latency = [float(r[4] - r[3]) for r in done]
    return Throughput(
        window_s=window_s, series_received=received, instances_received=instances,
        series_done=len(done), series_failed=sum(1 for r in finished if r[0] == SeriesState.FAILED),
        series_rejected=sum(1 for r in finished if r[0] == SeriesState.REJECTED),
        derived_slices=sum(int(r[1]) for r in done),
        synth_median_s=statistics.median(synth) if synth else None, synth_max_s=max(synth) if synth else None,
        latency_median_s=statistics.median(latency) if latency else None)
