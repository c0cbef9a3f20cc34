"""CTHNet in PyTorch, written from the published description; no official code is used."""

from synth.nets.cthnet import CTHNet
from synth.nets.spec import CTHNetSpec

__all__ = ["CTHNet", "CTHNetSpec"]
