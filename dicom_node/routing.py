"""Routing rules: which rule a series falls under, and why each rule before it did not hold.

The first rule whose every condition holds wins. A condition is on a DICOM keyword of the series'
first instance (the header `assemble` keeps: the first slice in volume order) or on `CallingAE` (the
calling AE title of the association that brought the series' first instance). A text condition is
`re.search` on the value (several values joined with a backslash, as DICOM writes them); a range
holds when every value is a number within [min, max]. An absent element fails every condition.

What this module says about a value never quotes patient data: values of patient-module keywords
(group 0010), person names and accession numbers are written "<redacted>".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import datadict
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.config import CALLING_AE, Condition, RuleSection

REDACTED = "<redacted>"
PATIENT_GROUP = 0x0010
IDENTIFYING_KEYWORDS = frozenset({"AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress",
                                  "OtherPatientIDsSequence", "IssuerOfPatientID"})
VALUE_SHOWN_MAX = 64
NO_RULE = "no_rule"                 # the series state (and reason) when rules exist and none holds


@dataclass(frozen=True, slots=True)
class RuleMiss:
    rule: str
    failed: tuple[str, ...]         # every condition of the rule that did not hold, in words


@dataclass(frozen=True, slots=True)
class Routing:
    """The outcome of the rules for one series: the winning rule (None: no rule holds) and the misses
    of the rules before it."""

    rule: RuleSection | None
    misses: tuple[RuleMiss, ...]

    def no_rule_detail(self) -> str:
        """Why no rule holds, one clause per rule (the detail of a `no_rule` series)."""
        return "; ".join(f"{m.rule}: {', '.join(m.failed)}" for m in self.misses)


def is_patient_data(keyword: str) -> bool:
    """True for keywords whose values identify a patient (never printed, logged or stored by rules)."""
    if keyword == CALLING_AE:
        return False
    tag = datadict.tag_for_keyword(keyword)
    if tag is None:
        return False
    return (tag >> 16) == PATIENT_GROUP or datadict.dictionary_VR(tag) == "PN" or keyword in IDENTIFYING_KEYWORDS


def _shown(keyword: str, text: str) -> str:
    if is_patient_data(keyword):
        return REDACTED
    return repr(text if len(text) <= VALUE_SHOWN_MAX else text[:VALUE_SHOWN_MAX] + "...")


def _values(value: object) -> list[object]:
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _text(value: object) -> str:
    return "\\".join("" if v is None else str(v) for v in _values(value))


def _numbers(value: object) -> list[float] | None:
    out: list[float] = []
    for v in _values(value):
        if v is None or v == "":
            return None
        try:
            number = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        if not math.isfinite(number):
            return None
        out.append(number)
    return out or None


def _range_text(cond: Condition) -> str:
    return f"[{cond.low:g}, {cond.high:g}]"


def condition_failure(cond: Condition, header: Dataset, calling_ae: str | None) -> str | None:
    """None when the condition holds; else what failed, in words (values of patient data redacted)."""
    key = cond.keyword
    if key == CALLING_AE:
        if calling_ae is None:
            return f"{key} unknown"
        value: object = calling_ae.strip()
    else:
        if key not in header:
            return f"{key} absent"
        value = header[key].value
    if cond.is_range:
        assert cond.low is not None and cond.high is not None
        numbers = _numbers(value)
        if numbers is None:
            return f"{key} {_shown(key, _text(value))} is not a number, wanted {_range_text(cond)}"
        if all(cond.low <= n <= cond.high for n in numbers):
            return None
        return f"{key} {_shown(key, _text(value))} not in {_range_text(cond)}"
    text = _text(value)
    if re.search(cond.regex, text):
        return None
    return f"{key} {_shown(key, text)} does not match {cond.regex!r}"


def rule_failures(rule: RuleSection, header: Dataset, calling_ae: str | None) -> tuple[str, ...]:
    """Every condition of `rule` that does not hold (empty: the rule holds)."""
    failures = (condition_failure(cond, header, calling_ae) for cond in rule.match)
    return tuple(f for f in failures if f is not None)


def route(rules: Sequence[RuleSection], header: Dataset, calling_ae: str | None) -> Routing:
    """The first rule that holds for a series with this first-instance header and calling AE."""
    misses: list[RuleMiss] = []
    for rule in rules:
        failed = rule_failures(rule, header, calling_ae)
        if not failed:
            return Routing(rule, tuple(misses))
        misses.append(RuleMiss(rule.name, failed))
    return Routing(None, tuple(misses))
