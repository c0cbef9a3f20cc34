"""Alembic migrations of the ledger schema, applied explicitly.

`run` and `worker` apply them as they start, and so does `dicom-node migrate`; read-only commands
(`list`, `check-config`, ...) never migrate: they refuse a ledger whose schema is behind.
"""
