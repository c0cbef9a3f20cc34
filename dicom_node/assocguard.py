"""Who may hold a connection to the Storage SCP, and for how long: association slots, pending caps.

A connection is *pending* from accept until its A-ASSOCIATE-RQ has arrived, then *active* (it holds
one of `max_associations` slots) until it closes. Pending connections never take a slot. They are
capped per peer address (`max_pending_per_address`; one flooding address cannot crowd out the others)
and in all (`max_pending`), and each must complete its A-ASSOCIATE-RQ (TLS handshake included) within
`association_request_timeout_s` of its accept (enforced by `pdusocket.BoundedSocket` and the ARTIM
timer). pynetdicom counts every acceptor thread, pending or not, against its own
`maximum_associations` (default 10): ten half-sent PDU headers used to lock every sender out. The node
sets that ceiling above anything this guard can admit and decides here instead.

An association slot is freed when its socket closes (`ConnectionTicket.close`, called by the socket)
or its thread ends, whichever comes first. A pending place is freed only when the connection's thread
has ended: pynetdicom's association thread waits up to the request deadline for the A-ASSOCIATE-RQ
even after the peer has gone, so freeing the place at the close would let a connect-and-close flood
pile up threads. Every connection whose thread still runs counts against `max_associations +
max_pending`; past that a new connection is closed at once. Refusals are counted by reason and logged
with the peer's address, at most once a second per reason and address.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicom_node.config import NodeSection
from dicom_node.ratelog import RateLimitedLog

logger = logging.getLogger(__name__)

LOG_EVERY_S = 1.0
CLOSE_MARGIN_S = 0.25      # an ARTIM expiry this close to the deadline is the deadline


class Refusal(enum.Enum):
    """Why a connection or an association was refused; the value is the metrics label."""

    LOCAL_LIMIT = "local_limit"            # all max_associations slots in use
    CALLED_AE = "called_ae"                # the request called another AE title
    CALLING_AE = "calling_ae"              # the calling AE title (and host) is not on allowed_callers
    PENDING_CAP = "pending_cap"            # too many connections waiting to associate
    CONNECTION_CAP = "connection_cap"      # max_associations + max_pending connections already open
    REQUEST_DEADLINE = "request_deadline"  # no complete A-ASSOCIATE-RQ within the deadline
    TLS_HANDSHAKE = "tls_handshake"        # the TLS handshake failed or did not finish in time
    PDU_TOO_LARGE = "pdu_too_large"        # a PDU announced more than we negotiated
    PDU_DEADLINE = "pdu_deadline"          # a PDU did not arrive whole within pdu_read_timeout_s
    MESSAGE_TOO_LARGE = "message_too_large"  # a DIMSE command set beyond any sane size
    MESSAGE_DEADLINE = "message_deadline"  # a DIMSE message not complete within dimse_timeout_s
    OTHER = "other"                        # a rejection pynetdicom made by itself


@dataclass(frozen=True, slots=True)
class AssociationLimits:
    max_associations: int
    max_pending: int
    max_pending_per_address: int
    request_timeout_s: float
    pdu_timeout_s: float
    max_pdu: int
    max_dataset_bytes: int
    message_timeout_s: float

    def __post_init__(self) -> None:
        if min(self.max_associations, self.max_pending, self.max_pending_per_address, self.max_pdu,
               self.max_dataset_bytes) < 1:
            raise ValueError(f"association limits must be positive, got {self}")
        if not (self.request_timeout_s > 0 and self.pdu_timeout_s > 0 and self.message_timeout_s > 0):
            raise ValueError(f"association timeouts must be positive, got {self}")

    @classmethod
    def from_config(cls, cfg: NodeSection) -> AssociationLimits:
        policy = cfg.associations
        return cls(max_associations=policy.max_associations, max_pending=policy.max_pending,
                   max_pending_per_address=policy.max_pending_per_address,
                   request_timeout_s=policy.association_request_timeout_s, pdu_timeout_s=policy.pdu_read_timeout_s,
                   max_pdu=policy.max_pdu_bytes, max_dataset_bytes=policy.max_dataset_bytes,
                   message_timeout_s=cfg.timing.dimse_timeout_s)

    @property
    def max_open(self) -> int:
        """Connections whose threads may run at once: every slot and every pending place."""
        return self.max_associations + self.max_pending

    @property
    def pynetdicom_ceiling(self) -> int:
        """pynetdicom's own `maximum_associations`: above every connection the guard admits (with as
        many again for threads a moment from their end), so that the guard, not pynetdicom, decides."""
        return 2 * self.max_open


@dataclass(frozen=True, slots=True)
class SlotUsage:
    active: int
    pending: int
    max_associations: int

    @property
    def full(self) -> bool:
        return self.active >= self.max_associations


class TicketState(enum.Enum):
    PENDING = "pending"        # accepted, no A-ASSOCIATE-RQ yet: counts against the pending caps
    ACTIVE = "active"          # holds an association slot until its socket closes
    CLOSING = "closing"        # refused, rejected or ended: counts only against max_open until its thread ends


class ConnectionTicket:
    """One accepted connection's place in the guard, from accept until its socket closes."""

    def __init__(self, guard: AssociationGuard, host: str, port: int, accepted_at: float) -> None:
        self.guard, self.host, self.port = guard, host, port
        self.accepted_at = accepted_at
        self.deadline = accepted_at + guard.limits.request_timeout_s
        self.state = TicketState.PENDING
        self.assoc: Any = None                 # the pynetdicom Association, once made
        self.started = False                   # its thread was started
        self.closed = False
        self.refused: Refusal | None = None
        self.closer: Callable[[], None] | None = None   # shuts the connection (drain)

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"

    def remaining_s(self) -> float:
        return self.deadline - self.guard.clock()

    def gone(self) -> bool:
        """Its thread has ended (or, never started, its socket is closed): it holds nothing any more."""
        if not self.started:
            return self.closed
        return not (self.assoc is not None and self.assoc.is_alive())

    def is_pending(self) -> bool:
        return self.state is TicketState.PENDING and not self.gone()

    def is_active(self) -> bool:
        return self.state is TicketState.ACTIVE and not self.closed and not self.gone()

    def refuse(self, reason: Refusal, detail: str) -> None:
        """The connection is being closed for `reason`: count it and log it once."""
        if self.refused is None:
            self.refused = reason
            self.guard.note_refusal(reason, self.peer, detail)

    def close(self) -> None:
        """The connection's socket is closed: an active one frees its slot; say why when it never associated."""
        with self.guard.lock:
            if self.closed:
                return
            self.closed = True
            was_pending = self.state is TicketState.PENDING
            if self.state is TicketState.ACTIVE:
                self.state = TicketState.CLOSING
        if was_pending and self.refused is None:
            waited = self.guard.clock() - self.accepted_at
            if waited >= self.guard.limits.request_timeout_s - CLOSE_MARGIN_S:
                self.refuse(Refusal.REQUEST_DEADLINE, f"no complete A-ASSOCIATE-RQ within "
                            f"{self.guard.limits.request_timeout_s:g} s (node.association_request_timeout_s)")
            else:
                logger.debug("connection from %s closed before an association request", self.peer)


