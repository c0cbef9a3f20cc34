from __future__ import annotations

import re

import pytest

from dicom_node.uids import checked_uid, derived_uid

STRICT_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def is_strict_uid(value: str) -> bool:
    """PS3.5 9.1: dotted components without leading zeros, at most 64 characters."""
    return bool(STRICT_UID.match(value)) and len(value) <= 64


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "SeriesInstanceUID is empty"),
        (None, "SeriesInstanceUID is empty"),
        ("../../etc", "is not a dotted numeric UID"),
        ("1.2/3.4", "is not a dotted numeric UID"),
        ("1.2.3 .4", "is not a dotted numeric UID"),
        ("12345", "is not a dotted numeric UID"),
        ("1." + "2" * 70, "longer than 64"),
    ],
)
def test_checked_uid_refuses_unsafe_values(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        checked_uid(value, "SeriesInstanceUID")


def test_checked_uid_accepts_real_world_uids() -> None:
    assert checked_uid("1.2.840.113619.2.55.3", "X") == "1.2.840.113619.2.55.3"
    assert checked_uid("1.2.840.10008.05\x00", "X") == "1.2.840.10008.05"  # padded, leading zero tolerated
    assert not is_strict_uid("1.2.05")


def test_derived_uids_are_deterministic_and_distinct() -> None:
    a = derived_uid("", "series", "1.2.3", "interpolation|0.1.0|")
    assert a == derived_uid("", "series", "1.2.3", "interpolation|0.1.0|")
    assert a != derived_uid("", "series", "1.2.4", "interpolation|0.1.0|")
    assert a.startswith("2.25.") and is_strict_uid(a)
    rooted = derived_uid("1.2.826.0.1.3680043.10.1", "series", "1.2.3")
    assert rooted.startswith("1.2.826.0.1.3680043.10.1.") and is_strict_uid(rooted)
