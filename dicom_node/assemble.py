"""Series files → (CTVolume, SourceSeries): sort along the slice normal and check the geometry.

Every failure is an InvalidSeriesError with a named reason; nothing here decides what to do with it.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.config import SeriesSection
from dicom_node.errors import InvalidSeriesError
from dicom_node.policy import instance_refusal
from synth.volume import CTVolume

logger = logging.getLogger(__name__)

# Reason codes (the first line of a rejected series' `reason` file).
UNREADABLE = "unreadable_file"
MISSING_ATTRIBUTE = "missing_attribute"
MIXED_SERIES = "mixed_series"
TOO_FEW_SLICES = "single_slice"
TOO_MANY_SLICES = "too_many_slices"
MIXED_ORIENTATION = "mixed_orientation"
MIXED_FRAME_OF_REFERENCE = "mixed_frame_of_reference"
MIXED_MATRIX = "mixed_matrix"
MIXED_PIXEL_SPACING = "mixed_pixel_spacing"
BAD_GEOMETRY = "bad_geometry"
NOT_AXIAL = "not_axial"
GANTRY_TILT = "gantry_tilt"
DUPLICATE_POSITION = "duplicate_position"
IRREGULAR_SPACING = "irregular_spacing"
SPACING_OUT_OF_RANGE = "spacing_out_of_range"
UNDECODABLE_PIXELS = "undecodable_pixels"
ABSURD_DIMENSIONS = "absurd_dimensions"

MAX_MATRIX = 2048


@dataclass(frozen=True, slots=True)
class SourceSeries:
    """What the writer needs to know of the source: geometry, identity, and one header to copy from."""

    series_uid: str
    header: Dataset                          # the first slice's header, pixel data removed
    sop_class_uids: tuple[str, ...]          # in volume order
    sop_uids: tuple[str, ...]                # in volume order
    first_position_mm: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    normal: tuple[float, float, float]
    spacing_mm: float
    pixel_spacing_mm: tuple[float, float]    # (row spacing, column spacing)
    frame_of_reference_uid: str
    numbered_descending: bool                # InstanceNumber falls as the position along the normal rises


def _fail(series_uid: str, reason: str, detail: str) -> InvalidSeriesError:
    return InvalidSeriesError(series_uid, reason, detail)


def _floats(ds: Dataset, keyword: str, n: int, series_uid: str) -> npt.NDArray[np.float64]:
    value = ds.get(keyword)
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (n,) or not np.all(np.isfinite(arr)):
        what = "missing" if value is None else f"not {n} finite numbers"
        raise _fail(series_uid, MISSING_ATTRIBUTE if value is None else BAD_GEOMETRY,
                    f"{keyword} of instance {ds.get('SOPInstanceUID', '?')} is {what}")
    return arr


def _number_or(value: object, default: float) -> float:
    """A DS value as float; absent or empty means `default` (a stored 0 stays 0)."""
    return default if value is None or value == "" else float(value)  # type: ignore[arg-type]


def read_headers(files: list[Path], series_uid: str) -> list[Dataset]:
    """Read every file fully (pixel data stays encoded until decoded)."""
    datasets: list[Dataset] = []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise _fail(series_uid, UNREADABLE, f"{path.name}: {type(exc).__name__}") from exc
        _parse_all(ds, series_uid, path.name)
        datasets.append(ds)
    return datasets


def _parse_all(ds: Dataset, series_uid: str, name: str) -> None:
    """pydicom parses values lazily: parse every element now, so a wrong VR or length is a named reason
    here and not a surprise later. The message names the tag, never the value (it could be PHI)."""
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
            if element.VR == "SQ":
                for item in element.value:
                    _parse_all(item, series_uid, name)
        except InvalidSeriesError:
            raise
        except Exception as exc:  # pydicom raises many types for malformed values
            raise _fail(series_uid, UNREADABLE,
                        f"{name}: element {tag} cannot be parsed ({type(exc).__name__})") from exc


def check_instances(datasets: list[Dataset], series_uid: str) -> None:
    for ds in datasets:
        if (refusal := instance_refusal(ds)) is not None:
            raise _fail(series_uid, *refusal)
        if ds.get("SeriesInstanceUID") != series_uid:
            raise _fail(series_uid, MIXED_SERIES, f"instance {ds.get('SOPInstanceUID')} belongs to another series")


def assemble(datasets: list[Dataset], series_uid: str, cfg: SeriesSection, *,
             spacing_range_mm: tuple[float, float]) -> tuple[CTVolume, SourceSeries]:
    """Build the HU volume, sorted along the slice normal, after every geometry check."""
    check_instances(datasets, series_uid)
    _check_count(len(datasets), series_uid, cfg)
    iop, normal = _orientation(datasets, series_uid)
    frame_uid = _frame_of_reference(datasets, series_uid)
    rows, cols = _matrix(datasets, series_uid)
    pixel_spacing = _pixel_spacing(datasets, series_uid)
    datasets, positions, median = _stack(datasets, normal, series_uid, cfg, spacing_range_mm)
    hu = _hu_volume(datasets, rows, cols, series_uid)
    source = SourceSeries(
        series_uid=series_uid,
        header=_header_without_pixels(datasets[0]),
        sop_class_uids=tuple(str(ds.SOPClassUID) for ds in datasets),
        sop_uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
        first_position_mm=(float(positions[0][0]), float(positions[0][1]), float(positions[0][2])),
        orientation=(float(iop[0]), float(iop[1]), float(iop[2]), float(iop[3]), float(iop[4]), float(iop[5])),
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        spacing_mm=median,
        pixel_spacing_mm=(float(pixel_spacing[0]), float(pixel_spacing[1])),
        frame_of_reference_uid=frame_uid,
        numbered_descending=_numbered_descending(datasets),
    )
    volume = CTVolume(hu, (median, float(pixel_spacing[0]), float(pixel_spacing[1])),
                      slice_thickness_mm=_slice_thickness(datasets[0]))
    return volume, source


def _check_count(n: int, series_uid: str, cfg: SeriesSection) -> None:
    if n < cfg.min_slices:
        raise _fail(series_uid, TOO_FEW_SLICES, f"{n} slice(s); at least {cfg.min_slices} are needed")
    if n > cfg.max_slices:
        raise _fail(series_uid, TOO_MANY_SLICES, f"{n} slices; at most {cfg.max_slices} are accepted")


def _orientation(datasets: list[Dataset], series_uid: str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """One orthonormal, axial ImageOrientationPatient for all slices: (iop, slice normal)."""
    iop = _floats(datasets[0], "ImageOrientationPatient", 6, series_uid)
    for ds in datasets[1:]:
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, series_uid), iop, atol=1e-4):
            raise _fail(series_uid, MIXED_ORIENTATION,
                        f"instance {ds.SOPInstanceUID} has another ImageOrientationPatient")
    row, col = iop[:3], iop[3:]
    if not (math.isclose(np.linalg.norm(row), 1, abs_tol=1e-3) and math.isclose(np.linalg.norm(col), 1, abs_tol=1e-3)
            and abs(float(row @ col)) < 1e-3):
        raise _fail(series_uid, BAD_GEOMETRY, "ImageOrientationPatient is not two orthonormal vectors")
    normal = np.cross(row, col)
    if abs(normal[2]) < math.cos(math.radians(45)):
        raise _fail(series_uid, NOT_AXIAL, f"slice normal {np.round(normal, 3).tolist()} is not axial")
    return iop, normal


def _frame_of_reference(datasets: list[Dataset], series_uid: str) -> str:
    frames = {str(ds.get("FrameOfReferenceUID", "")) for ds in datasets}
    if len(frames) != 1:
        raise _fail(series_uid, MIXED_FRAME_OF_REFERENCE, f"{len(frames)} frames of reference in one series")
    (frame_uid,) = frames
    if not frame_uid:
        raise _fail(series_uid, MISSING_ATTRIBUTE, "FrameOfReferenceUID is missing")
    return frame_uid


def _matrix(datasets: list[Dataset], series_uid: str) -> tuple[int, int]:
    matrices = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for ds in datasets}
    if len(matrices) != 1:
        raise _fail(series_uid, MIXED_MATRIX, f"rows x columns differ: {sorted(matrices)}")
    ((rows, cols),) = matrices
    if not (1 <= rows <= MAX_MATRIX and 1 <= cols <= MAX_MATRIX):
        raise _fail(series_uid, ABSURD_DIMENSIONS, f"{rows} x {cols} pixels is outside 1..{MAX_MATRIX}")
    return rows, cols


def _pixel_spacing(datasets: list[Dataset], series_uid: str) -> npt.NDArray[np.float64]:
    pixel_spacing = _floats(datasets[0], "PixelSpacing", 2, series_uid)
    for ds in datasets[1:]:
        if not np.allclose(_floats(ds, "PixelSpacing", 2, series_uid), pixel_spacing, rtol=1e-4):
            raise _fail(series_uid, MIXED_PIXEL_SPACING, f"instance {ds.SOPInstanceUID} has another PixelSpacing")
    if np.any(pixel_spacing <= 0):
        raise _fail(series_uid, BAD_GEOMETRY, f"PixelSpacing {pixel_spacing.tolist()} is not positive")
    return pixel_spacing


def _stack(datasets: list[Dataset], normal: npt.NDArray[np.float64], series_uid: str, cfg: SeriesSection,
           spacing_range_mm: tuple[float, float]) -> tuple[list[Dataset], npt.NDArray[np.float64], float]:
    """Sort along the normal and check the stack: (sorted datasets, their positions, median spacing)."""
    positions = np.stack([_floats(ds, "ImagePositionPatient", 3, series_uid) for ds in datasets])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    datasets = [datasets[i] for i in order]
    positions, along = positions[order], along[order]
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        i = int(np.argmin(gaps))
        raise _fail(series_uid, DUPLICATE_POSITION, f"slices {i} and {i + 1} (in position order) coincide")
    median = float(np.median(gaps))
    i = int(np.argmax(np.abs(gaps - median)))
    if abs(gaps[i] - median) > cfg.spacing_tolerance * median:
        raise _fail(series_uid, IRREGULAR_SPACING,
                    f"gap {gaps[i]:.3f} mm between slices {i} and {i + 1}, median {median:.3f} mm")
    stack_dir = positions[-1] - positions[0]
    stack_dir /= np.linalg.norm(stack_dir)
    tilt_deg = math.degrees(math.acos(min(1.0, abs(float(stack_dir @ normal)))))
    if tilt_deg > cfg.max_tilt_deg:
        raise _fail(series_uid, GANTRY_TILT,
                    f"slices are stacked {tilt_deg:.2f} degrees off their normal (gantry tilt)")
    lo, hi = spacing_range_mm
    if not lo <= median <= hi:
        raise _fail(series_uid, SPACING_OUT_OF_RANGE, f"slice spacing {median:.3f} mm is outside {lo}-{hi} mm, the "
                    "range of synth.backend (synth.min/max_input_spacing_mm)")
    return datasets, positions, median


def _hu_volume(datasets: list[Dataset], rows: int, cols: int, series_uid: str) -> npt.NDArray[np.float32]:
    hu = np.empty((len(datasets), rows, cols), dtype=np.float32)
    for k, ds in enumerate(datasets):
        hu[k] = _hu_slice(ds, rows, cols, series_uid)
    return hu


def _hu_slice(ds: Dataset, rows: int, cols: int, series_uid: str) -> npt.NDArray[np.float32]:
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types; the reason is what matters
        raise _fail(series_uid, UNDECODABLE_PIXELS,
                    f"instance {ds.SOPInstanceUID} ({ds.file_meta.get('TransferSyntaxUID', '?')}): "
                    f"{type(exc).__name__}") from exc
    if pixels.shape != (rows, cols):
        raise _fail(series_uid, UNDECODABLE_PIXELS,
                    f"instance {ds.SOPInstanceUID} decodes to {pixels.shape}, not one {rows}x{cols} frame")
    try:
        slope = _number_or(ds.get("RescaleSlope"), 1.0)
        intercept = _number_or(ds.get("RescaleIntercept"), 0.0)
    except (TypeError, ValueError) as exc:
        raise _fail(series_uid, UNDECODABLE_PIXELS, f"instance {ds.SOPInstanceUID}: RescaleSlope or "
                    "RescaleIntercept is not a number, so its pixels cannot become HU") from exc
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        raise _fail(series_uid, UNDECODABLE_PIXELS,
                    f"instance {ds.SOPInstanceUID}: rescale slope {slope} / intercept {intercept} is unusable")
    result: npt.NDArray[np.float32] = pixels.astype(np.float32) * slope + intercept
    return result


def _numbered_descending(datasets: list[Dataset]) -> bool:
    """Numbered from the far end only when InstanceNumber falls strictly along the normal."""
    numbers = [ds.get("InstanceNumber") for ds in datasets]
    return None not in numbers and all(int(a) > int(b) for a, b in itertools.pairwise(numbers))


def _header_without_pixels(first: Dataset) -> Dataset:
    header = first.copy()
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            del header[keyword]
    return header


def _slice_thickness(ds: Dataset) -> float:
    """SliceThickness when it is a usable positive number, else 0.0 (unknown: the interval is used)."""
    try:
        thickness = _number_or(ds.get("SliceThickness"), 0.0)
    except (TypeError, ValueError):
        return 0.0
    return thickness if math.isfinite(thickness) and 0 < thickness <= 50 else 0.0
