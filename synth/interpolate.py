"""The paper's BIS baseline as a backend: cubic B-spline interpolation along z (`synth.bspline`).

What a radiologist would get from a viewer's MPR, not a model: every series it makes says so.
"""

from __future__ import annotations

import synth
from synth.bspline import interpolate_z
from synth.seam import ProgressCallback, SynthIdentity
from synth.volume import CTVolume


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
