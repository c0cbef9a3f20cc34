"""CTVolume: the one value that crosses the synthesis seam."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class CTVolume:
    """A CT volume in Hounsfield units, axes (z, y, x), with voxel spacing in mm (z, y, x).

    z runs along the slice normal in the order of the source series; the geometry beyond spacing
    (origin, orientation) stays with the caller, who knows the frame of reference.

    `slice_thickness_mm` is the reconstructed slice thickness (DICOM SliceThickness), which differs
    from the slice interval `spacing_mm[0]` for overlapping or gapped series; 0.0 means unknown, and
    `thickness_mm` then falls back to the interval. `figures` carries a backend's own measurements
    on an output volume (e.g. an off-axis validation PSNR), by name, for the self-check and provenance.
    """

    hu: npt.NDArray[np.float32]
    spacing_mm: tuple[float, float, float]
    slice_thickness_mm: float = 0.0
    figures: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.hu, np.ndarray):
            raise TypeError(f"CTVolume.hu must be a numpy array, got {type(self.hu).__name__}")
        if self.hu.dtype != np.float32:
            raise ValueError(f"CTVolume.hu must be float32, got {self.hu.dtype}")
        if self.hu.ndim != 3:
            raise ValueError(f"CTVolume.hu must be 3-D (z, y, x), got shape {self.hu.shape}")
        if min(self.hu.shape) < 1:
            raise ValueError(f"CTVolume.hu must not be empty, got shape {self.hu.shape}")
        if len(self.spacing_mm) != 3 or not all(
            isinstance(s, float) and np.isfinite(s) and s > 0 for s in self.spacing_mm
        ):
            raise ValueError(f"CTVolume.spacing_mm must be three positive floats, got {self.spacing_mm!r}")
        t = self.slice_thickness_mm
        if not (isinstance(t, float) and np.isfinite(t) and t >= 0):
            raise ValueError(f"CTVolume.slice_thickness_mm must be a finite float >= 0, got {t!r}")

    @property
    def thickness_mm(self) -> float:
        """The slice thickness, or the slice interval when the thickness is unknown."""
        return self.slice_thickness_mm or self.spacing_mm[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.hu.shape
        return int(z), int(y), int(x)
