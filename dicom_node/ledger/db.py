"""Opening the ledger's database, and bringing its schema up to date (explicitly, never on open).

SQLite (WAL, every write transaction BEGIN IMMEDIATE) by default; the same statements run on
PostgreSQL. Only the commands that serve (`run`, `worker`, `migrate`, `rebuild-ledger`) migrate;
the others check that the schema is current and say what to do when it is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event


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


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
MIGRATION_LOCK = 726172          # PostgreSQL advisory lock: one migrator (or rebuilder) at a time


class LedgerSchemaError(RuntimeError):
    """The database's schema is not the one this version uses; the message says what to run."""


def _script() -> Any:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg, ScriptDirectory.from_config(cfg)


def head_revision() -> str:
    """The newest schema revision this version knows."""
    _cfg, script = _script()
    head = script.get_current_head()
    assert head is not None, "the migrations have no head"
    return str(head)


def schema_revision(engine: Engine) -> str | None:
    """The database's schema revision, or None for a database the ledger never touched."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
    return None if revision is None else str(revision)


def check_schema(engine: Engine) -> None:
    """Raise LedgerSchemaError unless the schema is the newest (read-only commands never migrate)."""
    current, head = schema_revision(engine), head_revision()
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        found = "no ledger schema" if current is None else f"schema revision {current}"
        raise LedgerSchemaError(f"{where} has {found}; this version needs {head}: run `dicom-node migrate` "
                                "(or start the node once) to bring it up to date")


def upgrade_schema(engine: Engine) -> None:
    """Bring the database to the newest schema with Alembic (several processes may race: PostgreSQL locks)."""
    from alembic import command

    cfg, _script_dir = _script()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
