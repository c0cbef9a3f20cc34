"""Device and precision selection for the torch backends and training: one resolver for both."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from synth.seam import BackendLoadError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class DeviceUnavailableError(BackendLoadError):
    """The configured device does not exist on this machine."""

    config_key = "synth.device"


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda when available, else cpu; `cuda`/`cuda:N` must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {name!r} requested but CUDA is not available on this machine")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_precision(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. `auto`: bf16 (else fp16) on CUDA, fp32 on CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use fp32 or bf16 on CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """Autocast to `dtype` on `device` (from resolve_precision), or nothing for plain fp32 (None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
