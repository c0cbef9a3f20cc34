"""Preview sections: slice order, geometry, lung window and true proportions (no node, no sockets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicom_node.web.preview import (
    TARGET_WIDTH_PX,
    PreviewError,
    SectionCache,
    Sections,
    load_sections,
    lung_window,
    png_bytes,
    render,
)
from tests.support.ct_series import make_ct_series


def write(datasets: list, folder: Path) -> list[Path]:  # type: ignore[type-arg]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def sections(slices: int, width: int, slice_mm: float, pixel_mm: float) -> Sections:
    values = np.repeat(np.linspace(-1350, 150, slices, dtype=np.float32)[:, None], width, axis=1)
    return Sections(values, values.copy(), slice_mm, pixel_mm, pixel_mm)


def test_lung_window_maps_level_and_width() -> None:
    hu = np.asarray([-2000, -1350, -600, 150, 3000], dtype=np.float32)
    assert lung_window(hu).tolist() == [0, 0, 128, 255, 255]


def test_render_scales_the_slice_axis_by_spacing() -> None:
    image = render(sections(slices=10, width=100, slice_mm=5.0, pixel_mm=1.0), "coronal")
    px_per_mm = TARGET_WIDTH_PX / 100
    assert image.size == (TARGET_WIDTH_PX, round(10 * 5.0 * px_per_mm))
    thin = render(sections(slices=46, width=100, slice_mm=1.0, pixel_mm=1.0), "sagittal")
    assert thin.size == (TARGET_WIDTH_PX, round(46 * px_per_mm))


def test_render_puts_the_head_end_on_top_and_keeps_slabs() -> None:
    pixels = np.asarray(render(sections(slices=4, width=50, slice_mm=5.0, pixel_mm=1.0), "coronal"))
    column = pixels[:, TARGET_WIDTH_PX // 2]
    assert column[0] == 255 and column[-1] == 0                 # the last (most superior) slice on top
    assert len(np.unique(column)) == 4                          # nearest slice: four flat slabs, no blend
    assert png_bytes(render(sections(2, 8, 5.0, 1.0), "sagittal")).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="view must be one of"):
        render(sections(2, 8, 5.0, 1.0), "axial")


def test_load_sections_sorts_by_position(tmp_path: Path) -> None:
    source = make_ct_series(slices=6, rows=32, cols=40, spacing_mm=5.0, pixel_spacing=(0.6, 0.8), shuffled=True)
    loaded = load_sections(write(source, tmp_path))
    assert loaded.coronal_hu.shape == (6, 40) and loaded.sagittal_hu.shape == (6, 32)
    assert loaded.slice_spacing_mm == pytest.approx(5.0)
    assert loaded.row_spacing_mm == pytest.approx(0.6) and loaded.col_spacing_mm == pytest.approx(0.8)
    ordered = sorted(source, key=lambda ds: float(ds.ImagePositionPatient[2]))
    top = ordered[-1].pixel_array[16, :] * float(ordered[-1].RescaleSlope) + float(ordered[-1].RescaleIntercept)
    np.testing.assert_allclose(loaded.coronal_hu[-1], top)


def test_load_sections_handles_descending_stacks_and_odd_slices(tmp_path: Path) -> None:
    descending = load_sections(write(make_ct_series(slices=5, rows=16, cols=16, descending=True), tmp_path / "d"))
    ascending = load_sections(write(make_ct_series(slices=5, rows=16, cols=16), tmp_path / "a"))
    np.testing.assert_allclose(descending.coronal_hu, ascending.coronal_hu)
    mixed = load_sections(write(make_ct_series(slices=5, rows=16, cols=16, mixed_size=True, defect_index=2),
                                tmp_path / "m"))
    assert mixed.slices == 4 and mixed.skipped == 1


def test_unreadable_files_are_a_preview_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not DICOM at all")
    with pytest.raises(PreviewError, match=r"cannot read bad\.dcm"):
        load_sections([bad])
    with pytest.raises(PreviewError, match="no files"):
        load_sections([])


def test_section_cache_loads_once(tmp_path: Path) -> None:
    files = write(make_ct_series(slices=3, rows=8, cols=8), tmp_path)
    cache = SectionCache(capacity=1)
    first = cache.get("a", files)
    for f in files:
        f.unlink()
    assert cache.get("a", files) is first                      # served from the cache, files not read
    with pytest.raises(PreviewError):
        cache.get("b", files)                                   # a new key reads (and the files are gone)
