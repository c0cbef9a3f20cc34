from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from synth.backends import build_synthesizer
from synth.bspline import interpolate_z
from synth.config import SynthConfig
from synth.interpolate import InterpolationSynthesizer
from synth.volume import CTVolume


def sitk_bspline_z(volume: CTVolume, factor: int) -> np.ndarray:
    """The reference: SimpleITK's 3-D cubic B-spline resample along z, x and y on their grid."""
    dz, dy, dx = volume.spacing_mm
    image = sitk.GetImageFromArray(volume.hu.astype(np.float64))
    image.SetSpacing((dx, dy, dz))
    n_out = factor * (volume.shape[0] - 1) + 1
    out = sitk.Resample(image, (volume.shape[2], volume.shape[1], n_out), sitk.Transform(), sitk.sitkBSpline,
                        (0.0, 0.0, 0.0), (dx, dy, dz / factor), image.GetDirection(), 0.0, sitk.sitkFloat64)
    return sitk.GetArrayFromImage(out)


@pytest.mark.parametrize("slices", [4, 5, 9, 30])
def test_matches_simpleitk_bspline(slices: int) -> None:
    rng = np.random.default_rng(slices)
    volume = CTVolume((rng.random((slices, 6, 7)) * 2000 - 1000).astype(np.float32), (5.0, 0.7, 0.8))
    ours = interpolate_z(volume, 5)
    reference = sitk_bspline_z(volume, 5)
    # The last sample sits on the image edge, where ITK's continuous index round-off may step outside.
    np.testing.assert_allclose(ours.hu[:-1], reference[:-1], atol=0.02)


@pytest.mark.parametrize("slices", [2, 3, 4, 12])
def test_shape_spacing_and_interpolation_at_thick_positions(slices: int) -> None:
    rng = np.random.default_rng(0)
    volume = CTVolume((rng.random((slices, 5, 4)) * 100).astype(np.float32), (5.0, 0.6, 0.6))
    out = interpolate_z(volume, 5)
    assert out.shape == (5 * (slices - 1) + 1, 5, 4)
    assert out.spacing_mm == (1.0, 0.6, 0.6)
    np.testing.assert_allclose(out.hu[::5], volume.hu, atol=1e-3)


def test_linear_ramp_is_reproduced_away_from_the_mirrored_ends() -> None:
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32)[:, None, None] * 10, (16, 3, 3)).copy()
    out = interpolate_z(CTVolume(ramp, (5.0, 1.0, 1.0)), 5)
    interior = slice(5 * 5, 5 * 10 + 1)          # thick slices 5..10: boundary effects decay as 0.27^k
    np.testing.assert_allclose(out.hu[interior, 1, 1], np.arange(76)[interior] * 2.0, atol=0.05)


def test_the_synthesizer_is_labelled_as_interpolation_not_a_model() -> None:
    synth = build_synthesizer(SynthConfig(backend="interpolation"))
    assert isinstance(synth, InterpolationSynthesizer)
    assert synth.identity.backend == "interpolation" and not synth.identity.is_model
    assert "not a learned model" in synth.identity.name
    calls: list[tuple[int, int]] = []
    synth(CTVolume(np.zeros((2, 2, 2), np.float32), (5.0, 1.0, 1.0)), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]
    with pytest.raises(ValueError, match=r"factor must be at least 2, got 1"):
        InterpolationSynthesizer(1)


def test_too_few_slices_is_refused() -> None:
    with pytest.raises(ValueError, match=r"synthesis needs at least 2 input slices, got 1"):
        interpolate_z(CTVolume(np.zeros((1, 2, 2), np.float32), (5.0, 1.0, 1.0)), 5)
