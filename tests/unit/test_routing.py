"""Routing rules: the first rule that holds wins; each miss says which condition failed; no patient data."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicom_node.config import parse_config
from dicom_node.routing import REDACTED, condition_failure, is_patient_data, route
from tests.support.ct_series import make_ct_series

DESTS: dict[str, Any] = {"folder_destinations": [{"name": "a", "path": "a"}, {"name": "b", "path": "b"}]}


def rules(*raw: dict[str, Any]) -> Any:
    return parse_config({**DESTS, "rules": list(raw)}).rules


def header(**values: Any) -> Dataset:
    ds = make_ct_series(slices=2, rows=8, cols=8)[0]
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def test_first_matching_rule_wins_and_earlier_misses_say_why() -> None:
    rs = rules({"name": "sharp", "match": {"ConvolutionKernel": "^B$", "SliceThickness": [4.0, 6.0]},
                "destinations": ["a"]},
               {"name": "thick", "match": {"SliceThickness": [4.0, 6.0]}, "destinations": ["b"]},
               {"name": "all", "destinations": ["a", "b"]})
    result = route(rs, header(ConvolutionKernel="B30f", SliceThickness="5.0"), "CT01")
    assert result.rule is not None and result.rule.name == "thick"
    assert [(m.rule, m.failed) for m in result.misses] == [
        ("sharp", ("ConvolutionKernel 'B30f' does not match '^B$'",))]
    assert route(rs, header(ConvolutionKernel="B", SliceThickness="5"), "CT01").rule.name == "sharp"  # type: ignore[union-attr]
    thin = route(rs, header(ConvolutionKernel="B", SliceThickness="1.0"), "CT01")
    assert thin.rule is not None and thin.rule.name == "all"
    assert thin.misses[0].failed == ("SliceThickness '1.0' not in [4, 6]",)


def test_ranges_are_inclusive_and_need_numbers() -> None:
    (rule,) = rules({"name": "r", "match": {"SliceThickness": [4.0, 6.0]}, "destinations": ["a"]})
    cond = rule.match[0]
    assert condition_failure(cond, header(SliceThickness="4.0"), None) is None
    assert condition_failure(cond, header(SliceThickness="6"), None) is None
    assert condition_failure(cond, header(SliceThickness="6.01"), None) == "SliceThickness '6.01' not in [4, 6]"
    assert condition_failure(cond, header(SliceThickness=""), None) == \
        "SliceThickness '' is not a number, wanted [4, 6]"
    ds = header()
    del ds.SliceThickness
    assert condition_failure(cond, ds, None) == "SliceThickness absent"


def test_multi_valued_elements_match_as_dicom_writes_them() -> None:
    rs = rules({"name": "orig", "match": {"ImageType": r"^ORIGINAL\\PRIMARY"}, "destinations": ["a"]},
               {"name": "px", "match": {"PixelSpacing": [0.5, 0.8]}, "destinations": ["b"]})
    assert route(rs, header(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]), None).rule.name == "orig"  # type: ignore[union-attr]
    derived = route(rs, header(ImageType=["DERIVED", "SECONDARY"], PixelSpacing=[0.7, 0.9]), None)
    assert derived.rule is None
    assert derived.misses[1].failed == (r"PixelSpacing '0.7\\0.9' not in [0.5, 0.8]",)


def test_calling_ae_is_matched_and_unknown_without_one() -> None:
    (rule,) = rules({"name": "ct", "match": {"CallingAE": "^CT0[1-3]$"}, "destinations": ["a"]})
    assert route([rule], header(), "CT02").rule is rule
    assert route([rule], header(), "CT02  ").rule is rule          # AE titles are space-padded
    assert route([rule], header(), "CT04").misses[0].failed == ("CallingAE 'CT04' does not match '^CT0[1-3]$'",)
    assert route([rule], header(), None).misses[0].failed == ("CallingAE unknown",)


def test_an_empty_match_holds_for_every_series() -> None:
    (rule,) = rules({"name": "all", "destinations": ["a"]})
    assert route([rule], Dataset(), None).rule is rule


def test_no_rule_says_why_for_every_rule() -> None:
    rs = rules({"name": "r1", "match": {"Modality": "^MR$"}, "destinations": ["a"]},
               {"name": "r2", "match": {"BodyPartExamined": "HEAD", "SeriesNumber": [100, 200]},
                "destinations": ["b"]})
    result = route(rs, header(BodyPartExamined="CHEST", SeriesNumber=2), None)
    assert result.rule is None
    assert result.no_rule_detail() == ("r1: Modality 'CT' does not match '^MR$'; r2: BodyPartExamined 'CHEST' does "
                                       "not match 'HEAD', SeriesNumber '2' not in [100, 200]")


@pytest.mark.parametrize("keyword", ["PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                                     "ReferringPhysicianName", "AccessionNumber"])
def test_patient_data_is_never_quoted(keyword: str) -> None:
    assert is_patient_data(keyword)
    (rule,) = rules({"name": "p", "match": {keyword: "^NOMATCH$"}, "destinations": ["a"]})
    ds = header(PatientName="DOE^JANE", PatientID="ID12345", PatientBirthDate="19700101", PatientSex="F",
                ReferringPhysicianName="WHO^DR", AccessionNumber="ACC999")
    (failed,) = route([rule], ds, None).misses[0].failed
    assert failed == f"{keyword} {REDACTED} does not match '^NOMATCH$'"
    for secret in ("DOE", "ID12345", "19700101", "WHO", "ACC999"):
        assert secret not in failed


def test_series_level_text_is_not_patient_data() -> None:
    for keyword in ("SeriesDescription", "ConvolutionKernel", "SliceThickness", "Modality", "CallingAE"):
        assert not is_patient_data(keyword)
