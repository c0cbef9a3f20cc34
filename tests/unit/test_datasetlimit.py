"""Data sets bounded before pydicom sees them: BoundedBuffer, BoundedDIMSE fed real P-DATA primitives,
the bounded inflate, and reading only the three UIDs."""

from __future__ import annotations

import queue
import zlib
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from dicom_node.datasetlimit import (
    COMMAND_SET_MAX_BYTES,
    INFLATE_CHUNK,
    BoundedBuffer,
    BoundedDIMSE,
    DatasetTooLargeError,
    inflated_size_within,
    read_identifiers,
)
from tests.support.ct_series import make_ct_series

MIB = 1024 * 1024


class FakeDUL:
    def __init__(self) -> None:
        self.event_queue: queue.Queue[str] = queue.Queue()


class FakeUser:
    address, port = "10.0.0.1", 4000


class FakeAssoc:
    def __init__(self) -> None:
        self.dul = FakeDUL()
        self.requestor = FakeUser()
        self.is_requestor = False

    def get_handlers(self, _event: Any) -> list[Any]:
        return []


def store_fragments(data_set: bytes, max_pdu: int = 16384) -> list[P_DATA]:
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = "1.2.3.4"
    request.Priority = 2
    request.DataSet = BytesIO(data_set)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return list(message.encode_msg(1, max_pdu))


def dimse(limit: int, timeout_s: float = 60.0) -> tuple[BoundedDIMSE, FakeAssoc]:
    assoc = FakeAssoc()
    return BoundedDIMSE(assoc, max_dataset_bytes=limit, message_timeout_s=timeout_s), assoc


def test_bounded_buffer_keeps_up_to_its_limit_then_counts_and_drops() -> None:
    buf = BoundedBuffer(10)
    assert buf.write(b"12345") == 5 and buf.write(memoryview(b"67890")) == 5
    assert buf.getvalue() == b"1234567890" and not buf.overflowed
    assert buf.write(b"x") == 1
    assert buf.overflowed and buf.getvalue() == b"" and buf.received == 11     # what it held is released
    buf.write(b"y" * 100)
    assert buf.getvalue() == b"" and buf.received == 111


@pytest.mark.parametrize(("size", "limit", "overflowed"), [(40000, 40000, False), (40001, 40000, True)])
def test_bounded_dimse_delivers_the_message_and_marks_an_oversized_data_set(size: int, limit: int,
                                                                            overflowed: bool) -> None:
    provider, assoc = dimse(limit)
    for fragment in store_fragments(b"\x01" * size):
        provider.receive_primitive(fragment)
    context_id, primitive = provider.msg_queue.get_nowait()
    assert context_id == 1 and isinstance(primitive, C_STORE) and primitive.MessageID == 7
    data_set = primitive.DataSet
    assert isinstance(data_set, BoundedBuffer) and data_set.overflowed is overflowed
    assert data_set.received == size
    assert len(data_set.getvalue()) == (0 if overflowed else size)
    assert assoc.dul.event_queue.empty()


def test_an_endless_command_set_aborts_the_association() -> None:
    provider, assoc = dimse(MIB)
    fragment = P_DATA()
    pdv: Any = [1, b"\x01" + b"c" * (COMMAND_SET_MAX_BYTES // 4)]          # a command fragment, never the last
    fragment.presentation_data_value_list = [pdv]
    for _ in range(5):
        provider.receive_primitive(fragment)
    assert assoc.dul.event_queue.get_nowait() == "Evt19"
    assert provider.msg_queue.empty()


def test_a_message_not_complete_within_its_time_aborts_the_association() -> None:
    provider, assoc = dimse(MIB, timeout_s=1e-9)
    fragments = store_fragments(b"\x01" * 40000)
    provider.receive_primitive(fragments[0])
    provider.receive_primitive(fragments[1])                     # later than 1 ns after the first
    assert assoc.dul.event_queue.get_nowait() == "Evt19"


def _deflated(payload: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(payload) + packer.flush()


@pytest.mark.parametrize("size", [0, 1, INFLATE_CHUNK - 1, INFLATE_CHUNK, 2 * INFLATE_CHUNK, 2 * INFLATE_CHUNK + 1])
def test_bounded_inflate_returns_exactly_the_inflated_bytes(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"\x07" * (size % 256)
    assert inflated_size_within(_deflated(payload), size, keep=True) == payload
    assert inflated_size_within(_deflated(payload), size, keep=False) == b""


def test_bounded_inflate_stops_at_the_limit_of_a_bomb() -> None:
    bomb = _deflated(bytes(64 * MIB))
    assert len(bomb) < 100_000
    with pytest.raises(DatasetTooLargeError, match=r"inflates to more than 8 MiB .*node.max_dataset_mb") as info:
        inflated_size_within(bomb, 8 * MIB, keep=False)
    assert 8 * MIB < info.value.size <= 8 * MIB + INFLATE_CHUNK   # stopped within one chunk of the limit


def _encoded(ds: Dataset, syntax: UID) -> BytesIO:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = syntax.is_little_endian, syntax.is_implicit_VR
    write_dataset(fp, ds)
    raw = fp.getvalue()
    return BytesIO(_deflated(raw) if syntax.is_deflated else raw)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                    DeflatedExplicitVRLittleEndian])
def test_read_identifiers_reads_the_three_uids_and_stops_before_the_pixels(syntax: UID) -> None:
    ds = make_ct_series(slices=1, rows=16, cols=16, seed=3)[0]
    encoded = _encoded(ds, syntax).getvalue()
    if not syntax.is_deflated:
        encoded = encoded[:-40]                                   # pixel data cut short: never read
    uids = read_identifiers(BytesIO(encoded), syntax, MIB)
    assert uids.SOPInstanceUID == ds.SOPInstanceUID
    assert (uids.StudyInstanceUID, uids.SeriesInstanceUID) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert "PixelData" not in uids and "PatientName" not in uids


def test_read_identifiers_refuses_what_is_too_large_and_what_is_missing() -> None:
    overflowed = BoundedBuffer(4)
    overflowed.write(b"12345")
    with pytest.raises(DatasetTooLargeError, match=r"is larger than 0 MiB \(5 bytes seen"):
        read_identifiers(overflowed, ExplicitVRLittleEndian, 4)
    with pytest.raises(DatasetTooLargeError, match=r"is larger than"):
        read_identifiers(BytesIO(b"x" * 10), ExplicitVRLittleEndian, 4)
    bomb = BytesIO(_deflated(bytes(3 * MIB)))
    with pytest.raises(DatasetTooLargeError, match=r"inflates to more than 2 MiB"):
        read_identifiers(bomb, DeflatedExplicitVRLittleEndian, 2 * MIB)
    with pytest.raises(ValueError, match=r"the C-STORE request has no data set"):
        read_identifiers(None, ExplicitVRLittleEndian, 4)
