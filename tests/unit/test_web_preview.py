"""Preview sections: slice order, geometry, lung window and true proportions (no node, no sockets)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dicom_node.web.preview import (
    TARGET_WIDTH_PX,
    VIEWS,
    PreviewError,
    Sections,
    load_sections,
    lung_window,
    png_bytes,
    render,
    sample_files,
)
from dicom_node.web.preview_queue import PreviewBusyError, PreviewQueue
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


def test_sample_files_spreads_evenly_and_keeps_both_ends() -> None:
    files = [Path(f"{i:03d}.dcm") for i in range(801)]
    picked = sample_files(files, 256)
    assert len(picked) == 256 == len(set(picked))
    assert picked[0] == files[0] and picked[-1] == files[-1]
    steps = np.diff([int(p.stem) for p in picked])
    assert set(steps.tolist()) <= {3, 4}                        # every third or fourth slice
    assert sample_files(files[:10], 256) == files[:10]
    with pytest.raises(ValueError, match="max_slices must be at least 2, got 1"):
        sample_files(files, 1)


def test_long_series_are_sampled_at_true_proportions(tmp_path: Path) -> None:
    files = write(make_ct_series(slices=60, rows=16, cols=20, spacing_mm=1.0, pixel_spacing=(1.0, 1.0)), tmp_path)
    read = set(sample_files(files, 16))
    for path in files:
        if path not in read:
            path.write_bytes(b"not DICOM: reading this file would fail the load")
    sampled = load_sections(files, max_slices=16)
    assert sampled.slices == 16 and sampled.left_out == 44
    assert sampled.slice_spacing_mm == pytest.approx(59 / 15)
    full_height_px = round(60 * 1.0 * TARGET_WIDTH_PX / 20)
    assert abs(render(sampled, "coronal").size[1] - full_height_px) <= TARGET_WIDTH_PX / 20 * 59 / 15
    with pytest.raises(PreviewError, match="cannot read"):
        load_sections(files)                                    # unsampled, it would read them all


def test_preview_queue_renders_once_and_caches(tmp_path: Path) -> None:
    files = write(make_ct_series(slices=3, rows=8, cols=8), tmp_path)
    queue = PreviewQueue(max_slices=16, wait_s=10.0)
    try:
        first = asyncio.run(queue.pngs("a", lambda: files))
        assert set(first) == set(VIEWS) and all(png.startswith(b"\x89PNG") for png in first.values())
        for f in files:
            f.unlink()
        assert asyncio.run(queue.pngs("a", lambda: files)) is first    # from the cache, files not read
        assert queue.renders == 1
        with pytest.raises(PreviewError):
            asyncio.run(queue.pngs("b", lambda: files))                 # a new key reads (and the files are gone)
    finally:
        queue.close()


def test_preview_queue_refuses_quickly_when_busy(tmp_path: Path) -> None:
    files = write(make_ct_series(slices=3, rows=8, cols=8), tmp_path)
    release = threading.Event()

    def slow_listing() -> list[Path]:
        assert release.wait(30), "the test never released the render"
        return files

    queue = PreviewQueue(max_slices=16, wait_s=0.3, max_queued=1)

    async def scenario() -> tuple[list[BaseException | dict[str, bytes]], float]:
        started = time.monotonic()
        results = await asyncio.gather(queue.pngs("slow", slow_listing), queue.pngs("slow", slow_listing),
                                       queue.pngs("other", lambda: files), return_exceptions=True)
        return list(results), time.monotonic() - started

    try:
        results, elapsed = asyncio.run(scenario())
        assert elapsed < 2.0
        messages = [str(r) for r in results if isinstance(r, PreviewBusyError)]
        assert len(messages) == 3 and all(isinstance(r, PreviewBusyError) for r in results)
        assert sum("still being drawn after 0.3 s" in m for m in messages) == 2      # one render, two waiters
        assert sum("1 previews are being drawn" in m for m in messages) == 1         # the queue is full
        assert queue.renders == 1
        release.set()                                   # the render outlives its requests and fills the cache
        deadline = time.monotonic() + 20
        while True:
            try:
                cached = asyncio.run(queue.pngs("slow", slow_listing))
                break
            except PreviewBusyError:
                assert time.monotonic() < deadline, "the render never finished"
        assert set(cached) == set(VIEWS) and queue.renders == 1
    finally:
        release.set()
        queue.close()
