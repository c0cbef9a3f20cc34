"""Cubic B-spline interpolation along z: the maths shared by the BIS backend and the network's
global residual (a leaf: it imports only the seam's slice count and CTVolume).

The result is exactly SimpleITK's `sitkBSpline` (order 3, mirror boundary) resampling along z with x
and y on their grid (a test compares the two), computed separably: B-spline prefiltering along z
(Unser's recursive filter) and 4 weighted coefficient slices per output slice. A full 3-D B-spline
resample of a 161×512² series took 40 s on 2 cores; this takes about a second.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from synth.seam import output_slices
from synth.volume import CTVolume

_POLE = math.sqrt(3.0) - 2.0          # the cubic B-spline's pole
_GAIN = (1.0 - _POLE) * (1.0 - 1.0 / _POLE)
_NEGLIGIBLE = 1e-13


def bspline_coefficients_z(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Cubic B-spline coefficients along axis 0, mirror-symmetric boundaries (as ITK)."""
    n = values.shape[0]
    c = values.astype(np.float64) * _GAIN
    if n == 1:
        return c
    z = _POLE
    # Initial causal coefficient of the mirrored signal (period 2n-2), exactly; weights that
    # underflow are skipped so long series cost only a few slices.
    k = np.arange(n, dtype=np.float64)
    weights = z ** k
    weights[1:n - 1] += z ** (2 * n - 2 - k[1:n - 1])
    keep = np.nonzero(np.abs(weights) > _NEGLIGIBLE)[0]
    causal = np.tensordot(weights[keep], c[keep], axes=(0, 0)) / (1.0 - z ** (2 * n - 2))
    c[0] = causal
    for i in range(1, n):
        c[i] += z * c[i - 1]
    c[n - 1] = (z / (z * z - 1.0)) * (c[n - 1] + z * c[n - 2])
    for i in range(n - 2, -1, -1):
        c[i] = z * (c[i + 1] - c[i])
    return c


def _mirror(index: int, n: int) -> int:
    if n == 1:
        return 0
    period = 2 * n - 2
    index = abs(index) % period
    return period - index if index >= n else index


def interpolate_z(volume: CTVolume, factor: int) -> CTVolume:
    """Resample along z from spacing d to d/factor with a cubic B-spline; x and y are untouched.

    N input slices give factor·(N−1)+1 output slices spanning exactly the first to the last input.
    """
    n = volume.shape[0]
    n_out = output_slices(n, factor)
    coeffs = bspline_coefficients_z(volume.hu)
    out = np.empty((n_out, *volume.shape[1:]), dtype=np.float32)
    for j in range(n_out):
        base, rem = divmod(j, factor)
        u = rem / factor
        taps = ((1 - u) ** 3 / 6, (4 - 6 * u * u + 3 * u ** 3) / 6, (1 + 3 * u + 3 * u * u - 3 * u ** 3) / 6,
                u ** 3 / 6)
        acc = np.zeros(volume.shape[1:], dtype=np.float64)
        for offset, weight in zip((-1, 0, 1, 2), taps, strict=True):
            if weight != 0.0:
                acc += weight * coeffs[_mirror(base + offset, n)]
        out[j] = acc
    dz, dy, dx = volume.spacing_mm
    return CTVolume(out, (dz / factor, dy, dx))
