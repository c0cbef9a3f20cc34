"""The job ledger (SQLAlchemy): series and send-job state, persisted deadlines, leases, backoff.

One `Ledger` assembled from its parts, one file per job (as Radicale's storage):

  schema.py    tables, states and the typed values the parts hand on
  db.py        opening the database; migrations, run explicitly (`open_ledger(..., migrate=True)`)
  intake.py    received and refused instances, completion by quiet period
  jobs.py      claims, leases, outcomes of synthesis and sending
  admin.py     retry, re-send, discard, retention's purge
  queries.py   the one read model (dashboard, API, metrics, `dicom-node list`)
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from dicom_node.ledger.admin import Admin
from dicom_node.ledger.db import (
    LedgerSchemaError,
    check_schema,
    head_revision,
    open_engine,
    schema_revision,
    upgrade_schema,
)
from dicom_node.ledger.intake import Intake
from dicom_node.ledger.jobs import Jobs, SendOutcome
from dicom_node.ledger.schema import (
    RETAINED,
    TERMINAL,
    BackoffPolicy,
    Base,
    InstanceRow,
    JobState,
    RecordOutcome,
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

__all__ = [
    "RETAINED", "TERMINAL", "BackoffPolicy", "Base", "InstanceRow", "JobState", "Ledger", "LedgerSchemaError",
    "RecordOutcome", "RefusedRow", "RouteChoice", "SelfCheckRecord", "SelfCheckRow", "SendClaim", "SendJobRow",
    "SendOutcome", "SeriesClaim", "SeriesFacts", "SeriesRow", "SeriesState", "check_schema", "head_revision",
    "open_engine", "open_ledger", "schema_revision", "upgrade_schema",
]


class Ledger(Intake, Jobs, Admin):
    """The ledger: intake, jobs and leases, administration over one engine (reads: `ledger.queries`)."""


def open_ledger(url_or_path: str | Path | Engine, *, migrate: bool) -> Ledger:
    """A ledger on a database URL or SQLite path. `migrate=True` (the commands that serve) brings the
    schema up to date; `migrate=False` requires it to be current (LedgerSchemaError says what to run)."""
    engine = url_or_path if isinstance(url_or_path, Engine) else open_engine(url_or_path)
    if migrate:
        upgrade_schema(engine)
    else:
        check_schema(engine)
    return Ledger(engine)
