"""The Storage SCP's socket: every PDU within a length bound and a deadline, or the connection ends.

pynetdicom's DUL reads a PDU as `socket.recv(6)` (type, reserved, length) and then
`socket.recv(length)`, and `AssociationSocket.recv(n)` loops until n bytes have come. An accepted
socket has no timeout (the listening socket's is not inherited), so a peer that sends half a PDU and
waits holds the DUL thread in `recv` for ever, and with it the association, its slot, and SIGTERM
(`Association.kill()` waits for the DUL to reach Sta1). Nothing caps `length` either: a header
announcing 4 GiB made the node buffer whatever followed.

`BoundedSocket` keeps pynetdicom's calling convention (a header read, then a body read of the
announced length) and adds, per PDU:

* a length bound, checked on the header before a byte of the body is read: a small fixed bound for
  the first PDU (the A-ASSOCIATE-RQ, before anything is negotiated), then the maximum PDU length the
  node negotiated (`node.max_pdu`). A longer PDU is answered with an A-ABORT PDU (service provider,
  invalid PDU parameter value) and the connection closes;
* a deadline: the first PDU must be whole by the connection's request deadline (accept +
  `association_request_timeout_s`); any later PDU within `pdu_read_timeout_s` of its first byte. A
  trickle cannot hold a connection open: the deadline is for the whole PDU, not per read.

On a violation it returns what it has (short), which pynetdicom treats as a closed connection
(Evt17: the FSM closes the socket, the DUL stops). The node logs the reason once (throttled, in
assocguard); `QuietCutPDUs` drops pynetdicom's own "PDU is shorter than expected" ERROR for a PDU the
node cut short itself, so that a flood does not become a flood of log lines. Reads go straight into
one buffer of the PDU's size (`recv_into`), not pynetdicom's 4 KiB pieces.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time

from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket

from dicom_node.assocguard import ConnectionTicket, Refusal

logger = logging.getLogger(__name__)

PDU_HEADER = struct.Struct(">BBL")        # PDU type, reserved, length of the rest
PDU_TYPES = frozenset(range(0x01, 0x08))  # A-ASSOCIATE-RQ … A-ABORT; pynetdicom rejects others itself
REQUEST_PDU_MAX_BYTES = 256 * 1024        # an A-ASSOCIATE-RQ: 128 contexts × 20 syntaxes + identity fit
ABORT_SOURCE_PROVIDER = 0x02              # A-ABORT source: DICOM UL service-provider
ABORT_INVALID_PARAMETER = 0x06            # reason: invalid PDU parameter value
ABORT_SEND_TIMEOUT_S = 1.0
PYNETDICOM_SHORT_PDU = "The received PDU is shorter than expected"   # pynetdicom.dul's message for Evt17

_cut = threading.local()                  # set in a DUL thread while the PDU it reads was cut by us


class QuietCutPDUs(logging.Filter):
    """On pynetdicom.dul: drop its "shorter than expected" error for a PDU the node cut short itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_cut, "pending", False) and str(record.msg).startswith(PYNETDICOM_SHORT_PDU):
            _cut.pending = False
            return False
        return True


def quiet_cut_pdus() -> None:
    """Install QuietCutPDUs on pynetdicom's DUL logger (once)."""
    dul_logger = logging.getLogger("pynetdicom.dul")
    if not any(isinstance(f, QuietCutPDUs) for f in dul_logger.filters):
        dul_logger.addFilter(QuietCutPDUs())


def oversized(header: bytes | bytearray, limit: int) -> tuple[int, int] | None:
    """(PDU type, announced length) when a known PDU type announces more than `limit`, else None."""
    if len(header) != PDU_HEADER.size:
        return None
    pdu_type, _, length = PDU_HEADER.unpack(header)
    if pdu_type in PDU_TYPES and length > limit:
        return pdu_type, length
    return None


def abort_pdu() -> bytes:
    pdu = A_ABORT_RQ()
    pdu.source = ABORT_SOURCE_PROVIDER
    pdu.reason_diagnostic = ABORT_INVALID_PARAMETER
    return bytes(pdu.encode())


