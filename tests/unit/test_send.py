from __future__ import annotations

from pathlib import Path

from dicom_node.config import DestinationSection, FolderDestinationSection
from dicom_node.send import SendReport, send_dicom, send_folder


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
