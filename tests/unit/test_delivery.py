"""Delivery records beside a derived series: durable, per destination, cleared when it is rewritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.delivery import deliveries, record_delivery
from dicom_node.spool import Spool, manifest_files
from dicom_node.write import write_derived_series
from synth.interpolate import InterpolationSynthesizer
from tests.support.ct_series import make_ct_series
from tests.unit.test_assemble import run


def test_a_record_per_destination_is_read_back(tmp_path: Path) -> None:
    derived = tmp_path / "1.2.3"
    derived.mkdir()
    assert record_delivery(derived, destination="pacs", sent=21, now=1_700_000_000.0)
    assert record_delivery(derived, destination="..", sent=21, now=1_700_000_001.0)   # a legal, odd name
    got = deliveries(derived)
    assert sorted(got) == ["..", "pacs"]
    assert got["pacs"].sent == 21
    assert (derived / "delivered" / "pacs.sent").read_text() == "21 2023-11-14T22:13:20+00:00\n"
    assert not [p for p in (derived / "delivered").iterdir() if p.name.startswith(".tmp-")]
    assert deliveries(tmp_path / "none") == {}


def test_a_record_that_cannot_be_written_is_logged_not_raised(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    assert not record_delivery(tmp_path / "gone", destination="pacs", sent=1, now=0.0)
    assert "could not record the delivery of gone to pacs" in caplog.text
    assert "a ledger rebuild would send it again" in caplog.text


def test_processing_again_rewrites_the_folder_and_clears_the_records(tmp_path: Path) -> None:
    volume, source = run(make_ct_series(slices=3))
    synth = InterpolationSynthesizer(5)
    spool = Spool(tmp_path, fsync=False)
    first = write_derived_series(synth(volume), source, identity=synth.identity, factor=5, spool=spool)
    record_delivery(first.directory, destination="pacs", sent=first.count, now=0.0)
    files = [first.directory / f"{uid}.dcm" for uid in first.sop_uids]
    assert manifest_files(first.directory) == files                    # the record is not a file to send
    again = write_derived_series(synth(volume), source, identity=synth.identity, factor=5, spool=spool)
    assert again.directory == first.directory and deliveries(again.directory) == {}
