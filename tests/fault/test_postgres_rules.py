"""Migration 0004 (routing rules) on a real PostgreSQL: rows kept, series.state widened for
thin_series_exists, and the schema equal to the models."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dicom_node.ledger import Base, open_engine, upgrade_schema
from dicom_node.ledger.db import _script
from tests.support.postgres import PostgresServer


def test_migration_0004_on_postgres(postgres: PostgresServer) -> None:
    engine = open_engine(postgres.create_database("rules0004"))
    cfg, _ = _script()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO series (series_uid, study_uid, state, reason, detail, instance_count, "
                             "duplicate_count, generation, processed_generation, first_received_at, "
                             "last_received_at, derived_series_uid, derived_count, calling_ae, updated_at) VALUES "
                             "('1.2.3', '1.2', 'done', '', '', 4, 0, 1, 1, 1.0, 2.0, '2.25.9', 16, 'CT01', 3.0)")
    upgrade_schema(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE series SET state = 'thin_series_exists' WHERE series_uid = '1.2.3'")
        row = conn.exec_driver_sql("SELECT state, rule, destinations, backend, slice_thickness_mm FROM series").one()
        assert tuple(row) == ("thin_series_exists", "", "", "", None)
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE series SET state = 'done'")
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    engine.dispose()
