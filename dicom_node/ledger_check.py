"""Is the SQLite ledger fit to start on? An empty or damaged `state.db` is refused, never replaced.

SQLite opens a 0-byte file as a new, empty database, and the node would then make a fresh ledger:
send every kept series again and lose the rejected ones from view. So before the ledger is opened,
`check_ledger` refuses a `state.db` that is not a SQLite file, fails `PRAGMA quick_check`, or is
missing, empty or without the ledger's tables while the spool holds series. The message names the
file and `dicom-node rebuild-ledger`, which makes a ledger from the spool (see `rebuild`).
The check only reads (a read-only connection, which like any SQLite reader may leave an empty -wal
and -shm beside the file), so it is safe beside a running node.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from dicom_node.errors import StartupError
from dicom_node.spool import STAGING_PREFIX

SQLITE_HEADER = b"SQLite format 3\x00"
LEDGER_TABLES = ("alembic_version", "series", "instances", "send_jobs")
SPOOL_AREAS = ("incoming", "rejected", "derived")


class LedgerDamagedError(StartupError):
    """The ledger file is empty or damaged; the message names it and the command that rebuilds it."""


@dataclass(frozen=True, slots=True)
class SpoolWork:
    """How many series folders each spool area holds."""

    incoming: int
    rejected: int
    derived: int

    @property
    def total(self) -> int:
        return self.incoming + self.rejected + self.derived

    def describe(self) -> str:
        return f"{self.incoming} received, {self.rejected} rejected and {self.derived} derived series"


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite database URL; None for other databases and in-memory SQLite."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def spool_work(storage_dir: Path) -> SpoolWork:
    counts = []
    for area in SPOOL_AREAS:
        folder = storage_dir / area
        n = 0
        if folder.is_dir():
            with os.scandir(folder) as entries:
                n = sum(1 for e in entries if e.is_dir() and not e.name.startswith(STAGING_PREFIX))
        counts.append(n)
    return SpoolWork(*counts)


def ledger_problem(path: Path, work: SpoolWork) -> str:
    """What is wrong with the ledger file at `path` ("" when the node may open it).

    Raises StartupError when the file cannot be read at all (permissions): that is no damage, and a
    rebuild would not help.
    """
    if not path.exists():
        return f"is missing while the spool holds {work.describe()}" if work.total else ""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StartupError(f"ledger {path}: cannot read it: {exc.strerror}") from exc
    if size == 0:
        return f"is empty (0 bytes) while the spool holds {work.describe()}" if work.total else ""
    if header != SQLITE_HEADER:
        return "is not a SQLite database (its header is wrong)"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            verdict = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)")]
            tables = {str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:     # locked, or cannot be opened: not damage
        raise StartupError(f"ledger {path}: cannot open it read-only: {exc}") from exc
    except sqlite3.DatabaseError as exc:        # "file is not a database", "malformed"
        return f"cannot be read as a database ({exc})"
    if verdict != ["ok"]:
        return f"fails PRAGMA quick_check ({' '.join(' '.join(verdict).split())[:200]})"
    missing = [t for t in LEDGER_TABLES if t not in tables]
    if missing and (tables or work.total):
        return f"has no ledger tables ({', '.join(missing)} missing)" + (
            f" while the spool holds {work.describe()}" if work.total else "")
    return ""


def rebuild_hint(config_source: str) -> str:
    return f"dicom-node rebuild-ledger --config {config_source}"


def check_ledger(*, database_url: str, storage_dir: Path, config_source: str) -> None:
    """Raise LedgerDamagedError (one line: the file, what is wrong, the command) unless the node may start."""
    path = sqlite_path(database_url)
    if path is None:
        return
    problem = ledger_problem(path, spool_work(storage_dir))
    if problem:
        raise LedgerDamagedError(
            f"ledger {path} {problem}: refusing to use it (a new ledger would send kept series again and "
            f"forget rejected ones); stop every node on it, then rebuild it from the spool with: "
            f"{rebuild_hint(config_source)}")
