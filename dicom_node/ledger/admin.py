"""Administration: what an operator does to a series (retry, re-send, discard) and retention's purge.

`ACTION_STATES` is the one rule of which state allows which action: these methods check it inside
their transaction (so a state that changed meanwhile is refused), and `dicom_node.admin` (the CLI's
and the web's entry point) shows the same rule to people.
"""

from __future__ import annotations

from sqlalchemy import delete, select

from dicom_node.ledger.base import LedgerBase
from dicom_node.ledger.schema import (
    RETAINED,
    InstanceRow,
    JobState,
    RefusedRow,
    SelfCheckRow,
    SendJobRow,
    SeriesRow,
    SeriesState,
)

REPROCESSED = frozenset({SeriesState.REJECTED, SeriesState.NO_RULE, SeriesState.THIN_SERIES_EXISTS})
ACTION_STATES: dict[str, frozenset[str]] = {
    "retry": frozenset({SeriesState.FAILED, *REPROCESSED}),
    "resend": frozenset({SeriesState.DONE, SeriesState.FAILED}),
    "discard": frozenset({SeriesState.DONE, SeriesState.FAILED, *REPROCESSED}),
}


def _refuse(series_uid: str, state: str, action: str, done: str) -> ValueError:
    *rest, last = sorted(ACTION_STATES[action])
    allowed = f"{', '.join(rest)} or {last}" if rest else last
    return ValueError(f"series {series_uid} is {state}; only {allowed} series can be {done}")


class Admin(LedgerBase):
    def retry(self, series_uid: str, now: float) -> str:
        """Re-queue failed sends of a series, or re-process a rejected, no_rule or thin_series_exists
        series (the rules and the thin-series check run again). Returns what was done."""
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
            if row.state in REPROCESSED:
                row.state, row.reason, row.detail, row.updated_at = SeriesState.COMPLETE, "", "", now
                return "queued for processing again"
            raise _refuse(series_uid, row.state, "retry", "retried")

    def purge_done(self, finished_before: float) -> list[tuple[str, str]]:
        """Forget finished series (done, no_rule, thin_series_exists) finished before the cutoff; returns
        (source, derived) UIDs to delete."""
        with self._tx() as s:
            rows = list(s.execute(select(SeriesRow.series_uid, SeriesRow.derived_series_uid).where(
                SeriesRow.state.in_(RETAINED), SeriesRow.updated_at < finished_before)))
            uids = [r[0] for r in rows]
            if uids:
                s.execute(delete(SendJobRow).where(SendJobRow.series_uid.in_(uids)))
                s.execute(delete(RefusedRow).where(RefusedRow.series_uid.in_(uids)))
                s.execute(delete(SelfCheckRow).where(SelfCheckRow.series_uid.in_(uids)))
                s.execute(delete(InstanceRow).where(InstanceRow.series_uid.in_(uids)))
                s.execute(delete(SeriesRow).where(SeriesRow.series_uid.in_(uids)))
            return [(str(a), str(b)) for a, b in rows]

    def discard(self, series_uid: str) -> str:
        """An administrator's explicit removal of a failed or rejected series from the ledger."""
        with self._tx() as s:
            row = s.get(SeriesRow, series_uid)
            if row is None:
                raise KeyError(f"no series {series_uid} in the ledger")
            if row.state not in ACTION_STATES["discard"]:
                raise _refuse(series_uid, row.state, "discard", "discarded")
            derived = row.derived_series_uid
            s.execute(delete(SendJobRow).where(SendJobRow.series_uid == series_uid))
            s.execute(delete(RefusedRow).where(RefusedRow.series_uid == series_uid))
            s.execute(delete(SelfCheckRow).where(SelfCheckRow.series_uid == series_uid))
            s.execute(delete(InstanceRow).where(InstanceRow.series_uid == series_uid))
            s.delete(row)
            return derived

    def resend(self, series_uid: str, now: float, destination: str | None = None) -> str:
        """Send a finished series' derived series again (to one destination or all)."""
        with self._tx() as s:
            row = s.get(SeriesRow, series_uid)
            if row is None:
                raise KeyError(f"no series {series_uid} in the ledger")
            if row.state not in ACTION_STATES["resend"]:
                raise _refuse(series_uid, row.state, "resend", "re-sent")
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
