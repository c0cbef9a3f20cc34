"""The tiny CTHNet spec the tests and benchmarks use (fast on CPU; same architecture, fewer channels)."""

from __future__ import annotations

from pathlib import Path

from synth.checkpoint import CheckpointMetadata, save_checkpoint
from synth.nets.cthnet import CTHNet
from synth.nets.spec import CTHNetSpec

TINY = CTHNetSpec(in_slices=4, tile_size=32, enc_dim=8, enc_heads=2, enc_depth=2, feat_channels=2,
                  t_fold=4, t_depth=2, t_window=4, i_layers=1, i_depth=2, i_window=4, dec_heads=2)


def tiny_checkpoint(path: Path, note: str = "none: random weights for a test") -> Path:
    """A randomly initialised tiny CTHNet saved in our checkpoint format; returns `path`."""
    save_checkpoint(path, CTHNet(TINY), CheckpointMetadata(training_data=note))
    return path
