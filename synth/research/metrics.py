"""Image-quality metrics as the CTHNet paper reports them, plus data consistency.

Both volumes are clipped to [-1024, 2048] HU and scaled to [0, 1] (the model's window, spec §2.3).
- PSNR: 10·log10(1 / MSE) over the whole evaluated volume (MAX = 1), as the official validation.
- SSIM: Wang et al. 2004 with a Gaussian window (sigma = 1.5 px, 11 x 11 px, K1 = 0.01, K2 = 0.03,
  data range 1), computed on each axial slice and averaged over the evaluated slices.
- Evaluated slices: all thin slices except `EDGE_SLICES` = 5 at each end, as the official validation
  excludes them (they lie outside the official model's predictions).
Identical inputs give PSNR = inf and SSIM = 1 exactly.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from synth.normalize import HU_MAX, HU_MIN, HU_RANGE
from synth.simulate import simulate_thick
from synth.volume import CTVolume

EDGE_SLICES = 5
SSIM_SIGMA_PX = 1.5
SSIM_TRUNCATE = 3.5          # radius int(3.5·1.5 + 0.5) = 5 px → an 11 x 11 window
SSIM_K1, SSIM_K2 = 0.01, 0.03


def to_unit(hu: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Clip to [-1024, 2048] HU and scale to [0, 1]."""
    return (np.clip(hu.astype(np.float64), HU_MIN, HU_MAX) - HU_MIN) / HU_RANGE


def _check_pair(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"volumes must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim != 3:
        raise ValueError(f"volumes must be 3-D (z, y, x), got {a.ndim}-D")


def evaluated_slices(n_slices: int, edge: int = EDGE_SLICES) -> slice:
    if edge < 0:
        raise ValueError(f"edge must not be negative, got {edge}")
    if n_slices <= 2 * edge:
        raise ValueError(f"{n_slices} slices leave none to evaluate after excluding {edge} at each end")
    return slice(edge, n_slices - edge)


def psnr(
    truth_hu: npt.NDArray[np.floating], test_hu: npt.NDArray[np.floating], edge: int = EDGE_SLICES
) -> float:
    """PSNR in dB on the [0, 1] window; inf for identical volumes."""
    _check_pair(truth_hu, test_hu)
    keep = evaluated_slices(truth_hu.shape[0], edge)
    mse = float(np.mean((to_unit(truth_hu[keep]) - to_unit(test_hu[keep])) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(
    truth_hu: npt.NDArray[np.floating], test_hu: npt.NDArray[np.floating], edge: int = EDGE_SLICES
) -> float:
    """Mean 2-D SSIM over the evaluated axial slices (Gaussian 11 x 11 window, sigma 1.5)."""
    _check_pair(truth_hu, test_hu)
    keep = evaluated_slices(truth_hu.shape[0], edge)
    x, y = to_unit(truth_hu[keep]), to_unit(test_hu[keep])
    if np.array_equal(x, y):
        return 1.0
    c1, c2 = SSIM_K1**2, SSIM_K2**2

    def blur(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = ndimage.gaussian_filter(
            a, sigma=(0.0, SSIM_SIGMA_PX, SSIM_SIGMA_PX), truncate=SSIM_TRUNCATE, mode="reflect"
        )
        return out

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(np.mean(ssim_map))


def data_consistency_psnr(
    thick: CTVolume, thin: CTVolume, thickness_mm: float | None = None
) -> float:
    """How well a synthesized thin volume explains the thick input it came from (no truth needed).

    Re-thicken `thin` with the triangular simulation at the thick spacing (thickness = spacing unless
    given) and return the PSNR against `thick` over all thick slices, on the [0, 1] window.
    """
    interval = thick.spacing_mm[0]
    again = simulate_thick(thin, thickness_mm=thickness_mm or interval, interval_mm=interval)
    if again.shape != thick.shape:
        raise ValueError(
            f"re-thickened volume {again.shape} does not match the thick input {thick.shape}; the thin "
            "volume must span the first to the last thick slice"
        )
    return psnr(thick.hu, again.hu, edge=0)
