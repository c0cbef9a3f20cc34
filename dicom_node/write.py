"""CTVolume + SourceSeries → a derived CT Image Storage series on disk, one file per thin slice.

Geometry follows the source exactly (orientation, pixel spacing, matrix, frame of reference); UIDs are
deterministic (source series UID + synthesizer identity), so processing again gives the same UIDs.
Provenance (software, backend, weights checksum) is in every instance, and so are the caller's notes
(the self-check line; why interpolation stands in, when it does) in ImageComments and
DerivationDescription.
"""

from __future__ import annotations

import datetime
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

import dicom_node
from dicom_node.assemble import SourceSeries
from dicom_node.provenance import DERIVATION_PREFIX, MANUFACTURER, MODEL_NAME
from dicom_node.spool import Spool, atomic_write
from dicom_node.uids import derived_uid
from synth.seam import SynthIdentity
from synth.volume import CTVolume

logger = logging.getLogger(__name__)

# Copied from the source when present: patient, study and acquisition context. Nothing is invented.
COPIED = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "PatientIdentityRemoved",
    "DeidentificationMethod", "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "StudyID", "AccessionNumber", "StudyDescription", "BodyPartExamined", "PatientPosition",
    "FrameOfReferenceUID", "PositionReferenceIndicator", "AcquisitionNumber", "AcquisitionDate",
    "AcquisitionTime", "KVP", "ConvolutionKernel", "ReconstructionDiameter", "ContrastBolusAgent",
    "ContrastBolusRoute", "LossyImageCompression", "LossyImageCompressionRatio",
    "LossyImageCompressionMethod", "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation",
)
TYPE2_DEFAULTS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "PositionReferenceIndicator",
    "AcquisitionNumber", "KVP",
)
INT16_MIN, INT16_MAX = -32768, 32767     # what 16-bit signed pixels can hold (not a HU window)
@dataclass(frozen=True, slots=True)
class DerivedSeries:
    series_uid: str
    directory: Path
    sop_uids: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.sop_uids)


def derived_series_uid(source_series_uid: str, identity: SynthIdentity, uid_root: str) -> str:
    return derived_uid(uid_root, "series", source_series_uid, identity.key)


def _code_item(code: object) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value  # type: ignore[attr-defined]
    item.CodingSchemeDesignator = code.scheme_designator  # type: ignore[attr-defined]
    item.CodeMeaning = code.meaning  # type: ignore[attr-defined]
    return item


def describe(identity: SynthIdentity, source_spacing_mm: float, factor: int, notes: tuple[str, ...] = ()) -> str:
    thin = source_spacing_mm / factor
    what = f"{identity.name}, {identity.backend} {identity.version}"
    if identity.weights_sha256:
        what += f", weights sha256 {identity.weights_sha256}"
    caution = f"; {identity.caution}" if identity.caution else ""
    remarks = "".join(f"; {note}" for note in notes)
    return ascii_text(f"{DERIVATION_PREFIX} {what}; {source_spacing_mm:.2f} mm -> {thin:.2f} mm slices{caution}"
                      f"{remarks}")


def ascii_text(text: str) -> str:
    """Text we author goes into series whose character set we copy, possibly the default (ASCII)."""
    return text.encode("ascii", "replace").decode("ascii")


def series_description(identity: SynthIdentity, thin_mm: float, source_description: str) -> str:
    label = f"SYNTH {thin_mm:.1f}mm {identity.name.split()[0]}" if identity.is_model else \
        f"INTERP {thin_mm:.1f}mm not AI"
    if identity.caution:
        label += " NOT CLINICAL"
    return f"{label} {source_description}".strip()[:64]


def _equipment(identity: SynthIdentity, description: str, when: datetime.datetime) -> Dataset:
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = MODEL_NAME
    versions = [f"dicom-node {dicom_node.__version__}", f"{identity.backend} {identity.version}"[:64]]
    if identity.weights_sha256:
        versions.append(identity.weights_sha256[:64])
    item.SoftwareVersions = versions
    item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = description[:1024]
    item.PurposeOfReferenceCodeSequence = Sequence([_code_item(codes.DCM.SynthesizingEquipment)])
    return item


