"""Intake: received (and refused) instances into the ledger, and series completing by their quiet period.

Re-send policy: identical bytes change nothing; a new or changed instance of a series that was
already processed re-opens it (the derived series is rebuilt with the same UIDs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from dicom_node.ledger.base import LedgerBase
from dicom_node.ledger.schema import TERMINAL, InstanceRow, RecordOutcome, RefusedRow, SeriesRow, SeriesState
from dicom_node.spool import StoredInstance


@dataclass(slots=True)
class _BatchRows:
    """The rows a batch touches, by key: those loaded up front and those it adds."""

    series: dict[str, SeriesRow]
    instances: dict[tuple[str, str], InstanceRow]


class Intake(LedgerBase):
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
            # Load the batch's rows once and look them up in dicts: a Session.get for an instance not in
            # the ledger yet would query (and autoflush) once per instance.
            rows = _BatchRows(
                {r.series_uid: r for r in s.scalars(select(SeriesRow).where(SeriesRow.series_uid.in_(series_uids)))},
                {(r.series_uid, r.sop_uid): r for r in s.scalars(select(InstanceRow).where(
                    InstanceRow.series_uid.in_(series_uids),
                    InstanceRow.sop_uid.in_({stored.sop_uid for stored, _, _ in batch})))})
            for stored, now, calling_ae in batch:
                outcomes.append(self._record_one(s, rows, stored, now, quiet_s, calling_ae))
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
    def _record_one(s: Session, rows: _BatchRows, stored: StoredInstance, now: float, quiet_s: float,
                    calling_ae: str) -> RecordOutcome:
        series = rows.series.get(stored.series_uid)
        inst = rows.instances.get((stored.series_uid, stored.sop_uid))
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
            rows.series[stored.series_uid] = series
        if outcome is RecordOutcome.NEW:
            inst = InstanceRow(series_uid=stored.series_uid, sop_uid=stored.sop_uid, digest=stored.digest,
                               size=stored.size, received_at=now, mtime_ns=stored.mtime_ns)
            s.add(inst)
            rows.instances[(stored.series_uid, stored.sop_uid)] = inst     # sent twice in one batch: found
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

    def instance_sizes(self, series_uid: str) -> dict[str, int]:
        """SOP UID → size in bytes of every instance the ledger holds for a series."""
        with self._tx() as s:
            return {str(uid): int(size) for uid, size in s.execute(
                select(InstanceRow.sop_uid, InstanceRow.size).where(InstanceRow.series_uid == series_uid))}
