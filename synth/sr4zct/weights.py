"""The sr4zct weights file: {"format", "spec", "state_dict", "metadata"}, read with weights_only=True."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synth.seam import BackendLoadError
from synth.sr4zct.net import NetSpec, SubPixelCNN

FORMAT = "sr4zct-v1"
SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "sr4zct-realct-v1.pt"


class SR4ZCTWeightsError(BackendLoadError):
    config_key = "synth.sr4zct.weights"


@dataclass(frozen=True, slots=True)
class Pretrained:
    """The shipped starting point: every series starts from a fresh copy of `state_dict`."""

    spec: NetSpec
    state_dict: dict[str, torch.Tensor]
    sha256: str
    metadata: dict[str, Any]

    def fresh_net(self) -> SubPixelCNN:
        net = SubPixelCNN(self.spec)
        net.load_state_dict({k: v.clone() for k, v in self.state_dict.items()}, strict=True)
        return net.eval()


def save(path: str | os.PathLike[str], net: SubPixelCNN, metadata: dict[str, Any]) -> str:
    torch.save({"format": FORMAT, "spec": net.spec.as_dict(), "state_dict": net.state_dict(),
                "metadata": metadata}, os.fspath(path))
    return sha256_of(path)


def load(path: str | os.PathLike[str]) -> Pretrained:
    try:
        raw = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise SR4ZCTWeightsError(f"sr4zct weights {os.fspath(path)}: cannot be read ({type(exc).__name__})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise SR4ZCTWeightsError(f"sr4zct weights {os.fspath(path)}: not a {FORMAT} file")
    try:
        spec = NetSpec(**raw["spec"])
        state = dict(raw["state_dict"])
        SubPixelCNN(spec).load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise SR4ZCTWeightsError(f"sr4zct weights {os.fspath(path)}: spec and state do not match ({exc})") from exc
    return Pretrained(spec=spec, state_dict=state, sha256=sha256_of(path), metadata=dict(raw.get("metadata", {})))


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
