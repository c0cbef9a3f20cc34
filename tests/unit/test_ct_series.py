"""The synthetic CT series generator itself: geometry, defects, HU storage, files, dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.support.ct_series import (
    LUNG_HU,
    make_ct_series,
    phantom_hu,
    position_mm,
    slice_normal,
    sorted_by_position,
    write_series,
)


@pytest.fixture(autouse=True)
def _strict_pydicom() -> Iterator[None]:
    reading, writing = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    config.settings.writing_validation_mode = config.RAISE
    yield
    config.settings.reading_validation_mode, config.settings.writing_validation_mode = reading, writing


def _gaps_along_normal(datasets: list[Dataset]) -> np.ndarray:
    normal = slice_normal(datasets[0])
    along = sorted(float(np.dot(position_mm(ds), normal)) for ds in datasets)
    return np.diff(along)


def _hu(ds: Dataset) -> np.ndarray:
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)


def test_default_series_is_a_regular_axial_ct_stack() -> None:
    series = make_ct_series()
    assert len(series) == 12
    assert {ds.SOPClassUID for ds in series} == {CTImageStorage}
    assert {ds.file_meta.TransferSyntaxUID for ds in series} == {ExplicitVRLittleEndian}
    assert {ds.Modality for ds in series} == {"CT"}
    assert len({ds.SeriesInstanceUID for ds in series}) == 1
    assert len({ds.StudyInstanceUID for ds in series}) == 1
    assert len({ds.FrameOfReferenceUID for ds in series}) == 1
    assert len({ds.SOPInstanceUID for ds in series}) == 12
    assert [ds.InstanceNumber for ds in series] == list(range(1, 13))
    assert {(ds.Rows, ds.Columns) for ds in series} == {(64, 64)}
    assert [float(v) for v in series[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    z = [float(ds.ImagePositionPatient[2]) for ds in series]
    assert np.allclose(np.diff(z), 5.0)
    assert z[0] == pytest.approx(-27.5)
    assert float(series[0].SliceThickness) == 5.0
    assert [float(v) for v in series[0].PixelSpacing] == [0.7, 0.7]


def test_pixels_are_the_phantom_sampled_at_pixel_centres() -> None:
    series = make_ct_series(slices=5, rows=48, cols=40, pixel_spacing=(0.9, 1.1))
    for ds in series:
        origin = position_mm(ds)
        r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        x = origin[0] + c * 1.1
        y = origin[1] + r * 0.9
        truth = phantom_hu(x, y, origin[2], fov_mm=max(48 * 0.9, 40 * 1.1))
        assert np.array_equal(_hu(ds), truth)


def test_phantom_looks_like_a_chest() -> None:
    hu = _hu(make_ct_series(slices=3, rows=128, cols=128)[1])
    assert hu.min() == -1000
    assert (hu == LUNG_HU).mean() > 0.1
    assert (hu >= 500).any()  # spine
    assert hu[64, 64] > -200  # mediastinum in the centre


def test_same_arguments_give_same_uids_and_pixels() -> None:
    a, b = make_ct_series(seed=3), make_ct_series(seed=3)
    assert [ds.SOPInstanceUID for ds in a] == [ds.SOPInstanceUID for ds in b]
    assert a[0].SeriesInstanceUID == b[0].SeriesInstanceUID
    assert all(x.PixelData == y.PixelData for x, y in zip(a, b, strict=True))


def test_seed_and_defects_give_new_series_uids() -> None:
    base = make_ct_series(seed=1)
    other_seed = make_ct_series(seed=2)
    tilted = make_ct_series(seed=1, gantry_tilt_deg=10)
    uids = {base[0].SeriesInstanceUID, other_seed[0].SeriesInstanceUID, tilted[0].SeriesInstanceUID}
    assert len(uids) == 3
    assert base[0].StudyInstanceUID == tilted[0].StudyInstanceUID  # same patient/study per seed
    assert not {ds.SOPInstanceUID for ds in base} & {ds.SOPInstanceUID for ds in tilted}
    assert all(uid.startswith("2.25.") for uid in uids)


def test_explicit_uids_and_patient_are_used() -> None:
    series = make_ct_series(slices=3, study_uid="1.2.3", series_uid="1.2.3.4", patient_id="P1")
    assert {ds.StudyInstanceUID for ds in series} == {"1.2.3"}
    assert {ds.SeriesInstanceUID for ds in series} == {"1.2.3.4"}
    assert {ds.PatientID for ds in series} == {"P1"}


def test_shuffled_keeps_the_positions_but_not_the_order() -> None:
    plain, shuffled = make_ct_series(), make_ct_series(shuffled=True)
    z_plain = [float(ds.ImagePositionPatient[2]) for ds in plain]
    z_shuffled = [float(ds.ImagePositionPatient[2]) for ds in shuffled]
    assert sorted(z_shuffled) == z_plain
    assert z_shuffled != z_plain
    assert [ds.InstanceNumber for ds in shuffled] == list(range(1, 13))
    ordered = sorted_by_position(shuffled)
    assert [float(ds.ImagePositionPatient[2]) for ds in ordered] == z_plain


def test_descending_numbers_from_the_far_end() -> None:
    series = make_ct_series(descending=True)
    z = [float(ds.ImagePositionPatient[2]) for ds in series]
    assert np.allclose(np.diff(z), -5.0)


def test_duplicate_position_adds_one_instance_at_an_existing_position() -> None:
    series = make_ct_series(slices=8, duplicate_position=True, defect_index=3)
    assert len(series) == 9
    assert len({ds.SOPInstanceUID for ds in series}) == 9
    gaps = _gaps_along_normal(series)
    assert np.count_nonzero(np.isclose(gaps, 0.0)) == 1
    assert np.allclose(gaps[~np.isclose(gaps, 0.0)], 5.0)


def test_missing_slice_leaves_one_double_gap() -> None:
    series = make_ct_series(slices=8, missing_slice=True)
    assert len(series) == 7
    gaps = _gaps_along_normal(series)
    assert sorted(np.round(gaps, 6).tolist()) == [5.0] * 5 + [10.0]


def test_gantry_tilt_shears_the_stack() -> None:
    series = make_ct_series(gantry_tilt_deg=15.0)
    normal = slice_normal(series[0])
    step = position_mm(series[1]) - position_mm(series[0])
    assert np.allclose(step, [0, 0, 5.0])
    angle = np.degrees(np.arccos(np.dot(step, normal) / np.linalg.norm(step)))
    assert angle == pytest.approx(15.0)
    assert float(series[0].GantryDetectorTilt) == 15.0


@pytest.mark.parametrize(("orientation", "normal"), [("coronal", [0, 1, 0]), ("sagittal", [-1, 0, 0])])
def test_non_axial_orientation(orientation: str, normal: list[float]) -> None:
    series = make_ct_series(orientation=orientation)
    assert np.allclose(slice_normal(series[0]), normal)
    assert np.allclose(_gaps_along_normal(series), 5.0)
    assert series[0].ImageType[2] == "REFORMATTED"


def test_mixed_size_changes_one_slice() -> None:
    series = make_ct_series(slices=6, mixed_size=True, defect_index=2)
    assert sorted((ds.Rows, ds.Columns) for ds in series) == [(32, 32)] + [(64, 64)] * 5
    small = next(ds for ds in series if ds.Rows == 32)
    assert [float(v) for v in small.PixelSpacing] == [1.4, 1.4]


def test_two_frames_of_reference() -> None:
    series = make_ct_series(slices=6, two_frames_of_reference=True, defect_index=4)
    frames = [ds.FrameOfReferenceUID for ds in series]
    assert len(set(frames)) == 2
    assert frames.count(frames[-1]) == 2


def test_modality_other_than_ct() -> None:
    assert {ds.Modality for ds in make_ct_series(slices=3, modality="MR")} == {"MR"}


@pytest.mark.parametrize(
    ("slope", "intercept", "signed", "bits"),
    [
        (1.0, -1024.0, False, 12),
        (1.0, 0.0, True, 16),
        (0.5, -1024.0, False, 16),
        (2.0, -2048.0, False, 12),
        (1.0, -1000.0, True, 16),
    ],
)
def test_rescale_variants_decode_to_the_same_hu(slope: float, intercept: float, signed: bool, bits: int) -> None:
    reference = make_ct_series(slices=3)
    series = make_ct_series(slices=3, rescale_slope=slope, rescale_intercept=intercept, signed=signed)
    assert series[0].PixelRepresentation == int(signed)
    assert series[0].pixel_array.dtype == (np.int16 if signed else np.uint16)
    assert float(series[0].RescaleSlope) == slope
    assert float(series[0].RescaleIntercept) == intercept
    assert series[0].BitsStored == bits
    for ref, ds in zip(reference, series, strict=True):
        assert np.abs(_hu(ds) - _hu(ref)).max() <= slope / 2


def test_noise_is_seeded() -> None:
    a = _hu(make_ct_series(slices=3, noise_hu=20.0, seed=5)[1])
    b = _hu(make_ct_series(slices=3, noise_hu=20.0, seed=5)[1])
    c = _hu(make_ct_series(slices=3, noise_hu=20.0, seed=6)[1])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 10 < float(np.std(a - _hu(make_ct_series(slices=3)[1]))) < 30


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"slices": 0}, "slices must be >= 1"),
        ({"orientation": "oblique"}, "orientation must be one of"),
        ({"spacing_mm": 0.0}, "spacing_mm must be > 0"),
        ({"defect_index": 40}, "defect_index must be in"),
        ({"slices": 2, "missing_slice": True}, "defects need slices >= 3"),
        ({"rescale_slope": 0.0}, "rescale_slope must not be 0"),
        ({"transfer_syntax": "1.2.840.10008.1.2.5"}, "transfer_syntax must be"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_ct_series(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_write_series_round_trips_through_files(tmp_path: Path, syntax: str) -> None:
    series = make_ct_series(slices=4, transfer_syntax=syntax)
    paths = write_series(series, tmp_path / "out")
    assert [p.name for p in paths] == ["CT0001.dcm", "CT0002.dcm", "CT0003.dcm", "CT0004.dcm"]
    for path, ds in zip(paths, series, strict=True):
        assert path.read_bytes()[128:132] == b"DICM"
        back = dcmread(path)
        assert back.file_meta.TransferSyntaxUID == syntax
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert np.array_equal(back.pixel_array, ds.pixel_array)
        assert back.ImagePositionPatient == ds.ImagePositionPatient


DCIODVFY = shutil.which("dciodvfy")
DCENTVFY = shutil.which("dcentvfy")


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian dicom3tools) is not installed")
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"signed": True, "rescale_intercept": 0.0},
        {"rescale_slope": 0.5},
        {"gantry_tilt_deg": 12.0},
        {"transfer_syntax": ImplicitVRLittleEndian},
        {"rows": 32, "cols": 48, "pixel_spacing": (0.8, 0.6)},
    ],
)
def test_dciodvfy_reports_no_errors(tmp_path: Path, kwargs: dict[str, object]) -> None:
    paths = write_series(make_ct_series(slices=3, **kwargs), tmp_path)  # type: ignore[arg-type]
    result = subprocess.run([str(DCIODVFY), str(paths[1])], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert "CTImage" in output
    assert [line for line in output.splitlines() if "Error" in line] == []
    assert "Warning" not in output
    assert result.returncode == 0


@pytest.mark.skipif(DCENTVFY is None, reason="dcentvfy (Debian dicom3tools) is not installed")
def test_dcentvfy_finds_the_series_consistent(tmp_path: Path) -> None:
    paths = write_series(make_ct_series(slices=6, shuffled=True), tmp_path)
    result = subprocess.run([str(DCENTVFY), *map(str, paths)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Error" not in result.stdout + result.stderr
