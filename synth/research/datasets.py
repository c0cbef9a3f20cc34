"""Reading volumes and pairing thick with thin for training and evaluation.

Three layouts give (thin, thick) pairs:
- the official one: `HD_1mm/<case>.nii.gz` and `HD_5mm/<case>.nii.gz` with matching names;
- DICOM series folders: `thin/<case>/` and `thick/<case>/` (read with SimpleITK/GDCM, never pydicom);
- thin only: any folder of thin volumes, each thick partner simulated with `synth.simulate`.

z alignment follows the spec (§2.1): thick k ↔ thin 5k, with the thin volume cropped to the
5·(N-1)+1 slices from the first to the last thick position, located through the origins.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK

from synth.normalize import HU_MIN, HU_RANGE
from synth.simulate import simulate_thick
from synth.volume import CTVolume

sitk: Any = SimpleITK  # SimpleITK's annotations are partial; treat it as untyped

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
INTENSITY_MODES = ("auto", "hu", "unit")


class DatasetError(ValueError):
    """A data folder or file cannot be used; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where a volume sits in patient space, in SimpleITK's (x, y, z) order (LPS, mm)."""

    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major 3x3, columns are the x, y, z axes

    @property
    def slice_normal(self) -> tuple[float, float, float]:
        d = self.direction
        return (d[2], d[5], d[8])


