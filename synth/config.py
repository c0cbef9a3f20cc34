"""SynthConfig: the `[synth]` section of the node's config, also used by the offline CLI.

Spacing policy: each backend declares the slice spacing it accepts (`BACKEND_SPACING_MM`); the node
refuses anything else at assembly with reason `spacing_out_of_range`. `min/max_input_spacing_mm`
override the backend's range when set (0 = the backend's own).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

BACKENDS = ("interpolation", "cthnet", "sr4zct")
BACKEND_SPACING_MM: dict[str, tuple[float, float]] = {
    "interpolation": (1.5, 10.0),
    "cthnet": (4.0, 6.0),          # trained for 5 mm → 1 mm
    "sr4zct": (1.5, 10.0),         # trained per series on its own thickness and interval
}
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "cthnet-phantom-v1.pt"
"""Phantom-trained demonstration weights (see synth/weights/MODEL_CARD.md): used by the cthnet backend
when synth.weights is empty; every series they make says NOT FOR CLINICAL USE."""
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
MAX_BUDGET_S = 3600.0


@dataclass(frozen=True, slots=True)
class SR4ZCTConfig:
    """`[synth.sr4zct]`: per-series fine-tuning of the shipped pretrained network."""

    budget_s: float = 40.0          # wall clock for fine-tuning each series (0: the pretrained network as is);
                                    # 40 s: as good as 60 s off-axis, and within 8x interpolation end to end
    weights: str = ""               # empty: synth/weights/sr4zct-realct-v1.pt
    seed: int = 0
    threads: int = 1                # torch CPU threads while sr4zct runs (1: fastest on a busy 2-core CPU)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget_s) and 0 <= self.budget_s <= MAX_BUDGET_S):
            raise ValueError(f"synth.sr4zct.budget_s must be in [0, {MAX_BUDGET_S:g}] s, got {self.budget_s!r}")
        if not 1 <= self.threads <= 256:
            raise ValueError(f"synth.sr4zct.threads must be in [1, 256], got {self.threads}")


@dataclass(frozen=True, slots=True)
class SynthConfig:
    backend: str = "interpolation"
    weights: str = ""
    device: str = "auto"
    factor: int = 5
    batch_size: int = 4
    min_input_spacing_mm: float = 0.0     # 0: the backend's own range (BACKEND_SPACING_MM)
    max_input_spacing_mm: float = 0.0
    sr4zct: SR4ZCTConfig = field(default_factory=SR4ZCTConfig)

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
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"synth.{name} must be a finite number >= 0 (0: the backend's range), got {value!r}")
        lo, hi = self.spacing_range_mm
        if not 0 < lo <= hi:
            raise ValueError(
                "synth.min_input_spacing_mm must be positive and not above max_input_spacing_mm, got "
                f"{lo} and {hi}"
            )

    @property
    def spacing_range_mm(self) -> tuple[float, float]:
        """The slice spacing accepted: the backend's range, with the min/max overrides applied."""
        return self.spacing_range_for(self.backend)

    def spacing_range_for(self, backend: str) -> tuple[float, float]:
        """The slice spacing `backend` accepts here (a rule may name another backend than synth.backend)."""
        lo, hi = BACKEND_SPACING_MM[backend]
        return (self.min_input_spacing_mm or lo, self.max_input_spacing_mm or hi)

    @property
    def weights_path(self) -> str:
        """synth.weights, or the shipped phantom-trained weights when it is empty."""
        return self.weights or str(SHIPPED_WEIGHTS)
