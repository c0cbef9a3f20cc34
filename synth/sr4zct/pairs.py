"""Off-axis training pairs from a series' own axial images (SR4ZCT eq. 1), and the held-out split.

Each axial image gives two pairs, degraded along its rows (vertical) and, transposed, along its
columns (horizontal), so the degraded axis is always the first, as z is in coronal and sagittal planes.
A pair keeps the thick rows (the network's input) and the residual target: the image on the output
grid minus F↑ of the thick rows, in HU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from synth.sr4zct.degrade import degrade_rows, resample_rows, upsample_rows

Array = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Pair:
    thick: Array          # (n, w) thick rows, HU
    residual: Array       # (factor·(n−1)+1, w) target − F↑(thick), HU
    upsampled: Array      # (factor·(n−1)+1, w) F↑(thick), HU (the BIS image)


@dataclass(frozen=True, slots=True)
class Degradation:
    thickness_mm: float
    interval_mm: float
    factor: int


def make_pair(image: Array, *, pixel_mm: float, deg: Degradation, keep_upsampled: bool = True) -> Pair:
    """One pair; `keep_upsampled=False` drops F↑ (training needs only thick rows and residual)."""
    thick = degrade_rows(image, pixel_mm=pixel_mm, thickness_mm=deg.thickness_mm, interval_mm=deg.interval_mm)
    if thick.shape[0] < 2:
        raise ValueError(f"an image of {image.shape[0]} rows of {pixel_mm:g} mm holds fewer than two "
                         f"{deg.interval_mm:g}-mm rows")
    up = upsample_rows(thick, interval_mm=deg.interval_mm, factor=deg.factor)
    target = resample_rows(image, pixel_mm=pixel_mm, step_mm=deg.interval_mm / deg.factor, count=up.shape[0])
    return Pair(thick=thick, residual=target - up, upsampled=up if keep_upsampled else up[:0])


def axial_pairs(
    axial: Array, *, pixel_mm: tuple[float, float], deg: Degradation, indices: npt.NDArray[np.int64],
    keep_upsampled: bool = True,
) -> list[Pair]:
    """Vertical and horizontal pairs of the axial images `indices` of a (z, y, x) volume."""
    dy, dx = pixel_mm
    pairs: list[Pair] = []
    for i in indices:
        image = axial[int(i)]
        pairs.append(make_pair(image, pixel_mm=dy, deg=deg, keep_upsampled=keep_upsampled))
        pairs.append(make_pair(np.ascontiguousarray(image.T), pixel_mm=dx, deg=deg, keep_upsampled=keep_upsampled))
    return pairs


def split_heldout(n_images: int, *, fraction: float = 0.15, minimum: int = 2) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train, held_out) axial indices: held-out images spread evenly, never adjacent to the ends."""
    if n_images < 3:
        raise ValueError(f"off-axis validation needs at least 3 axial images, got {n_images}")
    k = min(max(minimum, round(fraction * n_images)), n_images - 1)
    held = np.unique(np.linspace(0, n_images - 1, k + 2)[1:-1].round().astype(np.int64))
    train = np.setdiff1d(np.arange(n_images, dtype=np.int64), held)
    return train, held
