"""What every weights format shares: the error, the metadata, the loaded result, the checks.

A leaf of the `synth.checkpoint` package: `ours` (our format) and `official` (the official `.pkl`)
both build on it, and the package's `__init__` chooses between them; neither imports the other.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

import synth
from synth.nets import CTHNet, CTHNetSpec
from synth.seam import BackendLoadError

_CHUNK = 1 << 20


class CheckpointError(BackendLoadError):
    """A weights file cannot be used: unreadable, wrong format, corrupted, or not matching the model."""

    config_key = "synth.weights"

    def __init__(self, path: str | os.PathLike[str], detail: str) -> None:
        super().__init__(f"weights {os.fspath(path)}: {detail}")
        self.path = os.fspath(path)


@dataclass(frozen=True, slots=True)
class CheckpointMetadata:
    """What a reader of a derived series may want to know about the weights."""

    training_data: str                  # e.g. "RPLHR-CT train split, 100 cases" or "official CTHNet release"
    epochs: int | None = None
    val_psnr_db: float | None = None
    code_version: str = synth.__version__
    notes: str = ""
    not_for_clinical_use: bool = False  # e.g. phantom-trained weights: every derived series says so
    extra: dict[str, Any] = field(default_factory=dict)   # plain values only (e.g. the training config)

    def __post_init__(self) -> None:
        if not isinstance(self.training_data, str) or not self.training_data:
            raise ValueError(f"CheckpointMetadata.training_data must be a non-empty string, got {self.training_data!r}")
        if self.epochs is not None and (type(self.epochs) is not int or self.epochs < 0):
            raise ValueError(f"CheckpointMetadata.epochs must be a non-negative int or None, got {self.epochs!r}")
        if self.val_psnr_db is not None and not isinstance(self.val_psnr_db, float):
            raise ValueError(f"CheckpointMetadata.val_psnr_db must be a float or None, got {self.val_psnr_db!r}")
        if type(self.not_for_clinical_use) is not bool:
            raise ValueError("CheckpointMetadata.not_for_clinical_use must be a bool, got "
                             f"{self.not_for_clinical_use!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"CheckpointMetadata.extra must be a dict, got {type(self.extra).__name__}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> CheckpointMetadata:
        """Known fields by name; any other key goes to `extra`, made plain (str for unknown types)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in raw.items() if k in known}
        if isinstance(values.get("val_psnr_db"), int | float):
            values["val_psnr_db"] = float(values["val_psnr_db"])
        extra = {str(k): _plain(v) for k, v in raw.items() if k not in known and k != "extra"}
        return cls(**values, extra=_plain(dict(raw.get("extra") or {})) | extra)


@dataclass(frozen=True, slots=True)
class LoadedWeights:
    spec: CTHNetSpec
    state_dict: dict[str, torch.Tensor]
    metadata: CheckpointMetadata
    sha256: str                         # of the file, as recorded in provenance
    source: str                         # "checkpoint" | "official"


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_state_dict(path: str | os.PathLike[str], spec: CTHNetSpec, state: dict[str, torch.Tensor]) -> None:
    """Names and shapes must equal CTHNet(spec)'s exactly (what load_state_dict(strict=True) needs)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in CTHNet(spec).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of wrong shape (first {wrong[0]}: {got[wrong[0]]} for {expected[wrong[0]]})")
        raise CheckpointError(path, "state_dict does not match the CTHNet spec: " + ", ".join(parts))


def _plain(value: Any) -> Any:
    """Values torch.load(weights_only=True) can read back: containers of str/int/float/bool/None."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)
