"""The phantom's public values: its spec, the nodules it holds, and the phantom itself.

Kept apart from the drawing code (synth/research/phantom.py) so the nodule check and the evaluation
can name these types without the anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass

from synth.volume import CTVolume

NODULE_KINDS = ("solid", "subsolid")


@dataclass(frozen=True, slots=True)
class Nodule:
    center_mm: tuple[float, float, float]  # (z, y, x) from the centre of voxel (0, 0, 0)
    diameter_mm: float
    kind: str                               # "solid" | "subsolid"

    def center_voxel(self, spacing_mm: tuple[float, float, float]) -> tuple[float, float, float]:
        z, y, x = (c / s for c, s in zip(self.center_mm, spacing_mm, strict=True))
        return z, y, x


@dataclass(frozen=True, slots=True)
class PhantomSpec:
    slices: int = 128
    size: int = 256                  # rows = columns
    pixel_mm: float = 1.4            # in-plane spacing; 256 x 1.4 mm = 358 mm field of view
    slice_mm: float = 1.0
    nodules_min: int = 2
    nodules_max: int = 6
    noise_hu: float = 18.0           # standard deviation of the (correlated) noise
    blur_mm: float = 0.6             # in-plane Gaussian sigma of the scanner response
    z_blur_mm: float = 0.4           # z Gaussian sigma of a 1-mm reconstruction

    def __post_init__(self) -> None:
        if self.slices < 8:
            raise ValueError(f"PhantomSpec.slices must be at least 8, got {self.slices}")
        if self.size < 32:
            raise ValueError(f"PhantomSpec.size must be at least 32, got {self.size}")
        if not (0 < self.pixel_mm <= 5 and 0 < self.slice_mm <= 5):
            raise ValueError(
                f"PhantomSpec spacings must lie in (0, 5] mm, got pixel {self.pixel_mm}, "
                f"slice {self.slice_mm}"
            )
        if not 0 <= self.nodules_min <= self.nodules_max:
            raise ValueError(
                "PhantomSpec needs 0 <= nodules_min <= nodules_max, got "
                f"{self.nodules_min}, {self.nodules_max}"
            )
        if self.noise_hu < 0 or self.blur_mm < 0 or self.z_blur_mm < 0:
            raise ValueError("PhantomSpec noise_hu, blur_mm and z_blur_mm must not be negative")


@dataclass(frozen=True, slots=True)
class Phantom:
    volume: CTVolume
    nodules: tuple[Nodule, ...]
    seed: int
