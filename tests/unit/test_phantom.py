"""The synthetic chest phantom: deterministic, chest-like, nodules where listed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from synth.cli import main
from synth.research.phantom import NODULE_KINDS, Phantom, PhantomSpec, make_phantom

SMALL = PhantomSpec(slices=48, size=128, pixel_mm=2.8, nodules_min=3, nodules_max=3)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(3, SMALL)


def test_shape_spacing_and_range(phantom: Phantom) -> None:
    assert phantom.volume.shape == (48, 128, 128)
    assert phantom.volume.spacing_mm == (1.0, 2.8, 2.8)
    assert phantom.volume.hu.min() >= -1024 and phantom.volume.hu.max() <= 3071


def test_same_seed_same_volume_other_seed_differs(phantom: Phantom) -> None:
    again = make_phantom(3, SMALL)
    np.testing.assert_array_equal(again.volume.hu, phantom.volume.hu)
    assert again.nodules == phantom.nodules
    assert not np.array_equal(make_phantom(4, SMALL).volume.hu, phantom.volume.hu)


def test_chest_tissues_are_present(phantom: Phantom) -> None:
    hu = phantom.volume.hu
    lung = np.mean((hu > -950) & (hu < -750))
    soft = np.mean((hu > -150) & (hu < 100))
    bone = np.mean(hu > 250)
    assert lung > 0.05 and soft > 0.1 and bone > 0.002


def test_nodules_lie_where_listed(phantom: Phantom) -> None:
    assert len(phantom.nodules) == 3
    hu = phantom.volume.hu
    for nodule in phantom.nodules:
        assert 3.0 <= nodule.diameter_mm <= 12.0 and nodule.kind in NODULE_KINDS
        z, y, x = (round(c) for c in nodule.center_voxel(phantom.volume.spacing_mm))
        centre = float(hu[max(z - 1, 0) : z + 2, y, x].max())
        # the lung parenchyma around it is about -860 HU; even a faint 3-mm ground-glass nodule stands out
        assert centre > -780, (nodule, centre)


def test_default_size_is_fast_enough_and_has_thin_vessels() -> None:
    big = make_phantom(0, PhantomSpec(slices=40, size=256, pixel_mm=1.4, noise_hu=0.0))
    hu = big.volume.hu
    # faint sub-voxel vessels: lung voxels a little above parenchyma but far below blood
    faint = np.mean((hu > -800) & (hu < -500))
    assert faint > 0.001


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match=r"PhantomSpec\.slices must be at least 8, got 4"):
        PhantomSpec(slices=4)
    with pytest.raises(ValueError, match=r"PhantomSpec\.size must be at least 32, got 16"):
        PhantomSpec(size=16)
    with pytest.raises(ValueError, match=r"PhantomSpec spacings must lie in \(0, 5\] mm, got pixel 0\.0"):
        PhantomSpec(pixel_mm=0.0)
    with pytest.raises(ValueError, match="PhantomSpec needs 0 <= nodules_min <= nodules_max, got 5, 2"):
        PhantomSpec(nodules_min=5, nodules_max=2)
    with pytest.raises(ValueError, match="noise_hu, blur_mm and z_blur_mm must not be negative"):
        PhantomSpec(noise_hu=-1.0)


def test_cli_writes_official_layout(tmp_path: Path) -> None:
    args = ["phantom", str(tmp_path), "--count", "2", "--seed", "5", "--slices", "21", "--size", "64",
            "--pixel-mm", "5"]
    assert main(args) == 0
    thin = sitk.ReadImage(str(tmp_path / "HD_1mm" / "phantom_0005.nii.gz"))
    thick = sitk.ReadImage(str(tmp_path / "HD_5mm" / "phantom_0006.nii.gz"))
    assert thin.GetSize() == (64, 64, 21) and thick.GetSize() == (64, 64, 5)
    assert thick.GetSpacing() == pytest.approx((5.0, 5.0, 5.0))
    listing = json.loads((tmp_path / "nodules.json").read_text(encoding="utf-8"))
    assert sorted(listing) == ["phantom_0005", "phantom_0006"]


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phantom", str(tmp_path), "--count", "0"]) == 2
    assert "--count must be at least 1, got 0" in capsys.readouterr().err
    assert main(["phantom", str(tmp_path), "--size", "8"]) == 2
    assert "PhantomSpec.size must be at least 32, got 8" in capsys.readouterr().err
