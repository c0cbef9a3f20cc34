from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.config import DestinationSection, FolderDestinationSection
from dicom_node.senders import SenderContext, SendReport, build_sender, kinds
from dicom_node.senders.dimse import DicomSender, send_dicom
from dicom_node.senders.folder import FolderSender
from dicom_node.senders.registry import sender_for


def send_folder(files: list[Path], dest: FolderDestinationSection, series_uid: str) -> SendReport:
    return FolderSender(dest).deliver(files, derived_series_uid=series_uid)


def test_folder_destination_gets_the_same_bytes(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        path = tmp_path / "src" / f"1.2.{i}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"instance {i}".encode())
        files.append(path)
    report = send_folder(files, FolderDestinationSection("out", str(tmp_path / "out")), "2.25.9")
    assert report.ok and (report.sent, report.total, report.status) == (3, 3, "ok")
    assert [p.read_bytes() for p in sorted((tmp_path / "out" / "2.25.9").iterdir())] == [
        b"instance 0", b"instance 1", b"instance 2"]


def test_unwritable_folder_is_a_failed_report(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    src = tmp_path / "a.dcm"
    src.write_bytes(b"x")
    report = send_folder([src], FolderDestinationSection("out", str(blocker)), "2.25.9")
    assert not report.ok and report.status == "write-failed" and str(blocker) in report.error


def test_unreachable_destination_is_a_failed_report(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    src = tmp_path / "a.dcm"
    src.write_bytes(b"x")
    report = send_dicom([src], DestinationSection("pacs", "PACS", "127.0.0.1", port), "SYNTHNODE", 2.0)
    assert report == SendReport("pacs", 1, 0, "association-failed",
                                f"could not associate with PACS@127.0.0.1:{port} (association-failed)", ("a",))
    assert not report.ok


def test_every_destination_kind_has_its_sender() -> None:
    ctx = SenderContext("SYNTHNODE", 5.0)
    assert set(kinds()) >= {DestinationSection, FolderDestinationSection}
    dicom = build_sender(DestinationSection("pacs", "PACS", "10.0.0.5", 104, tls=True), ctx)
    assert isinstance(dicom, DicomSender) and (dicom.kind, dicom.describe()) == ("dicom", "PACS@10.0.0.5:104 (TLS)")
    folder = build_sender(FolderDestinationSection("out", "/srv/out"), ctx)
    assert isinstance(folder, FolderSender) and (folder.kind, folder.describe()) == ("folder", "/srv/out")


def test_a_kind_without_a_sender_and_a_kind_registered_twice_are_refused() -> None:
    class Pigeon:
        name = "coop"

    with pytest.raises(ValueError, match="no sender is registered for Pigeon"):
        build_sender(Pigeon(), SenderContext("SYNTHNODE", 5.0))
    with pytest.raises(ValueError, match="a sender for FolderDestinationSection is registered twice"):
        sender_for(FolderDestinationSection)(lambda section, ctx: FolderSender(section))


def test_a_folder_check_says_whether_it_can_be_written(tmp_path: Path) -> None:
    ok = FolderSender(FolderDestinationSection("out", str(tmp_path / "new" / "out"))).check()
    assert ok.ok and ok.message == f"folder {tmp_path / 'new' / 'out'}: writable"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = FolderSender(FolderDestinationSection("out", str(blocker / "out"))).check()
    assert not bad.ok and bad.message.endswith(f"{blocker} is not a writable folder")
