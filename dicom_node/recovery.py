"""Getting work back after a crash: leases of dead processes, expired leases, and spool files the
ledger missed; and keeping our own leases alive while we work."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from dicom_node.ledger import Ledger
from dicom_node.record import reconcile_spool
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lease_owner_name() -> str:
    """host:pid:random, so a restart on the same host can tell which owners are dead."""
    import uuid

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def recover(ledger: Ledger, spool: Spool, *, now: float, quiet_period_s: float, receiving: bool) -> None:
    """Work leased by a process of this host that no longer runs, or whose lease expired, goes back to
    the queue; spool files received just before a crash are recorded (when this node receives)."""
    host = socket.gethostname()
    for owner in ledger.lease_owners():
        parts = owner.split(":")
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            n = ledger.release_owner(owner, now)
            logger.warning("recovered %d job(s) left by stopped process %s", n, owner)
    ledger.reclaim_expired(now)
    if receiving:
        reconcile_spool(spool, ledger, quiet_period_s, now)


class Leases:
    """Our leases renewed (heartbeat) and everyone's expired leases taken back (sweep)."""

    def __init__(self, ledger: Ledger, *, owner: str, lease_s: float, clock: Callable[[], float],
                 on_requeued: Callable[[], None]) -> None:
        self._ledger, self._owner, self.lease_s, self._clock = ledger, owner, lease_s, clock
        self._on_requeued = on_requeued

    def heartbeat(self) -> None:
        """Keep our leases alive while we work; a killed process stops renewing and loses them."""
        self._ledger.renew_owner(self._owner, self._clock(), self.lease_s)

    def sweep(self) -> None:
        if n := self._ledger.reclaim_expired(self._clock()):
            logger.warning("re-queued %d job(s) whose lease expired", n)
            self._on_requeued()
