"""What a derived series must be, checked against its source (the node's output contract)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import CTImageStorage

from tests.interop.peers import normal_of, position_of

FACTOR = 5
POSITION_TOL_MM = 1e-3
PIXEL_MEAN_ABS_TOL_HU = 25.0


def expected_count(source_slices: int) -> int:
    return FACTOR * (source_slices - 1) + 1


def by_position(datasets: Sequence[Dataset]) -> list[Dataset]:
    normal = normal_of(datasets[0])
    return sorted(datasets, key=lambda ds: float(np.dot(position_of(ds), normal)))


def source_spacing_mm(source: Sequence[Dataset]) -> float:
    ordered = by_position(source)
    normal = normal_of(ordered[0])
    along = [float(np.dot(position_of(ds), normal)) for ds in ordered]
    return float(np.median(np.diff(along)))


def check_derived_series(source: Sequence[Dataset], derived: Sequence[Dataset]) -> list[Dataset]:
    """Assert count, identity, meaning and exact geometry; return the derived slices sorted by position.

    Needs only header attributes, so Datasets built from Orthanc's tags work as well as files.
    """
    src = by_position(source)
    assert len(derived) == expected_count(len(src)), (
        f"{len(derived)} derived instances for {len(src)} source slices, expected {expected_count(len(src))}"
    )
    series_uids = {str(ds.SeriesInstanceUID) for ds in derived}
    assert len(series_uids) == 1, f"derived instances span {len(series_uids)} series"
    assert series_uids.isdisjoint({str(ds.SeriesInstanceUID) for ds in src}), "derived series kept the source UID"
    sop_uids = [str(ds.SOPInstanceUID) for ds in derived]
    assert len(set(sop_uids)) == len(sop_uids), "derived SOPInstanceUIDs are not unique"
    assert set(sop_uids).isdisjoint({str(ds.SOPInstanceUID) for ds in src}), "a source SOPInstanceUID was reused"
    assert {str(ds.StudyInstanceUID) for ds in derived} == {str(src[0].StudyInstanceUID)}
    assert {str(ds.FrameOfReferenceUID) for ds in derived} == {str(src[0].FrameOfReferenceUID)}
    assert {str(ds.SOPClassUID) for ds in derived} == {CTImageStorage}
    assert {str(ds.Modality) for ds in derived} == {"CT"}
    assert {tuple(ds.ImageType)[:3] for ds in derived} == {("DERIVED", "SECONDARY", "AXIAL")}
    numbers = [int(ds.InstanceNumber) for ds in derived]
    assert len(set(numbers)) == len(numbers), "InstanceNumbers repeat"

    iop = np.asarray([float(v) for v in src[0].ImageOrientationPatient])
    spacing = [float(v) for v in src[0].PixelSpacing]
    for ds in derived:
        assert np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-6)
        assert np.allclose([float(v) for v in ds.PixelSpacing], spacing, atol=1e-6)
        assert (int(ds.Rows), int(ds.Columns)) == (int(src[0].Rows), int(src[0].Columns))

    step_mm = source_spacing_mm(src) / FACTOR
    assert {round(float(ds.SliceThickness), 6) for ds in derived} == {round(step_mm, 6)}
    if all("SpacingBetweenSlices" in ds for ds in derived):
        assert {round(float(ds.SpacingBetweenSlices), 6) for ds in derived} == {round(step_mm, 6)}

    ordered = by_position(derived)
    normal = normal_of(src[0])
    first = position_of(src[0])
    expected = np.stack([first + k * step_mm * normal for k in range(len(ordered))])
    actual = np.stack([position_of(ds) for ds in ordered])
    worst = float(np.abs(actual - expected).max())
    assert worst <= POSITION_TOL_MM, f"ImagePositionPatient off by up to {worst:.4f} mm"
    assert np.allclose(position_of(ordered[-1]), position_of(src[-1]), atol=POSITION_TOL_MM)
    return ordered


def check_derived_pixels(source: Sequence[Dataset], derived_sorted: Sequence[Dataset]) -> None:
    """Derived slices that coincide with source slices carry (nearly) the source HU."""
    src = by_position(source)
    for k, ds in enumerate(src):
        hu_src = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
        out = derived_sorted[FACTOR * k]
        hu_out = np.asarray(apply_modality_lut(out.pixel_array, out), dtype=np.float64)
        error = float(np.mean(np.abs(hu_out - hu_src)))
        assert error <= PIXEL_MEAN_ABS_TOL_HU, f"derived slice {FACTOR * k}: mean |HU error| {error:.1f}"
