"""synth.selfcheck: re-thickened output against its input, PSNR and lung bias, for good output and garbage."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from synth.bspline import interpolate_z
from synth.selfcheck import MAX_DB, MIN_LUNG_VOXELS, lung_mask, psnr_db, rethicken, self_check
from synth.simulate import simulate_thick
from synth.volume import CTVolume


def chest(n_thin: int = 41, size: int = 64, dz_mm: float = 1.0) -> CTVolume:
    """A thin chest-like volume: air, a soft-tissue body, two lungs with vessels that wander along z."""
    z, y, x = np.meshgrid(np.arange(n_thin) * dz_mm, np.arange(size), np.arange(size), indexing="ij")
    u, v = (x - size / 2) / (size / 2), (y - size / 2) / (size / 2)
    hu = np.full(z.shape, -1000.0)
    hu[(u / 0.9) ** 2 + (v / 0.7) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        lung = ((u - side * 0.42) / 0.32) ** 2 + (v / 0.5) ** 2 <= 1
        hu[lung] = -860.0
        cx = side * 0.42 + 0.12 * np.sin(z / 6.0 + side)
        vessel = lung & ((u - cx) ** 2 + (v - 0.1 * np.cos(z / 4.0)) ** 2 <= 0.06 ** 2)
        hu[vessel] = 30.0
    return CTVolume(hu.astype(np.float32), (dz_mm, 0.7, 0.7))


def thick_of(thin: CTVolume, thickness_mm: float = 5.0, interval_mm: float = 5.0) -> CTVolume:
    thick = simulate_thick(thin, thickness_mm, interval_mm)
    return CTVolume(thick.hu, thick.spacing_mm, slice_thickness_mm=thickness_mm)


def test_the_truth_a_series_was_thickened_from_is_exactly_consistent() -> None:
    thin = chest()
    check = self_check(thick_of(thin), thin)
    assert check.consistency_db == MAX_DB
    assert check.lung_bias_hu == pytest.approx(0.0, abs=1e-3)
    assert check.lung_voxels >= MIN_LUNG_VOXELS
    assert check.compared_slices == 7                       # 9 slices; the first and last cannot be re-made


def test_the_thickness_not_the_interval_is_the_profile() -> None:
    """5-mm slices every 2.5 mm: re-thickened with 5 mm they match exactly; with the 2.5-mm interval not."""
    thin = chest(n_thin=41, dz_mm=0.5)
    overlapping = thick_of(thin, thickness_mm=5.0, interval_mm=2.5)
    assert self_check(overlapping, thin).consistency_db == MAX_DB
    unknown = CTVolume(overlapping.hu, overlapping.spacing_mm)            # thickness unknown → the interval
    assert self_check(unknown, thin).consistency_db < 60.0


def test_interpolation_is_consistent_and_garbage_is_not() -> None:
    thin = chest()
    source = thick_of(thin)
    bis = interpolate_z(source, 5)
    good = self_check(source, bis)
    noise = CTVolume(np.random.default_rng(0).uniform(-1024, 2048, bis.hu.shape).astype(np.float32),
                     bis.spacing_mm)
    shifted = CTVolume(np.roll(bis.hu, 5, axis=0), bis.spacing_mm)           # one input slice off
    darker = bis.hu.copy()
    darker[darker < -500] -= 30.0
    assert good.consistency_db > 35.0 and abs(good.lung_bias_hu or 0.0) < 5.0
    assert self_check(source, noise).consistency_db < 15.0
    assert self_check(source, shifted).consistency_db < good.consistency_db - 5.0
    assert self_check(source, CTVolume(darker, bis.spacing_mm)).lung_bias_hu == pytest.approx(-30.0, abs=2.0)


def test_a_volume_without_lungs_has_no_lung_bias() -> None:
    hu = np.full((21, 32, 32), 40.0, dtype=np.float32)
    source = CTVolume(hu[::5].copy(), (5.0, 1.0, 1.0))
    check = self_check(source, CTVolume(hu, (1.0, 1.0, 1.0)))
    assert check.lung_bias_hu is None and check.lung_voxels == 0
    assert check.summary() == "self-check: consistency 100.0 dB, no lungs found"


def test_the_backend_figures_are_carried_and_summarised() -> None:
    thin = chest()
    figures = {"offaxis_psnr_db": 33.04, "offaxis_bis_psnr_db": 30.91, "budget_s": 60.0, "finetune_s": 58.2,
               "other": 1.0}
    check = self_check(thick_of(thin), CTVolume(thin.hu, thin.spacing_mm, figures=figures))
    assert (check.offaxis_psnr_db, check.offaxis_bis_psnr_db, check.budget_s, check.finetune_s) == (
        33.04, 30.91, 60.0, 58.2)
    assert check.summary() == ("self-check: consistency 100.0 dB, lung bias +0.0 HU; off-axis 33.0 dB vs BIS "
                               "30.9 dB; fine-tune budget 60 s, used 58 s")
    bare = self_check(thick_of(thin), thin)
    assert bare.offaxis_psnr_db is None and "off-axis" not in bare.summary()


def test_a_derived_volume_that_does_not_span_its_input_is_an_error() -> None:
    thin = chest()
    source = thick_of(thin)
    with pytest.raises(ValueError, match=r"derived volume spans 39.000 mm, the source 40.000 mm"):
        rethicken(CTVolume(thin.hu[:-1].copy(), thin.spacing_mm), source)
    with pytest.raises(ValueError, match=r"derived slices are \(32, 64\), the source's \(64, 64\)"):
        rethicken(CTVolume(thin.hu[:, :32].copy(), thin.spacing_mm), source)


def test_a_short_series_compares_every_slice() -> None:
    thin = chest(n_thin=6)
    _, compared = rethicken(thin, thick_of(thin))
    assert compared.tolist() == [0, 1]


def test_psnr_uses_the_one_hu_window() -> None:
    a = np.full((2, 4, 4), 3000.0, dtype=np.float32)
    b = np.full((2, 4, 4), 2048.0, dtype=np.float32)
    assert psnr_db(a, b) == MAX_DB                          # both clip to 2048 HU
    c = b - 30.72                                           # 1 % of the 3072-HU peak: 40 dB
    assert psnr_db(b, c) == pytest.approx(40.0, abs=1e-3)


def test_the_lung_mask_keeps_parenchyma_and_drops_rims_and_outside_air() -> None:
    hu = chest().hu
    mask = lung_mask(hu)
    inside: npt.NDArray[np.bool_] = mask
    assert inside.any()
    assert np.all(hu[mask] <= -500) and np.all(hu[mask] >= -950)
    assert not mask[:, :, :3].any() and not mask[0].any() and not mask[-1].any()   # borders, first/last slice
