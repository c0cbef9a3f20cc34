"""A synthetic single-frame CT series generator with controllable defects.

``make_ct_series()`` samples an analytic, body-like chest phantom (``phantom_hu``) at the pixel centres
of every slice in patient coordinates (LPS, mm), so a test can compare any derived slice against the
truth at its own position. The datasets are complete CT Image Storage instances (Explicit VR Little
Endian, every Type 1/2 attribute of the CT Image IOD) that ``dciodvfy`` reports clean.

Defects (each changes the SeriesInstanceUID, since all UIDs are hashed from the arguments):

- ``shuffled``: the list (and InstanceNumber) order is a random permutation of the slices.
- ``duplicate_position``: one extra instance, with its own SOP Instance UID, at the position of
  slice ``defect_index``; the result has ``slices + 1`` instances.
- ``missing_slice``: slice ``defect_index`` is left out, so one gap is ``2 * spacing_mm``; the
  result has ``slices - 1`` instances.
- ``gantry_tilt_deg``: image planes are tilted about the patient x axis while the table still moves
  along z (positions step along z, not along the normal), as a tilted gantry writes it;
  GantryDetectorTilt is set.
- ``orientation``: ``"axial"`` (default), ``"coronal"`` or ``"sagittal"`` stacks; non-axial stacks
  are labelled DERIVED\\SECONDARY\\REFORMATTED like a real MPR.
- ``mixed_size``: slice ``defect_index`` has half the rows/columns at twice the pixel spacing.
- ``two_frames_of_reference``: slices from ``defect_index`` on carry a second FrameOfReferenceUID.
- ``modality``: the Modality attribute (the SOP class stays CT Image Storage).
- ``rescale_slope`` / ``rescale_intercept`` / ``signed``: how HU are stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
UNCOMPRESSED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
AIR_HU = -1000
FAT_HU = -100
SOFT_TISSUE_HU = 40
LUNG_HU = -850
BONE_HU = 700
CONTRAST_HU = 200
NODULE_HU = 30
LUNG_PERIOD_MM = 150.0
NODULE_RADIUS_MM = 7.0
UID_NAMESPACE = "dicom-synth-node tests/support/ct_series"


def phantom_hu(x_mm: npt.ArrayLike, y_mm: npt.ArrayLike, z_mm: npt.ArrayLike, fov_mm: float) -> npt.NDArray[np.int16]:
    """HU of the chest phantom at patient points (LPS, mm); the body fills ``fov_mm`` around x = y = 0.

    Air outside an elliptical body with a fat ring; two lungs whose size varies smoothly with z;
    a spine, a contrast-filled aorta and a 7 mm nodule centred at z = 0 in the right lung.
    Values are integers, so any slope that divides 1 stores them exactly.
    """
    x = np.asarray(x_mm, dtype=np.float64)
    y = np.asarray(y_mm, dtype=np.float64)
    z = np.asarray(z_mm, dtype=np.float64)
    x, y, z = np.broadcast_arrays(x, y, z)
    half = fov_mm / 2.0
    u, v = x / half, y / half
    hu = np.full(u.shape, AIR_HU, dtype=np.int16)

    def ellipse(cu: float, cv: float, au: float | npt.NDArray[np.float64], av: Any) -> npt.NDArray[np.bool_]:
        return np.asarray(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 <= 1.0)

    hu[ellipse(0.0, 0.0, 0.85, 0.62)] = FAT_HU
    hu[ellipse(0.0, 0.0, 0.79, 0.56)] = SOFT_TISSUE_HU
    scale = 0.75 + 0.25 * np.cos(2.0 * np.pi * z / LUNG_PERIOD_MM)
    for side in (-1.0, 1.0):
        hu[ellipse(side * 0.38, -0.05, 0.25 * scale, 0.40 * scale)] = LUNG_HU
    hu[ellipse(0.0, 0.42, 0.10, 0.10)] = BONE_HU
    hu[ellipse(0.10, 0.18, 0.07, 0.07)] = CONTRAST_HU
    nodule_x, nodule_y = -0.38 * half, -0.05 * half
    nodule = (x - nodule_x) ** 2 + (y - nodule_y) ** 2 + z**2 <= NODULE_RADIUS_MM**2
    hu[nodule] = NODULE_HU
    return hu


def hashed_uid(*parts: object) -> str:
    """A deterministic ``2.25.`` UID (a 128-bit integer) hashed from ``parts``."""
    text = "\x1f".join(map(str, parts)).encode()
    return f"2.25.{int.from_bytes(hashlib.sha256(text).digest()[:16], 'big')}"


def _unit(vector: Sequence[float] | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    a = np.asarray(vector, dtype=np.float64)
    return a / np.linalg.norm(a)


def _ds_str(value: float) -> str:
    """A DS value of at most 16 characters, with no negative zero."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    text = "0" if text in ("-0", "") else text
    if len(text) > 16:
        text = f"{value:.8g}"
    return text


