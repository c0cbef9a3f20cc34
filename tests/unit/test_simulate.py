"""Thick-slice simulation against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from synth.cli import main
from synth.simulate import simulate_thick, thick_positions_mm, triangular_weights
from synth.volume import CTVolume


def _ramp(n: int, spacing_mm: float = 1.0) -> CTVolume:
    """Slice i holds the value i everywhere (2x3 in-plane)."""
    hu = np.repeat(np.arange(n, dtype=np.float32), 6).reshape(n, 2, 3)
    return CTVolume(hu, (spacing_mm, 0.7, 0.7))


def test_positions_run_from_start_to_end_inclusive() -> None:
    assert thick_positions_mm(0.0, 20.0, 5.0).tolist() == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert thick_positions_mm(0.0, 22.0, 5.0).tolist() == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert thick_positions_mm(-3.0, 7.0, 3.0).tolist() == [-3.0, 0.0, 3.0, 6.0]
    assert thick_positions_mm(1.0, 4.0, 5.0).tolist() == [1.0]
    # 0.1-mm steps accumulate round-off; the end must still be reached
    assert len(thick_positions_mm(0.0, 0.3, 0.1)) == 4


def test_position_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="interval_mm must be positive, got 0"):
        thick_positions_mm(0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"end_mm must not be below start_mm, got start 2\.0 and end 1\.0"):
        thick_positions_mm(2.0, 1.0, 1.0)


def test_triangular_weights_use_thickness_and_are_normalised() -> None:
    thin = np.arange(5, dtype=np.float64)
    w = triangular_weights(thin, np.array([2.0]), thickness_mm=2.0)
    # |p - l| = 2, 1, 0, 1, 2 → g = 0, 0.5, 1, 0.5, 0; sum 2
    np.testing.assert_allclose(w, [[0.0, 0.25, 0.5, 0.25, 0.0]])
    w5 = triangular_weights(np.arange(11, dtype=np.float64), np.array([5.0]), thickness_mm=5.0)
    np.testing.assert_allclose(w5[0], np.array([0, 0.2, 0.4, 0.6, 0.8, 1, 0.8, 0.6, 0.4, 0.2, 0]) / 5.0)
    with pytest.raises(ValueError, match="thickness_mm must be positive, got -1"):
        triangular_weights(thin, np.array([2.0]), thickness_mm=-1.0)
    no_thin = r"thick slice 0 at 7\.500 mm has no thin slice within the thickness 1\.0"
    with pytest.raises(ValueError, match=no_thin):
        triangular_weights(np.array([0.0, 5.0, 10.0]), np.array([7.5]), thickness_mm=1.0)


def test_impulse_gives_the_triangle_centre_weight() -> None:
    hu = np.zeros((21, 2, 2), dtype=np.float32)
    hu[10] = 9.0
    thick = simulate_thick(CTVolume(hu, (1.0, 0.5, 0.5)), thickness_mm=5.0, interval_mm=5.0)
    assert thick.shape == (5, 2, 2)
    assert thick.spacing_mm == (5.0, 0.5, 0.5)
    # thick 2 at 10 mm: weights 0.2..1..0.2 sum to 5, the impulse has weight 1 → 9/5
    np.testing.assert_allclose(thick.hu[:, 0, 0], [0.0, 0.0, 1.8, 0.0, 0.0], atol=1e-6)


def test_ramp_is_kept_inside_and_biased_at_truncated_edges() -> None:
    thick = simulate_thick(_ramp(21), thickness_mm=5.0, interval_mm=5.0)
    # symmetric weights reproduce a linear ramp in the interior
    np.testing.assert_allclose(thick.hu[1:4, 0, 0], [5.0, 10.0, 15.0], atol=1e-5)
    # at z=0 only l=0..4 contribute: (0·1 + 1·0.8 + 2·0.6 + 3·0.4 + 4·0.2) / 3.0 = 4/3
    assert thick.hu[0, 0, 0] == pytest.approx(4.0 / 3.0, abs=1e-5)
    assert thick.hu[4, 0, 0] == pytest.approx(20.0 - 4.0 / 3.0, abs=1e-5)


def test_overlap_and_thickness_differ_from_interval() -> None:
    thick = simulate_thick(_ramp(10), thickness_mm=5.0, interval_mm=3.0)   # overlapping 5/3
    assert thick.shape[0] == 4 and thick.spacing_mm[0] == 3.0
    thin = simulate_thick(_ramp(11), thickness_mm=1.0, interval_mm=5.0)   # t = 1 mm: exactly slice 5k
    np.testing.assert_allclose(thin.hu[:, 0, 0], [0.0, 5.0, 10.0])


def test_non_unit_thin_spacing() -> None:
    thick = simulate_thick(_ramp(9, spacing_mm=0.5), thickness_mm=1.0, interval_mm=2.0)
    # positions 0, 2, 4 mm = thin slices 0, 4, 8; weights over ±0.5 mm: 0.5, 1, 0.5 at the interior
    np.testing.assert_allclose(thick.hu[:, 0, 0], [1 / 3, 4.0, 8 - 1 / 3], atol=1e-5)


def test_simulate_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="interval_mm must be positive, got 0"):
        simulate_thick(_ramp(5), interval_mm=0.0)
    with pytest.raises(ValueError, match="thickness_mm must be positive, got 0"):
        simulate_thick(_ramp(5), thickness_mm=0.0)
    with pytest.raises(ValueError, match=r"interval_mm 0.5 is finer than the thin spacing 1.0 mm"):
        simulate_thick(_ramp(5), interval_mm=0.5)


def test_cli_writes_thick_volume_with_geometry(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(_ramp(21).hu)
    image.SetSpacing((0.7, 0.7, 1.0))
    image.SetOrigin((1.0, 2.0, -30.0))
    src, dst = tmp_path / "thin.nrrd", tmp_path / "thick.nii.gz"
    sitk.WriteImage(image, str(src))
    assert main(["simulate-thick", str(src), str(dst), "--thickness", "5", "--interval", "5"]) == 0
    out = sitk.ReadImage(str(dst))
    assert out.GetSize() == (3, 2, 5)
    assert out.GetSpacing() == pytest.approx((0.7, 0.7, 5.0))
    assert out.GetOrigin() == pytest.approx((1.0, 2.0, -30.0))
    np.testing.assert_allclose(sitk.GetArrayFromImage(out)[2, 0, 0], 10.0, atol=1e-5)


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate-thick", str(tmp_path / "missing.nrrd"), str(tmp_path / "o.nrrd")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
