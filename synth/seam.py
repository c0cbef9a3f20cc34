"""The Synthesizer seam: CTVolume at spacing d in, CTVolume at spacing d/factor out.

The types every backend and the node share, and nothing else: this module imports only
`synth.volume`, so any backend and the node can depend on it without a cycle. The registry that
builds a backend from the config is `synth.backends`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from synth.volume import CTVolume


class SynthesisRefusedError(ValueError):
    """A backend will not synthesize this volume (e.g. a spacing the model was not trained for).

    `reason` is a machine-readable code; the node keeps the series with it.
    """

    reason = "synthesis_refused"


class BackendLoadError(ValueError):
    """A backend cannot be built from the config (weights unusable, device missing, ...).

    `config_key` names the setting to fix (e.g. "synth.weights"), for a one-line start-up error.
    """

    config_key = "synth.backend"


ProgressCallback = Callable[[int, int], None]
"""Called as progress(done, total) while a volume is synthesized."""


@dataclass(frozen=True, slots=True)
class SynthIdentity:
    """What made a derived volume; recorded in every derived series' provenance.

    `is_model` is True only for a learned model: an interpolation is never labelled as the model.
    """

    backend: str                 # "interpolation" | "cthnet" | "sr4zct"
    name: str                    # human-readable, e.g. "B-spline interpolation (BIS baseline)"
    version: str                 # software version of the backend
    weights_sha256: str = ""     # empty when the backend has no weights
    is_model: bool = False
    caution: str = ""            # e.g. "NOT FOR CLINICAL USE: ..."; shown in every derived series

    @property
    def key(self) -> str:
        """A stable string that changes whenever the output could change (used to derive UIDs)."""
        return f"{self.backend}|{self.version}|{self.weights_sha256}"


class Synthesizer(Protocol):
    identity: SynthIdentity
    factor: int

    def __call__(self, volume: CTVolume, progress: ProgressCallback | None = None) -> CTVolume: ...


def output_slices(n_input: int, factor: int) -> int:
    """Thin slices spanning exactly the first to the last thick position."""
    if n_input < 2:
        raise ValueError(f"synthesis needs at least 2 input slices, got {n_input}")
    return factor * (n_input - 1) + 1
