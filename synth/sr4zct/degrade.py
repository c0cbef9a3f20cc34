"""SR4ZCT's scaling functions F↓ and F↑ along the rows of a 2-D image, sub-pixel exact.

F↓ (`degrade_rows`) turns an image with rows `pixel_mm` apart into the rows a CT scanner would have
reconstructed along that axis: thick rows every `interval_mm`, each the normalised triangular-weighted
sum of the rows within the slice *thickness* (`synth.simulate.triangular_weights`, the same kernel
and the same positions as `synth.simulate.simulate_thick`), so overlap = thickness − interval.

F↑ (`upsample_rows`) brings thick rows to the node's output grid, interval / factor, with
factor·(n−1)+1 rows spanning the first to the last thick row: it *is* `synth.bspline.interpolate_z`,
the BIS backend and the function that brings the coronal and sagittal planes to the output grid, so
training inputs and through-plane inputs are made the same way.

The training target (`resample_rows`) is the original image at the output grid's row positions,
read with the same cubic B-spline (mirror boundaries), so any ratio between the pixel size and the
output spacing works.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from synth.bspline import bspline_coefficients_z, interpolate_z
from synth.simulate import thick_positions_mm, triangular_weights
from synth.volume import CTVolume

Array = npt.NDArray[np.float32]


def row_weights(n_rows: int, pixel_mm: float, thickness_mm: float, interval_mm: float) -> npt.NDArray[np.float64]:
    """F↓ as a matrix (n_thick, n_rows): thick rows from row 0 every interval while inside the image."""
    if not (np.isfinite(pixel_mm) and pixel_mm > 0):
        raise ValueError(f"pixel_mm must be positive, got {pixel_mm}")
    thin_mm = pixel_mm * np.arange(n_rows, dtype=np.float64)
    thick_mm = thick_positions_mm(0.0, float(thin_mm[-1]), interval_mm)
    return triangular_weights(thin_mm, thick_mm, thickness_mm)


def degrade_rows(image: Array, *, pixel_mm: float, thickness_mm: float, interval_mm: float) -> Array:
    """F↓ along axis 0 of a 2-D (or stacked 3-D, rows first) image."""
    weights = row_weights(image.shape[0], pixel_mm, thickness_mm, interval_mm)
    out: Array = np.tensordot(weights, image.astype(np.float64), axes=(1, 0)).astype(np.float32)
    return out


def upsample_rows(thick: Array, *, interval_mm: float, factor: int) -> Array:
    """F↑ along axis 0: exactly `interpolate_z` (the BIS backend) on rows `interval_mm` apart."""
    flat = thick.reshape(thick.shape[0], 1, -1)
    up = interpolate_z(CTVolume(np.ascontiguousarray(flat, dtype=np.float32), (float(interval_mm), 1.0, 1.0)), factor)
    return up.hu.reshape(up.shape[0], *thick.shape[1:])


def resample_rows(image: Array, *, pixel_mm: float, step_mm: float, count: int) -> Array:
    """The image's cubic B-spline read at rows 0, step, …, (count−1)·step mm along axis 0."""
    n = image.shape[0]
    u = step_mm * np.arange(count, dtype=np.float64) / pixel_mm
    if count and u[-1] > n - 1 + 1e-9:
        raise ValueError(f"row {u[-1]:.3f} is beyond the image's last row {n - 1}")
    coeffs = bspline_coefficients_z(image.astype(np.float32))
    base = np.floor(u).astype(np.int64)
    t = u - base
    taps = np.stack([(1 - t) ** 3 / 6, (4 - 6 * t * t + 3 * t ** 3) / 6,
                     (1 + 3 * t + 3 * t * t - 3 * t ** 3) / 6, t ** 3 / 6], axis=1)
    out = np.zeros((count, *image.shape[1:]), dtype=np.float64)
    for k, offset in enumerate((-1, 0, 1, 2)):
        idx = _mirror(base + offset, n)
        out += taps[:, k].reshape(-1, *([1] * (image.ndim - 1))) * coeffs[idx]
    result: Array = out.astype(np.float32)
    return result


def _mirror(index: npt.NDArray[np.int64], n: int) -> npt.NDArray[np.int64]:
    if n == 1:
        return np.zeros_like(index)
    period = 2 * n - 2
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def training_pair(
    image: Array, *, pixel_mm: float, thickness_mm: float, interval_mm: float, factor: int
) -> tuple[Array, Array]:
    """(F↑(F↓(image)), image on the same grid), degraded along axis 0; rows interval/factor apart."""
    thick = degrade_rows(image, pixel_mm=pixel_mm, thickness_mm=thickness_mm, interval_mm=interval_mm)
    if thick.shape[0] < 2:
        raise ValueError(f"an image {image.shape[0]} rows of {pixel_mm} mm holds fewer than 2 rows of {interval_mm} mm")
    degraded = upsample_rows(thick, interval_mm=interval_mm, factor=factor)
    target = resample_rows(image, pixel_mm=pixel_mm, step_mm=interval_mm / factor, count=degraded.shape[0])
    return degraded, target
