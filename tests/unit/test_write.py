from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.assemble import SourceSeries
from dicom_node.policy import instance_refusal
from dicom_node.provenance import is_own_output
from dicom_node.spool import Spool, manifest_files
from dicom_node.write import DerivedSeries, write_derived_series
from synth.interpolate import InterpolationSynthesizer
from synth.seam import SynthIdentity
from tests.support.ct_series import make_ct_series, position_mm, sorted_by_position
from tests.unit.test_assemble import run

MODEL = SynthIdentity("cthnet", "CTHNet (npj Digit Med 2024)", "0.1.0", "ab" * 32, is_model=True)


def derive(tmp_path: Path, identity: SynthIdentity | None = None, **kwargs: object
           ) -> tuple[DerivedSeries, SourceSeries, list[pydicom.Dataset]]:
    series = make_ct_series(slices=5, **kwargs)  # type: ignore[arg-type]
    volume, source = run(series)
    synth = InterpolationSynthesizer(5)
    thin = synth(volume)
    derived = write_derived_series(thin, source, identity=identity or synth.identity, factor=5,
                                   spool=Spool(tmp_path, fsync=False))
    return derived, source, [pydicom.dcmread(p) for p in manifest_files(derived.directory)]


def test_geometry_follows_the_source_exactly(tmp_path: Path) -> None:
    derived, source, out = derive(tmp_path, shuffled=True)
    assert derived.count == len(out) == 21
    first = np.array(source.first_position_mm)
    for k, ds in enumerate(out):
        np.testing.assert_allclose(position_mm(ds), first + k * 1.0 * np.array(source.normal), atol=1e-3)
        assert ds.InstanceNumber == k + 1
        assert float(ds.SliceLocation) == pytest.approx(float(position_mm(ds) @ np.array(source.normal)), abs=1e-3)
    ds = out[0]
    assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(list(source.orientation))
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.7, 0.7])
    assert (ds.Rows, ds.Columns) == (64, 64)
    assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 1.0
    assert ds.FrameOfReferenceUID == source.frame_of_reference_uid


def test_pixels_are_signed_hu_matching_the_volume(tmp_path: Path) -> None:
    series = make_ct_series(slices=5)
    _, _, out = derive(tmp_path)
    ordered = sorted_by_position(series)
    ds = out[5]                                 # lies exactly on source slice 1
    assert (ds.PixelRepresentation, ds.BitsStored, ds.RescaleSlope, ds.RescaleIntercept) == (1, 16, 1, 0)
    source_hu = ordered[1].pixel_array * float(ordered[1].RescaleSlope) + float(ordered[1].RescaleIntercept)
    np.testing.assert_allclose(ds.pixel_array, source_hu, atol=1)
    assert ds.WindowCenter == ordered[0].WindowCenter


def test_uids_are_new_and_deterministic(tmp_path: Path) -> None:
    first, source, out = derive(tmp_path / "a")
    again, _, _ = derive(tmp_path / "b")
    assert first.series_uid == again.series_uid and first.sop_uids == again.sop_uids
    assert first.series_uid != source.series_uid
    assert len(set(first.sop_uids)) == 21
    assert out[0].StudyInstanceUID == source.header.StudyInstanceUID
    other_backend, _, _ = derive(tmp_path / "c", identity=MODEL)
    assert other_backend.series_uid != first.series_uid


def test_interpolation_is_never_labelled_as_the_model(tmp_path: Path) -> None:
    _, source, out = derive(tmp_path)
    ds = out[0]
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert ds.SeriesDescription.startswith("INTERP 1.0mm not AI")
    assert "CTHNet" not in ds.SeriesDescription and "CTHNet" not in ds.DerivationDescription
    assert "not AI" in ds.ImageComments
    assert ds.SeriesNumber == source.header.SeriesNumber + 1000
    equipment = ds.ContributingEquipmentSequence[0]
    assert equipment.Manufacturer == "dicom-synth-node"
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
    assert ds.DerivationCodeSequence[0].CodeValue == "113085"


