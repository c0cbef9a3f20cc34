"""Routing rules: a series remembers the rule that routed it, that rule's destinations and the backend;
what people see of it (SeriesDescription, kernel, slice thickness); and `state` holds the longer state
names no_rule and thin_series_exists.

Revision ID: 0004_rules
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_rules"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (
    ("rule", sa.String(64), ""),
    ("destinations", sa.Text(), ""),
    ("backend", sa.String(32), ""),
    ("series_description", sa.String(64), ""),
    ("convolution_kernel", sa.String(64), ""),
)


def upgrade() -> None:
    with op.batch_alter_table("series") as batch:
        for name, type_, default in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=False, server_default=default))
        batch.add_column(sa.Column("slice_thickness_mm", sa.Float(), nullable=True))
    _state_length(16, 32)


def _state_length(old: int, new: int) -> None:
    """series.state VARCHAR(old) → VARCHAR(new). SQLite does not enforce the length and cannot ALTER a
    column type; batch mode would copy and drop `series`, which instances and send_jobs reference
    (foreign keys are on, inside the one migration transaction). So SQLite gets the declared type
    rewritten in its schema text, the procedure sqlite.org/lang_altertable.html gives for changes that
    leave the stored rows as they are (the column's affinity stays TEXT)."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.alter_column("series", "state", type_=sa.String(new), existing_type=sa.String(old),
                        existing_nullable=False)
        return
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema=ON")
    bind.exec_driver_sql(f"UPDATE sqlite_master SET sql = replace(sql, 'state VARCHAR({old})', 'state VARCHAR({new})') "
                         "WHERE type = 'table' AND name = 'series'")
    bind.exec_driver_sql(f"PRAGMA schema_version={int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema=OFF")


def downgrade() -> None:
    _state_length(32, 16)
    with op.batch_alter_table("series") as batch:
        batch.drop_column("slice_thickness_mm")
        for name, _type, _default in reversed(COLUMNS):
            batch.drop_column(name)
