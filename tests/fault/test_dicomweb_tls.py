"""DICOMweb over HTTPS: the server is always verified, against the system CAs or only `ca_file`."""

from __future__ import annotations

from pathlib import Path

from dicom_node.config import DicomwebDestinationSection
from dicom_node.senders import SenderContext
from dicom_node.senders.dicomweb import DicomwebSender
from tests.fault.conftest import TlsFiles
from tests.support.ct_series import make_ct_series
from tests.support.stow_server import running_stow_server


def derived_files(directory: Path, count: int = 3) -> list[Path]:
    directory.mkdir(parents=True)
    paths = []
    for ds in make_ct_series(slices=count, rows=16, cols=16):
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def sender(url: str, ca_file: str = "") -> DicomwebSender:
    return DicomwebSender(DicomwebDestinationSection("web", url, token="t", ca_file=ca_file),
                          SenderContext("SYNTHNODE", 5.0))


def test_an_untrusted_server_is_refused_and_retried(tmp_path: Path, tls_files: TlsFiles) -> None:
    files = derived_files(tmp_path / "derived")
    with running_stow_server(tls=tls_files.server_context()) as server:
        untrusted = sender(server.url)                   # our test CA is not a system CA
        report = untrusted.deliver(files, derived_series_uid="2.25.1")
        check = untrusted.check()
    assert (report.ok, report.sent, report.status, report.retry) == (False, 0, "connection-failed", True)
    assert "CERTIFICATE_VERIFY_FAILED" in report.error
    assert not check.ok and "CERTIFICATE_VERIFY_FAILED" in check.message
    assert server.requests == []                        # nothing reached the server, the token included


def test_ca_file_trusts_the_server(tmp_path: Path, tls_files: TlsFiles) -> None:
    files = derived_files(tmp_path / "derived")
    with running_stow_server(tls=tls_files.server_context()) as server:
        trusted = sender(server.url, ca_file=str(tls_files.ca))
        report = trusted.deliver(files, derived_series_uid="2.25.1")
        assert trusted.check().ok
    assert report.ok and report.sent == 3 and len(server.received) == 3
    assert server.requests[0]["authorization"] == "Bearer t"


def test_a_certificate_for_another_name_is_refused(tmp_path: Path, tls_files: TlsFiles) -> None:
    files = derived_files(tmp_path / "derived")
    with running_stow_server(tls=tls_files.server_context(), host="127.0.0.2") as server:   # not in its SAN
        other_name = sender(server.url, ca_file=str(tls_files.ca))
        report = other_name.deliver(files, derived_series_uid="2.25.1")
    assert not report.ok and report.status == "connection-failed"
    assert "IP address mismatch" in report.error and server.requests == []
