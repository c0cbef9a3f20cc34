"""The DICOM the node writes, element for element, against files recorded from an earlier version.

A refactor must not change what a PACS receives: for a fixed input series and each backend, every
element of the first, a middle and the last derived instance (pixels included) equals the recorded
one, except the dates and times of creation. The recorded files were written by this test's
``--write`` mode before the refactor of issue #12; regenerate them only for a deliberate change of
the output, and say so in the commit:

    .venv/bin/python -m tests.unit.test_golden_output --write
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.assemble import assemble
from dicom_node.config import SeriesSection
from dicom_node.spool import Spool
from dicom_node.write import write_derived_series
from synth.backends import build_synthesizer
from synth.config import SynthConfig
from synth.seam import Synthesizer
from synth.selfcheck import self_check
from tests.support.ct_series import make_ct_series

GOLDEN = Path(__file__).resolve().parent / "golden"
BACKENDS = ("interpolation", "cthnet")
WHEN = datetime.datetime(2026, 12, 1, 12, 0, 0)
# Dates and times of creation: the only elements allowed to differ between two runs.
VOLATILE = {"00080012", "00080013", "00080021", "00080031", "00080023", "00080033", "0018A002"}
PICKED = (0, 5, -1)          # first, on source slice 1, last


def _synthesizer(backend: str) -> Synthesizer:
    return build_synthesizer(SynthConfig(backend=backend, device="cpu"))


def derived_json(backend: str, out_dir: Path) -> list[dict[str, Any]]:
    datasets = make_ct_series(slices=3, rows=32, cols=32, seed=4242, noise_hu=20.0)
    series_uid = str(datasets[0].SeriesInstanceUID)
    volume, source = assemble(datasets, series_uid, SeriesSection(), spacing_range_mm=(4.0, 6.0))
    synthesizer = _synthesizer(backend)
    thin = synthesizer(volume)
    spool = Spool(out_dir, fsync=False)
    notes = (self_check(volume, thin).summary(),)          # the self-check line every derived instance carries
    derived = write_derived_series(thin, source, identity=synthesizer.identity, factor=synthesizer.factor,
                                   spool=spool, uid_root="", series_number_offset=1000, notes=notes, now=WHEN)
    files = spool.derived_files(derived.series_uid)
    return [_strip(pydicom.dcmread(files[i]).to_json_dict()) for i in PICKED]


def _strip(element_dict: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag, element in element_dict.items():
        if tag in VOLATILE:
            continue
        if element.get("vr") == "SQ":
            element = {**element, "Value": [_strip(item) for item in element.get("Value", [])]}
        out[tag] = element
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_derived_instances_are_element_for_element_as_recorded(backend: str, tmp_path: Path) -> None:
    recorded = json.loads((GOLDEN / f"derived-{backend}.json").read_text(encoding="utf-8"))
    produced = derived_json(backend, tmp_path)
    assert len(produced) == len(recorded)
    for index, (got, want) in zip(PICKED, zip(produced, recorded, strict=True), strict=True):
        differing = sorted(tag for tag in set(got) | set(want) if got.get(tag) != want.get(tag))
        assert differing == [], f"instance {index}: elements {differing} differ from the recorded output"


def test_the_comparison_sees_a_changed_element(tmp_path: Path) -> None:
    recorded = json.loads((GOLDEN / "derived-interpolation.json").read_text(encoding="utf-8"))
    produced = derived_json("interpolation", tmp_path)
    produced[0]["00280030"] = {"vr": "DS", "Value": [0.5, 0.5]}            # PixelSpacing
    assert produced[0] != recorded[0]


def _write() -> None:
    import tempfile

    GOLDEN.mkdir(exist_ok=True)
    for backend in BACKENDS:
        with tempfile.TemporaryDirectory() as tmp:
            data = derived_json(backend, Path(tmp))
        (GOLDEN / f"derived-{backend}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n",
                                                        encoding="utf-8")
        print(f"wrote {GOLDEN / f'derived-{backend}.json'}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.unit.test_golden_output --write")
    _write()
