"""A simple 3-D blob detector and nodule sensitivity at a fixed false-positive rate.

This is a conspicuity check, not a CAD system: it asks whether a nodule stands out as a blob in a
volume (thick, BIS, DLS or true thin) the same way, echoing the paper's nodule-detection results.
Detection: scale-normalised Laplacian of Gaussian (sigma in mm, so anisotropic voxels are handled)
on the [0, 1] window, maxima over scale and a ±`NMS_MM` neighbourhood, kept inside the lungs
(where the 8-mm-smoothed volume is below -400 HU), then ranked by Hessian blobness so that vessels
(tubes) rank below nodules (spheres). A thick volume is examined as a reader sees it, each slice
filling its slab (nearest-neighbour in z at 1 mm); derivatives of 5-mm samples at a 1.5-mm scale would
be meaningless. Positions are mm from voxel (0, 0, 0), (z, y, x).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from synth.research.metrics import to_unit
from synth.research.phantom_spec import Nodule
from synth.volume import CTVolume

SIGMAS_MM = (1.5, 2.5, 3.5)            # blob radius ≈ sigma·√3: 2.6-6 mm, i.e. 3-12 mm nodules
NMS_MM = 6.0
LUNG_MASK_HU = -400.0
LUNG_SMOOTH_MM = 8.0
MATCH_EXTRA_MM = 3.0                   # a hit lies within radius + 3 mm of the nodule centre
PROPOSALS = 300                        # LoG maxima examined for blobness
STACK_Z_MM = 1.0                       # thick slices are shown as slabs at this z step


@dataclass(frozen=True, slots=True)
class Candidate:
    center_mm: tuple[float, float, float]
    score: float


@dataclass(frozen=True, slots=True)
class Sensitivity:
    sensitivity: float
    detected: int
    nodules: int
    fp_per_case: float
    threshold: float


def laplacian_of_gaussian_mm(
    image: npt.NDArray[np.float32], sigma_mm: float, spacing_mm: npt.NDArray[np.float64]
) -> npt.NDArray[np.float32]:
    """LoG with derivatives per mm (not per voxel), so thick and thin volumes compare."""
    sigma_vox = tuple(float(v) for v in sigma_mm / spacing_mm)
    total = np.zeros(image.shape, dtype=np.float32)
    for axis, step in enumerate(spacing_mm):
        order = [0, 0, 0]
        order[axis] = 2
        total += ndimage.gaussian_filter(image, sigma=sigma_vox, order=order, mode="nearest") / np.float32(step**2)
    return total


def detect_blobs(
    volume: CTVolume, max_candidates: int = 100, sigmas_mm: Sequence[float] = SIGMAS_MM
) -> list[Candidate]:
    """Bright blobs in the lungs, strongest first.

    LoG maxima propose up to `PROPOSALS` points; each is scored by blobness, sigma² times the weakest
    of the three Hessian curvatures at its best scale, which is large for a sphere and about zero for
    a vessel (a tube curves in two directions only).
    """
    if max_candidates < 1:
        raise ValueError(f"max_candidates must be at least 1, got {max_candidates}")
    if not sigmas_mm or min(sigmas_mm) <= 0:
        raise ValueError(f"sigmas_mm must be positive, got {tuple(sigmas_mm)}")
    spacing = np.asarray(volume.spacing_mm, dtype=np.float64)
    unit = to_unit(volume.hu).astype(np.float32)
    hu = volume.hu
    z_shift_mm = 0.0
    repeat = round(spacing[0] / STACK_Z_MM)
    if repeat > 1:
        # a thick volume is looked at as its stacked slices: each slice fills its own slab
        unit, hu = np.repeat(unit, repeat, axis=0), np.repeat(hu, repeat, axis=0)
        spacing = np.array([spacing[0] / repeat, spacing[1], spacing[2]])
        z_shift_mm = -0.5 * (repeat - 1) * spacing[0]
    response = np.full(unit.shape, -np.inf, dtype=np.float32)
    best_scale = np.zeros(unit.shape, dtype=np.int8)
    for k, sigma in enumerate(sigmas_mm):
        r = -np.float32(sigma**2) * laplacian_of_gaussian_mm(unit, sigma, spacing)
        better = r > response
        response[better], best_scale[better] = r[better], k
    smooth = ndimage.gaussian_filter(hu, sigma=tuple(LUNG_SMOOTH_MM / spacing), mode="nearest")
    size = tuple(max(3, 2 * round(NMS_MM / s) + 1) for s in spacing)
    peaks = (response == ndimage.maximum_filter(response, size=size, mode="nearest"))
    peaks &= (smooth < LUNG_MASK_HU) & (response > 0)
    idx = np.argwhere(peaks)
    order = np.argsort(-response[peaks], kind="stable")[:PROPOSALS]
    found = []
    for i in order:
        point = idx[i]
        sigma = float(sigmas_mm[int(best_scale[tuple(point)])])
        score = sigma**2 * -float(np.max(hessian_eigenvalues(unit, point, sigma, spacing)))
        if score > 0:
            z, y, x = (float(v) for v in point * spacing)
            found.append(Candidate((z + z_shift_mm, y, x), score))
    found.sort(key=lambda c: -c.score)
    return found[:max_candidates]


def hessian_eigenvalues(
    image: npt.NDArray[np.float32], point: npt.NDArray[np.intp], sigma_mm: float,
    spacing_mm: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Eigenvalues (per mm²) of the Gaussian-smoothed Hessian at one voxel, from a local patch."""
    sigma_vox = sigma_mm / spacing_mm
    half = np.ceil(4.0 * sigma_vox).astype(int) + 1
    lo = np.maximum(point - half, 0)
    hi = np.minimum(point + half + 1, image.shape)
    patch = image[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    at = tuple(int(v) for v in point - lo)
    h = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            order = [0, 0, 0]
            order[a] += 1
            order[b] += 1
            d = ndimage.gaussian_filter(patch, sigma=tuple(sigma_vox), order=order, mode="nearest")
            h[a, b] = h[b, a] = float(d[at]) / (spacing_mm[a] * spacing_mm[b])
    eig: npt.NDArray[np.float64] = np.linalg.eigvalsh(h).astype(np.float64)
    return eig


def _hits(candidate: Candidate, nodules: Sequence[Nodule]) -> list[int]:
    c = np.asarray(candidate.center_mm)
    return [i for i, n in enumerate(nodules)
            if np.linalg.norm(c - np.asarray(n.center_mm)) <= 0.5 * n.diameter_mm + MATCH_EXTRA_MM]


def sensitivity_at_fp(
    cases: Sequence[tuple[Sequence[Candidate], Sequence[Nodule]]], fp_per_case: float = 2.0
) -> Sensitivity:
    """Sensitivity at the lowest score threshold whose false positives per case stay ≤ fp_per_case.

    A candidate within radius + 3 mm of a listed nodule is a hit (several hits on one nodule count
    once and are not false positives); every other candidate is a false positive.
    """
    if not cases:
        raise ValueError("sensitivity_at_fp needs at least one case")
    if fp_per_case < 0:
        raise ValueError(f"fp_per_case must not be negative, got {fp_per_case}")
    events: list[tuple[float, int, int]] = []        # (score, case, nodule or -1 for a false positive)
    total = 0
    for k, (candidates, nodules) in enumerate(cases):
        total += len(nodules)
        for cand in candidates:
            hits = _hits(cand, nodules)
            events.extend((cand.score, k, i) for i in hits) if hits else events.append((cand.score, k, -1))
    if total == 0:
        raise ValueError("sensitivity_at_fp needs at least one nodule")
    events.sort(key=lambda e: -e[0])
    allowed = fp_per_case * len(cases)
    found: set[tuple[int, int]] = set()
    fps, threshold, best = 0, float("inf"), (0, 0.0)
    i = 0
    while i < len(events):
        score = events[i][0]
        group = [e for e in events[i:] if e[0] == score]     # equal scores enter together
        group_fps = sum(1 for e in group if e[2] < 0)
        if fps + group_fps > allowed:
            break
        fps += group_fps
        found.update((e[1], e[2]) for e in group if e[2] >= 0)
        threshold = score
        best = (len(found), fps / len(cases))
        i += len(group)
    return Sensitivity(best[0] / total, best[0], total, best[1], threshold)
