"""Dataset pairing, z alignment (thick k ↔ thin 5k) and volume reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from synth.research.datasets import (
    DEFAULT_GEOMETRY,
    DatasetError,
    Geometry,
    PairedCase,
    align_pair,
    discover_pairs,
    iter_cases,
    read_volume,
    simulated_pair,
    to_hu,
    write_volume,
)
from synth.volume import CTVolume


def _ramp(n: int, spacing: float, start: float = 0.0) -> CTVolume:
    """Slice i holds its z position in mm (start + i·spacing)."""
    values = (start + spacing * np.arange(n, dtype=np.float32)).repeat(16).reshape(n, 4, 4)
    return CTVolume(values.astype(np.float32), (spacing, 0.8, 0.8))


def _geometry(z0: float) -> Geometry:
    return Geometry((0.0, 0.0, z0), DEFAULT_GEOMETRY.direction)


def test_official_layout_pairs_and_aligns(tmp_path: Path) -> None:
    # thin covers z = -5 … 24 mm (30 slices); thick covers 0 … 20 mm (5 slices)
    write_volume(_ramp(30, 1.0, -5.0), _geometry(-5.0), tmp_path / "HD_1mm" / "a.nii.gz")
    write_volume(_ramp(5, 5.0), _geometry(0.0), tmp_path / "HD_5mm" / "a.nii.gz")
    (case,) = list(iter_cases(tmp_path, "paired", intensity="hu"))
    assert case.name == "a" and case.thin.shape[0] == 21 and case.thick.shape[0] == 5
    for k in range(5):                                         # thick k ↔ thin 5k, same position
        assert case.thin.hu[5 * k, 0, 0] == pytest.approx(case.thick.hu[k, 0, 0])


def test_identical_origins_align_by_index() -> None:
    case = align_pair("b", _ramp(23, 1.0), DEFAULT_GEOMETRY, _ramp(4, 5.0), DEFAULT_GEOMETRY)
    assert case.thin.shape[0] == 16


def test_alignment_errors() -> None:
    thin, thick = _ramp(21, 1.0), _ramp(5, 5.0)
    with pytest.raises(DatasetError, match=r"thick spacing 2\.5 mm is not a whole multiple of thin 1\.0 mm"):
        align_pair("c", _ramp(21, 1.0), DEFAULT_GEOMETRY, _ramp(5, 2.5), DEFAULT_GEOMETRY)
    with pytest.raises(DatasetError, match=r"thick slice 0 lies 0\.50 mm into the thin volume, between thin slices"):
        align_pair("c", thin, DEFAULT_GEOMETRY, thick, _geometry(0.5))
    with pytest.raises(DatasetError, match=r"thin slices 2\.\.22 needed, thin volume has 21"):
        align_pair("c", thin, DEFAULT_GEOMETRY, thick, _geometry(2.0))
    with pytest.raises(DatasetError, match="case d: 20 thin slices do not span 5 thick slices at x5"):
        PairedCase("d", CTVolume(thin.hu[:20].copy(), thin.spacing_mm), thick)
    with pytest.raises(DatasetError, match=r"case e: in-plane sizes differ, thin \(4, 4\) and thick \(4, 3\)"):
        PairedCase("e", thin, CTVolume(thick.hu[:, :, :3].copy(), thick.spacing_mm))


def test_simulated_pairs_use_the_triangular_kernel() -> None:
    pair = simulated_pair("s", _ramp(23, 1.0))
    assert pair.thin.shape[0] == 21 and pair.thick.shape[0] == 5     # the last 2 thin slices are unused
    assert pair.thick.hu[1, 0, 0] == pytest.approx(5.0, abs=1e-5)
    with pytest.raises(DatasetError, match="case t: 4 thin slices are too few for x5"):
        simulated_pair("t", _ramp(4, 1.0))


def test_simulate_mode_and_discovery_errors(tmp_path: Path) -> None:
    write_volume(_ramp(21, 1.0), DEFAULT_GEOMETRY, tmp_path / "thin" / "x.nrrd")
    (case,) = list(iter_cases(tmp_path / "thin", "simulate", intensity="hu"))
    assert case.thick.shape[0] == 5
    with pytest.raises(DatasetError, match="no HD_1mm/ \\+ HD_5mm/"):
        discover_pairs(tmp_path)
    (tmp_path / "thick").mkdir()
    with pytest.raises(DatasetError, match="cases without a partner in thin/ or thick/: x"):
        discover_pairs(tmp_path)
    with pytest.raises(DatasetError, match="no thin volumes to simulate from"):
        list(iter_cases(tmp_path / "thick", "simulate"))
    with pytest.raises(ValueError, match="mode must be 'paired' or 'simulate', got 'other'"):
        list(iter_cases(tmp_path, "other"))


def test_unit_intensities_are_converted() -> None:
    unit = CTVolume(np.array([[[0.0, 1024 / 3072, 1.0]]], dtype=np.float32), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(to_hu(unit, "auto", "u").hu, [[[-1024.0, 0.0, 2048.0]]], atol=1e-3)
    hu = CTVolume(np.array([[[-1000.0, 40.0]]], dtype=np.float32), (1.0, 1.0, 1.0))
    assert to_hu(hu, "auto", "h") is hu
    with pytest.raises(DatasetError, match="h: intensity 'unit' needs values in \\[0, 1\\]"):
        to_hu(hu, "unit", "h")
    with pytest.raises(ValueError, match="intensity must be one of"):
        to_hu(hu, "raw", "h")


def test_read_errors_and_dicom_series(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or folder"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DatasetError, match="not a volume file"):
        read_volume(tmp_path / "notes.txt")
    (tmp_path / "bad.nii.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match=r"bad\.nii\.gz: unreadable"):
        read_volume(tmp_path / "bad.nii.gz")
    with pytest.raises(DatasetError, match="expected one DICOM series, found 0"):
        read_volume(tmp_path)
    # a DICOM series folder, written and read by SimpleITK/GDCM
    series = tmp_path / "series"
    series.mkdir()
    image = sitk.Cast(sitk.GetImageFromArray((np.arange(5 * 16) % 7 * 10 - 20).reshape(5, 4, 4)), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(5):
        plane = image[:, :, i]
        for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000e", "1.2.826.0.1.3680043.2.1125.2"), ("0020|0013", str(i + 1)),
                           ("0008|0018", f"1.2.826.0.1.3680043.2.1125.3.{i}"), ("0028|0030", "0.8\\0.8"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0032", f"0\\0\\{5.0 * i}")):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"{i}.dcm"))
        writer.Execute(plane)
    volume, _ = read_volume(series)
    assert volume.shape == (5, 4, 4) and volume.hu.dtype == np.float32
    assert volume.spacing_mm[0] == pytest.approx(5.0)
    assert volume.hu[1, 0, 0] == float(16 % 7 * 10 - 20)


def test_more_reading_errors(tmp_path: Path) -> None:
    from synth.research.datasets import from_sitk

    with pytest.raises(DatasetError, match="expected a 3-D image, got 2-D"):
        from_sitk(sitk.Image(4, 4, sitk.sitkFloat32))
    with pytest.raises(ValueError, match=r"intensity must be one of \('auto', 'hu', 'unit'\), got 'raw'"):
        read_volume(tmp_path, intensity="raw")
    (tmp_path / "HD_1mm").mkdir()
    (tmp_path / "HD_5mm").mkdir()
    with pytest.raises(DatasetError, match="HD_1mm/ holds no volumes"):
        discover_pairs(tmp_path)
