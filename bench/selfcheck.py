"""The self-check's figures on the real series we have, for good output and for garbage.

    nice -n 10 .venv/bin/python bench/selfcheck.py                    # BIS + garbage, full series
    nice -n 10 .venv/bin/python bench/selfcheck.py --cthnet --crop 256 --json selfcheck.json

Series: pyradiomics 3.0.1 lung1/lung2 (NRRD, 5 mm; thickness unknown, so the interval) and the four
Lung-PET-CT-Dx series (DICOM, read with the node's own `assemble`, SliceThickness from the header).
For each: the self-check (`synth.selfcheck`) of the interpolation (BIS) output, of the cthnet backend
with the shipped phantom weights (`--cthnet`; refused outside 4–6 mm, as in the node), and of garbage
made from the BIS output: uniform noise, BIS + Gaussian noise, BIS shifted along z by one and by half
an input slice, BIS flipped in z, and BIS with every voxel from −1000 to −400 HU lowered by 30 HU.
`--crop N` (or `Y,X`) takes the central N × N in-plane and `--slices N` the central N slices
(cthnet on 2 CPU cores is slow); the table says so.
Not a test: the figures go to deploy/README.md ("Self-check").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom_node.assemble import assemble, read_headers  # noqa: E402
from dicom_node.config import SeriesSection  # noqa: E402
from synth.backends import build_synthesizer  # noqa: E402
from synth.config import SynthConfig  # noqa: E402
from synth.selfcheck import SelfCheck, self_check  # noqa: E402
from synth.volume import CTVolume  # noqa: E402

NRRD = Path("/work/pr/pyradiomics-3.0.1/data")
DICOM = ROOT.parent / "shared" / "data" / "lung-pet-ct-dx"
FACTOR = 5
Garbage = Callable[[CTVolume, np.random.Generator], npt.NDArray[np.float32]]


def load_nrrd(path: Path) -> CTVolume:
    image = sitk.ReadImage(str(path))
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    sx, sy, sz = (float(v) for v in image.GetSpacing())
    return CTVolume(hu, (sz, sy, sx))


def load_dicom(folder: Path) -> CTVolume:
    files = sorted(folder.glob("*.dcm")) or sorted(p for p in folder.iterdir() if p.is_file())
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    headers = read_headers(files, uid)
    volume, _source = assemble(headers, uid, SeriesSection(min_spacing_mm=1.0, max_spacing_mm=10.0))
    return volume


def crop(volume: CTVolume, size: str, slices: int) -> CTVolume:
    """The central `slices` slices (0: all) and the central Y x X in-plane ("256" or "128,256"; "": all)."""
    nz, ny, nx = volume.shape
    sy, sx = (int(v) for v in size.split(",")) if "," in size else (int(size or 0),) * 2
    sy, sx, sz = sy or ny, sx or nx, slices or nz
    z0, y0, x0 = max(0, (nz - sz) // 2), max(0, (ny - sy) // 2), max(0, (nx - sx) // 2)
    hu = np.ascontiguousarray(volume.hu[z0:z0 + sz, y0:y0 + sy, x0:x0 + sx])
    return CTVolume(hu, volume.spacing_mm, slice_thickness_mm=volume.slice_thickness_mm)


def _shift(bis: CTVolume, thin: int) -> npt.NDArray[np.float32]:
    out = np.empty_like(bis.hu)
    out[thin:] = bis.hu[:-thin]
    out[:thin] = bis.hu[:1]
    return out


def _lung_lowered(bis: CTVolume, _rng: np.random.Generator) -> npt.NDArray[np.float32]:
    out = bis.hu.copy()
    out[(out >= -1000) & (out <= -400)] -= 30.0
    return out


GARBAGE: dict[str, Garbage] = {
    "uniform noise": lambda bis, rng: rng.uniform(-1024, 2048, bis.hu.shape).astype(np.float32),
    "BIS + N(0, 100 HU)": lambda bis, rng: bis.hu + rng.normal(0, 100, bis.hu.shape).astype(np.float32),
    "BIS shifted 1 slice": lambda bis, _rng: _shift(bis, FACTOR),
    "BIS shifted 1/2 slice": lambda bis, _rng: _shift(bis, max(1, FACTOR // 2)),
    "BIS flipped in z": lambda bis, _rng: np.ascontiguousarray(bis.hu[::-1]),
    "BIS lungs -30 HU": _lung_lowered,
}


def row(series: str, output: str, check: SelfCheck | None, seconds: float, note: str = "") -> dict[str, object]:
    out: dict[str, object] = {"series": series, "output": output, "seconds": round(seconds, 2), "note": note}
    if check is not None:
        out.update(consistency_db=round(check.consistency_db, 2),
                   lung_bias_hu=None if check.lung_bias_hu is None else round(check.lung_bias_hu, 2),
                   lung_voxels=check.lung_voxels, compared_slices=check.compared_slices)
    figures = "      --"
    if check is not None:
        bias = "none" if check.lung_bias_hu is None else f"{check.lung_bias_hu:+.2f}"
        figures = f"{check.consistency_db:6.2f} dB  {bias:>7} HU"
    print(f"{series:24s} {output:24s} {figures}  {seconds:6.1f} s {note}", flush=True)
    return out


def measure(name: str, volume: CTVolume, use_cthnet: bool) -> list[dict[str, object]]:
    rows = []
    bis_synth = build_synthesizer(SynthConfig(backend="interpolation", factor=FACTOR))
    t0 = time.monotonic()
    bis = bis_synth(volume)
    check = self_check(volume, bis)
    rows.append(row(name, "interpolation (BIS)", check, time.monotonic() - t0))
    if use_cthnet:
        cthnet = build_synthesizer(SynthConfig(backend="cthnet", device="cpu", factor=FACTOR))
        t0 = time.monotonic()
        try:
            thin = cthnet(volume)
        except ValueError as exc:
            rows.append(row(name, "cthnet (phantom weights)", None, time.monotonic() - t0, f"refused: {exc}"[:90]))
        else:
            rows.append(row(name, "cthnet (phantom weights)", self_check(volume, thin), time.monotonic() - t0))
    rng = np.random.default_rng(0)
    for what, make in GARBAGE.items():
        t0 = time.monotonic()
        garbage = CTVolume(make(bis, rng), bis.spacing_mm)
        rows.append(row(name, what, self_check(volume, garbage), time.monotonic() - t0))
    return rows


def series_list() -> list[tuple[str, Callable[[], CTVolume]]]:
    found: list[tuple[str, Callable[[], CTVolume]]] = []
    for name in ("lung1", "lung2"):
        path = NRRD / f"{name}_image.nrrd"
        if path.exists():
            found.append((name, lambda p=path: load_nrrd(p)))  # type: ignore[misc]
    for folder in sorted(DICOM.iterdir()) if DICOM.exists() else []:
        if folder.is_dir():
            found.append((folder.name, lambda f=folder: load_dicom(f)))  # type: ignore[misc]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cthnet", action="store_true", help="also the cthnet backend (shipped phantom weights)")
    parser.add_argument("--crop", default="", help="central N x N or Y,X in-plane (empty: whole slices)")
    parser.add_argument("--slices", type=int, default=0, help="the central N slices (0: all)")
    parser.add_argument("--only", default="", help="comma-separated series names")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    rows = []
    only = {s for s in args.only.split(",") if s}
    for name, load in series_list():
        if only and name not in only:
            continue
        volume = crop(load(), args.crop, args.slices)
        label = f"{name} {volume.shape[0]}x{volume.shape[1]}x{volume.shape[2]} {volume.spacing_mm[0]:g}/" \
                f"{volume.thickness_mm:g}mm"
        rows.extend(measure(label, volume, args.cthnet))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
