"""A synthesizer that went wrong, for the self-check's tests: interpolation, then spoiled."""

from __future__ import annotations

import numpy as np

from synth.interpolate import InterpolationSynthesizer
from synth.seam import ProgressCallback, SynthIdentity
from synth.volume import CTVolume

KINDS = ("noise", "shifted", "darker lungs")
GARBAGE = SynthIdentity(backend="garbage", name="a model that went wrong", version="0", weights_sha256="ab" * 32,
                        is_model=True)


class GarbageSynthesizer:
    """Interpolation, then spoiled: uniform noise, shifted one input slice along z, or lungs 30 HU darker."""

    factor = 5
    identity = GARBAGE

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, volume: CTVolume, progress: ProgressCallback | None = None) -> CTVolume:
        bis = InterpolationSynthesizer(5)(volume)
        if self.kind == "noise":
            hu = np.random.default_rng(0).uniform(-1024, 2048, bis.hu.shape).astype(np.float32)
        elif self.kind == "shifted":
            hu = np.concatenate([bis.hu[:1].repeat(5, axis=0), bis.hu[:-5]])
        elif self.kind == "darker lungs":
            hu = bis.hu.copy()
            hu[hu < -500] -= 30.0
        else:
            raise ValueError(self.kind)
        return CTVolume(hu, bis.spacing_mm, figures={"offaxis_psnr_db": 20.0, "offaxis_bis_psnr_db": 30.0})
