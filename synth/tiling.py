"""Where the windows go: z windows of thick slices and in-plane tiles, with feathered blend weights.

Pure numpy, no torch. Every plan is a product of three independent axis plans, and every window's
weight is a product of three 1-D profiles, so the blend normaliser is separable too: the sum of
weights over all windows is outer(z_sum, y_sum, x_sum), never a full-size array of counts.

Coordinates: `in_starts` index the padded input along an axis; `out_starts` index the output
region (0 = first output sample; negative or past-the-end parts are computed and then cropped).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Profile = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class AxisPlan:
    length: int                          # output samples wanted along this axis
    in_size: int                         # input samples per window
    out_size: int                        # output samples per window
    in_starts: tuple[int, ...]
    out_starts: tuple[int, ...]
    pad_before: int                      # input padding (reflect) before the first sample
    pad_after: int
    weights: tuple[Profile, ...]         # one (out_size,) profile per window

    @property
    def span(self) -> tuple[int, int]:
        """[lo, hi) of the output samples the windows write (a superset of [0, length))."""
        return min(self.out_starts), max(s + self.out_size for s in self.out_starts)

    def weight_sum(self) -> Profile:
        """Sum of the window profiles over [0, length): positive everywhere if the plan covers the axis."""
        lo, hi = self.span
        total = np.zeros(hi - lo, np.float32)
        for start, w in zip(self.out_starts, self.weights, strict=True):
            total[start - lo:start - lo + self.out_size] += w
        out: Profile = total[-lo:-lo + self.length]
        return out


@dataclass(frozen=True, slots=True)
class VolumePlan:
    z: AxisPlan
    y: AxisPlan
    x: AxisPlan

    def __len__(self) -> int:
        return len(self.z.in_starts) * len(self.y.in_starts) * len(self.x.in_starts)

    def windows(self) -> Iterator[tuple[int, int, int]]:
        """(z, y, x) window indices, z outermost."""
        for k in range(len(self.z.in_starts)):
            for j in range(len(self.y.in_starts)):
                for i in range(len(self.x.in_starts)):
                    yield k, j, i

    def pad(self, volume: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Reflect-pad the (z, y, x) input as the plan needs (edge-pad an axis of length 1)."""
        out = volume
        for axis, plan in enumerate((self.z, self.y, self.x)):
            if plan.pad_before or plan.pad_after:
                widths = [(0, 0)] * 3
                widths[axis] = (plan.pad_before, plan.pad_after)
                out = np.pad(out, widths, mode="reflect" if out.shape[axis] > 1 else "edge")
        return out


def feather(size: int, margin: int, ramp_low: int | None, ramp_high: int | None) -> Profile:
    """1 in the middle; at a closed side, `margin` zero samples then a linear ramp of `ramp` samples.

    A side whose ramp is None is open (the volume's edge, no neighbouring window): weight 1 up to the
    window's end.
    """
    i = np.arange(size, dtype=np.float64)
    low = np.ones(size) if ramp_low is None else np.clip((i - margin + 1) / (ramp_low + 1), 0.0, 1.0)
    high = np.ones(size) if ramp_high is None else np.clip((size - margin - i) / (ramp_high + 1), 0.0, 1.0)
    return np.minimum(low, high).astype(np.float32)


def _even_starts(first: int, last: int, max_step: int) -> list[int]:
    if last <= first:
        return [first]
    count = math.ceil((last - first) / max_step) + 1
    return [first + round(i * (last - first) / (count - 1)) for i in range(count)]


def _profiles(starts: list[int], size: int, margin: int) -> tuple[Profile, ...]:
    """Per window, ramps as long as its overlap with each neighbour (less the margins), so that
    neighbouring ramps complement each other."""
    ramps = [max(size - (b - a) - 2 * margin, 0) for a, b in itertools.pairwise(starts)]
    return tuple(
        feather(size, margin, ramps[k - 1] if k > 0 else None, ramps[k] if k < len(ramps) else None)
        for k in range(len(starts))
    )


