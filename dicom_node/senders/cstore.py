"""C-STORE requests over an established pynetdicom association, at the pace of dcmtk's storescu.

pynetdicom's `Association.send_c_store` costs the node most of its send time and, once in a few
hundred fast stores, a whole DIMSE timeout (bench/README.md, "send"):

* it parses and re-encodes a file that is already encoded (or, sent from a path, depends on the
  process-wide `_config.STORE_SEND_CHUNKED_DATASET`);
* every P-DATA PDU goes through the DUL thread's queue and state machine, one PDU per pass, and the DUL
  sleeps 1 ms whenever a pass finds nothing to do, so a response waits up to 1 ms to be seen;
* it pauses the association reactor with a check that can race (the reactor is past its checkpoint
  but still says it is paused), and then the reactor takes our C-STORE response off the queue as
  an "unexpected C-STORE service message": the SCU waits the whole DIMSE timeout for it.

A `StoreChannel` takes the association's socket for as long as the series is sent, as dcmtk's
storescu works: the association reactor and the DUL thread are parked (each behind a stand-in that
tells when it really waits and reads nothing), so no response can be taken by them and no thread
hand-off or poll sleep sits between a request and its response. Each file's data set is sent as it is
stored (after its file meta) when a context with its transfer syntax was accepted (re-encoded from the
parsed file otherwise, between the uncompressed syntaxes only); its P-DATA PDUs, fragmented to the
peer's maximum PDU length, go out in one `sendmsg` (one `sendall` over TLS), and the sending thread
reads the response PDUs itself, blocking, bounded by the timeout and by our maximum PDU length, and
decodes them with pynetdicom. On leaving, pynetdicom has its socket back; any PDU that is not a
P-DATA (an A-ABORT, say) ends the channel with "no response", and the caller aborts the association.
"""

from __future__ import annotations

import io
import itertools
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import dcmread, read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode

logger = logging.getLogger(__name__)

PDU_HEADER = struct.Struct(">BBIIBB")   # PDU type, reserved, PDU length, PDV item length, context ID, control
PDU_PREFIX = struct.Struct(">BBI")      # PDU type, reserved, PDU length
PDV_PREFIX = struct.Struct(">IBB")      # PDV item length, context ID, message control header
ELEMENT = struct.Struct("<HHI")         # implicit VR little endian: group, element, value length
US = struct.Struct("<H")
P_DATA_TF, A_ABORT = 0x04, 0x07
COMMAND_MORE, COMMAND_LAST, DATA_MORE, DATA_LAST = 0x01, 0x03, 0x00, 0x02
PDV_OVERHEAD = 6                        # PDV item length (4), context ID (1), message control header (1)
UNLIMITED_FRAGMENT = 4 * 1024 * 1024    # the peer takes any PDU length (0): still send at most this per PDU
MAX_RESPONSE_PDU = 1024 * 1024          # a C-STORE response is a few hundred bytes; we said we take less
PARK_TIMEOUT_S = 10.0                   # the reactor and the DUL each reach their stand-in within a pass (~1 ms)
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_IOV = 512                           # buffers per sendmsg, under every IOV_MAX


C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
NO_DATA_SET, DATA_SET = 0x0101, 0x0001
MEDIUM_PRIORITY = 0x0000
COMMAND_FIELD, MESSAGE_ID_RESPONDED, STATUS, ERROR_COMMENT = 0x0100, 0x0120, 0x0900, 0x0902


class ChannelError(RuntimeError):
    """The association cannot carry our C-STOREs (its reactor or DUL never paused)."""


class _Lost(Exception):
    """The association is gone, or the peer said something we cannot go on after."""


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    sop_uid: str
    status: int | None        # the C-STORE response status; None: no (valid) response, the association is gone
    detail: str               # why, when it is not a status ("" otherwise)


class _Checkpoint(threading.Event):
    """Stands in for `Association._reactor_checkpoint`: cleared, it tells when the reactor waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if not self.is_set():
            self.waiting.set()
        return super().wait(timeout)


class _ParkedSocket:
    """Stands in for the DUL's AssociationSocket: never `ready`, so the DUL reads nothing; says when it asked."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.asked = threading.Event()

    @property
    def ready(self) -> bool:
        self.asked.set()
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _not_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 2


def read_part10(source: Path | bytes) -> tuple[Dataset, bytes]:
    """(file meta, the data set's bytes exactly as stored) of a DICOM Part 10 file, on disk or in memory."""
    with (source.open("rb") if isinstance(source, Path) else io.BytesIO(source)) as handle:
        read_preamble(handle, False)
        meta = read_dataset(handle, is_implicit_VR=False, is_little_endian=True, stop_when=_not_file_meta)
        return meta, handle.read()


