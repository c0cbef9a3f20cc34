"""Alembic environment: runs on the connection the Ledger hands over (no alembic.ini needed)."""

from __future__ import annotations

from alembic import context

from dicom_node.ledger import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