def _stored_range(signed: bool, bits_stored: int) -> tuple[int, int]:
    if signed:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def _auto_bits_stored(signed: bool, slope: float, intercept: float) -> int:
    lowest, highest = (-1024.0 - intercept) / slope, (3071.0 - intercept) / slope
    for bits in (12, 16):
        lo, hi = _stored_range(signed, bits)
        if lo <= min(lowest, highest) and max(lowest, highest) <= hi:
            return bits
    return 16


def make_ct_series(
    slices: int = 12,
    rows: int = 64,
    cols: int = 64,
    spacing_mm: float = 5.0,
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    *,
    seed: int = 0,
    shuffled: bool = False,
    duplicate_position: bool = False,
    missing_slice: bool = False,
    gantry_tilt_deg: float = 0.0,
    orientation: str = "axial",
    mixed_size: bool = False,
    two_frames_of_reference: bool = False,
    modality: str = "CT",
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    signed: bool = False,
    bits_stored: int | None = None,
    noise_hu: float = 0.0,
    defect_index: int | None = None,
    z_start_mm: float | None = None,
    descending: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str | None = None,
    series_description: str = "CHEST 5mm",
) -> list[Dataset]:
    """Build a CT Image Storage series in memory (see the module docstring for the defects).

    ``pixel_spacing`` is in DICOM order (between rows, between columns). Slice k (before defects)
    lies at ``first + k * spacing_mm * step``, where step is the slice normal (+z with a gantry
    tilt); ``descending`` numbers the slices from the far end. The stack is centred on z = 0
    unless ``z_start_mm`` is given. Same arguments give the same UIDs and pixels; any change gives a
    new series.
    """
    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    if rows < 2 or cols < 2:
        raise ValueError(f"rows and cols must be >= 2, got {rows}x{cols}")
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {sorted(ORIENTATIONS)}, got {orientation!r}")
    if transfer_syntax not in UNCOMPRESSED_SYNTAXES:
        raise ValueError(f"transfer_syntax must be Explicit or Implicit VR LE, got {transfer_syntax!r}")
    if rescale_slope == 0:
        raise ValueError("rescale_slope must not be 0")
    if (duplicate_position or missing_slice or mixed_size or two_frames_of_reference) and slices < 3:
        raise ValueError(f"defects need slices >= 3, got {slices}")
    index = slices // 2 if defect_index is None else defect_index
    if not 0 <= index < slices:
        raise ValueError(f"defect_index must be in [0, {slices}), got {index}")

    arguments = {k: v for k, v in locals().items() if k not in ("study_uid", "series_uid", "patient_id")}
    digest = hashlib.sha256(json.dumps(arguments, sort_keys=True, default=str).encode()).hexdigest()

    def uid(*parts: object) -> str:
        return hashed_uid(UID_NAMESPACE, digest, *parts)

    study = study_uid or hashed_uid(UID_NAMESPACE, "study", seed, patient_id)
    series = series_uid or uid("series")
    frames = [uid("frame", 0), uid("frame", 1)]
    pid = patient_id or f"SYN{seed:05d}"
    rng = np.random.default_rng(seed)

    row_dir, col_dir = (_unit(v) for v in ORIENTATIONS[orientation])
    tilt = np.deg2rad(gantry_tilt_deg)
    if gantry_tilt_deg:
        if orientation != "axial":
            raise ValueError("gantry_tilt_deg applies to axial series only")
        col_dir = _unit((0.0, np.cos(tilt), np.sin(tilt)))
    normal = np.cross(row_dir, col_dir)
    step = np.array([0.0, 0.0, 1.0]) if gantry_tilt_deg else normal
    fov_mm = max(rows * pixel_spacing[0], cols * pixel_spacing[1])
    extent = (slices - 1) * spacing_mm
    start = -extent / 2.0 if z_start_mm is None else z_start_mm
    along = start + spacing_mm * np.arange(slices)
    if descending:
        along = along[::-1]

    signed_stored = signed
    bits = bits_stored or _auto_bits_stored(signed_stored, rescale_slope, rescale_intercept)
    lo, hi = _stored_range(signed_stored, bits)
    dtype = np.int16 if signed_stored else np.uint16

    plan = list(range(slices))
    if missing_slice:
        plan.remove(index)
    if duplicate_position:
        plan.append(index)
    order = list(range(len(plan)))
    if shuffled:
        order = [int(i) for i in rng.permutation(len(plan))]
        if order == sorted(order):
            order.reverse()

    datasets: list[Dataset] = []
    for number, slot in enumerate(order, start=1):
        k = plan[slot]
        small = mixed_size and k == index and slot < slices
        n_rows, n_cols = (rows // 2, cols // 2) if small else (rows, cols)
        spacing = (pixel_spacing[0] * 2, pixel_spacing[1] * 2) if small else pixel_spacing
        centre = along[k] * step
        first_pixel = centre - row_dir * spacing[1] * (n_cols - 1) / 2.0 - col_dir * spacing[0] * (n_rows - 1) / 2.0
        r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
        points = (
            first_pixel[:, None, None]
            + row_dir[:, None, None] * (c * spacing[1])[None]
            + col_dir[:, None, None] * (r * spacing[0])[None]
        )
        hu = phantom_hu(points[0], points[1], points[2], fov_mm).astype(np.float64)
        if noise_hu:
            hu = hu + np.rint(rng.normal(0.0, noise_hu, hu.shape))
        stored = np.clip(np.rint((hu - rescale_intercept) / rescale_slope), lo, hi).astype(dtype)
        frame = frames[1] if two_frames_of_reference and k >= index else frames[0]
        sop = uid("sop", slot)
        datasets.append(
            ct_dataset(
                sop_uid=sop,
                study_uid=study,
                series_uid=series,
                frame_uid=frame,
                patient_id=pid,
                modality=modality,
                orientation=orientation,
                series_description=series_description,
                transfer_syntax=transfer_syntax,
                instance_number=number,
                position=first_pixel,
                row_dir=row_dir,
                col_dir=col_dir,
                pixel_spacing=spacing,
                thickness_mm=spacing_mm,
                tilt_deg=gantry_tilt_deg,
                stored=stored,
                bits_stored=bits,
                signed=signed_stored,
                slope=rescale_slope,
                intercept=rescale_intercept,
            )
        )
    return datasets


def ct_dataset(
    *,
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    patient_id: str,
    modality: str,
    orientation: str,
    series_description: str,
    transfer_syntax: str,
    instance_number: int,
    position: npt.NDArray[np.float64],
    row_dir: npt.NDArray[np.float64],
    col_dir: npt.NDArray[np.float64],
    pixel_spacing: tuple[float, float],
    thickness_mm: float,
    tilt_deg: float,
    stored: npt.NDArray[Any],
    bits_stored: int,
    signed: bool,
    slope: float,
    intercept: float,
) -> Dataset:
    """One complete single-frame CT Image Storage instance; ``stored`` holds the raw stored values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    axial = orientation == "axial"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if axial else ["DERIVED", "SECONDARY", "REFORMATTED"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101500"
    ds.AccessionNumber = f"A{patient_id[-6:]}"
    ds.Modality = modality
    ds.Manufacturer = "dicom-synth-node tests"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = series_description
    ds.PatientName = f"PHANTOM^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _ds_str(thickness_mm)
    ds.KVP = "120"
    if tilt_deg:
        ds.GantryDetectorTilt = _ds_str(tilt_deg)
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [_ds_str(v) for v in position]
    ds.ImageOrientationPatient = [_ds_str(v) for v in (*row_dir, *col_dir)]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    normal = np.cross(row_dir, col_dir)
    ds.SliceLocation = _ds_str(float(np.dot(position, normal)))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.PixelSpacing = [_ds_str(pixel_spacing[0]), _ds_str(pixel_spacing[1])]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = _ds_str(intercept)
    ds.RescaleSlope = _ds_str(slope)
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(stored).astype("<u2" if not signed else "<i2").tobytes()
    return ds


def write_series(datasets: Sequence[Dataset], directory: str | Path) -> list[Path]:
    """Write each dataset as a DICOM Part 10 file ``CT0001.dcm``, ... in list order; return the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets, start=1):
        path = out / f"CT{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def slice_normal(ds: Dataset) -> npt.NDArray[np.float64]:
    """Unit normal (row x column direction cosines) of one instance."""
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    return _unit(np.cross(iop[:3], iop[3:]))


def position_mm(ds: Dataset) -> npt.NDArray[np.float64]:
    return np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)


def sorted_by_position(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The instances sorted by position along the first instance's slice normal."""
    normal = slice_normal(datasets[0])
    return sorted(datasets, key=lambda ds: float(np.dot(position_mm(ds), normal)))
