"""A destination that aborts the association mid-series: the sender opens it again and goes on."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt

from dicom_node.config import DestinationSection
from dicom_node.senders.dimse import send_dicom
from tests.support.ct_series import make_ct_series


def test_sender_reconnects_after_an_abort(tmp_path: Path) -> None:
    received: list[str] = []
    aborts = {"left": 1}

    def on_store(event: evt.Event) -> int:
        if len(received) == 3 and aborts["left"]:
            aborts["left"] -= 1
            event.assoc.abort()                 # the peer drops the association without answering
            return 0
        received.append(str(event.dataset.SOPInstanceUID))
        return 0

    ae = AE("FLAKY")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        files = []
        for ds in make_ct_series(slices=6):
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        dest = DestinationSection("flaky", "FLAKY", "127.0.0.1", server.server_address[1])
        report = send_dicom(files, dest, "SYNTHNODE", timeout_s=5)
        assert report.ok and report.sent == 6
        assert sorted(received) == sorted(p.stem for p in files)

        aborts["left"] = 10**6                  # a peer that always drops: the attempt ends, nothing lost silently
        received.clear()
        report = send_dicom(files, dest, "SYNTHNODE", timeout_s=5, reconnects=1)
        assert not report.ok and report.sent == 3
        assert report.status in ("association-lost", "no-response")
        assert report.failed_sop_uids == tuple(p.stem for p in files[3:])
    finally:
        server.shutdown()