def _base_dataset(source: SourceSeries, identity: SynthIdentity, factor: int, series_uid: str,
                  volume: CTVolume, when: datetime.datetime, series_number_offset: int,
                  notes: tuple[str, ...]) -> Dataset:
    src = source.header
    ds = Dataset()
    for keyword in COPIED:
        if keyword in src:
            ds[keyword] = src[keyword]
    for keyword in TYPE2_DEFAULTS:
        if keyword not in ds:
            setattr(ds, keyword, "" if keyword != "AcquisitionNumber" else None)
    thin_mm = source.spacing_mm / factor
    description = describe(identity, source.spacing_mm, factor, notes)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = source.frame_of_reference_uid
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    src_number = src.get("SeriesNumber")
    ds.SeriesNumber = (int(src_number) if src_number not in (None, "") else 0) + series_number_offset
    ds.SeriesDescription = series_description(identity, thin_mm, str(src.get("SeriesDescription", "")))
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = f"dicom-node {dicom_node.__version__}"
    ds.DerivationDescription = description[:1024]
    ds.DerivationCodeSequence = Sequence([_code_item(codes.DCM.SpatialResampling)])
    ds.ContributingEquipmentSequence = Sequence([_equipment(identity, description, when)])
    ds.ImageComments = ascii_text((f"{identity.caution}. " if identity.caution else "") + (
        f"AI-synthesized {thin_mm:.2f} mm slices ({identity.name}); not acquired data"
        if identity.is_model else
        f"Interpolated {thin_mm:.2f} mm slices ({identity.name}); not AI, not acquired data"
    ) + "".join(f". {note}" for note in notes))[:10240]
    ds.BurnedInAnnotation = "NO"
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in source.orientation]
    ds.PixelSpacing = [f"{v:.6g}" for v in source.pixel_spacing_mm]
    ds.SliceThickness = f"{thin_mm:.6g}"
    ds.SpacingBetweenSlices = f"{thin_mm:.6g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
    return ds


def _references(source: SourceSeries, indices: list[int]) -> tuple[Sequence, Sequence]:
    images, instances = [], []
    for i in indices:
        img = Dataset()
        img.ReferencedSOPClassUID = source.sop_class_uids[i]
        img.ReferencedSOPInstanceUID = source.sop_uids[i]
        img.PurposeOfReferenceCodeSequence = Sequence(
            [_code_item(codes.DCM.SourceImageForImageProcessingOperation)])
        images.append(img)
        inst = Dataset()
        inst.ReferencedSOPClassUID = source.sop_class_uids[i]
        inst.ReferencedSOPInstanceUID = source.sop_uids[i]
        instances.append(inst)
    series = Dataset()
    series.SeriesInstanceUID = source.series_uid
    series.ReferencedInstanceSequence = Sequence(instances)
    return Sequence(images), Sequence([series])


def write_derived_series(volume: CTVolume, source: SourceSeries, *, identity: SynthIdentity, factor: int,
                         spool: Spool, uid_root: str = "", series_number_offset: int = 1000,
                         notes: tuple[str, ...] = (), now: datetime.datetime | None = None) -> DerivedSeries:
    """Write one file per thin slice into the spool's derived series, replacing a previous copy.

    `notes`: human-readable lines for ImageComments and DerivationDescription (the stage passes the
    self-check line, and the fallback reason when interpolation stands in).
    """
    n_thick = len(source.sop_uids)
    n_thin = volume.shape[0]
    if n_thin != factor * (n_thick - 1) + 1:
        raise ValueError(f"volume has {n_thin} slices; {factor}x{n_thick - 1}+1 expected for {n_thick} sources")
    when = now or datetime.datetime.now()
    series_uid = derived_series_uid(source.series_uid, identity, uid_root)
    base = _base_dataset(source, identity, factor, series_uid, volume, when, series_number_offset, notes)
    pixels = np.clip(np.rint(volume.hu), INT16_MIN, INT16_MAX).astype("<i2")
    staging = spool.stage_derived(series_uid)
    try:
        sop_uids = _write_slices(staging, base, pixels, source=source, factor=factor, series_uid=series_uid,
                                 uid_root=uid_root)
        final = spool.publish_derived(series_uid, sop_uids)
    except BaseException:
        spool.discard_staged(series_uid)       # a half-written series gives its space back at once
        raise
    return DerivedSeries(series_uid, final, tuple(sop_uids))


def _write_slices(tmp: Path, base: Dataset, pixels: npt.NDArray[np.int16], *, source: SourceSeries, factor: int,
                  series_uid: str, uid_root: str) -> list[str]:
    """One file per thin slice into `tmp`; returns the SOP Instance UIDs in slice order."""
    n_thin = pixels.shape[0]
    step_mm = source.spacing_mm / factor
    first = np.array(source.first_position_mm)
    normal = np.array(source.normal)
    sop_uids = []
    for k in range(n_thin):
        sop_uid = derived_uid(uid_root, "instance", series_uid, str(k))
        position = first + k * step_mm * normal
        ds = base.copy()
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = (n_thin - k) if source.numbered_descending else (k + 1)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.SliceLocation = f"{float(position @ normal):.4f}"
        t = k / factor
        below, above = int(np.floor(t)), int(np.ceil(t))
        ds.SourceImageSequence, ds.ReferencedSeriesSequence = _references(source, sorted({below, above}))
        ds.PixelData = pixels[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        atomic_write(tmp / f"{sop_uid}.dcm", buffer.getbuffer(), fsync=False)
        sop_uids.append(sop_uid)
    return sop_uids
