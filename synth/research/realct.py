"""The real CT series we have (no thin truth): pyradiomics lung1/lung2 and the four Lung-PET-CT-Dx series.

Read with SimpleITK (a DICOM folder or an NRRD file), HU as float32, with the slice thickness from
DICOM SliceThickness (0018,0050) when present (else 0: the interval is used).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from synth.infer_cli import read_image, slice_thickness_mm
from synth.volume import CTVolume

PYRADIOMICS = Path("/work/pr/pyradiomics-3.0.1/data")
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "lung-pet-ct-dx"
SERIES = ("lung1", "lung2", "A0001-5mm-kernel-L", "A0001-5mm-kernel-B", "A0002-8mm-B70f", "A0002-8mm-B40f")


def series_path(name: str, *, pyradiomics: Path = PYRADIOMICS, shared: Path = SHARED) -> Path:
    if name.startswith("lung"):
        return pyradiomics / f"{name}_image.nrrd"
    return shared / name


def load_volume(path: Path) -> CTVolume:
    image = read_image(path)
    sx, sy, sz = image.GetSpacing()
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    return CTVolume(hu, (float(sz), float(sy), float(sx)), slice_thickness_mm=slice_thickness_mm(path))
