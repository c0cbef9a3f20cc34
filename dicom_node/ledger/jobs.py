"""Jobs and leases: claiming a series or a send job, renewing and releasing leases, recording outcomes.

Claims are conditional UPDATEs checked by row count, so two workers never take one job; a lease that
is not renewed (the worker died) expires and the job goes back to the queue.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from dicom_node.ledger.base import LedgerBase
from dicom_node.ledger.schema import (
    TERMINAL,
    BackoffPolicy,
    JobState,
    RefusedRow,
    RouteChoice,
    SelfCheckRecord,
    SelfCheckRow,
    SendClaim,
    SendJobRow,
    SeriesClaim,
    SeriesFacts,
    SeriesRow,
    SeriesState,
)

logger = logging.getLogger(__name__)
SETTLED_WITHOUT_OUTPUT = (SeriesState.NO_RULE, SeriesState.THIN_SERIES_EXISTS)


@dataclass(frozen=True, slots=True)
class SendOutcome:
    job_state: JobState
    series_state: str | None         # the series' new state when this attempt finished it (done, failed)


def _note(row: SeriesRow, facts: SeriesFacts | None, route: RouteChoice | None) -> None:
    if facts is not None:
        row.series_description, row.convolution_kernel = facts.description[:64], facts.kernel[:64]
        row.slice_thickness_mm = facts.thickness_mm
    if route is not None:
        row.rule, row.backend = route.rule, route.backend
        row.destinations = json.dumps(list(route.destinations))


class Jobs(LedgerBase):
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
                    return SeriesClaim(uid, row.study_uid, row.generation, int(refused), row.calling_ae)
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

    def reject_series(self, claim: SeriesClaim, owner: str, reason: str, detail: str, now: float, *,
                      facts: SeriesFacts | None = None, checks: Sequence[SelfCheckRecord] = ()) -> None:
        with self._tx() as s:
            row = s.get(SeriesRow, claim.series_uid)
            if row is None or row.lease_owner != owner:
                logger.warning("lost the lease on series %s before rejecting it", claim.series_uid)
                return
            _note(row, facts, None)
            _replace_checks(s, claim.series_uid, checks, now)
            row.state, row.reason, row.detail = SeriesState.REJECTED, reason, detail
            row.lease_owner = row.lease_expires_at = None
            row.processed_generation = claim.generation
            row.updated_at = now
            self._reopen_if_changed(row, now)

    def series_settled(self, claim: SeriesClaim, *, owner: str, state: SeriesState, reason: str, detail: str,
                       now: float, facts: SeriesFacts | None = None, route: RouteChoice | None = None) -> bool:
        """End a claimed series without output: `no_rule` or `thin_series_exists` (kept with its reason
        until retention removes it). False when the lease was lost."""
        if state not in SETTLED_WITHOUT_OUTPUT:
            raise ValueError(f"series_settled takes {[str(s) for s in SETTLED_WITHOUT_OUTPUT]}, got {state!r}")
        with self._tx() as s:
            row = s.get(SeriesRow, claim.series_uid)
            if row is None or row.lease_owner != owner:
                logger.warning("lost the lease on series %s before recording it as %s", claim.series_uid, state)
                return False
            _note(row, facts, route)
            row.state, row.reason, row.detail = state, reason, detail
            row.lease_owner = row.lease_expires_at = None
            row.processed_generation = claim.generation
            row.updated_at = now
            self._reopen_if_changed(row, now)
            return True

    def series_synthesized(self, claim: SeriesClaim, *, owner: str, derived_series_uid: str, derived_count: int,
                           destinations: list[str], synth_seconds: float, now: float,
                           facts: SeriesFacts | None = None, route: RouteChoice | None = None,
                           checks: Sequence[SelfCheckRecord] = ()) -> str | None:
        """Record the derived series, its self-checks, and (re)create one pending send job per destination.
        Returns the series' new state when that already finished it (no destinations: done)."""
        with self._tx() as s:
            row = s.get(SeriesRow, claim.series_uid)
            if row is None or row.lease_owner != owner:
                logger.warning("lost the lease on series %s before recording its result", claim.series_uid)
                return None
            _note(row, facts, route)
            _replace_checks(s, claim.series_uid, checks, now)
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
            return self._settle(s, row, now)

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

    def send_finished(self, claim: SendClaim, *, owner: str, sent: int, status: str, error: str,
                      ok: bool, policy: BackoffPolicy, now: float, retry: bool = True,
                      retry_after_s: float = 0.0) -> JobState:
        """Record one attempt; a failure is retried with backoff until the attempts run out (or at once
        kept as failed when `retry` is false: the destination said trying again cannot help). The next
        try waits at least `retry_after_s` (what the destination asked for), at most the policy's maximum."""
        return self.record_send(claim, owner=owner, sent=sent, status=status, error=error, ok=ok, policy=policy,
                                now=now, retry=retry, retry_after_s=retry_after_s).job_state

    def record_send(self, claim: SendClaim, *, owner: str, sent: int, status: str, error: str,
                    ok: bool, policy: BackoffPolicy, now: float, retry: bool = True,
                    retry_after_s: float = 0.0) -> SendOutcome:
        """`send_finished`, also saying whether this attempt finished the series (for notifications:
        exactly one attempt does, in the transaction that settles it)."""
        with self._tx() as s:
            job = s.get(SendJobRow, claim.job_id)
            if job is None or job.lease_owner != owner:
                logger.warning("lost the lease on send job %s before recording it", claim.job_id)
                return SendOutcome(JobState.PENDING, None)
            job.attempts += 1
            job.sent, job.last_status, job.last_error = sent, status, error
            job.lease_owner = job.lease_expires_at = None
            job.updated_at = now
            if ok:
                job.state = JobState.DONE
            elif not retry or job.attempts >= policy.max_attempts:
                job.state = JobState.FAILED
            else:
                job.state = JobState.PENDING
                job.next_attempt_at = now + max(policy.delay_s(job.attempts), min(retry_after_s, policy.max_s))
            state = JobState(job.state)
            series = s.get(SeriesRow, job.series_uid)
            assert series is not None
            s.flush()
            return SendOutcome(state, self._settle(s, series, now))

    def _settle(self, s: Session, series: SeriesRow, now: float) -> str | None:
        """A sending series whose jobs are all over becomes done or failed; returns that state, if so."""
        states = list(s.scalars(select(SendJobRow.state).where(SendJobRow.series_uid == series.series_uid)))
        if series.state != SeriesState.SENDING or any(
                st in (JobState.PENDING, JobState.SENDING) for st in states):
            return None
        failed = [st for st in states if st == JobState.FAILED]
        settled = SeriesState.FAILED if failed else SeriesState.DONE
        series.state = settled
        series.reason = "send_failed" if failed else ""
        series.detail = f"{len(failed)} of {len(states)} destination(s) failed" if failed else ""
        series.updated_at = now
        self._reopen_if_changed(series, now)
        return str(settled)

    @staticmethod
    def _reopen_if_changed(series: SeriesRow, now: float) -> None:
        """Instances that arrived while the series was being processed: process it again."""
        if series.generation != series.processed_generation and series.state in TERMINAL:
            series.state, series.deadline_at, series.updated_at = SeriesState.RECEIVING, now, now

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

    def is_derived_series(self, series_uid: str) -> bool:
        with self._tx() as s:
            return s.scalar(select(func.count()).select_from(SeriesRow).where(
                SeriesRow.derived_series_uid == series_uid)) != 0


def _replace_checks(s: Session, series_uid: str, checks: Sequence[SelfCheckRecord], now: float) -> None:
    """The series' self-checks become `checks` (those of an earlier processing are dropped)."""
    s.execute(delete(SelfCheckRow).where(SelfCheckRow.series_uid == series_uid))
    for c in checks:
        s.add(SelfCheckRow(series_uid=series_uid, backend=c.backend, consistency_db=c.consistency_db,
                           lung_bias_hu=c.lung_bias_hu, offaxis_psnr_db=c.offaxis_psnr_db,
                           offaxis_bis_psnr_db=c.offaxis_bis_psnr_db, budget_s=c.budget_s,
                           finetune_s=c.finetune_s, passed=c.passed, used=c.used, failure=c.failure,
                           checked_at=now))
