"""Our CTHNet checkpoint: state_dict + spec + metadata + digest, read with torch.load(weights_only=True)."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from synth.checkpoint.common import (
    CheckpointError,
    CheckpointMetadata,
    LoadedWeights,
    check_state_dict,
    file_sha256,
)
from synth.nets import CTHNet, CTHNetSpec

FORMAT = "synth.cthnet.checkpoint"
FORMAT_VERSION = 1


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


