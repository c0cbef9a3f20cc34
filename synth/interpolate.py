"""The paper's BIS baseline: cubic B-spline interpolation along z (SimpleITK)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

import synth
from synth.synthesizer import ProgressCallback, SynthIdentity, output_slices
from synth.volume import CTVolume


def interpolate_z(volume: CTVolume, factor: int) -> CTVolume:
    """Resample along z from spacing d to d/factor with a cubic B-spline; x and y are untouched.

    N input slices give factor·(N−1)+1 output slices spanning exactly the first to the last input.
    """
    n_out = output_slices(volume.shape[0], factor)
    dz, dy, dx = volume.spacing_mm
    image = sitk.GetImageFromArray(volume.hu)          # (z, y, x) → sitk (x, y, z)
    image.SetSpacing((dx, dy, dz))
    out_spacing = dz / factor
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing((dx, dy, out_spacing))
    resampler.SetSize((volume.shape[2], volume.shape[1], n_out))
    resampler.SetOutputOrigin(image.GetOrigin())
    resampler.SetOutputDirection(image.GetDirection())
    # Cubic B-spline needs ≥ 4 samples per axis; 2- and 3-slice inputs fall back to linear in z.
    resampler.SetInterpolator(sitk.sitkBSpline if volume.shape[0] >= 4 else sitk.sitkLinear)
    resampler.SetDefaultPixelValue(-1024.0)
    # The last output lies exactly on the last input; round-off must not push it outside the image.
    image.SetSpacing((dx, dy, dz * (1 + 1e-9)))
    result = sitk.GetArrayFromImage(resampler.Execute(image)).astype(np.float32, copy=False)
    return CTVolume(result, (out_spacing, dy, dx))


class InterpolationSynthesizer:
    """Backend `interpolation`: what a radiologist would get from a viewer's MPR, not a model."""

    def __init__(self, factor: int = 5) -> None:
        if factor < 2:
            raise ValueError(f"factor must be at least 2, got {factor}")
        self.factor = factor
        self.identity = SynthIdentity(
            backend="interpolation",
            name="Cubic B-spline interpolation along z (BIS baseline, not a learned model)",
            version=synth.__version__,
            weights_sha256="",
            is_model=False,
        )

    def __call__(self, volume: CTVolume, progress: ProgressCallback | None = None) -> CTVolume:
        out = interpolate_z(volume, self.factor)
        if progress is not None:
            progress(1, 1)
        return out
