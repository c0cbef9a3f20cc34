"""SynthConfig: the `[synth]` section of the node's config, also used by the offline CLI."""

from __future__ import annotations

import re
from dataclasses import dataclass

BACKENDS = ("interpolation", "cthnet")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass(frozen=True, slots=True)
class SynthConfig:
    backend: str = "interpolation"
    weights: str = ""
    device: str = "auto"
    factor: int = 5
    batch_size: int = 4
    min_input_spacing_mm: float = 4.0
    max_input_spacing_mm: float = 6.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"synth.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "cthnet" and not self.weights:
            raise ValueError("synth.weights must name a weights file when synth.backend is 'cthnet'")
        if not _DEVICE_RE.match(self.device):
            raise ValueError(f"synth.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.factor < 2:
            raise ValueError(f"synth.factor must be at least 2, got {self.factor}")
        if self.batch_size < 1:
            raise ValueError(f"synth.batch_size must be at least 1, got {self.batch_size}")
        if not 0 < self.min_input_spacing_mm <= self.max_input_spacing_mm:
            raise ValueError(
                "synth.min_input_spacing_mm must be positive and not above max_input_spacing_mm, got "
                f"{self.min_input_spacing_mm} and {self.max_input_spacing_mm}"
            )
