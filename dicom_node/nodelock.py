"""`<storage_dir>/node.lock`: who is using the ledger and the spool right now.

Every `run` and `worker` process holds a shared `flock` on the file for as long as it lives (the kernel
drops it when the process ends, `kill -9` included); `rebuild-ledger` needs it exclusively. So a
rebuild never runs under a live node, and a node never starts during a rebuild. The lock is per host,
as SQLite is; with PostgreSQL, nodes on other hosts must be stopped by hand (see deploy/README.md).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_NAME = "node.lock"


class LockBusyError(Exception):
    """The lock is held in a mode that excludes ours."""


class NodeLock:
    """An flock on `<storage_dir>/node.lock`; taken without waiting, released on `release()` or exit."""

    def __init__(self, storage_dir: Path, *, exclusive: bool) -> None:
        self.path = storage_dir / LOCK_NAME
        self._exclusive = exclusive
        self._fd: int | None = None

    def acquire(self) -> NodeLock:
        """Take the lock now or raise LockBusyError; OSError when the file cannot be opened."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if self._exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockBusyError(str(self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)     # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> NodeLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def node_running(storage_dir: Path) -> bool:
    """True while some process of this host holds the lock (a node runs, or a rebuild does)."""
    if not (storage_dir / LOCK_NAME).exists():
        return False
    try:
        with NodeLock(storage_dir, exclusive=True):
            return False
    except LockBusyError:
        return True
    except OSError:          # not ours to open (another user's node): it cannot be told, so say no
        return False