DEFAULT_GEOMETRY = Geometry((0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


@dataclass(frozen=True, slots=True)
class PairedCase:
    """One training/evaluation case: thin (1 mm) and thick (5 mm) volumes, thick k ↔ thin factor·k."""

    name: str
    thin: CTVolume
    thick: CTVolume

    def __post_init__(self) -> None:
        n_thick, n_thin = self.thick.shape[0], self.thin.shape[0]
        factor = round(self.thick.spacing_mm[0] / self.thin.spacing_mm[0])
        if n_thin != factor * (n_thick - 1) + 1:
            raise DatasetError(
                f"case {self.name}: {n_thin} thin slices do not span {n_thick} thick slices at x{factor} "
                f"(expected {factor * (n_thick - 1) + 1})"
            )
        if self.thin.shape[1:] != self.thick.shape[1:]:
            raise DatasetError(
                f"case {self.name}: in-plane sizes differ, thin {self.thin.shape[1:]} and thick "
                f"{self.thick.shape[1:]}"
            )


def from_sitk(image: Any) -> tuple[CTVolume, Geometry]:
    if image.GetDimension() != 3:
        raise DatasetError(f"expected a 3-D image, got {image.GetDimension()}-D")
    hu = sitk.GetArrayFromImage(image).astype(np.float32)   # sitk (x, y, z) → numpy (z, y, x)
    sx, sy, sz = (float(s) for s in image.GetSpacing())
    geometry = Geometry(
        tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
        tuple(float(v) for v in image.GetDirection()),
    )
    return CTVolume(hu, (sz, sy, sx)), geometry


def to_sitk(volume: CTVolume, geometry: Geometry = DEFAULT_GEOMETRY) -> Any:
    image = sitk.GetImageFromArray(volume.hu)               # numpy (z, y, x) → sitk (x, y, z)
    dz, dy, dx = volume.spacing_mm
    image.SetSpacing((dx, dy, dz))
    image.SetOrigin(geometry.origin_mm)
    image.SetDirection(geometry.direction)
    return image


def is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def case_name(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_volume(path: Path, intensity: str = "hu") -> tuple[CTVolume, Geometry]:
    """A NIfTI/NRRD/MHA file or a folder holding one DICOM series, as HU."""
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if len(series) != 1:
            raise DatasetError(f"{path}: expected one DICOM series, found {len(series)}")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
        image = reader.Execute()
    elif is_volume_file(path):
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise DatasetError(f"{path}: unreadable ({str(exc).splitlines()[0][:120]})") from exc
    elif path.exists():
        raise DatasetError(f"{path}: not a volume file ({', '.join(VOLUME_SUFFIXES)}) or DICOM folder")
    else:
        raise DatasetError(f"{path}: no such file or folder")
    volume, geometry = from_sitk(image)
    return to_hu(volume, intensity, str(path)), geometry


def to_hu(volume: CTVolume, intensity: str, where: str) -> CTVolume:
    """`unit` data (the RPLHR-CT release is likely stored as [0, 1] in [-1024, 2048]) back to HU.

    `auto` treats a volume whose values all lie in [-0.01, 1.01] as unit data: real CT in HU never
    does, since air is -1000.
    """
    if intensity == "hu":
        return volume
    if intensity == "auto":
        lo, hi = float(volume.hu.min()), float(volume.hu.max())
        if not (lo >= -0.01 and hi <= 1.01):
            return volume
    elif intensity != "unit":
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    if volume.hu.min() < -0.01 or volume.hu.max() > 1.01:
        raise DatasetError(f"{where}: intensity 'unit' needs values in [0, 1]")
    hu = (volume.hu * np.float32(HU_RANGE) + np.float32(HU_MIN)).astype(np.float32)
    return CTVolume(hu, volume.spacing_mm)


def write_volume(volume: CTVolume, geometry: Geometry, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_sitk(volume, geometry), str(path), useCompression=True)


def align_pair(
    name: str, thin: CTVolume, thin_geometry: Geometry, thick: CTVolume, thick_geometry: Geometry
) -> PairedCase:
    """Crop the thin volume to the slices from the first to the last thick position (thick k ↔ thin f·k).

    The offset of thick slice 0 within the thin volume comes from the origins along the slice normal;
    with identical origins (e.g. files written without geometry) it is 0.
    """
    dz_thin, dz_thick = thin.spacing_mm[0], thick.spacing_mm[0]
    ratio = dz_thick / dz_thin
    factor = round(ratio)
    if factor < 1 or abs(ratio - factor) > 0.01:
        raise DatasetError(
            f"case {name}: thick spacing {dz_thick} mm is not a whole multiple of thin {dz_thin} mm"
        )
    normal = np.asarray(thin_geometry.slice_normal)
    shift_mm = float(np.dot(np.subtract(thick_geometry.origin_mm, thin_geometry.origin_mm), normal))
    offset = round(shift_mm / dz_thin)
    if abs(shift_mm - offset * dz_thin) > 0.25 * dz_thin:
        raise DatasetError(f"case {name}: thick slice 0 lies {shift_mm:.2f} mm into the thin volume, "
                           f"between thin slices")
    n_needed = factor * (thick.shape[0] - 1) + 1
    if offset < 0 or offset + n_needed > thin.shape[0]:
        raise DatasetError(
            f"case {name}: thin slices {offset}..{offset + n_needed - 1} needed, thin volume has "
            f"{thin.shape[0]}"
        )
    cropped = CTVolume(np.ascontiguousarray(thin.hu[offset : offset + n_needed]), thin.spacing_mm)
    return PairedCase(name, cropped, thick)


def simulated_pair(
    name: str, thin: CTVolume, factor: int = 5, thickness_mm: float | None = None
) -> PairedCase:
    """Pair a thin volume with its simulated thick partner (interval factor·dz, thickness = interval)."""
    interval = factor * thin.spacing_mm[0]
    n_thick = (thin.shape[0] - 1) // factor + 1
    if n_thick < 2:
        raise DatasetError(f"case {name}: {thin.shape[0]} thin slices are too few for x{factor}")
    used = CTVolume(np.ascontiguousarray(thin.hu[: factor * (n_thick - 1) + 1]), thin.spacing_mm)
    thick = simulate_thick(used, thickness_mm=thickness_mm or interval, interval_mm=interval)
    return PairedCase(name, used, thick)


def _volume_entries(folder: Path) -> dict[str, Path]:
    entries = {case_name(p): p for p in sorted(folder.iterdir()) if is_volume_file(p) or p.is_dir()}
    return entries


def discover_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    """(name, thin path, thick path) for the official `HD_1mm`/`HD_5mm` or `thin`/`thick` layouts."""
    for thin_dir, thick_dir in (("HD_1mm", "HD_5mm"), ("thin", "thick"), ("1mm", "5mm")):
        thin_root, thick_root = root / thin_dir, root / thick_dir
        if thin_root.is_dir() and thick_root.is_dir():
            thin_entries, thick_entries = _volume_entries(thin_root), _volume_entries(thick_root)
            missing = sorted(set(thin_entries) ^ set(thick_entries))
            if missing:
                raise DatasetError(f"{root}: cases without a partner in {thin_dir}/ or {thick_dir}/: "
                                   f"{', '.join(missing[:5])}")
            if not thin_entries:
                raise DatasetError(f"{root}: {thin_dir}/ holds no volumes")
            return [(n, thin_entries[n], thick_entries[n]) for n in sorted(thin_entries)]
    raise DatasetError(f"{root}: no HD_1mm/ + HD_5mm/ (or thin/ + thick/) folders")


def iter_cases(
    root: Path, mode: str = "paired", factor: int = 5, intensity: str = "auto"
) -> Iterator[PairedCase]:
    """Cases under `root`: mode `paired` (two folders) or `simulate` (thin volumes only)."""
    if mode == "paired":
        for name, thin_path, thick_path in discover_pairs(root):
            thin, thin_geo = read_volume(thin_path, intensity)
            thick, thick_geo = read_volume(thick_path, intensity)
            yield align_pair(name, thin, thin_geo, thick, thick_geo)
    elif mode == "simulate":
        entries = _volume_entries(root) if root.is_dir() else {}
        if not entries:
            raise DatasetError(f"{root}: no thin volumes to simulate from")
        for name, path in entries.items():
            thin, _ = read_volume(path, intensity)
            yield simulated_pair(name, thin, factor)
    else:
        raise ValueError(f"mode must be 'paired' or 'simulate', got {mode!r}")
