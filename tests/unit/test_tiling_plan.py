"""Window plans: every thin slice and pixel covered, official window geometry, aligned tiles."""

from __future__ import annotations

import numpy as np
import pytest

from synth.tiling import VolumePlan, feather, plan_plane, plan_volume, plan_z


def min_weight(plan: VolumePlan) -> float:
    """Smallest total blend weight over the output: > 0 means every voxel is predicted."""
    return float(plan.z.weight_sum().min() * plan.y.weight_sum().min() * plan.x.weight_sum().min())


@pytest.mark.parametrize("n", [2, 3, 8, 9, 10, 61, 130])
def test_z_plan_covers_every_thin_slice_from_trained_centres(n: int) -> None:
    plan = plan_z(n, ratio=5, in_slices=8, crop=3, stride=5)
    assert plan.length == 5 * (n - 1) + 1
    lo, hi = plan.span
    assert lo <= 0 and hi >= plan.length
    assert plan.weight_sum().min() > 0
    padded = plan.pad_before + n + plan.pad_after
    assert all(s >= 0 and s + 8 <= padded for s in plan.in_starts)       # every window lies in the input
    for s_in, s_out in zip(plan.in_starts, plan.out_starts, strict=True):
        assert s_out == 5 * (s_in - plan.pad_before) + 3                  # thin j of a window ↔ thick s + j/5
    gaps = np.diff(plan.out_starts)
    assert (gaps <= 25).all()                                             # ≥ 5 thin slices overlap


def test_z_plan_for_61_slices_and_the_official_stride() -> None:
    plan = plan_z(61, 5, 8, 3, stride=5)
    assert len(plan.in_starts) == 12 and plan.pad_before == 1
    wide = plan_z(61, 5, 8, 3, stride=6)
    assert len(wide.in_starts) == 11
    np.testing.assert_allclose(wide.weight_sum(), 1.0, rtol=1e-6)


def test_z_overlap_weights_fall_off_towards_window_edges() -> None:
    plan = plan_z(20, 5, 8, 3, stride=5)
    middle = plan.weights[1]
    assert middle[0] < middle[2] < middle[15] == 1.0 > middle[-3] > middle[-1] > 0
    np.testing.assert_allclose(plan.weight_sum(), 1.0, rtol=1e-6)         # ramps complement each other


@pytest.mark.parametrize("length", [1, 7, 100, 255, 256, 257, 300, 384, 511, 512, 513, 700, 1024])
def test_plane_plan_covers_any_size_with_aligned_overlapping_tiles(length: int) -> None:
    plan = plan_plane(length, tile=256, min_overlap=64, margin=16, align=8)
    assert plan.weight_sum().min() > 0
    lo, hi = plan.span
    assert lo <= 0 and hi >= length
    if length > 256:
        assert all(s % 8 == 0 for s in plan.in_starts)
        assert all(b - a <= 256 - 64 for a, b in zip(plan.in_starts, plan.in_starts[1:], strict=False))
        assert plan.in_starts[-1] + 256 == length + plan.pad_after
    else:
        assert plan.in_starts == (0,) and plan.pad_before + length + plan.pad_after == 256


def test_512_uses_three_tiles_per_axis() -> None:
    assert plan_plane(512, 256, 64, 16, 8).in_starts == (0, 128, 256)


def test_feather_profile() -> None:
    w = feather(10, margin=2, ramp_low=3, ramp_high=None)
    np.testing.assert_allclose(w, [0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 1])
    assert feather(4, 1, None, None).tolist() == [1, 1, 1, 1]
    np.testing.assert_allclose(feather(6, 0, 1, 2), [0.5, 1, 1, 1, 2 / 3, 1 / 3])


def test_volume_plan_pads_and_counts_windows() -> None:
    plan = plan_volume((3, 20, 300), ratio=5, in_slices=8, crop=3, tile=256, z_stride=5, min_overlap=64,
                       margin=16, align=8)
    vol = np.arange(3 * 20 * 300, dtype=np.float32).reshape(3, 20, 300)
    padded = plan.pad(vol)
    assert padded.shape == (plan.z.pad_before + 3 + plan.z.pad_after, 256, 304)
    assert len(plan) == 1 * 1 * 2 and min_weight(plan) > 0
    tiny = plan_volume((2, 1, 1), 5, 8, 3, 256, 5, 64, 16, 8)
    assert tiny.pad(np.ones((2, 1, 1), np.float32)).shape == (8, 256, 256)   # a 1-pixel axis is edge-padded


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: plan_z(1, 5, 8, 3, 5), r"synthesis needs at least 2 input slices, got 1"),
        (lambda: plan_z(9, 5, 8, 3, 7),
         r"z stride must be 1\.\.6 thick slices so that windows overlap or touch, got 7"),
        (lambda: plan_plane(100, 256, 32, 16),
         r"tiling needs 2·margin < min_overlap < tile, got margin 16, min_overlap 32"),
        (lambda: plan_plane(100, 256, 64, 16, align=7), r"tile 256 must be a multiple of align 7"),
        (lambda: plan_plane(0, 256, 64, 16), r"axis length must be positive, got 0"),
    ],
)
def test_invalid_plans_are_refused(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
