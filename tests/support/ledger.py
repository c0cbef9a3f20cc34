"""Ledger helpers for tests: a migrated ledger, one instance at a time, and the read model's view."""

from __future__ import annotations

from pathlib import Path

from dicom_node.ledger import Ledger, RecordOutcome, open_ledger, queries
from dicom_node.ledger.queries import SeriesView
from dicom_node.spool import StoredInstance


def new_ledger(url_or_path: str | Path) -> Ledger:
    """A ledger with the newest schema, as the node opens it."""
    return open_ledger(url_or_path, migrate=True)


def record(ledger: Ledger, stored: StoredInstance, now: float, quiet_s: float, calling_ae: str = "") -> RecordOutcome:
    """One stored instance into the ledger (the recorder batches them)."""
    return ledger.record_instances([(stored, now, calling_ae)], quiet_s)[0]


def view(ledger: Ledger, series_uid: str) -> SeriesView | None:
    """The read model's view of one series (what the dashboard, API and `list` show)."""
    return queries.get_series(ledger.engine, series_uid)


def deadline(ledger: Ledger, series_uid: str) -> float | None:
    found = view(ledger, series_uid)
    return None if found is None else found.deadline_at
