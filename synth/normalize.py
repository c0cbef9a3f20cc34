"""The intensity window CTHNet was trained with: HU clipped to [−1024, 2048], scaled to [0, 1]."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

HU_MIN = -1024.0
HU_MAX = 2048.0
HU_RANGE = HU_MAX - HU_MIN


def hu_to_unit(hu: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """(clip(hu, −1024, 2048) + 1024) / 3072, float32."""
    out: npt.NDArray[np.float32] = np.clip(hu, HU_MIN, HU_MAX).astype(np.float32, copy=True)
    out -= np.float32(HU_MIN)
    out /= np.float32(HU_RANGE)
    return out


def unit_to_hu(unit: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Inverse of hu_to_unit for values in [0, 1] (clamped first, as the official inference does).

    The result stays float32: no int16 truncation here (the official code truncates; a writer that
    needs integers should round).
    """
    out: npt.NDArray[np.float32] = np.clip(unit, 0.0, 1.0).astype(np.float32, copy=True)
    out *= np.float32(HU_RANGE)
    out += np.float32(HU_MIN)
    return out
