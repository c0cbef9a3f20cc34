"""C-STORE data sets bounded by `node.max_dataset_mb`, deflated or not, before pydicom sees them.

pynetdicom appends every P-DATA fragment of a message to one BytesIO until the last-fragment bit, with
no cap, and `event.dataset` inflates a Deflated data set in one `zlib.decompress` and parses all of it:
500 MiB of zeros arrived as 0.5 MB and cost 1 GB each. Here:

* `BoundedDIMSE` (the association's DIMSE provider) gives each message a `BoundedBuffer`: fragments
  beyond the limit are counted, not kept (and what was kept is dropped), the last-fragment bit still
  ends the message, and the C-STORE handler sees `overflowed` and answers 0xA700. A command set
  beyond `COMMAND_SET_MAX_BYTES`, or a message not complete within `message_timeout_s` of its first
  fragment, aborts the association;
* `read_identifiers` inflates a Deflated data set in `INFLATE_CHUNK` pieces, counting, and refuses it
  once the count passes the limit; only within the limit does it inflate to parse. It parses only the
  three UIDs the handler needs (`specific_tags`, stopping after SeriesInstanceUID), never pixel data.
"""

from __future__ import annotations

import logging
import time
import zlib
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage

from dicom_node.assocguard import AssociationGuard, Refusal

if TYPE_CHECKING:
    from pynetdicom.pdu_primitives import P_DATA

logger = logging.getLogger(__name__)

COMMAND_SET_MAX_BYTES = 64 * 1024           # a C-STORE-RQ command set is a few hundred bytes
INFLATE_CHUNK = 1024 * 1024                 # inflate output per zlib call
RAW_DEFLATE = -zlib.MAX_WBITS               # Deflated Explicit VR LE: raw deflate, no zlib header
IDENTIFIER_TAGS: list[BaseTag | int] = [Tag(0x0008, 0x0018), Tag(0x0020, 0x000D), Tag(0x0020, 0x000E)]
LAST_IDENTIFIER = 0x0020000E                # SeriesInstanceUID: nothing after it is read
CONTROL_COMMAND, CONTROL_LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)


class DatasetTooLargeError(Exception):
    """A C-STORE data set (as received, or inflated) is larger than node.max_dataset_mb."""

    def __init__(self, size: int, limit: int, inflated: bool) -> None:
        what = "inflates to more than" if inflated else "is larger than"
        super().__init__(f"the data set {what} {limit // (1024 * 1024)} MiB ({size} bytes seen; "
                         "node.max_dataset_mb)")
        self.size, self.limit, self.inflated = size, limit, inflated


class BoundedBuffer(BytesIO):
    """A BytesIO that keeps at most `limit` bytes; past it, writes are counted and dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.received = 0
        self.overflowed = False

    def write(self, data: Any) -> int:
        n = len(memoryview(data))
        self.received += n
        if self.overflowed:
            return n
        if self.tell() + n > self.limit:
            self.overflowed = True
            self.seek(0)
            self.truncate()                  # release what was held
            return n
        return super().write(data)


class BoundedDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider with every message's data set and command set bounded."""

    def __init__(self, assoc: Any, *, max_dataset_bytes: int, message_timeout_s: float,
                 guard: AssociationGuard | None = None) -> None:
        super().__init__(assoc)
        self._max_dataset_bytes = max_dataset_bytes
        self._message_timeout_s = message_timeout_s
        self._guard = guard
        self._message_started = 0.0

    def receive_primitive(self, primitive: P_DATA) -> None:
        if self.message is None:
            self.message = DIMSEMessage()
            self.message.data_set = BoundedBuffer(self._max_dataset_bytes)
            self._message_started = time.monotonic()
        elif time.monotonic() - self._message_started > self._message_timeout_s:
            self._abort(Refusal.MESSAGE_DEADLINE, f"a DIMSE message was not complete within "
                        f"{self._message_timeout_s:g} s of its first fragment (node.dimse_timeout_s)")
            return
        command_bytes = sum(len(data) - 1 for _, data in primitive.presentation_data_value_list
                            if data and data[0] & CONTROL_COMMAND)
        if command_bytes and self.message.encoded_command_set.tell() + command_bytes > COMMAND_SET_MAX_BYTES:
            self._abort(Refusal.MESSAGE_TOO_LARGE, f"a DIMSE command set of more than {COMMAND_SET_MAX_BYTES} bytes")
            return
        super().receive_primitive(primitive)

    def _abort(self, reason: Refusal, detail: str) -> None:
        """Evt19 (invalid PDU): the FSM sends an A-ABORT and closes, as for any undecodable message."""
        requestor = self.assoc.requestor
        peer = f"{requestor.address}:{requestor.port}"
        if self._guard is not None:
            self._guard.note_refusal(reason, peer, detail)
        else:
            logger.warning("aborting association from %s: %s", peer, detail)
        self.message = None
        self.dul.event_queue.put("Evt19")


def inflated_size_within(data: bytes | memoryview, limit: int, *, keep: bool) -> bytes:
    """Inflate raw-deflate `data` in bounded pieces; DatasetTooLargeError as soon as it passes `limit`.

    With keep=False nothing is kept (the result is empty): the size check for a bomb costs one chunk
    of memory. With keep=True the inflated bytes are returned (at most `limit` of them)."""
    inflater = zlib.decompressobj(RAW_DEFLATE)
    kept = bytearray()
    total = 0
    pending: bytes | memoryview = data
    while True:
        piece = inflater.decompress(pending, INFLATE_CHUNK)
        total += len(piece)
        if total > limit:
            raise DatasetTooLargeError(total, limit, inflated=True)
        if keep:
            kept += piece
        pending = inflater.unconsumed_tail
        if inflater.eof or (not pending and len(piece) < INFLATE_CHUNK):
            return bytes(kept)


def _past_identifiers(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return int(tag) > LAST_IDENTIFIER


def read_identifiers(data_set: BytesIO | None, transfer_syntax: UID, limit: int) -> Dataset:
    """The SOP Instance, Study and Series Instance UIDs of a received data set, and nothing else.

    Raises DatasetTooLargeError when the data set (inflated, if deflated) is above `limit`; ValueError
    without a data set; pydicom's and zlib's errors for what cannot be decoded."""
    if data_set is None:
        raise ValueError("the C-STORE request has no data set")
    if isinstance(data_set, BoundedBuffer) and data_set.overflowed:
        raise DatasetTooLargeError(data_set.received, limit, inflated=False)
    body = data_set.getbuffer()
    try:
        if len(body) > limit:
            raise DatasetTooLargeError(len(body), limit, inflated=False)
        if transfer_syntax.is_deflated:
            inflated_size_within(body, limit, keep=False)          # a bomb stops here, nothing kept
            source = BytesIO(inflated_size_within(body, limit, keep=True))
            implicit, little = False, True
        else:
            source, implicit, little = data_set, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian
    finally:
        body.release()
    source.seek(0)                                                 # parse in place: no copy of the data set
    return read_dataset(source, implicit, little, stop_when=_past_identifiers, specific_tags=IDENTIFIER_TAGS)
