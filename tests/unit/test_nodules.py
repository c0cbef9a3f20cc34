"""Blob detector and sensitivity at a fixed false-positive rate."""

from __future__ import annotations

import numpy as np
import pytest

from synth.research.nodules import Candidate, detect_blobs, sensitivity_at_fp
from synth.research.phantom import Nodule
from synth.simulate import simulate_thick
from synth.volume import CTVolume

SPHERES = ((20.0, 20.0, 20.0, 4.0), (40.0, 44.0, 30.0, 3.0))   # z, y, x, radius (mm)


def _lung(spacing: float = 1.0) -> CTVolume:
    """-850 HU lung with two solid spheres and a vessel (tube of radius 1.5 mm along x)."""
    z, y, x = np.mgrid[0:61, 0:64, 0:64].astype(np.float32)
    hu = np.full(z.shape, -850.0, dtype=np.float32)
    for cz, cy, cx, r in SPHERES:
        hu[np.sqrt((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) <= r] = 40.0
    hu[(np.sqrt((z - 30) ** 2 + (y - 12) ** 2) <= 1.5)] = 40.0
    return CTVolume(hu, (spacing, 1.0, 1.0))


def test_spheres_outrank_the_vessel() -> None:
    found = detect_blobs(_lung(), max_candidates=10)
    top = [np.asarray(c.center_mm) for c in found[:2]]
    for cz, cy, cx, _ in SPHERES:
        assert min(np.linalg.norm(t - (cz, cy, cx)) for t in top) <= 2.0
    assert all(abs(c.center_mm[1] - 12.0) > 3.0 for c in found[:2])          # not on the vessel
    assert [c.score for c in found] == sorted((c.score for c in found), reverse=True)


def test_thick_volume_is_examined_as_slabs() -> None:
    thin = _lung()
    thick = simulate_thick(thin)                                                  # 13 slices at 5 mm
    found = detect_blobs(thick, max_candidates=5)
    z, y, x = found[0].center_mm
    assert min(abs(z - s[0]) + abs(y - s[1]) + abs(x - s[2]) for s in SPHERES) <= 6.0


def test_detector_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_candidates must be at least 1, got 0"):
        detect_blobs(_lung(), max_candidates=0)
    with pytest.raises(ValueError, match=r"sigmas_mm must be positive, got \(0\.0,\)"):
        detect_blobs(_lung(), sigmas_mm=(0.0,))


def _case() -> tuple[list[Candidate], list[Nodule]]:
    nodules = [Nodule((10.0, 10.0, 10.0), 6.0, "solid"), Nodule((40.0, 40.0, 40.0), 4.0, "subsolid")]
    candidates = [Candidate((10.0, 11.0, 10.0), 0.9), Candidate((0.0, 0.0, 0.0), 0.8),
                  Candidate((40.0, 40.0, 41.0), 0.7), Candidate((20.0, 20.0, 20.0), 0.6)]
    return candidates, nodules


def test_sensitivity_at_fixed_false_positives_by_hand() -> None:
    one = sensitivity_at_fp([_case()], fp_per_case=1.0)
    assert (one.sensitivity, one.detected, one.nodules, one.fp_per_case, one.threshold) == (1.0, 2, 2, 1.0, 0.7)
    none = sensitivity_at_fp([_case()], fp_per_case=0.0)
    assert (none.sensitivity, none.threshold) == (0.5, 0.9)
    two_cases = sensitivity_at_fp([_case(), _case()], fp_per_case=0.5)   # one FP allowed in all
    assert two_cases.detected == 2 and two_cases.nodules == 4


def test_sensitivity_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="sensitivity_at_fp needs at least one case"):
        sensitivity_at_fp([])
    with pytest.raises(ValueError, match="fp_per_case must not be negative, got -1"):
        sensitivity_at_fp([_case()], fp_per_case=-1.0)
    with pytest.raises(ValueError, match="sensitivity_at_fp needs at least one nodule"):
        sensitivity_at_fp([([], [])])
