"""Instances the node refused (0xA700: no disk space), so their series waits for them to be sent again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refused_instances",
        sa.Column("series_uid", sa.String(64), primary_key=True),
        sa.Column("sop_uid", sa.String(64), primary_key=True),
        sa.Column("refused_at", sa.Float(), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("refused_instances")
