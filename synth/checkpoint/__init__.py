"""CTHNet weights: our checkpoint format (`ours`) or the official `.pkl` (`official`), one entry point.

Either way the node records `sha256`, the checksum of the weights file, in every derived series.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from synth.checkpoint.common import (
    CheckpointError,
    CheckpointMetadata,
    LoadedWeights,
    check_state_dict,
    file_sha256,
)
from synth.checkpoint.official import UnsafeCheckpointError, load_official
from synth.checkpoint.ours import FORMAT, FORMAT_VERSION, load_checkpoint, save_checkpoint, state_digest
from synth.nets import CTHNet, CTHNetSpec

__all__ = [
    "FORMAT", "FORMAT_VERSION", "CheckpointError", "CheckpointMetadata", "LoadedWeights", "UnsafeCheckpointError",
    "build_model", "check_state_dict", "file_sha256", "load_checkpoint", "load_official", "load_weights",
    "save_checkpoint", "state_digest",
]


def load_weights(path: str | os.PathLike[str], spec: CTHNetSpec | None = None) -> LoadedWeights:
    """Our checkpoint, or else the official `.pkl` (checked against `spec`, default CTHNetSpec())."""
    if not Path(path).is_file():
        raise CheckpointError(path, "no such file")
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        if not isinstance(exc.__cause__, pickle.UnpicklingError):
            raise
    return load_official(path, spec or CTHNetSpec())


def build_model(weights: LoadedWeights) -> CTHNet:
    model = CTHNet(weights.spec)
    model.load_state_dict(weights.state_dict, strict=True)
    return model.eval()
