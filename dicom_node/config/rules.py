"""[[rules]]: which series go where, and made by which backend (the first rule whose match holds wins).

```toml
[[rules]]
name = "sharp-kernel-to-cad"
match = { ConvolutionKernel = "^B$", SliceThickness = [4.0, 6.0], CallingAE = "^CT0[1-3]$" }
backend = "cthnet"                 # optional: overrides [synth] backend for this rule
destinations = ["cad", "pacs"]     # names from [[destinations]], [[dicomweb_destinations]], [[folder_destinations]]
```

`match` maps a DICOM keyword (of the series' first instance) or `CallingAE` to a regular expression
(text, searched with Python's `re.search`) or a `[min, max]` range (numbers, inclusive). Parsing
checks every key against pydicom's data dictionary, compiles every expression and checks every
range, so a mistake is a config error naming the file, the rule and the key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import datadict

from dicom_node.config.checks import NAME_RE
from dicom_node.errors import ConfigError
from synth.config import BACKENDS

CALLING_AE = "CallingAE"
NUMERIC_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
UNMATCHABLE_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})
RULE_KEYS = frozenset({"name", "match", "backend", "destinations"})
MAX_RULES = 1000


@dataclass(frozen=True, slots=True)
class Condition:
    """One entry of a rule's `match`: `regex` for text, or `low`..`high` (inclusive) for numbers."""

    keyword: str
    regex: str = ""
    low: float | None = None
    high: float | None = None

    @property
    def is_range(self) -> bool:
        return self.low is not None

    def toml_value(self) -> str | list[float]:
        if self.low is not None and self.high is not None:
            return [self.low, self.high]
        return self.regex


@dataclass(frozen=True, slots=True)
class RuleSection:
    name: str
    destinations: tuple[str, ...]
    match: tuple[Condition, ...] = ()
    backend: str = ""                  # empty: [synth] backend

    def as_toml(self) -> dict[str, Any]:
        """The rule as it is written in the file (for check-config)."""
        return {"name": self.name, "match": {c.keyword: c.toml_value() for c in self.match},
                "backend": self.backend, "destinations": list(self.destinations)}


def keyword_vr(keyword: str) -> str | None:
    """The VR of a DICOM keyword in pydicom's data dictionary, or None when it is not a keyword."""
    tag = datadict.tag_for_keyword(keyword)
    if tag is None:
        return None
    return str(datadict.dictionary_VR(tag))


def _condition(keyword: Any, value: Any, where: str) -> Condition:
    if not isinstance(keyword, str):
        raise ConfigError(f"{where}: a match key must be a DICOM keyword or {CALLING_AE}")
    at = f"{where}.{keyword}"
    vr = "AE" if keyword == CALLING_AE else keyword_vr(keyword)
    if vr is None:
        raise ConfigError(f"{at}: unknown DICOM keyword {keyword!r} (keywords are as in pydicom's data "
                          f"dictionary, e.g. ConvolutionKernel, SliceThickness; or {CALLING_AE})")
    if vr in UNMATCHABLE_VRS:
        raise ConfigError(f"{at}: {keyword} has VR {vr}; rules match text and number elements only")
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(f"{at}: bad regular expression {value!r}: {exc}") from None
        return Condition(keyword, regex=value)
    if isinstance(value, list):
        if vr not in NUMERIC_VRS:
            raise ConfigError(f"{at}: bad range: {keyword} has VR {vr}, not a number; match it with a "
                              "regular expression")
        if len(value) != 2 or not all(type(v) in (int, float) for v in value):
            raise ConfigError(f"{at}: bad range {value!r}: expected [min, max], two numbers")
        low, high = float(value[0]), float(value[1])
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigError(f"{at}: bad range {value!r}: both ends must be finite numbers")
        if low > high:
            raise ConfigError(f"{at}: bad range {value!r}: min is above max")
        return Condition(keyword, low=low, high=high)
    raise ConfigError(f"{at}: expected a regular expression (string) or a [min, max] range, got {value!r}")


def parse_rule(raw: Any, where: str, destination_names: Sequence[str]) -> RuleSection:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    if unknown := sorted(raw.keys() - RULE_KEYS):
        raise ConfigError(f"{where}: unknown option(s) {unknown}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"{where}.name: a rule needs a name of 1-64 of A-Z a-z 0-9 _ . -, got {name!r}")
    where = f"{where} ({name})"
    match = raw.get("match", {})
    if not isinstance(match, dict):
        raise ConfigError(f"{where}.match: expected a table such as {{ SliceThickness = [4.0, 6.0] }}, "
                          f"got {match!r}")
    conditions = tuple(_condition(k, v, f"{where}.match") for k, v in match.items())
    backend = raw.get("backend", "")
    if not isinstance(backend, str) or (backend and backend not in BACKENDS):
        raise ConfigError(f"{where}.backend: must be one of {BACKENDS} (or absent: [synth] backend), "
                          f"got {backend!r}")
    dests = raw.get("destinations")
    if not isinstance(dests, list) or not dests or not all(isinstance(d, str) for d in dests):
        raise ConfigError(f"{where}.destinations: expected a non-empty list of destination names, got {dests!r}")
    for dest in dests:
        if dest not in destination_names:
            raise ConfigError(f"{where}.destinations: unknown destination {dest!r}; configured: "
                              f"{sorted(destination_names)}")
    if len(set(dests)) != len(dests):
        raise ConfigError(f"{where}.destinations: a destination is listed twice: {dests!r}")
    return RuleSection(name=name, destinations=tuple(dests), match=conditions, backend=backend)


def parse_rules(raw: Any, source: str, destination_names: Sequence[str]) -> tuple[RuleSection, ...]:
    """The [[rules]] array, in order; `destination_names` are every configured destination's names."""
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: rules must be an array of tables ([[rules]])")
    if len(raw) > MAX_RULES:
        raise ConfigError(f"{source}: rules: at most {MAX_RULES} rules, got {len(raw)}")
    rules = tuple(parse_rule(r, f"{source}: rules[{i}]", destination_names) for i, r in enumerate(raw))
    names = [r.name for r in rules]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"{source}: rules: rule names must be unique, repeated: {dupes}")
    return rules
