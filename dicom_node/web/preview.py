"""Before/after previews: coronal and sagittal sections through a series, as lung-window PNGs.

A series' files are read once (one central row and one central column of every slice are kept, so a
512² × 300 series costs a few MB, not a volume) and the images are cached (`preview_queue.py`). At
most `max_slices` files of a series are read (`web.preview_max_slices`, 256): a longer series is
sampled evenly along its file list, and the sampled slices are laid on a regular grid by position,
so an 801-slice 1-mm series is drawn from every third or fourth slice at the same proportions.
Images are aspect-correct: the slice axis is scaled by the slice spacing, the in-plane axis by the
pixel spacing, and both views of the thick input and the 1-mm output use the same millimetres per
pixel. Along the slice axis each slice is drawn as the slab it stands for (nearest neighbour), so a
5-mm input looks as coarse as it is.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image

LUNG_WINDOW_HU = (-600.0, 1500.0)          # level, width
TARGET_WIDTH_PX = 320                      # width of the field of view in every preview
MAX_HEIGHT_PX = 1600
VIEWS = ("coronal", "sagittal")


class PreviewError(Exception):
    """The files of a series cannot be drawn (unreadable, no pixels, no geometry)."""


@dataclass(frozen=True, slots=True)
class Sections:
    """Central sections through a stack of slices, slices sorted from inferior to superior."""

    coronal_hu: npt.NDArray[np.float32]     # (slices, columns): the central row of every slice
    sagittal_hu: npt.NDArray[np.float32]    # (slices, rows): the central column of every slice
    slice_spacing_mm: float
    row_spacing_mm: float                   # between rows (DICOM PixelSpacing[0])
    col_spacing_mm: float                   # between columns (PixelSpacing[1])
    skipped: int = 0                        # slices left out (another matrix than the first slice)
    left_out: int = 0                       # files not read: the series has more than max_slices

    @property
    def slices(self) -> int:
        return int(self.coronal_hu.shape[0])


def _slice_normal(ds: pydicom.Dataset) -> npt.NDArray[np.float64]:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise PreviewError("ImageOrientationPatient is degenerate")
    normal /= norm
    # Sort towards the head: for an axial stack that is +z (LPS), whichever way the normal points.
    return normal if normal[2] >= 0 else -normal


def sample_files(files: Sequence[Path], max_slices: int) -> list[Path]:
    """At most `max_slices` of `files`, evenly spread over the list, first and last included."""
    if max_slices < 2:
        raise ValueError(f"max_slices must be at least 2, got {max_slices}")
    if len(files) <= max_slices:
        return list(files)
    picked = np.unique(np.rint(np.linspace(0, len(files) - 1, max_slices)).astype(np.int64))
    return [files[int(i)] for i in picked]


def _on_grid(positions: npt.NDArray[np.float64], count: int) -> tuple[npt.NDArray[np.int64], float]:
    """For `count` evenly spaced points from the first to the last position: the nearest slice, and the step."""
    if count < 2 or positions[-1] - positions[0] < 1e-3:
        return np.arange(len(positions)), 1.0
    grid = np.linspace(positions[0], positions[-1], count)
    right = np.clip(np.searchsorted(positions, grid), 1, len(positions) - 1)
    nearest = np.where(grid - positions[right - 1] <= positions[right] - grid, right - 1, right)
    return nearest.astype(np.int64), float((positions[-1] - positions[0]) / (count - 1))


def load_sections(all_files: Sequence[Path], max_slices: int | None = None) -> Sections:
    """Read the slices of one series (at most `max_slices` of them) and keep the central row and column of each."""
    if not all_files:
        raise PreviewError("no files")
    files = list(all_files) if max_slices is None else sample_files(all_files, max_slices)
    entries: list[tuple[float, npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
    shape: tuple[int, int] | None = None
    spacing: tuple[float, float] = (1.0, 1.0)
    normal: npt.NDArray[np.float64] | None = None
    skipped = 0
    for path in files:
        try:
            ds = pydicom.dcmread(path)
            if normal is None:
                normal = _slice_normal(ds)
            position = float(np.dot(np.asarray([float(v) for v in ds.ImagePositionPatient]), normal))
            pixels = ds.pixel_array
        except PreviewError:
            raise
        except Exception as exc:  # any unreadable slice: say which kind of problem, never the data
            raise PreviewError(f"cannot read {path.name}: {type(exc).__name__}") from exc
        if pixels.ndim != 2:
            raise PreviewError(f"{path.name}: expected a single-frame image, got shape {pixels.shape}")
        if shape is None:
            shape = (int(pixels.shape[0]), int(pixels.shape[1]))
            ps = ds.get("PixelSpacing") or [1.0, 1.0]
            spacing = (float(ps[0]), float(ps[1]))
        elif pixels.shape != shape:
            skipped += 1
            continue
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        row = pixels[shape[0] // 2, :].astype(np.float32) * slope + intercept
        col = pixels[:, shape[1] // 2].astype(np.float32) * slope + intercept
        entries.append((position, row, col))
    entries.sort(key=lambda e: e[0])
    positions = np.asarray([e[0] for e in entries])
    coronal, sagittal = np.stack([e[1] for e in entries]), np.stack([e[2] for e in entries])
    left_out = len(all_files) - len(files)
    if left_out:           # sampled: nearest sampled slice on a regular grid, so proportions stay true
        order, slice_mm = _on_grid(positions, len(entries))
        coronal, sagittal = coronal[order], sagittal[order]
    else:
        gaps = np.diff(positions)
        gaps = gaps[gaps > 1e-3]
        slice_mm = float(np.median(gaps)) if gaps.size else 1.0
    return Sections(coronal_hu=coronal, sagittal_hu=sagittal, slice_spacing_mm=slice_mm,
                    row_spacing_mm=spacing[0], col_spacing_mm=spacing[1], skipped=skipped, left_out=left_out)


def lung_window(hu: npt.NDArray[np.float32], level: float = LUNG_WINDOW_HU[0],
                width: float = LUNG_WINDOW_HU[1]) -> npt.NDArray[np.uint8]:
    lo = level - width / 2
    scaled = (hu - lo) * np.float32(255.0 / width)
    windowed: npt.NDArray[np.uint8] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return windowed


def render(sections: Sections, view: str, target_width_px: int = TARGET_WIDTH_PX) -> Image.Image:
    """One section as an 8-bit image, superior at the top, scaled to true proportions."""
    if view == "coronal":
        hu, inplane_mm = sections.coronal_hu, sections.col_spacing_mm      # patient right on the left
    elif view == "sagittal":
        hu, inplane_mm = sections.sagittal_hu, sections.row_spacing_mm     # anterior on the left
    else:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    n_slices, n_inplane = hu.shape
    px_per_mm = target_width_px / (n_inplane * inplane_mm)
    height = int(np.clip(round(n_slices * sections.slice_spacing_mm * px_per_mm), 1, MAX_HEIGHT_PX))
    # Nearest slice for every output row (each slice is a slab), superior first.
    rows = np.minimum(((np.arange(height) + 0.5) * n_slices / height).astype(np.int64), n_slices - 1)
    slabs = lung_window(hu[::-1][rows])
    return Image.fromarray(slabs).resize((target_width_px, height), Image.Resampling.BILINEAR)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def render_pngs(files: Sequence[Path], max_slices: int) -> dict[str, bytes]:
    """Both views of one series as PNG bytes (one read of its files)."""
    sections = load_sections(files, max_slices)
    return {view: png_bytes(render(sections, view)) for view in VIEWS}
