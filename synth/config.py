"""SynthConfig: the `[synth]` section of the node's config, also used by the offline CLI."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("interpolation", "cthnet")
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "cthnet-phantom-v1.pt"
"""Phantom-trained demonstration weights (see synth/weights/MODEL_CARD.md): used by the cthnet backend
when synth.weights is empty; every series they make says NOT FOR CLINICAL USE."""
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
        if not _DEVICE_RE.match(self.device):
            raise ValueError(f"synth.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.factor < 2:
            raise ValueError(f"synth.factor must be at least 2, got {self.factor}")
        if self.batch_size < 1:
            raise ValueError(f"synth.batch_size must be at least 1, got {self.batch_size}")
        for name in ("min_input_spacing_mm", "max_input_spacing_mm"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"synth.{name} must be a finite number, got {getattr(self, name)!r}")
        if not 0 < self.min_input_spacing_mm <= self.max_input_spacing_mm:
            raise ValueError(
                "synth.min_input_spacing_mm must be positive and not above max_input_spacing_mm, got "
                f"{self.min_input_spacing_mm} and {self.max_input_spacing_mm}"
            )

    @property
    def weights_path(self) -> str:
        """synth.weights, or the shipped phantom-trained weights when it is empty."""
        return self.weights or str(SHIPPED_WEIGHTS)