def plan_z(n_thick: int, ratio: int, in_slices: int, crop: int, stride: int) -> AxisPlan:
    """Thick windows of `in_slices` producing every one of the ratio·(n−1)+1 thin slices.

    The network returns thin slices crop … window_slices−crop−1 of each window (thin j of a window
    starting at thick s lies at thick s + j/ratio). The volume is reflect-padded by ceil(crop/ratio)
    thick slices in front, so that even thin slice 0 comes from a window's trained centre, and at the
    back as needed (also when n_thick < in_slices). Windows start every ≤ `stride` thick slices.
    """
    out_size = ratio * (in_slices - 1) + 1 - 2 * crop
    if n_thick < 2:
        raise ValueError(f"synthesis needs at least 2 input slices, got {n_thick}")
    if not 1 <= stride <= out_size // ratio:
        raise ValueError(f"z stride must be 1..{out_size // ratio} thick slices so that windows overlap or "
                         f"touch, got {stride}")
    length = ratio * (n_thick - 1) + 1
    front = -(-crop // ratio)
    first, last = -front, max(-front, math.ceil((length - crop - out_size) / ratio))
    starts = _even_starts(first, last, stride)
    out_starts = [ratio * s + crop for s in starts]
    return AxisPlan(
        length=length, in_size=in_slices, out_size=out_size,
        in_starts=tuple(s + front for s in starts), out_starts=tuple(out_starts),
        pad_before=front, pad_after=max(0, starts[-1] + in_slices - n_thick),
        weights=_profiles(out_starts, out_size, margin=0),
    )


def plan_plane(length: int, tile: int, min_overlap: int, margin: int, align: int = 1) -> AxisPlan:
    """In-plane tiles of `tile` samples overlapping by ≥ min_overlap; `margin` samples at each inner
    tile edge get weight 0 (the network's border effects live there), then a linear ramp.

    Tile starts are multiples of `align` (the network's window grid), so overlapping tiles partition
    their common region into the same attention windows; the axis is reflect-padded at the end to
    a multiple of `align` for that. An axis shorter than the tile is reflect-padded to one tile, centred.
    """
    if tile < 1 or margin < 0 or not 2 * margin < min_overlap < tile:
        raise ValueError(f"tiling needs 2·margin < min_overlap < tile, got margin {margin}, "
                         f"min_overlap {min_overlap}, tile {tile}")
    if align < 1 or tile % align or (tile - min_overlap) < align:
        raise ValueError(f"tile {tile} must be a multiple of align {align}, with tile - min_overlap >= align")
    if length < 1:
        raise ValueError(f"axis length must be positive, got {length}")
    if length <= tile:
        before = (tile - length) // 2
        return AxisPlan(length, tile, tile, (0,), (-before,), before, tile - length - before,
                        (np.ones(tile, np.float32),))
    padded = -(-length // align) * align
    units = _even_starts(0, (padded - tile) // align, (tile - min_overlap) // align)
    starts = [align * u for u in units]
    return AxisPlan(length, tile, tile, tuple(starts), tuple(starts), 0, padded - length,
                    _profiles(starts, tile, margin))


def plan_volume(shape: tuple[int, int, int], ratio: int, in_slices: int, crop: int,
                tile: int | tuple[int, int], z_stride: int, min_overlap: int | tuple[int, int],
                margin: int | tuple[int, int], align: int = 1) -> VolumePlan:
    """z windows × row tiles × column tiles; `tile`, `min_overlap` and `margin` are one value for both
    in-plane axes or a (rows, columns) pair."""
    n, rows, cols = shape
    ty, tx = _pair(tile)
    oy, ox = _pair(min_overlap)
    my, mx = _pair(margin)
    return VolumePlan(
        z=plan_z(n, ratio, in_slices, crop, z_stride),
        y=plan_plane(rows, ty, oy, my, align),
        x=plan_plane(cols, tx, ox, mx, align),
    )


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value
