"""BoundedSocket over a scripted fake socket (no network): PDU length bounds, A-ABORT, deadlines, and the
log filter for PDUs the node cut short."""

from __future__ import annotations

import logging
import queue
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom.transport import AssociationSocket

from dicom_node.assocguard import AssociationGuard, AssociationLimits, ConnectionTicket
from dicom_node.pdusocket import (
    PYNETDICOM_SHORT_PDU,
    REQUEST_PDU_MAX_BYTES,
    BoundedSocket,
    QuietCutPDUs,
    _cut,
    abort_pdu,
    oversized,
)

MAX_PDU = 16384
LIMITS = AssociationLimits(max_associations=4, max_pending=4, max_pending_per_address=4, request_timeout_s=5.0,
                           pdu_timeout_s=30.0, max_pdu=MAX_PDU, max_dataset_bytes=1 << 20, message_timeout_s=60.0)
STALL = object()


def header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


class ScriptedSocket:
    """Hands out scripted chunks to recv_into; STALL raises TimeoutError, the end of the script is EOF."""

    def __init__(self, *chunks: object) -> None:
        self._chunks: Iterator[object] = iter(chunks)
        self._pending = b""
        self.sent = bytearray()
        self.shut = False
        self.timeouts: list[float | None] = []

    def settimeout(self, value: float | None) -> None:
        self.timeouts.append(value)

    def recv_into(self, view: memoryview, nbytes: int) -> int:
        if not self._pending:
            chunk = next(self._chunks, b"")
            if chunk is STALL:
                raise TimeoutError("timed out")
            assert isinstance(chunk, bytes)
            self._pending = chunk
        n = min(nbytes, len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def shutdown(self, how: int) -> None:
        self.shut = True

    def close(self) -> None:
        pass


class FakeDUL:
    def __init__(self) -> None:
        self.event_queue: queue.Queue[str] = queue.Queue()


class FakeAssoc:
    def __init__(self) -> None:
        self.dul = FakeDUL()

    def get_handlers(self, _event: Any) -> list[Any]:
        return []


def bounded(raw: ScriptedSocket, refusals: list[str] | None = None) -> tuple[BoundedSocket, ConnectionTicket]:
    guard = AssociationGuard(LIMITS, on_refused=(refusals if refusals is not None else []).append)
    ticket = guard.admit("10.0.0.1", 5000)
    assert ticket is not None
    stock = AssociationSocket(FakeAssoc(), client_socket=raw)  # type: ignore[arg-type]
    return BoundedSocket.adopt(stock, ticket=ticket), ticket


def test_oversized_reads_the_header_only() -> None:
    assert oversized(header(0x04, 100), 99) == (0x04, 100)
    assert oversized(header(0x04, 99), 99) is None
    assert oversized(header(0x55, 1 << 30), 99) is None           # unknown type: pynetdicom refuses it itself
    assert oversized(b"\x04\x00", 99) is None                     # a short header: the connection is over


def test_the_abort_pdu_is_a_provider_abort_for_an_invalid_parameter() -> None:
    assert abort_pdu() == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"


def test_pdus_within_bounds_pass_and_the_bound_tightens_after_the_request() -> None:
    request = b"r" * 1000
    data = b"d" * MAX_PDU
    raw = ScriptedSocket(header(0x01, len(request)) + request[:300], request[300:], header(0x04, MAX_PDU), data)
    sock, ticket = bounded(raw)
    assert bytes(sock.recv(6)) == header(0x01, 1000)
    assert bytes(sock.recv(1000)) == request                      # two pieces, one buffer
    assert bytes(sock.recv(6)) == header(0x04, MAX_PDU)
    assert bytes(sock.recv(MAX_PDU)) == data
    assert ticket.refused is None and raw.sent == b""


def test_a_request_pdu_above_the_fixed_bound_gets_an_abort_and_no_body_is_read() -> None:
    refusals: list[str] = []
    raw = ScriptedSocket(header(0x01, 0xFFFFFFF0), b"\x00" * 100)
    sock, ticket = bounded(raw, refusals)
    assert bytes(sock.recv(6)) == header(0x01, 0xFFFFFFF0)
    assert raw.sent == abort_pdu() and raw.shut
    assert sock.recv(0xFFFFFFF0) == bytearray()                   # nothing buffered
    assert refusals == ["pdu_too_large"] and ticket.refused is not None
    assert REQUEST_PDU_MAX_BYTES < 0xFFFFFFF0


def test_a_p_data_above_max_pdu_after_association_is_refused() -> None:
    refusals: list[str] = []
    raw = ScriptedSocket(header(0x01, 4) + b"rqrq", header(0x04, MAX_PDU + 1))
    sock, _ = bounded(raw, refusals)
    sock.recv(6)
    sock.recv(4)
    sock.recv(6)
    assert refusals == ["pdu_too_large"] and raw.sent == abort_pdu()


@pytest.mark.parametrize(("script", "reason"), [
    ((header(0x01, 100) + b"x" * 10, STALL), "request_deadline"),
    ((header(0x01, 4) + b"rqrq", header(0x04, 100) + b"x" * 10, STALL), "pdu_deadline"),
])
def test_a_pdu_that_stalls_is_cut_short_with_its_deadline_as_the_reason(script: tuple[object, ...],
                                                                        reason: str) -> None:
    refusals: list[str] = []
    sock, _ = bounded(ScriptedSocket(*script), refusals)
    sock.recv(6)
    if reason == "pdu_deadline":
        sock.recv(4)
        sock.recv(6)
    assert len(sock.recv(100)) == 10                              # short: pynetdicom sees a closed connection
    assert refusals == [reason]
    assert getattr(_cut, "pending", False)
    _cut.pending = False


def test_every_read_is_bounded_by_the_time_left() -> None:
    raw = ScriptedSocket(header(0x01, 4), b"rq", b"rq")
    sock, ticket = bounded(raw)
    sock.recv(6)
    sock.recv(4)
    assert len(raw.timeouts) == 3 and all(t is not None and 0 < t <= 5.0 for t in raw.timeouts)
    assert ticket.refused is None


def test_closing_the_socket_frees_the_ticket() -> None:
    sock, ticket = bounded(ScriptedSocket())
    sock.close()
    assert ticket.closed


def test_quiet_cut_pdus_drops_only_the_flagged_shortness_error() -> None:
    f = QuietCutPDUs()

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("pynetdicom.dul", logging.ERROR, __file__, 1, msg, None, None)

    short = PYNETDICOM_SHORT_PDU + " (6 of 262 bytes received)"
    _cut.pending = False
    assert f.filter(record(short))                                # a peer's own EOF: kept
    _cut.pending = True
    assert f.filter(record("something else"))
    assert not f.filter(record(short))                            # the node cut it: dropped, once
    assert f.filter(record(short))
