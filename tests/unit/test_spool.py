from __future__ import annotations

import hashlib
from pathlib import Path

from dicom_node.spool import Spool


def test_put_writes_bytes_atomically_and_reports_digest(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    stored = spool.put("1.2", "1.2.3", "1.2.3.4", b"DICM-bytes")
    assert stored.path == tmp_path / "incoming" / "1.2.3" / "1.2.3.4.dcm"
    assert stored.path.read_bytes() == b"DICM-bytes"
    assert stored.digest == hashlib.sha256(b"DICM-bytes").hexdigest()
    assert not [p for p in stored.path.parent.iterdir() if p.name.startswith(".tmp")]


def test_resend_overwrites_one_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put("1.2", "1.2.3", "1.2.3.4", b"first")
    spool.put("1.2", "1.2.3", "1.2.3.4", b"second")
    assert [p.read_bytes() for p in spool.instance_files("1.2.3")] == [b"second"]


def test_reject_keeps_instances_with_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put("1.2", "1.2.3", "1.2.3.4", b"a")
    spool.put("1.2", "1.2.3", "1.2.3.5", b"b")
    folder = spool.reject("1.2.3", "gantry_tilt", "tilted 12 degrees")
    assert folder == tmp_path / "rejected" / "1.2.3"
    assert sorted(p.name for p in folder.glob("*.dcm")) == ["1.2.3.4.dcm", "1.2.3.5.dcm"]
    assert (folder / "reason").read_text() == "gantry_tilt\ntilted 12 degrees\n"
    assert not (tmp_path / "incoming" / "1.2.3").exists()


def test_instance_files_merge_rejected_and_new_arrivals(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put("1.2", "1.2.3", "1.2.3.4", b"old")
    spool.reject("1.2.3", "single_slice", "1 slice")
    spool.put("1.2", "1.2.3", "1.2.3.4", b"new")
    spool.put("1.2", "1.2.3", "1.2.3.5", b"more")
    assert [p.read_bytes() for p in spool.instance_files("1.2.3")] == [b"new", b"more"]
