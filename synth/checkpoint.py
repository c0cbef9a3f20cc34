"""Our CTHNet checkpoint: state_dict + spec + metadata + digest, read with torch.load(weights_only=True).

`load_weights` also accepts the official CTHNet `.pkl` (see synth.official_pickle). Either way the
node records `sha256`, the checksum of the weights file, in every derived series.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

import synth
from synth.nets import CTHNet, CTHNetSpec

FORMAT = "synth.cthnet.checkpoint"
FORMAT_VERSION = 1
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A weights file cannot be used: unreadable, wrong format, corrupted, or not matching the model."""

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


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes: detects a corrupted or edited state_dict."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], model: CTHNet,
                    metadata: CheckpointMetadata | Mapping[str, Any]) -> str:
    """Write atomically (temp file + rename); returns the file's sha256.

    `metadata` may be a plain mapping (as the trainer writes it): see CheckpointMetadata.from_mapping.
    """
    if not isinstance(model, CTHNet):
        raise TypeError(f"save_checkpoint needs a CTHNet, got {type(model).__name__}")
    if isinstance(metadata, Mapping):
        metadata = CheckpointMetadata.from_mapping(metadata)
    if not isinstance(metadata, CheckpointMetadata):
        raise TypeError(f"save_checkpoint needs CheckpointMetadata or a mapping, got {type(metadata).__name__}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": model.spec.to_dict(),
        "metadata": asdict(metadata),
        "state_dict": state,
        "state_sha256": state_digest(state),
    }
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, target)
    return file_sha256(target)


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedWeights:
    """Read our format with weights_only=True; checks format, spec, digest and the model's keys."""
    raw = _load_weights_only(path)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        if isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise CheckpointError(path, "is a bare state_dict without a spec; save it with "
                                        "synth.checkpoint.save_checkpoint")
        raise CheckpointError(path, f"is not a {FORMAT} file")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(path, f"format_version {raw.get('format_version')!r} is not supported "
                                    f"(this code reads {FORMAT_VERSION})")
    try:
        spec = CTHNetSpec.from_dict(raw["spec"])
        metadata = _metadata_from_dict(raw["metadata"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(path, f"invalid spec or metadata: {exc}") from exc
    state = raw.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, "has no state_dict of tensors")
    if state_digest(state) != raw.get("state_sha256"):
        raise CheckpointError(path, "state_dict digest mismatch: the weights are corrupted or were edited")
    check_state_dict(path, spec, state)
    return LoadedWeights(spec, state, metadata, file_sha256(path), "checkpoint")


def load_weights(path: str | os.PathLike[str], spec: CTHNetSpec | None = None) -> LoadedWeights:
    """Our checkpoint, or else the official `.pkl` (checked against `spec`, default CTHNetSpec())."""
    if not Path(path).is_file():
        raise CheckpointError(path, "no such file")
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        if not isinstance(exc.__cause__, pickle.UnpicklingError):
            raise
    from synth.official_pickle import load_official

    return load_official(path, spec or CTHNetSpec())


def build_model(weights: LoadedWeights) -> CTHNet:
    model = CTHNet(weights.spec)
    model.load_state_dict(weights.state_dict, strict=True)
    return model.eval()


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


def _load_weights_only(path: str | os.PathLike[str]) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(path, f"not loadable with weights_only=True ({str(exc).splitlines()[0]})") from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(path, f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc


def _metadata_from_dict(raw: Any) -> CheckpointMetadata:
    if not isinstance(raw, dict):
        raise TypeError(f"metadata must be a dict, got {type(raw).__name__}")
    names = {f.name for f in fields(CheckpointMetadata)}
    if unknown := raw.keys() - names:
        raise ValueError(f"unknown metadata field(s) {sorted(unknown)}")
    return CheckpointMetadata(**raw)


def _plain(value: Any) -> Any:
    """Values torch.load(weights_only=True) can read back: containers of str/int/float/bool/None."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)
