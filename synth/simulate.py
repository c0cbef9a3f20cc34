"""Realistic thick-slice simulation from thin slices (Tang, Xing & Yang, "Cost-effective simulation").

Thick positions come from physical z: start, start + d, … while ≤ end (Algorithm 1). Each thick slice
is the normalised triangular-weighted sum of the thin slices, with weight max(0, 1 - |p - l| / t) for
thin position l, thick position p and slice *thickness* t, which differs from the interval d
(Algorithm 2). Overlap (t > d) and gaps (t < d) are both allowed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from synth.volume import CTVolume

_EPS_MM = 1e-6  # positions are compared with this tolerance, so 0, 5, …, 20 reaches an end at 20.0


def thick_positions_mm(start_mm: float, end_mm: float, interval_mm: float) -> npt.NDArray[np.float64]:
    """Algorithm 1: start, start + d, … up to and including end (within 1e-6 mm)."""
    if not (np.isfinite(interval_mm) and interval_mm > 0):
        raise ValueError(f"interval_mm must be positive, got {interval_mm}")
    if end_mm < start_mm:
        raise ValueError(f"end_mm must not be below start_mm, got start {start_mm} and end {end_mm}")
    count = int(np.floor((end_mm - start_mm) / interval_mm + _EPS_MM)) + 1
    return start_mm + interval_mm * np.arange(count, dtype=np.float64)


def triangular_weights(
    thin_positions_mm: npt.NDArray[np.float64],
    thick_positions_mm: npt.NDArray[np.float64],
    thickness_mm: float,
) -> npt.NDArray[np.float64]:
    """Row-normalised weights (n_thick, n_thin): row k holds g(p_k, l, t) / Σ_l g(p_k, l, t)."""
    if not (np.isfinite(thickness_mm) and thickness_mm > 0):
        raise ValueError(f"thickness_mm must be positive, got {thickness_mm}")
    distance = np.abs(thick_positions_mm[:, None] - thin_positions_mm[None, :])
    weights = np.maximum(0.0, 1.0 - distance / thickness_mm)
    totals = weights.sum(axis=1)
    if np.any(totals <= 0):
        k = int(np.argmin(totals))
        raise ValueError(
            f"thick slice {k} at {thick_positions_mm[k]:.3f} mm has no thin slice within the "
            f"thickness {thickness_mm} mm"
        )
    result: npt.NDArray[np.float64] = weights / totals[:, None]
    return result


def simulate_thick(volume: CTVolume, thickness_mm: float = 5.0, interval_mm: float = 5.0) -> CTVolume:
    """Thin volume → simulated thick volume at spacing `interval_mm`, starting at the first thin slice.

    Thick slice k lies at z = k·interval_mm from thin slice 0, so with 1-mm thin slices and a 5-mm
    interval, thick k ↔ thin 5k and 5(N-1)+1 thin slices give N thick slices.
    """
    if not (np.isfinite(interval_mm) and interval_mm > 0):
        raise ValueError(f"interval_mm must be positive, got {interval_mm}")
    if not (np.isfinite(thickness_mm) and thickness_mm > 0):
        raise ValueError(f"thickness_mm must be positive, got {thickness_mm}")
    dz, dy, dx = volume.spacing_mm
    if interval_mm < dz - _EPS_MM:
        raise ValueError(f"interval_mm {interval_mm} is finer than the thin spacing {dz} mm")
    n_thin = volume.shape[0]
    thin_z = dz * np.arange(n_thin, dtype=np.float64)
    thick_z = thick_positions_mm(0.0, float(thin_z[-1]), interval_mm)
    weights = triangular_weights(thin_z, thick_z, thickness_mm)
    out = np.empty((len(thick_z), *volume.hu.shape[1:]), dtype=np.float32)
    for k, row in enumerate(weights):
        used = np.nonzero(row)[0]
        lo, hi = int(used[0]), int(used[-1]) + 1          # the band of contributing thin slices
        slab = volume.hu[lo:hi].astype(np.float64)
        out[k] = np.tensordot(row[lo:hi], slab, axes=1).astype(np.float32)
    return CTVolume(out, (float(interval_mm), dy, dx))
