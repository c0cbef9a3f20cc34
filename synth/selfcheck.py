"""The self-check every derived volume gets: does it explain the very series it was made from?

A thin volume that is right must, thickened again with the input's own slice profile, give back the
input. So the derived volume is re-thickened exactly as `synth.simulate` thickens (triangular weights
of the input's slice *thickness*, at the input's own positions, one per slice interval; overlap and
gaps allowed) and compared with the input:

- **consistency**: PSNR in the node's one HU window (`synth.normalize`: both clipped to
  [−1024, 2048] HU, peak 3072 HU), over every voxel of the compared slices;
- **lung bias**: mean HU of (re-thickened derived − input) inside the lungs. The lung mask is taken
  on the whole input: voxels of −950 to −500 HU that lie inside the body (between the first and last
  voxel above −500 HU of their row *and* of their column, in their slice), eroded in-plane by
  `LUNG_ERODE_PX` pixels (a 3 × 3 cross each) so partial-volume rims at the skin, the table and the
  chest wall drop out, and along z by `LUNG_ERODE_SLICES` slice (a voxel stays only if the slices
  above and below are lung there too). The erosion along z matters: without it the mask picks lung
  voxels next to a vessel or the diaphragm in the next slice, which any z-smoothing raises; on the
  real series BIS then reads +4 to +12 HU, with it −1.2 to +0.4 HU (deploy/README.md, "Self-check").
  Fewer than `MIN_LUNG_VOXELS` voxels: no lungs, no bias (None).

Only input slices whose whole triangular profile (± thickness) lies inside the derived volume are
compared, since the first and last ones cannot be re-made from what the derived volume spans; when
no slice qualifies (a very short series), all are compared with the profile cut at the ends.

A backend's own figures (`CTVolume.figures`: the off-axis validation PSNR of the network and of BIS,
its fine-tuning budget and time) are carried along unchanged; this module measures none of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from synth.normalize import HU_MAX, HU_MIN, HU_RANGE
from synth.simulate import thick_positions_mm, triangular_weights
from synth.volume import CTVolume

PEAK_HU = HU_RANGE                     # PSNR peak: the width of the HU window, 3072 HU
LUNG_MIN_HU, LUNG_MAX_HU = -950.0, -500.0
BODY_MIN_HU = -500.0                   # above this: tissue (the body, and the table)
LUNG_ERODE_PX = 2
LUNG_ERODE_SLICES = 1
MIN_LUNG_VOXELS = 500
MAX_DB = 100.0                         # PSNR reported for identical volumes (MSE 0)
_POSITION_TOLERANCE = 0.01             # of a derived slice interval: how well the two spans must agree

FIGURE_KEYS = ("offaxis_psnr_db", "offaxis_bis_psnr_db", "budget_s", "finetune_s")
"""The backend figures a self-check carries (see synth.volume.CTVolume.figures)."""


@dataclass(frozen=True, slots=True)
class SelfCheck:
    """Figures of one derived volume against its input (dB, HU, seconds; None where not measured)."""

    consistency_db: float
    lung_bias_hu: float | None
    lung_voxels: int
    compared_slices: int
    offaxis_psnr_db: float | None = None
    offaxis_bis_psnr_db: float | None = None
    budget_s: float | None = None
    finetune_s: float | None = None

    def summary(self) -> str:
        """One human-readable line, e.g. "self-check: consistency 41.2 dB, lung bias -3.1 HU"."""
        bias = "no lungs found" if self.lung_bias_hu is None else f"lung bias {self.lung_bias_hu:+.1f} HU"
        text = f"self-check: consistency {self.consistency_db:.1f} dB, {bias}"
        if self.offaxis_psnr_db is not None:
            text += f"; off-axis {self.offaxis_psnr_db:.1f} dB"
            if self.offaxis_bis_psnr_db is not None:
                text += f" vs BIS {self.offaxis_bis_psnr_db:.1f} dB"
        if self.budget_s is not None:
            text += f"; fine-tune budget {self.budget_s:g} s"
            if self.finetune_s is not None:
                text += f", used {self.finetune_s:.0f} s"
        return text


def self_check(source: CTVolume, derived: CTVolume) -> SelfCheck:
    """Re-thicken `derived` with `source`'s slice profile at `source`'s positions and compare."""
    rethick, compared = rethicken(derived, source)
    reference = source.hu[compared]
    mask = lung_mask(source.hu)[compared]
    voxels = int(mask.sum())
    bias = None
    if voxels >= MIN_LUNG_VOXELS:
        diff = rethick.astype(np.float64)[mask] - reference.astype(np.float64)[mask]
        bias = float(diff.mean())
    fig = _backend_figures(derived.figures)
    return SelfCheck(consistency_db=psnr_db(rethick, reference), lung_bias_hu=bias, lung_voxels=voxels,
                     compared_slices=int(compared.size), offaxis_psnr_db=fig["offaxis_psnr_db"],
                     offaxis_bis_psnr_db=fig["offaxis_bis_psnr_db"], budget_s=fig["budget_s"],
                     finetune_s=fig["finetune_s"])


def rethicken(derived: CTVolume, source: CTVolume) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
    """The derived volume thickened as the source was: (re-made slices, indices of the source slices).

    Positions are along z from the first slice of each (the derived volume starts at the source's
    first slice, as every backend's output does); the spans must agree.
    """
    if derived.shape[1:] != source.shape[1:]:
        raise ValueError(f"derived slices are {derived.shape[1:]}, the source's {source.shape[1:]}")
    step_mm = derived.spacing_mm[0]
    thin_z = step_mm * np.arange(derived.shape[0], dtype=np.float64)
    interval_mm = source.spacing_mm[0]
    thick_z = thick_positions_mm(0.0, interval_mm * (source.shape[0] - 1), interval_mm)
    if abs(thin_z[-1] - thick_z[-1]) > _POSITION_TOLERANCE * step_mm:
        raise ValueError(f"the derived volume spans {thin_z[-1]:.3f} mm, the source {thick_z[-1]:.3f} mm")
    thickness = source.thickness_mm
    inside = (thick_z - thickness >= -_POSITION_TOLERANCE * step_mm) & (
        thick_z + thickness <= thin_z[-1] + _POSITION_TOLERANCE * step_mm)
    compared = np.nonzero(inside)[0] if inside.any() else np.arange(thick_z.size)
    weights = triangular_weights(thin_z, thick_z[compared], thickness)
    out = np.empty((compared.size, *derived.shape[1:]), dtype=np.float32)
    for k, row in enumerate(weights):
        used = np.nonzero(row)[0]
        lo, hi = int(used[0]), int(used[-1]) + 1
        out[k] = np.tensordot(row[lo:hi], derived.hu[lo:hi].astype(np.float64), axes=1).astype(np.float32)
    return out, compared


def psnr_db(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """PSNR of two HU volumes in the window [HU_MIN, HU_MAX] with peak PEAK_HU, slice by slice in float64."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    total = 0.0
    for x, y in zip(a, b, strict=True):
        d = np.clip(x, HU_MIN, HU_MAX).astype(np.float64) - np.clip(y, HU_MIN, HU_MAX).astype(np.float64)
        total += float(np.square(d).sum())
    mse = total / a.size
    if mse <= 0.0:
        return MAX_DB
    return min(MAX_DB, 10.0 * math.log10(PEAK_HU * PEAK_HU / mse))


def lung_mask(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Lung voxels of a (z, y, x) HU volume, as the module docstring defines them."""
    body = hu > BODY_MIN_HU
    inside = _between_first_and_last(body, axis=2) & _between_first_and_last(body, axis=1)
    mask = inside & (hu >= LUNG_MIN_HU) & (hu <= LUNG_MAX_HU)
    for _ in range(LUNG_ERODE_PX):
        mask = _erode_cross(mask)
    for _ in range(LUNG_ERODE_SLICES):
        eroded = np.zeros_like(mask)
        eroded[1:-1] = mask[1:-1] & mask[:-2] & mask[2:]
        mask = eroded
    return mask


def _between_first_and_last(flags: npt.NDArray[np.bool_], axis: int) -> npt.NDArray[np.bool_]:
    """True from the first to the last True along `axis` (inclusive), False elsewhere."""
    seen_before = np.logical_or.accumulate(flags, axis=axis)
    seen_after = np.flip(np.logical_or.accumulate(np.flip(flags, axis=axis), axis=axis), axis=axis)
    result: npt.NDArray[np.bool_] = seen_before & seen_after
    return result


def _erode_cross(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """In-plane binary erosion by a 3 × 3 cross; the image border counts as outside."""
    out = mask.copy()
    out[:, 0, :] = out[:, -1, :] = False
    out[:, :, 0] = out[:, :, -1] = False
    out[:, 1:-1, 1:-1] &= mask[:, :-2, 1:-1] & mask[:, 2:, 1:-1] & mask[:, 1:-1, :-2] & mask[:, 1:-1, 2:]
    return out


def _backend_figures(figures: Mapping[str, float]) -> dict[str, float | None]:
    """The known backend figures, finite floats or None."""
    found: dict[str, float | None] = {}
    for key in FIGURE_KEYS:
        value = figures.get(key)
        found[key] = float(value) if value is not None and math.isfinite(float(value)) else None
    return found