class AssociationGuard:
    def __init__(self, limits: AssociationLimits, *, on_refused: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.clock = limits, clock
        self.lock = threading.Lock()
        self._on_refused = on_refused          # told each refusal's reason (metrics)
        self._tickets: list[ConnectionTicket] = []
        self._by_assoc: dict[Any, ConnectionTicket] = {}
        self._log = RateLimitedLog(logger, interval_s=LOG_EVERY_S, clock=clock)

    # -- admission -----------------------------------------------------------------------------
    def admit(self, host: str, port: int) -> ConnectionTicket | None:
        """A connection was accepted: its ticket, or None when it must be closed at once."""
        with self.lock:
            self._prune()
            pending = [t for t in self._tickets if t.is_pending()]
            from_host = sum(1 for t in pending if t.host == host)
            reason = Refusal.PENDING_CAP
            if from_host >= self.limits.max_pending_per_address:
                detail = (f"{from_host} connections from this address are already waiting to associate "
                          f"(node.max_pending_per_address)")
            elif len(pending) >= self.limits.max_pending:
                detail = f"{len(pending)} connections are already waiting to associate (node.max_pending)"
            elif len(self._tickets) >= self.limits.max_open:
                reason = Refusal.CONNECTION_CAP
                detail = (f"{len(self._tickets)} connections are open or closing "
                          "(node.max_associations + node.max_pending)")
            else:
                ticket = ConnectionTicket(self, host, port, self.clock())
                self._tickets.append(ticket)
                return ticket
        self.note_refusal(reason, f"{host}:{port}", detail)
        return None

    def bind(self, ticket: ConnectionTicket, assoc: Any) -> None:
        with self.lock:
            ticket.assoc = assoc
            self._by_assoc[assoc] = ticket

    def ticket_of(self, assoc: Any) -> ConnectionTicket | None:
        with self.lock:
            return self._by_assoc.get(assoc)

    def request(self, assoc: Any) -> SlotUsage | None:
        """The A-ASSOCIATE-RQ has arrived: take a slot (None) or say the house is full (the usage)."""
        with self.lock:
            self._prune()
            ticket = self._by_assoc.get(assoc)
            active = sum(1 for t in self._tickets if t.is_active())
            if active >= self.limits.max_associations:
                if ticket is not None:
                    ticket.state = TicketState.CLOSING
                return SlotUsage(active, self._pending_count(), self.limits.max_associations)
            if ticket is not None and ticket.state is TicketState.PENDING:
                ticket.state = TicketState.ACTIVE
            return None

    def finish(self, assoc: Any) -> None:
        """The association was rejected or ended: it holds no slot, whatever its socket does next."""
        with self.lock:
            ticket = self._by_assoc.get(assoc)
            if ticket is not None:
                ticket.state = TicketState.CLOSING

    # -- reporting -----------------------------------------------------------------------------
    def usage(self) -> SlotUsage:
        with self.lock:
            self._prune()
            active = sum(1 for t in self._tickets if t.is_active())
            return SlotUsage(active, self._pending_count(), self.limits.max_associations)

    def note_refusal(self, reason: Refusal, peer: str, detail: str) -> None:
        """A connection is being closed for `reason`: count it, log it (throttled) with the address."""
        self.report(reason, peer.rsplit(":", 1)[0], "refused connection from %s (%s): %s", peer,
                    reason.value, detail)

    def report(self, reason: Refusal, key: str, message: str, *args: object) -> None:
        """Count a refusal and log `message % args` at most once a second per (reason, key)."""
        if self._on_refused is not None:
            self._on_refused(reason.value)
        self._log.warning(f"{reason.value}:{key}", message, *args)

    # -- stopping ------------------------------------------------------------------------------
    def shut(self, *, pending: bool) -> int:
        """Shut the connections that are pending (or, with pending=False, all still open); how many."""
        with self.lock:
            self._prune()
            chosen = [t for t in self._tickets if not t.closed and (t.is_pending() or not pending)]
        for ticket in chosen:
            if ticket.closer is not None:
                ticket.closer()
        return len(chosen)

    def active_associations(self) -> list[Any]:
        """The associations holding a slot now."""
        with self.lock:
            self._prune()
            return [t.assoc for t in self._tickets if t.is_active() and t.assoc is not None]

    def _pending_count(self) -> int:
        return sum(1 for t in self._tickets if t.is_pending())

    def _prune(self) -> None:
        """Forget connections whose threads have ended (caller holds the lock)."""
        gone = [t for t in self._tickets if t.gone()]
        if not gone:
            return
        for ticket in gone:
            if ticket.assoc is not None:
                self._by_assoc.pop(ticket.assoc, None)
        self._tickets = [t for t in self._tickets if not t.gone()]