def fragments(data: bytes | memoryview, size: int) -> Iterator[memoryview]:
    view = memoryview(data)
    for start in range(0, max(len(view), 1), size):
        yield view[start:start + size]


def pdata_buffers(context_id: int, command: bytes, data: bytes, fragment: int) -> list[bytes | memoryview]:
    """The P-DATA-TF PDUs of one C-STORE request as buffers for one scatter write (one PDV per PDU)."""
    commands, chunks = list(fragments(command, fragment)), list(fragments(data, fragment))
    pieces = [*[(COMMAND_MORE, c) for c in commands[:-1]], (COMMAND_LAST, commands[-1]),
              *[(DATA_MORE, c) for c in chunks[:-1]], (DATA_LAST, chunks[-1])]
    buffers: list[bytes | memoryview] = []
    for control, chunk in pieces:
        size = len(chunk)
        buffers += [PDU_HEADER.pack(P_DATA_TF, 0, size + PDV_OVERHEAD, size + 2, context_id, control), chunk]
    return buffers


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"                       # UI values are padded with NUL to an even length
    return ELEMENT.pack(0x0000, element, len(value)) + value


def store_request(sop_class: str, sop_uid: str, msg_id: int) -> bytes:
    """The command set of a C-STORE-RQ with a data set (PS3.7 9.3.1.1), implicit VR little endian."""
    body = b"".join((
        _element(0x0002, sop_class.encode("ascii")),
        _element(0x0100, US.pack(C_STORE_RQ)),
        _element(0x0110, US.pack(msg_id)),
        _element(0x0700, US.pack(MEDIUM_PRIORITY)),
        _element(0x0800, US.pack(DATA_SET)),
        _element(0x1000, sop_uid.encode("ascii")),
    ))
    return _element(0x0000, struct.pack("<I", len(body))) + body


@dataclass(frozen=True, slots=True)
class StoreResponse:
    command: int
    responded_to: int | None
    status: int | None
    comment: str


def parse_response(command: bytes) -> StoreResponse:
    """The elements of a DIMSE response command set that a C-STORE SCU needs; ValueError if malformed."""
    found: dict[int, bytes] = {}
    at = 0
    while at < len(command):
        if at + ELEMENT.size > len(command):
            raise ValueError("a command set element header runs past its end")
        group, element, length = ELEMENT.unpack_from(command, at)
        at += ELEMENT.size
        if group != 0x0000 or at + length > len(command):
            raise ValueError(f"a malformed command set element ({group:04X},{element:04X})")
        found[element] = command[at:at + length]
        at += length

    def us(element: int) -> int | None:
        value = found.get(element)
        return US.unpack(value)[0] if value is not None and len(value) == 2 else None

    comment = found.get(ERROR_COMMENT, b"").decode("ascii", "replace").strip(" \0")
    return StoreResponse(us(COMMAND_FIELD) or 0, us(MESSAGE_ID_RESPONDED), us(STATUS), comment[:64])