def test_model_output_records_weights_checksum(tmp_path: Path) -> None:
    _, _, out = derive(tmp_path, identity=MODEL)
    ds = out[0]
    assert ds.SeriesDescription.startswith("SYNTH 1.0mm CTHNet")
    assert "ab" * 32 in ds.DerivationDescription
    assert "ab" * 32 in list(ds.ContributingEquipmentSequence[0].SoftwareVersions)
    assert "AI-synthesized" in ds.ImageComments


def test_weights_not_for_clinical_use_say_so_in_every_instance(tmp_path: Path) -> None:
    demo = dataclasses.replace(MODEL, caution="NOT FOR CLINICAL USE: weights trained on 34 chest phantoms")
    _, _, out = derive(tmp_path / "accented", identity=dataclasses.replace(demo, name="CTHNet 256² réseau"))
    assert "CTHNet 256? r?seau" in out[0].DerivationDescription and "CTHNet 256? r?seau" in out[0].ImageComments
    _, _, out = derive(tmp_path, identity=demo)
    for ds in (out[0], out[-1]):
        assert ds.SeriesDescription.startswith("SYNTH 1.0mm CTHNet NOT CLINICAL")
        assert ds.ImageComments.startswith("NOT FOR CLINICAL USE: weights trained on 34 chest phantoms. ")
        assert ds.DerivationDescription.endswith("; NOT FOR CLINICAL USE: weights trained on 34 chest phantoms")
        assert "NOT FOR CLINICAL USE" in ds.ContributingEquipmentSequence[0].ContributionDescription


def test_references_point_at_bracketing_source_slices(tmp_path: Path) -> None:
    _, source, out = derive(tmp_path)
    refs = [r.ReferencedSOPInstanceUID for r in out[7].SourceImageSequence]
    assert refs == [source.sop_uids[1], source.sop_uids[2]]
    assert [r.ReferencedSOPInstanceUID for r in out[5].SourceImageSequence] == [source.sop_uids[1]]
    assert out[7].ReferencedSeriesSequence[0].SeriesInstanceUID == source.series_uid


def test_patient_and_study_copied_nothing_invented(tmp_path: Path) -> None:
    _, source, out = derive(tmp_path)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "AccessionNumber"):
        assert out[0].get(keyword) == source.header.get(keyword)
    assert "PatientAge" not in out[0] and "InstitutionName" not in out[0]


def test_descending_source_keeps_its_numbering_direction(tmp_path: Path) -> None:
    _, _, out = derive(tmp_path, descending=True)
    assert [ds.InstanceNumber for ds in out[:3]] == [21, 20, 19]


def test_our_output_is_recognised_even_with_a_new_description(tmp_path: Path) -> None:
    _, _, out = derive(tmp_path)
    ds = out[0]
    ds.SeriesDescription = "Chest 1mm"
    assert is_own_output(ds)
    refusal = instance_refusal(ds)
    assert refusal is not None and refusal[0] == "own_output"
    del ds.ContributingEquipmentSequence
    assert is_own_output(ds)                       # the derivation description still says so


def test_wrong_slice_count_is_refused(tmp_path: Path) -> None:
    series = make_ct_series(slices=5)
    volume, source = run(series)
    with pytest.raises(ValueError, match=r"volume has 5 slices; 5x4\+1 expected for 5 sources"):
        write_derived_series(volume, source, identity=InterpolationSynthesizer(5).identity, factor=5,
                             spool=Spool(tmp_path, fsync=False))


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
def test_output_passes_dciodvfy_and_dcentvfy(tmp_path: Path) -> None:
    derived, _, _ = derive(tmp_path, identity=MODEL)
    files = [str(p) for p in manifest_files(derived.directory)]
    for path in files[:3] + files[-1:]:
        result = subprocess.run(["dciodvfy", path], capture_output=True, text=True, timeout=60)
        assert "Error" not in result.stderr + result.stdout, result.stderr
    result = subprocess.run(["dcentvfy", *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
