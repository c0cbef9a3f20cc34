from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.assemble import assemble
from dicom_node.config import SeriesSection
from dicom_node.errors import InvalidSeriesError
from tests.support.ct_series import make_ct_series, position_mm, sorted_by_position

CFG = SeriesSection()
SPACING_MM = (4.0, 6.0)       # the accepted range now comes from the backend (synth.spacing_range_mm)


def roundtrip(datasets: list[Dataset]) -> list[Dataset]:
    """As the node sees them: written to bytes and read back."""
    out: list[Dataset] = []
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        buf.seek(0)
        out.append(pydicom.dcmread(buf))
    return out


def run(datasets: list[Dataset], cfg: SeriesSection = CFG):  # type: ignore[no-untyped-def]
    datasets = roundtrip(datasets)
    return assemble(datasets, str(datasets[0].SeriesInstanceUID), cfg, spacing_range_mm=SPACING_MM)


def test_shuffled_series_is_sorted_along_normal_with_rescale_applied() -> None:
    series = make_ct_series(slices=7, shuffled=True, rescale_slope=2.0, rescale_intercept=-2048.0)
    volume, source = run(series)
    ordered = sorted_by_position(series)
    assert volume.shape == (7, 64, 64)
    assert volume.spacing_mm == pytest.approx((5.0, 0.7, 0.7))
    assert source.sop_uids == tuple(ds.SOPInstanceUID for ds in ordered)
    assert source.first_position_mm == pytest.approx(tuple(position_mm(ordered[0])))
    expected = ordered[3].pixel_array.astype(np.float32) * 2.0 - 2048.0
    np.testing.assert_array_equal(volume.hu[3], expected)
    assert "PixelData" not in source.header


def test_descending_numbering_is_recorded() -> None:
    _, source = run(make_ct_series(slices=4, descending=True))
    assert source.numbered_descending
    _, source = run(make_ct_series(slices=4))
    assert not source.numbered_descending


@pytest.mark.parametrize(
    ("kwargs", "reason", "message"),
    [
        ({"slices": 1}, "single_slice", r"1 slice\(s\); at least 2"),
        ({"duplicate_position": True, "defect_index": 3}, "duplicate_position", r"coincide"),
        ({"missing_slice": True, "defect_index": 4}, "irregular_spacing", r"gap 10.000 mm .* median 5.000 mm"),
        ({"gantry_tilt_deg": 15.0}, "gantry_tilt", r"15.00 degrees off their normal"),
        ({"orientation": "coronal"}, "not_axial", r"is not axial"),
        ({"mixed_size": True, "defect_index": 2}, "mixed_matrix", r"rows x columns differ"),
        ({"two_frames_of_reference": True, "defect_index": 2}, "mixed_frame_of_reference", r"2 frames"),
        ({"modality": "MR"}, "not_ct", r"modality is MR"),
        ({"spacing_mm": 2.5}, "spacing_out_of_range", r"2.500 mm is outside 4.0-6.0 mm"),
    ],
)
def test_defects_are_rejected_with_named_reasons(kwargs: dict[str, object], reason: str, message: str) -> None:
    series = make_ct_series(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidSeriesError, match=message) as info:
        run(series)
    assert info.value.reason == reason
    assert info.value.series_uid == series[0].SeriesInstanceUID


def test_mixed_orientation_missing_position_and_localizer() -> None:
    series = make_ct_series(slices=4)
    series[2].ImageOrientationPatient = [1, 0, 0, 0, 0.9998, 0.0175]
    with pytest.raises(InvalidSeriesError, match=r"another ImageOrientationPatient") as info:
        run(series)
    assert info.value.reason == "mixed_orientation"

    series = make_ct_series(slices=4)
    del series[1].ImagePositionPatient
    with pytest.raises(InvalidSeriesError, match=r"ImagePositionPatient of instance .* is missing"):
        run(series)

    series = make_ct_series(slices=4)
    series[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    with pytest.raises(InvalidSeriesError, match=r"LOCALIZER") as info:
        run(series)
    assert info.value.reason == "localizer"


def test_other_series_instance_and_too_many_slices() -> None:
    series = make_ct_series(slices=4)
    series[1].SeriesInstanceUID = "1.2.3.4.5"
    with pytest.raises(InvalidSeriesError, match=r"belongs to another series"):
        run(series)
    with pytest.raises(InvalidSeriesError, match=r"5 slices; at most 4") as info:
        run(make_ct_series(slices=5), SeriesSection(max_slices=4))
    assert info.value.reason == "too_many_slices"


def test_undecodable_pixels_is_a_named_reason() -> None:
    series = roundtrip(make_ct_series(slices=3))
    series[1].PixelData = b"\x00" * 10
    with pytest.raises(InvalidSeriesError, match=r"instance .*: ValueError") as info:
        assemble(series, str(series[0].SeriesInstanceUID), CFG, spacing_range_mm=SPACING_MM)
    assert info.value.reason == "undecodable_pixels"


def test_wrong_length_value_and_bad_rescale_are_named() -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    series = roundtrip(make_ct_series(slices=3))
    raw = series[1]._dict[Tag(0x0020, 0x0032)]
    series[1]._dict[Tag(0x0020, 0x0032)] = RawDataElement(raw.tag, "UL", 18, b"-5.25\\-5.25\\-12.5 ", 0, False, True)
    from dicom_node.assemble import _parse_all
    with pytest.raises(InvalidSeriesError, match=r"element \(0020,0032\) cannot be parsed") as info:
        _parse_all(series[1], "1.2.3", "x.dcm")
    assert info.value.reason == "unreadable_file"

    series = roundtrip(make_ct_series(slices=3))
    series[2].RescaleSlope = "0"
    with pytest.raises(InvalidSeriesError, match=r"rescale slope 0.0 / intercept -1024.0 is unusable") as info:
        assemble(series, str(series[0].SeriesInstanceUID), CFG, spacing_range_mm=SPACING_MM)
    assert info.value.reason == "undecodable_pixels"


@pytest.mark.parametrize(("value", "expected", "effective"),
                         [("5.0", 5.0, 5.0), ("2.5", 2.5, 2.5), (None, 0.0, 5.0), ("0", 0.0, 5.0), ("999", 0.0, 5.0)])
def test_slice_thickness_travels_with_the_volume_and_falls_back_to_the_interval(
        value: str | None, expected: float, effective: float) -> None:
    series = make_ct_series(slices=4)
    for ds in series:
        if value is None:
            del ds.SliceThickness
        else:
            ds.SliceThickness = value
    volume, _ = run(series)
    assert volume.slice_thickness_mm == expected
    assert volume.thickness_mm == effective                      # the 5-mm interval when unknown or absurd