class StoreChannel:
    """C-STOREs over `assoc` while it is entered (`with StoreChannel(assoc, timeout_s=...) as ch`)."""

    def __init__(self, assoc: Any, *, timeout_s: float) -> None:
        self._assoc, self._timeout_s = assoc, timeout_s
        self._ids = itertools.count(1)
        self._checkpoint = _Checkpoint()
        self._original_checkpoint: Any = None
        self._dul_socket: Any = None
        self._socket_timeout: float | None = None
        self._sock: socket.socket = assoc.dul.socket.socket
        max_pdu = int(assoc.acceptor.maximum_length or 0)
        self._fragment = max_pdu - PDV_OVERHEAD if max_pdu else UNLIMITED_FRAGMENT
        ours = int(assoc.requestor.maximum_length or 0)
        self._max_response = min(ours, MAX_RESPONSE_PDU) if ours else MAX_RESPONSE_PDU

    def __enter__(self) -> StoreChannel:
        self._original_checkpoint = self._assoc._reactor_checkpoint
        self._assoc._reactor_checkpoint = self._checkpoint
        self._dul_socket = self._assoc.dul.socket
        parked = _ParkedSocket(self._dul_socket)
        self._assoc.dul.socket = parked
        if not (self._checkpoint.waiting.wait(PARK_TIMEOUT_S) and parked.asked.wait(PARK_TIMEOUT_S)):
            self.__exit__()
            raise ChannelError(f"the association's threads did not pause within {PARK_TIMEOUT_S:g} s")
        self._socket_timeout = self._sock.gettimeout()
        self._sock.settimeout(self._timeout_s)    # bounds every send; each read gets what is left of its deadline
        return self

    def __exit__(self, *exc: object) -> None:
        if self._socket_timeout is not None:
            self._sock.settimeout(self._socket_timeout)
        self._assoc.dul.socket = self._dul_socket
        timer = getattr(self._assoc.dul, "_idle_timer", None)
        if timer is not None:                  # we read the peer's PDUs, not the DUL: it was not idle
            timer.restart()
        self._assoc._reactor_checkpoint = self._original_checkpoint
        self._checkpoint.set()

    def store(self, path: Path, *, part10: bytes | None = None) -> StoreOutcome:
        """C-STORE one file (or `part10`, that file re-encoded in memory, e.g. compressed); raises ValueError
        when no accepted context can carry it (nothing was sent)."""
        try:
            meta, data = read_part10(path if part10 is None else part10)
        except InvalidDicomError as exc:
            raise ValueError(f"{path.name} is not a DICOM file ({exc})") from exc
        sop_class, sop_uid = UID(str(meta.MediaStorageSOPClassUID)), str(meta.MediaStorageSOPInstanceUID)
        context_id, data = self._context_for(path, sop_class, UID(str(meta.TransferSyntaxUID)), data)
        msg_id = (next(self._ids) - 1) % 0xFFFF + 1
        deadline = time.monotonic() + self._timeout_s
        try:
            self._send_all(pdata_buffers(context_id, store_request(sop_class, sop_uid, msg_id), data, self._fragment))
            rsp = parse_response(self._response(deadline))
        except (OSError, ValueError, _Lost) as exc:
            what = str(exc) if not isinstance(exc, OSError) else (exc.strerror or type(exc).__name__)
            return StoreOutcome(sop_uid, None, f"no valid C-STORE response for {sop_uid} ({what})")
        if rsp.command != C_STORE_RSP or rsp.status is None:
            return StoreOutcome(sop_uid, None, f"an invalid response to the C-STORE of {sop_uid} "
                                               f"(command 0x{rsp.command:04X})")
        if rsp.responded_to != msg_id:
            return StoreOutcome(sop_uid, None, f"a response to message {rsp.responded_to}, not {msg_id} ({sop_uid})")
        return StoreOutcome(sop_uid, rsp.status, rsp.comment)

    def _context_for(self, path: Path, sop_class: UID, syntax: UID, data: bytes) -> tuple[int, bytes]:
        accepted = [cx for cx in self._assoc.accepted_contexts if cx.abstract_syntax == sop_class]
        for cx in accepted:
            if cx.transfer_syntax[0] == syntax:
                return int(cx.context_id), data
        if syntax in UNCOMPRESSED:
            for cx in accepted:
                target = UID(cx.transfer_syntax[0])
                if target in UNCOMPRESSED:
                    encoded = encode(dcmread(path), target.is_implicit_VR, True)
                    if encoded is None:
                        raise ValueError(f"{path.name}: could not encode it as {target.name}")
                    return int(cx.context_id), encoded
        raise ValueError(f"{path.name}: no accepted presentation context for {sop_class.name} in {syntax.name}")

    def _send_all(self, buffers: list[bytes | memoryview]) -> None:
        if isinstance(self._sock, ssl.SSLSocket):
            self._sock.sendall(b"".join(buffers))     # TLS: an SSLSocket has no scatter write
            return
        views = [memoryview(b) for b in buffers]
        while views:
            sent = self._sock.sendmsg(views[:MAX_IOV])
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if sent:
                views[0] = views[0][sent:]

    def _response(self, deadline: float) -> bytes:
        """Read P-DATA PDUs until a command set is complete; its bytes."""
        command = bytearray()
        while True:
            prefix = self._recv_exact(PDU_PREFIX.size, deadline)
            pdu_type, _, length = PDU_PREFIX.unpack(prefix)
            if pdu_type != P_DATA_TF:
                raise _Lost("the peer aborted the association" if pdu_type == A_ABORT
                            else f"a PDU of type 0x{pdu_type:02X} instead of the response")
            if length > self._max_response:
                raise _Lost(f"a response PDU of {length} bytes, over {self._max_response}")
            body, at = self._recv_exact(length, deadline), 0
            while at < len(body):
                if at + PDV_PREFIX.size > len(body):
                    raise _Lost("a malformed PDV item in the response")
                item, _, control = PDV_PREFIX.unpack_from(body, at)
                end = at + 4 + item
                if item < 2 or end > len(body):
                    raise _Lost("a malformed PDV item in the response")
                if control & 0x01:                 # command fragments; a response carries no data set
                    command += body[at + PDV_PREFIX.size:end]
                    if len(command) > self._max_response:
                        raise _Lost(f"a response command set over {self._max_response} bytes")
                    if control & 0x02:
                        return bytes(command)
                at = end

    def _recv_exact(self, size: int, deadline: float) -> bytes:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Lost(f"no response within {self._timeout_s:g} s")
            self._sock.settimeout(left)
            n = self._sock.recv_into(view[got:])
            if n == 0:
                raise _Lost("the peer closed the connection")
            got += n
        return bytes(buffer)
