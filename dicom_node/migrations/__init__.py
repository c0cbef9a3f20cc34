"""Alembic migrations of the ledger schema (applied automatically when a Ledger opens a database)."""
