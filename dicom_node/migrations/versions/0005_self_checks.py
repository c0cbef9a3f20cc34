"""The self-check of every derived volume (consistency, lung bias, a backend's off-axis figures), per series.

Revision ID: 0005
Revises: 0004_rules
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004_rules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "self_checks",
        sa.Column("series_uid", sa.String(64), primary_key=True),
        sa.Column("backend", sa.String(32), primary_key=True),
        sa.Column("consistency_db", sa.Float(), nullable=False),
        sa.Column("lung_bias_hu", sa.Float(), nullable=True),
        sa.Column("offaxis_psnr_db", sa.Float(), nullable=True),
        sa.Column("offaxis_bis_psnr_db", sa.Float(), nullable=True),
        sa.Column("budget_s", sa.Float(), nullable=True),
        sa.Column("finetune_s", sa.Float(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.Column("failure", sa.Text(), nullable=False, server_default=""),
        sa.Column("checked_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("self_checks")
