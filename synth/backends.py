"""The backend registry: `synth.backend` names a factory; torch is imported only for the model backends.

Adding a backend is adding a module with a class implementing `synth.seam.Synthesizer` and one line
here. Each factory imports its module lazily, so the node (and `interpolation`) never pays for torch.
"""

from __future__ import annotations

from collections.abc import Callable

from synth.config import SynthConfig
from synth.seam import Synthesizer


def _interpolation(cfg: SynthConfig) -> Synthesizer:
    from synth.interpolate import InterpolationSynthesizer

    return InterpolationSynthesizer(factor=cfg.factor)


def _cthnet(cfg: SynthConfig) -> Synthesizer:
    from synth.engine import CTHNetSynthesizer

    return CTHNetSynthesizer.from_config(cfg)


def _sr4zct(cfg: SynthConfig) -> Synthesizer:
    from synth.sr4zct.backend import SR4ZCTSynthesizer

    return SR4ZCTSynthesizer.from_config(cfg)


FACTORIES: dict[str, Callable[[SynthConfig], Synthesizer]] = {
    "interpolation": _interpolation,
    "cthnet": _cthnet,
    "sr4zct": _sr4zct,
}


def build_synthesizer(cfg: SynthConfig) -> Synthesizer:
    factory = FACTORIES.get(cfg.backend)
    if factory is None:
        raise ValueError(f"synth.backend must be one of {tuple(FACTORIES)}, got {cfg.backend!r}")
    return factory(cfg)
