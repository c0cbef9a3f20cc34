"""A synthetic 1-mm chest CT phantom in HU, varied by seed, with a list of the nodules it holds.

The anatomy is analytic and drawn painter-style with partial-volume edges: body outline with fat and
muscle, ribs, spine, heart and aorta, two lungs with branching vessel and airway trees (tapering to
sub-millimetre calibre), a trachea, and solid or sub-solid nodules of 3-12 mm. Scanner-like in-plane
blur, a short z response and correlated noise finish it. Nominal anatomy spans 300 mm cranio-caudal
(apex at 0); each phantom shows a seeded window of it.

Positions are in mm from the centre of voxel (0, 0, 0), axes (z, y, x); y grows posterior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from synth.research.phantom_spec import NODULE_KINDS, Nodule, Phantom, PhantomSpec
from synth.volume import CTVolume

F32 = npt.NDArray[np.float32]
__all__ = ["NODULE_KINDS", "Nodule", "Phantom", "PhantomSpec", "make_phantom", "wall_hu"]
CHEST_LENGTH_MM = 300.0
AIR_HU, LUNG_HU, FAT_HU, MUSCLE_HU, BLOOD_HU = -1000.0, -860.0, -100.0, 45.0, 40.0


@dataclass(frozen=True, slots=True)
class _Anatomy:
    """Seeded shape parameters (mm)."""

    z0: float                 # nominal z of slice 0
    cy: float
    cx: float
    body_ax: float
    body_ay: float
    fat_mm: float
    muscle_mm: float
    lung_x: float             # |x| of each lung centre from cx
    lung_ax: float
    lung_ay: float
    diaphragm_z: float
    heart_z: float
    rib_pitch: float


class _Canvas:
    """The HU volume under construction and its mm grid."""

    def __init__(self, spec: PhantomSpec, anatomy: _Anatomy) -> None:
        self.spacing = (spec.slice_mm, spec.pixel_mm, spec.pixel_mm)
        self.shape = (spec.slices, spec.size, spec.size)
        self.hu = np.full(self.shape, AIR_HU, dtype=np.float32)
        self.voxel_mm = min(self.spacing)
        self.a = anatomy
        # nominal z (apex = 0) of every slice, and in-plane coordinates centred on the body
        self.z = (anatomy.z0 + np.arange(spec.slices) * spec.slice_mm).astype(np.float32)[:, None, None]
        self.y = ((np.arange(spec.size) * spec.pixel_mm) - anatomy.cy).astype(np.float32)[None, :, None]
        self.x = ((np.arange(spec.size) * spec.pixel_mm) - anatomy.cx).astype(np.float32)[None, None, :]

    def to_nominal(self, index_mm: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """(z, y, x) mm from voxel 0 → nominal frame."""
        result: npt.NDArray[np.float64] = index_mm + np.array([self.a.z0, -self.a.cy, -self.a.cx])
        return result

    def to_index_mm(self, nominal: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        result: npt.NDArray[np.float64] = nominal - np.array([self.a.z0, -self.a.cy, -self.a.cx])
        return result

    def paint(self, occupancy: F32, value: float | F32, where: tuple[slice, ...] | None = None) -> None:
        """Blend `value` in where occupancy is 1 (in place: basic slicing gives a view)."""
        region = self.hu if where is None else self.hu[where]
        target = np.asarray(value, dtype=np.float32)
        region += occupancy * (target - region)


def _soft(signed_mm: F32, width_mm: float) -> F32:
    """Partial-volume occupancy from a signed distance (positive inside)."""
    result: F32 = np.clip(0.5 + signed_mm / np.float32(width_mm), 0.0, 1.0).astype(np.float32)
    return result


def _ellipse_signed(x: F32, y: F32, ax: float | F32, ay: float | F32) -> F32:
    """Approximate signed distance (mm, positive inside) to an axis-aligned ellipse."""
    rho = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)
    scale = np.minimum(ax, ay)
    result: F32 = ((1.0 - rho) * scale).astype(np.float32)
    return result


def _lung_signed(c: _Canvas, side: int) -> F32:
    a = c.a
    t = np.clip(c.z / 45.0, 0.0, 1.0)                          # apex rounding over the first 45 mm
    prof = np.sqrt(t) * (1.0 + 0.12 * np.clip((c.z - 60.0) / 150.0, 0.0, 1.0))
    ax, ay = a.lung_ax * prof + 1e-3, a.lung_ay * prof + 1e-3
    xc = side * a.lung_x + side * 8.0 * np.clip((c.z - a.heart_z + 40.0) / 80.0, 0.0, 1.0) * (side > 0)
    signed = _ellipse_signed(c.x - xc, c.y + 5.0, ax, ay)
    # diaphragm dome: the lung ends higher at its centre than at its rim
    rho2 = np.clip(((c.x - xc) / a.lung_ax) ** 2 + ((c.y + 5.0) / a.lung_ay) ** 2, 0.0, 1.0)
    base = a.diaphragm_z + (8.0 if side < 0 else 0.0) - 35.0 * (1.0 - rho2)
    result: F32 = np.minimum(signed, base - c.z).astype(np.float32)
    return result


def _segment(
    c: _Canvas, start: npt.NDArray[np.float64], end: npt.NDArray[np.float64],
    r0: float, r1: float, value: float, lung_only: bool = False,
) -> None:
    """A tapering tube between nominal points start → end, painted with partial volume.

    A tube thinner than a voxel is drawn a voxel wide with its contrast scaled by its true
    cross-section, so sub-millimetre vessels stay faint instead of vanishing or swelling.
    """
    p0, p1 = c.to_index_mm(start), c.to_index_mm(end)
    spacing = np.asarray(c.spacing)
    pad = max(r0, r1) + 2.0 * c.voxel_mm
    lo = np.maximum(np.floor((np.minimum(p0, p1) - pad) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((np.maximum(p0, p1) + pad) / spacing).astype(int) + 1, c.shape)
    if np.any(hi <= lo):
        return
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    zz = (np.arange(lo[0], hi[0]) * spacing[0]).astype(np.float32)[:, None, None]
    yy = (np.arange(lo[1], hi[1]) * spacing[1]).astype(np.float32)[None, :, None]
    xx = (np.arange(lo[2], hi[2]) * spacing[2]).astype(np.float32)[None, None, :]
    d = (p1 - p0).astype(np.float32)
    length2 = float(np.dot(d, d)) or 1e-6
    t = np.clip(((zz - p0[0]) * d[0] + (yy - p0[1]) * d[1] + (xx - p0[2]) * d[2]) / length2, 0.0, 1.0)
    dist = np.sqrt((zz - p0[0] - t * d[0]) ** 2 + (yy - p0[1] - t * d[1]) ** 2 + (xx - p0[2] - t * d[2]) ** 2)
    radius = r0 + (r1 - r0) * t
    half = 0.5 * c.voxel_mm
    drawn = np.maximum(radius, half)
    occupancy = _soft((drawn - dist).astype(np.float32), c.voxel_mm) * ((radius / drawn) ** 2)
    if lung_only:
        occupancy = occupancy * (c.hu[box] < -500.0)
    c.paint(occupancy.astype(np.float32), value, box)


def _tree(
    c: _Canvas, rng: np.random.Generator, root: npt.NDArray[np.float64], direction: npt.NDArray[np.float64],
    radius: float, side: int, value: float, min_radius: float, wall: float | None, segments: list[int],
) -> None:
    """A branching tree: each branch splits in two thinner ones, bending away, until min_radius."""
    stack = [(root, direction / np.linalg.norm(direction), radius)]
    while stack and segments[0] < 9000:
        start, u, r = stack.pop()
        length = float(rng.uniform(6.0, 11.0) * r ** 0.6 + 4.0)
        end = start + u * length
        inside = _inside_lung(c.a, end, side)
        if not inside:
            end = start + u * length * 0.4
        r_end = r * 0.92
        if wall is not None:                     # airway: wall then lumen
            _segment(c, start, end, r + wall, r_end + wall, value=wall_hu(r), lung_only=True)
            _segment(c, start, end, r, r_end, value=AIR_HU, lung_only=False)
        else:
            _segment(c, start, end, r, r_end, value=value, lung_only=True)
        segments[0] += 1
        if not inside or r_end * 0.78 < min_radius:
            continue
        for sign in (1.0, -1.0):
            child = r_end * float(rng.uniform(0.68, 0.84))
            ortho = np.cross(u, rng.normal(size=3))
            ortho /= np.linalg.norm(ortho) + 1e-9
            angle = float(rng.uniform(0.35, 0.75))
            v = u * math.cos(angle) + sign * ortho * math.sin(angle)
            stack.append((end, v / np.linalg.norm(v), child))


def wall_hu(radius_mm: float) -> float:
    """Bronchial walls: soft tissue, fainter for small airways (partial volume already thins them)."""
    return -50.0 if radius_mm > 2.0 else -250.0


def _inside_lung(a: _Anatomy, p: npt.NDArray[np.float64], side: int, margin: float = 2.0) -> bool:
    z, y, x = (float(v) for v in p)
    t = min(max(z / 45.0, 0.0), 1.0)
    prof = math.sqrt(t) * (1.0 + 0.12 * min(max((z - 60.0) / 150.0, 0.0), 1.0))
    if prof <= 0:
        return False
    xc = side * a.lung_x + (8.0 * min(max((z - a.heart_z + 40.0) / 80.0, 0.0), 1.0) if side > 0 else 0.0)
    ax, ay = a.lung_ax * prof - margin, a.lung_ay * prof - margin
    if ax <= 0 or ay <= 0:
        return False
    rho2 = ((x - xc) / ax) ** 2 + ((y + 5.0) / ay) ** 2
    base = a.diaphragm_z + (8.0 if side < 0 else 0.0) - 35.0 * (1.0 - min(rho2, 1.0))
    return rho2 < 1.0 and z < base - margin


def _anatomy(rng: np.random.Generator, spec: PhantomSpec) -> _Anatomy:
    fov = spec.size * spec.pixel_mm
    extent = spec.slices * spec.slice_mm
    body_ax = float(min(rng.uniform(140.0, 170.0), 0.47 * fov))
    body_ay = float(body_ax * rng.uniform(0.62, 0.74))
    z0 = float(rng.uniform(10.0, max(10.0, CHEST_LENGTH_MM - extent - 10.0)))
    fat_mm, muscle_mm = float(rng.uniform(8.0, 22.0)), float(rng.uniform(8.0, 14.0))
    inner_ax, inner_ay = body_ax - fat_mm - muscle_mm, body_ay - fat_mm - muscle_mm
    lung_x = float(inner_ax * rng.uniform(0.44, 0.50))
    lung_ax = float(min(inner_ax * rng.uniform(0.32, 0.38), inner_ax - lung_x - 12.0) / 1.12)
    lung_ay = float((inner_ay - 14.0) * rng.uniform(0.88, 0.96) / 1.12)
    return _Anatomy(
        z0=z0, cy=0.5 * fov + float(rng.uniform(-6, 6)), cx=0.5 * fov + float(rng.uniform(-6, 6)),
        body_ax=body_ax, body_ay=body_ay,
        fat_mm=fat_mm, muscle_mm=muscle_mm, lung_x=lung_x, lung_ax=lung_ax, lung_ay=lung_ay,
        diaphragm_z=float(rng.uniform(250.0, 290.0)),
        heart_z=float(rng.uniform(175.0, 205.0)),
        rib_pitch=float(rng.uniform(21.0, 25.0)),
    )


def _body(c: _Canvas, rng: np.random.Generator) -> None:
    a = c.a
    wobble = 1.0 + 0.03 * np.sin(c.z / 37.0 + float(rng.uniform(0, 6)))
    ax, ay = a.body_ax * wobble, a.body_ay * wobble
    w = c.voxel_mm
    c.paint(_soft(_ellipse_signed(c.x, c.y, ax, ay), w), FAT_HU)
    c.paint(_soft(_ellipse_signed(c.x, c.y, ax - a.fat_mm, ay - a.fat_mm), w), MUSCLE_HU)
    inner = _ellipse_signed(c.x, c.y, ax - a.fat_mm - a.muscle_mm, ay - a.fat_mm - a.muscle_mm)
    c.paint(_soft(inner, w), 30.0)                                  # mediastinal soft tissue
    c.paint(_soft(inner - 6.0, w) * _soft(-(c.y + 0.55 * ay), 15.0), -90.0)   # anterior fat pad


def _ribs(c: _Canvas) -> None:
    a = c.a
    ax = a.body_ax - a.fat_mm - a.muscle_mm - 4.0
    ay = a.body_ay - a.fat_mm - a.muscle_mm - 4.0
    theta = np.arctan2(c.y / ay, c.x / ax)                          # 0 lateral, +π/2 posterior
    radial = (1.0 - np.sqrt((c.x / ax) ** 2 + (c.y / ay) ** 2)) * min(ax, ay)
    anterior = np.clip(-np.sin(theta), 0.0, 1.0)                      # ribs slope down anteriorly
    present = np.abs(np.cos(theta)) > 0.25                            # no rib over sternum or spine
    first = math.floor((float(c.z[0, 0, 0]) - 40.0) / a.rib_pitch)
    last = math.ceil((float(c.z[-1, 0, 0]) + 40.0) / a.rib_pitch)
    for k in range(max(first, 1), last + 1):
        z_rib = k * a.rib_pitch + 25.0 * anterior                     # (1, y, x)
        lo = int(max(0, math.floor((k * a.rib_pitch - 8.0 - float(c.z[0, 0, 0])) / c.spacing[0])))
        hi = int(min(c.shape[0], math.ceil((k * a.rib_pitch + 34.0 - float(c.z[0, 0, 0])) / c.spacing[0])))
        if hi <= lo:
            continue
        zs = c.z[lo:hi]
        dist = np.sqrt(((zs - z_rib) / 1.6) ** 2 + radial ** 2)         # flat oval: 2.5 x 4 mm
        cortex = _soft((4.0 - dist).astype(np.float32), c.voxel_mm) * present
        c.paint(cortex.astype(np.float32), 650.0, (slice(lo, hi),))
        marrow = _soft((2.4 - dist).astype(np.float32), c.voxel_mm) * present
        c.paint(marrow.astype(np.float32), 220.0, (slice(lo, hi),))


def _spine_and_vessels(c: _Canvas) -> None:
    a = c.a
    yv = a.body_ay - a.fat_mm - a.muscle_mm - 20.0
    w = c.voxel_mm
    body = _ellipse_signed(c.x, c.y - yv, 19.0, 16.0)
    disc = np.abs(((c.z + 7.0) % 27.0) - 13.5) > 11.0                 # 5-mm discs every 27 mm
    c.paint(_soft(body, w), 700.0)
    c.paint(_soft(body - 2.0, w) * np.where(disc, 80.0 / 280.0, 1.0), 280.0)
    canal = _ellipse_signed(c.x, c.y - yv - 26.0, 8.0, 7.0)
    c.paint(_soft(_ellipse_signed(c.x, c.y - yv - 28.0, 16.0, 12.0), w), 500.0)   # posterior arch
    c.paint(_soft(canal, w), 20.0)
    # descending aorta, left-posterior, and a heart in the lower half
    c.paint(_soft(_ellipse_signed(c.x + 22.0, c.y - yv + 30.0, 12.0, 12.0), w), BLOOD_HU)
    hz = (c.z - a.heart_z) / 55.0
    heart = 1.0 - np.sqrt(((c.x - 18.0) / 58.0) ** 2 + ((c.y + 18.0) / 48.0) ** 2 + hz**2)
    c.paint(_soft((heart * 48.0).astype(np.float32), w), BLOOD_HU + 5.0)
    c.paint(_soft((heart * 48.0 - 3.0).astype(np.float32), w), BLOOD_HU)


def _lungs_and_trees(c: _Canvas, rng: np.random.Generator, texture: F32) -> None:
    for side in (-1, 1):
        occ = _soft(_lung_signed(c, side), c.voxel_mm)
        c.paint(occ, (LUNG_HU + texture).astype(np.float32))
    carina = np.array([c.a.heart_z - 70.0, -8.0, 0.0])
    # trachea from above the volume to the carina
    _segment(c, np.array([-20.0, -10.0, 0.0]), carina, 10.0, 9.0, value=20.0)
    _segment(c, np.array([-20.0, -10.0, 0.0]), carina, 8.0, 7.5, value=AIR_HU)
    segments = [0]
    for side in (-1, 1):
        hilum = carina + np.array([18.0, 4.0, side * (c.a.lung_x - 0.45 * c.a.lung_ax)])
        # main bronchus (inside the mediastinum) and its tree
        _segment(c, carina, hilum, 6.5, 5.5, value=20.0)
        _segment(c, carina, hilum, 5.0, 4.2, value=AIR_HU)
        for _ in range(3):
            direction = np.array(
                [rng.uniform(-0.6, 1.0), rng.uniform(-0.5, 0.5), side * rng.uniform(0.3, 1.0)]
            )
            _tree(c, rng, hilum, direction, 3.6, side, AIR_HU, 0.6, 0.6, segments)
        for _ in range(12):                      # pulmonary vessels fan out from a long hilum
            dz = float(rng.uniform(-70.0, 90.0))
            direction = np.array([dz / 60.0 + rng.uniform(-0.3, 0.3), rng.uniform(-0.8, 0.8),
                                  side * rng.uniform(0.4, 1.0)])
            start = hilum + np.array([0.3 * dz, rng.uniform(-10, 10), 0.0])
            _tree(c, rng, start, direction, float(rng.uniform(2.5, 4.2)), side, BLOOD_HU, 0.3, None, segments)


def _nodules(c: _Canvas, rng: np.random.Generator, spec: PhantomSpec) -> tuple[Nodule, ...]:
    count = int(rng.integers(spec.nodules_min, spec.nodules_max + 1))
    found: list[Nodule] = []
    extent = np.array(c.shape) * np.array(c.spacing)
    for _ in range(200 * max(count, 1)):
        if len(found) == count:
            break
        diameter = float(rng.uniform(3.0, 12.0))
        r = 0.5 * diameter
        lo_mm, hi_mm = np.array([r + 6.0, 0.0, 0.0]), extent - np.array([r + 6.0, 0.0, 0.0])
        if np.any(hi_mm <= lo_mm):                   # too few slices for this nodule away from the ends
            continue
        index_mm = rng.uniform(lo_mm, hi_mm)
        side = int(rng.choice([-1, 1]))
        nominal = c.to_nominal(index_mm)
        if not _inside_lung(c.a, nominal, side, margin=r + 3.0):
            continue
        if any(np.linalg.norm(np.subtract(n.center_mm, index_mm)) < r + 0.5 * n.diameter_mm + 8.0
               for n in found):
            continue
        kind = NODULE_KINDS[int(rng.random() < 0.3)]
        stretch = rng.uniform(0.85, 1.15, size=3)
        _blob(c, index_mm, r, stretch, kind, rng)
        found.append(Nodule((float(index_mm[0]), float(index_mm[1]), float(index_mm[2])), diameter, kind))
    return tuple(found)


def _blob(
    c: _Canvas, center: npt.NDArray[np.float64], radius: float, stretch: npt.NDArray[np.float64],
    kind: str, rng: np.random.Generator,
) -> None:
    spacing = np.asarray(c.spacing)
    pad = radius * 1.3 + 2.0 * c.voxel_mm
    lo = np.maximum(np.floor((center - pad) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((center + pad) / spacing).astype(int) + 1, c.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    zz = (np.arange(lo[0], hi[0]) * spacing[0] - center[0])[:, None, None] / stretch[0]
    yy = (np.arange(lo[1], hi[1]) * spacing[1] - center[1])[None, :, None] / stretch[1]
    xx = (np.arange(lo[2], hi[2]) * spacing[2] - center[2])[None, None, :] / stretch[2]
    dist = np.sqrt(zz**2 + yy**2 + xx**2).astype(np.float32)
    occ = _soft((radius - dist).astype(np.float32), c.voxel_mm)
    if kind == "solid":
        c.paint(occ, float(rng.uniform(10.0, 60.0)), box)
    else:
        c.paint(occ, float(rng.uniform(-650.0, -450.0)), box)
        if rng.random() < 0.5:                                      # part-solid core
            c.paint(_soft((0.4 * radius - dist).astype(np.float32), c.voxel_mm), 20.0, box)


def make_phantom(seed: int, spec: PhantomSpec | None = None) -> Phantom:
    """A seeded chest phantom at spacing (slice_mm, pixel_mm, pixel_mm); same seed → same volume."""
    spec = spec or PhantomSpec()
    rng = np.random.default_rng(seed)
    canvas = _Canvas(spec, _anatomy(rng, spec))
    texture = ndimage.gaussian_filter(
        rng.normal(0.0, 1.0, size=canvas.shape).astype(np.float32), sigma=(2.0, 2.0, 2.0)
    ) * np.float32(60.0)                                              # ±~15 HU parenchymal texture
    _body(canvas, rng)
    _ribs(canvas)
    _spine_and_vessels(canvas)
    _lungs_and_trees(canvas, rng, texture)
    nodules = _nodules(canvas, rng, spec)
    hu = canvas.hu
    px = spec.blur_mm / spec.pixel_mm
    hu = ndimage.gaussian_filter(hu, sigma=(spec.z_blur_mm / spec.slice_mm, px, px), truncate=3.0)
    if spec.noise_hu > 0:
        noise = ndimage.gaussian_filter(
            rng.normal(0.0, 1.0, size=canvas.shape).astype(np.float32), sigma=(0.0, 0.7, 0.7)
        )
        hu += noise * np.float32(spec.noise_hu / max(float(noise.std()), 1e-6))
    hu = np.clip(hu, -1024.0, 3071.0).astype(np.float32)
    return Phantom(CTVolume(hu, (spec.slice_mm, spec.pixel_mm, spec.pixel_mm)), nodules, seed)
