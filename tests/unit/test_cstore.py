"""The C-STORE SCU fast path (dicom_node/senders/cstore.py): the bytes it puts on the wire are the
standard's (checked against pynetdicom's own encoder and decoder), and every response is checked."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ as PynetdicomStoreRQ
from pynetdicom.dimse_messages import C_STORE_RSP as PynetdicomStoreRSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from dicom_node.config import DestinationSection
from dicom_node.senders.cstore import parse_response, pdata_buffers, read_part10, store_request
from dicom_node.senders.dimse import send_dicom
from tests.support.ct_series import make_ct_series

SOP_UID = "1.2.826.0.1.3680043.8.498.1"        # odd length: padded with NUL on the wire


def test_the_request_command_set_is_what_pynetdicom_encodes() -> None:
    request = C_STORE()
    request.MessageID, request.Priority = 7, 0          # medium, as dcmtk storescu sends
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CTImageStorage, SOP_UID
    request._dataset_path = Path("x.dcm")
    message = PynetdicomStoreRQ()
    message.primitive_to_message(request)
    assert store_request(CTImageStorage, SOP_UID, 7) == encode(message.command_set, True, True)


def _response(status: int, responded_to: int, comment: str | None = None) -> bytes:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo, rsp.Status = responded_to, status
    rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID = CTImageStorage, SOP_UID
    if comment is not None:
        rsp.ErrorComment = comment
    message = PynetdicomStoreRSP()
    message.primitive_to_message(rsp)
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    return encoded


def test_a_response_is_parsed_for_its_status_message_id_and_comment() -> None:
    rsp = parse_response(_response(0xB000, 7, "coerced"))
    assert (rsp.command, rsp.responded_to, rsp.status, rsp.comment) == (0x8001, 7, 0xB000, "coerced")
    assert parse_response(_response(0, 65535)).responded_to == 65535
    with pytest.raises(ValueError, match="a command set element header runs past its end"):
        parse_response(_response(0, 1) + b"\x00\x00")
    with pytest.raises(ValueError, match=r"a malformed command set element \(0000,0900\)"):
        parse_response(b"\x00\x00\x00\x09\xff\x00\x00\x00\x00")


@pytest.mark.parametrize("fragment", [100, 1000, 4 * 1024 * 1024])
def test_pdus_carry_the_data_set_unchanged_within_the_peers_maximum(fragment: int) -> None:
    data, command = bytes(range(256)) * 20, store_request(CTImageStorage, SOP_UID, 1)
    wire = b"".join(bytes(b) for b in pdata_buffers(3, command, data, fragment))
    got_command, got_data, at, controls = b"", b"", 0, []
    while at < len(wire):
        length = int.from_bytes(wire[at + 2:at + 6], "big")
        assert length <= fragment + 6                   # the PDU length the peer said it takes
        pdu = P_DATA_TF()
        pdu.decode(wire[at:at + 6 + length])
        for context_id, value in pdu.to_primitive().presentation_data_value_list:
            assert context_id == 3
            controls.append(value[0])
            if value[0] & 1:
                got_command += value[1:]
            else:
                got_data += value[1:]
        at += 6 + length
    assert (got_command, got_data) == (command, data)
    commands = len(command) // fragment + 1
    assert controls == [0x01] * (commands - 1) + [0x03] + [0x00] * (len(controls) - commands - 1) + [0x02]


class _Peer:
    """A pynetdicom Storage SCP on loopback answering `statuses[i]` to the i-th C-STORE (0 after)."""

    def __init__(self, syntaxes: list[str], statuses: dict[int, int] | None = None) -> None:
        self.statuses, self.received, self.syntaxes = statuses or {}, [], []
        self._lock = threading.Lock()
        ae = AE("PEER")
        ae.add_supported_context(CTImageStorage, syntaxes)
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)])
        self.dest = DestinationSection("peer", "PEER", "127.0.0.1", self.server.server_address[1])

    def on_store(self, event: evt.Event) -> int:
        with self._lock:
            ds = event.dataset
            self.received.append(ds)
            self.syntaxes.append(str(event.context.transfer_syntax))
            return self.statuses.get(len(self.received) - 1, 0)


def _files(tmp_path: Path, slices: int, size: int = 16) -> list[Path]:
    files = []
    for ds in make_ct_series(slices=slices, rows=size, cols=size):
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def test_every_status_is_checked_and_failures_are_named(tmp_path: Path) -> None:
    peer = _Peer([ExplicitVRLittleEndian], statuses={1: 0xA700, 3: 0xB000})
    try:
        files = _files(tmp_path, 5)
        report = send_dicom(files, peer.dest, "SYNTHNODE", timeout_s=5)
    finally:
        peer.server.shutdown()
    assert (report.total, report.sent, report.status) == (5, 4, "0xA700")
    assert report.failed_sop_uids == (files[1].stem,) and not report.ok
    assert report.error == f"C-STORE of {files[1].stem} answered 0xA700"
    assert [str(ds.SOPInstanceUID) for ds in peer.received] == [p.stem for p in files]


def test_a_file_is_sent_as_stored_or_re_encoded_for_a_peer_that_takes_only_implicit(tmp_path: Path) -> None:
    files = _files(tmp_path, 2)
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        peer = _Peer([syntax])
        try:
            report = send_dicom(files, peer.dest, "SYNTHNODE", timeout_s=5)
        finally:
            peer.server.shutdown()
        assert report.ok and report.sent == 2 and peer.syntaxes == [syntax] * 2
        for path, got in zip(files, peer.received, strict=True):
            assert got.PixelData == dcmread(path).PixelData and got.SOPInstanceUID == path.stem
    assert read_part10(files[0])[1] == files[0].read_bytes()[-len(read_part10(files[0])[1]):]


def test_many_quick_stores_all_get_their_own_response(tmp_path: Path) -> None:
    """pynetdicom's reactor could take a fast response away (then a whole DIMSE timeout): never here."""
    peer = _Peer([ExplicitVRLittleEndian])
    try:
        files = _files(tmp_path, 150, size=8)
        report = send_dicom(files, peer.dest, "SYNTHNODE", timeout_s=5, reconnects=0)
    finally:
        peer.server.shutdown()
    assert report.ok and report.sent == 150 and len(peer.received) == 150


def test_a_file_no_context_can_carry_is_failed_by_name_and_the_rest_go_on(tmp_path: Path) -> None:
    files = _files(tmp_path, 3)
    broken = tmp_path / "2.25.1.dcm"
    broken.write_bytes(b"not dicom at all")
    peer = _Peer([ExplicitVRLittleEndian])
    try:
        report = send_dicom([files[0], broken, *files[1:]], peer.dest, "SYNTHNODE", timeout_s=5)
    finally:
        peer.server.shutdown()
    assert (report.sent, report.failed_sop_uids, report.status) == (3, ("2.25.1",), "not-sent")
    assert report.error.startswith("2.25.1.dcm: ")
