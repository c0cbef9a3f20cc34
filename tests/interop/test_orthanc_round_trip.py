"""Orthanc as the PACS: storescu -> Orthanc -> (Lua OnStableSeries) -> node -> Orthanc, asserted by REST.

Orthanc's rule routes EVERY stable CT series to the node, the derived one included, so the node
must recognise its own output or the round trip loops.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.interop.checks import check_derived_series, expected_count
from tests.interop.peers import (
    NodeFactory,
    Orthanc,
    OrthancFactory,
    Peer,
    PeerError,
    RunningNode,
    free_port,
    storescu,
    wait_for,
)
from tests.support.ct_series import make_ct_series, write_series
from tests.support.realct import RealSeries

pytestmark = pytest.mark.interop

ROUND_TRIP_TIMEOUT_S = 120.0
HEADER_TAGS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID",
    "Modality", "ImageType", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "Rows", "Columns", "SliceThickness", "SpacingBetweenSlices",
)  # fmt: skip
MULTI_VALUED = {"ImageType", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"}


def _dataset_from_tags(tags: dict[str, Any]) -> Dataset:
    """A header-only Dataset from Orthanc's simplified tags, for the shared geometry checks."""
    ds = Dataset()
    for keyword in HEADER_TAGS:
        if keyword not in tags:
            continue
        value = tags[keyword]
        if keyword in MULTI_VALUED:
            value = str(value).split("\\")
        elif keyword in ("Rows", "Columns", "InstanceNumber"):
            value = int(value)
        setattr(ds, keyword, value)
    return ds


def _series_of_study(orthanc: Orthanc, study_uid: str) -> dict[str, str]:
    """SeriesInstanceUID -> Orthanc series id for one study."""
    found = orthanc.post("/tools/find", {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}})
    result = {}
    for series_id in found:
        series = orthanc.get(f"/series/{series_id}")
        result[series["MainDicomTags"]["SeriesInstanceUID"]] = series_id
    return result


def _store_jobs(orthanc: Orthanc) -> list[dict[str, Any]]:
    return [job for job in orthanc.get("/jobs?expand") if job.get("Type") == "DicomModalityStore"]


def _round_trip(orthanc: Orthanc, node: RunningNode, source: Sequence[Dataset], files: list[Path]) -> None:
    study, source_series = str(source[0].StudyInstanceUID), str(source[0].SeriesInstanceUID)
    want = expected_count(len(source))
    storescu(files, orthanc.port, orthanc.ae_title)

    def derived() -> tuple[str, str] | None:
        others = {uid: sid for uid, sid in _series_of_study(orthanc, study).items() if uid != source_series}
        for uid, sid in others.items():
            if len(orthanc.get(f"/series/{sid}")["Instances"]) >= want:
                return uid, sid
        return None

    def diagnosis() -> str:
        return (
            f"series in Orthanc: {_series_of_study(orthanc, study)}; jobs: {_store_jobs(orthanc)}; "
            f"rejected: {node.rejected()}\nnode log:\n{node.log_tail()}"
        )

    try:
        derived_uid, derived_id = wait_for(
            derived, ROUND_TRIP_TIMEOUT_S, f"a derived series of {want} instances in Orthanc", interval_s=0.5,
            alive=lambda: node.died() or orthanc.died(),
        )  # fmt: skip
    except PeerError as exc:
        raise AssertionError(f"{exc}\n{diagnosis()}") from exc

    # Geometry and identity, from Orthanc's view of the stored instances.
    instance_ids = orthanc.get(f"/series/{derived_id}")["Instances"]
    derived_headers = [_dataset_from_tags(orthanc.get(f"/instances/{i}/simplified-tags")) for i in instance_ids]
    check_derived_series(source, derived_headers)
    slices = orthanc.get(f"/series/{derived_id}/ordered-slices")
    assert slices["Type"] == "Volume"
    assert len(slices["Dicom"]) == want

    # No loop: the rule routes the derived series to the node too (a second store job), and the
    # node must not derive again. Wait for that job, then longer than the node's quiet period.
    try:
        wait_for(
            lambda: len(jobs := _store_jobs(orthanc)) >= 2 and all(j["State"] in ("Success", "Failure") for j in jobs),
            ROUND_TRIP_TIMEOUT_S, "Orthanc to route the derived series back to the node", interval_s=0.5,
        )  # fmt: skip
    except PeerError as exc:
        raise AssertionError(f"{exc}\n{diagnosis()}") from exc
    deadline = time.monotonic() + node.quiet_period_s + 8
    while time.monotonic() < deadline:
        assert set(_series_of_study(orthanc, study)) == {source_series, derived_uid}, diagnosis()
        time.sleep(0.5)
    assert len(orthanc.get(f"/series/{derived_id}")["Instances"]) == want
    assert len(_store_jobs(orthanc)) == 2, diagnosis()
    assert list(node.outbox_series()) == [derived_uid]
    assert node.died() is None


def _pipeline(node_factory: NodeFactory, orthanc_factory: OrthancFactory) -> tuple[Orthanc, RunningNode]:
    node_port = free_port()
    orthanc = orthanc_factory(node_port)
    node = node_factory(destinations=(Peer("pacs", orthanc.ae_title, orthanc.port),), port=node_port)
    return orthanc, node


def test_orthanc_round_trip_synthetic(
    tmp_path: Path, node_factory: NodeFactory, orthanc_factory: OrthancFactory
) -> None:
    orthanc, node = _pipeline(node_factory, orthanc_factory)
    source = make_ct_series(slices=10, rows=96, cols=96, seed=201)
    _round_trip(orthanc, node, source, write_series(source, tmp_path / "src"))


def test_orthanc_round_trip_real_chest_ct(
    real_lung1: RealSeries, node_factory: NodeFactory, orthanc_factory: OrthancFactory
) -> None:
    orthanc, node = _pipeline(node_factory, orthanc_factory)
    source = [dcmread(p, stop_before_pixels=True) for p in real_lung1.paths]
    _round_trip(orthanc, node, source, list(real_lung1.paths))
