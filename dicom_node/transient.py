"""Which errors are the machine's, not the series': they pass, so the work is retried, never rejected.

A full disk (ENOSPC, EDQUOT), a full or locked database, a database connection that dropped: the
same series will go through once space or the database returns. Everything else is a property of
the series (or a bug) and is handled where it happens.
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import DBAPIError, OperationalError

TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EINTR, errno.EBUSY})


def is_transient(exc: BaseException) -> bool:
    """True for errors that clear by themselves: no space, database full/locked/away."""
    if isinstance(exc, OperationalError):
        return True                                  # SQLite full/locked/IO, PostgreSQL connection errors
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    cause = exc.__cause__                            # explicit chaining only (`raise X from transient`)
    return cause is not None and cause is not exc and is_transient(cause)


def describe(exc: BaseException) -> str:
    """A short, PHI-free description of an error for logs and readiness: type and first line."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}: {errno.errorcode.get(exc.errno, exc.errno)} ({exc.strerror})"
    if isinstance(exc, DBAPIError):
        first = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        return f"{type(exc).__name__}: {first[:160]}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