class BoundedSocket(AssociationSocket):
    """pynetdicom's AssociationSocket with per-PDU length bounds and deadlines (see the module doc)."""

    _ticket: ConnectionTicket
    _max_pdu: int
    _pdu_timeout_s: float
    _body_left: int | None
    _deadline: float
    _first_pdu: bool
    _aborted: bool

    @classmethod
    def adopt(cls, stock: AssociationSocket, *, ticket: ConnectionTicket) -> BoundedSocket:
        """Take over `stock`'s state (its socket and association; its Evt5 is already queued)."""
        sock = cls.__new__(cls)
        sock.__dict__.update(stock.__dict__)
        sock._ticket = ticket
        sock._max_pdu = ticket.guard.limits.max_pdu
        sock._pdu_timeout_s = ticket.guard.limits.pdu_timeout_s
        sock._body_left = None          # None: the next read is a PDU header
        sock._deadline = ticket.deadline
        sock._first_pdu = True
        sock._aborted = False
        return sock

    def recv(self, nr_bytes: int) -> bytearray:
        if self._aborted:
            _cut.pending = True
            return bytearray()
        if self._body_left is None:
            return self._recv_header(nr_bytes)
        wanted = min(nr_bytes, self._body_left)   # never more than the header announced and we allowed
        self._body_left = None
        data = self._read(wanted)
        if len(data) == wanted:
            self._first_pdu = False
        else:                                     # our deadline (logged by the ticket) or the peer's EOF
            _cut.pending = True
            if self._ticket.refused is None:
                logger.debug("connection from %s closed in the middle of a PDU", self._ticket.peer)
        return data

    def send(self, bytestream: bytes) -> None:
        # A peer that stops reading fails the send after pdu_read_timeout_s (pynetdicom: Evt17).
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.settimeout(self._pdu_timeout_s)
        super().send(bytestream)

    def close(self) -> None:
        super().close()
        self._ticket.close()

    def _recv_header(self, nr_bytes: int) -> bytearray:
        now = time.monotonic()
        self._deadline = self._ticket.deadline if self._first_pdu else now + self._pdu_timeout_s
        header = self._read(nr_bytes)
        if len(header) != PDU_HEADER.size:
            return header
        limit = REQUEST_PDU_MAX_BYTES if self._first_pdu else self._max_pdu
        if (too_long := oversized(header, limit)) is not None:
            pdu_type, length = too_long
            what = "the first PDU (an A-ASSOCIATE-RQ)" if self._first_pdu else f"a PDU of type 0x{pdu_type:02X}"
            key = "a fixed bound" if self._first_pdu else "node.max_pdu"
            self._ticket.refuse(Refusal.PDU_TOO_LARGE,
                                f"{what} announced {length} bytes, more than {limit} ({key}): sent A-ABORT")
            self._abort_now()
            return header
        pdu_type, _, length = PDU_HEADER.unpack(header)
        self._body_left = length if pdu_type in PDU_TYPES else None
        return header

    def _read(self, nr_bytes: int) -> bytearray:
        """Up to `nr_bytes` before the deadline; fewer means the connection is over (EOF or deadline)."""
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        sock = self.socket
        try:
            while got < nr_bytes and sock is not None and not self._ticket.closed:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    self._expired()
                    break
                sock.settimeout(remaining)
                n = sock.recv_into(view[got:], nr_bytes - got)
                if n == 0:
                    break
                got += n
        except TimeoutError:
            self._expired()
        except OSError:                     # reset or closed under us: what we have is all there is
            pass
        finally:
            view.release()
        del buf[got:]
        return buf

    def _expired(self) -> None:
        if self._first_pdu:
            self._ticket.refuse(Refusal.REQUEST_DEADLINE, f"no complete A-ASSOCIATE-RQ within "
                                f"{self._ticket.guard.limits.request_timeout_s:g} s "
                                "(node.association_request_timeout_s)")
        else:
            self._ticket.refuse(Refusal.PDU_DEADLINE, f"a PDU did not arrive whole within "
                                f"{self._pdu_timeout_s:g} s (node.pdu_read_timeout_s)")

    def _abort_now(self) -> None:
        """Send an A-ABORT PDU straight away and stop reading: the peer learns why, we buffer nothing."""
        self._aborted = True
        sock = self.socket
        if sock is None:
            return
        try:
            sock.settimeout(ABORT_SEND_TIMEOUT_S)
            sock.sendall(abort_pdu())
            sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            logger.debug("could not send A-ABORT to %s: %s", self._ticket.peer, exc)
