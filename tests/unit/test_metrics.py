"""Metrics against known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synth.research.metrics import data_consistency_psnr, evaluated_slices, psnr, ssim, to_unit
from synth.simulate import simulate_thick
from synth.volume import CTVolume


def _volume(seed: int = 0, shape: tuple[int, int, int] = (16, 24, 24)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1000, 400, size=shape).astype(np.float32)


def test_to_unit_window() -> None:
    np.testing.assert_allclose(to_unit(np.array([-2000.0, -1024.0, 512.0, 2048.0, 3000.0])),
                               [0.0, 0.0, 0.5, 1.0, 1.0])


def test_identical_volumes_give_inf_psnr_and_unit_ssim() -> None:
    v = _volume()
    assert psnr(v, v.copy()) == math.inf
    assert ssim(v, v.copy()) == 1.0


def test_psnr_known_value() -> None:
    truth = np.full((12, 4, 4), -1024.0, dtype=np.float32)
    test = truth + np.float32(30.72)           # 30.72 HU = 0.01 of the window → MSE 1e-4 → 40 dB
    assert psnr(truth, test) == pytest.approx(40.0, abs=1e-4)


def test_psnr_ignores_the_edge_slices() -> None:
    truth = np.zeros((12, 4, 4), dtype=np.float32)
    test = truth.copy()
    test[:5] = 1000.0
    test[-5:] = -1000.0
    assert psnr(truth, test) == math.inf
    assert psnr(truth, test, edge=0) < 20.0


def test_ssim_known_properties() -> None:
    v = _volume(1)
    # SSIM is symmetric, below 1 for a distorted copy, and a constant offset only dents luminance
    noisy = v + np.random.default_rng(2).normal(0, 200, v.shape).astype(np.float32)
    assert ssim(v, noisy) == pytest.approx(ssim(noisy, v), abs=1e-12)
    assert 0.0 < ssim(v, noisy) < 0.9
    assert ssim(v, v + np.float32(3.0)) > 0.999
    # mean luminance term alone for constant images: (2ab + c1) / (a² + b² + c1)
    a, b = np.full((11, 16, 16), -1024.0, np.float32), np.full((11, 16, 16), 512.0, np.float32)
    c1 = 0.01**2
    assert ssim(a, b) == pytest.approx((2 * 0.0 * 0.5 + c1) / (0.0 + 0.25 + c1), rel=1e-9)


def test_metric_arguments_are_checked() -> None:
    shapes = r"volumes must have the same shape, got \(12, 4, 4\) and \(12, 4, 5\)"
    with pytest.raises(ValueError, match=shapes):
        psnr(np.zeros((12, 4, 4)), np.zeros((12, 4, 5)))
    with pytest.raises(ValueError, match="volumes must be 3-D"):
        ssim(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="10 slices leave none to evaluate after excluding 5 at each end"):
        psnr(np.zeros((10, 4, 4)), np.zeros((10, 4, 4)))
    with pytest.raises(ValueError, match="edge must not be negative, got -1"):
        evaluated_slices(10, -1)


def test_data_consistency_of_the_truth_is_perfect() -> None:
    thin = CTVolume(_volume(3, (21, 8, 8)), (1.0, 1.0, 1.0))
    thick = simulate_thick(thin)
    assert data_consistency_psnr(thick, thin) == math.inf
    smoothed = CTVolume(np.repeat(thick.hu, 5, axis=0)[:21].copy(), (1.0, 1.0, 1.0))
    assert data_consistency_psnr(thick, smoothed) < 40.0
    with pytest.raises(ValueError, match=r"re-thickened volume \(4, 8, 8\) does not match the thick input"):
        data_consistency_psnr(thick, CTVolume(thin.hu[:16].copy(), thin.spacing_mm))
