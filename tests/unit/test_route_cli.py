"""`dicom-node route`: a dry run over folders; the winning rule, why the ones before failed, no patient data."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_node.cli import main
from tests.support.ct_series import make_ct_series

CONFIG = """
[node]
storage_dir = "{var}"

[[folder_destinations]]
name = "pacs"
path = "{var}/pacs"

[[folder_destinations]]
name = "cad"
path = "{var}/cad"

[[rules]]
name = "by-patient"
match = {{ PatientName = "^NOBODY", PatientID = "^X" }}
destinations = ["cad"]

[[rules]]
name = "sharp"
match = {{ ConvolutionKernel = "^B$", SliceThickness = [4.0, 6.0], CallingAE = "^CT0[1-3]$" }}
backend = "cthnet"
destinations = ["cad"]

[[rules]]
name = "thin-only"
match = {{ SliceThickness = [0.5, 1.5] }}
destinations = ["pacs"]
"""


def write_series(folder: Path, *, kernel: str, patient_id: str, modality: str = "CT", seed: int = 0) -> str:
    folder.mkdir(parents=True)
    datasets = make_ct_series(slices=3, rows=16, cols=16, patient_id=patient_id, modality=modality, seed=seed)
    for i, ds in enumerate(datasets):
        ds.ConvolutionKernel = kernel
        ds.PatientName = "DOE^JANE"
        pydicom.dcmwrite(folder / f"IM{i}.dcm", ds, enforce_file_format=True)
    return str(datasets[0].SeriesInstanceUID)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(CONFIG.format(var=tmp_path / "var"))
    return path


def test_route_prints_the_winner_and_why_earlier_rules_failed(config: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    sharp = write_series(tmp_path / "in" / "a", kernel="B", patient_id="PID777")
    soft = write_series(tmp_path / "in" / "b", kernel="B30f", patient_id="PID778", seed=1)
    mr = write_series(tmp_path / "in" / "c", kernel="B", patient_id="PID779", modality="MR", seed=2)
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    assert main(["route", "--config", str(config), "--calling-ae", "CT02", str(tmp_path / "in")]) == 0
    out = capsys.readouterr().out
    block = {uid: out.split(f"series {uid}")[1].split("\nseries ")[0] for uid in (sharp, soft, mr)}
    assert "selection: accepted (3 slices at 5.00 mm)" in block[sharp]
    assert ("rule by-patient: does not hold: PatientName <redacted> does not match '^NOBODY'; "
            "PatientID <redacted> does not match '^X'") in block[sharp]
    assert "-> rule sharp: destinations cad; backend cthnet" in block[sharp]
    assert "rule sharp: does not hold: ConvolutionKernel 'B30f' does not match '^B$'" in block[soft]
    assert "rule thin-only: does not hold: SliceThickness '5' not in [0.5, 1.5]" in block[soft]
    assert "-> no rule holds: the series would be kept as no_rule" in block[soft]
    assert "selection: rejected (not_ct): modality is MR, not CT" in block[mr]
    assert "3 series; 1 file(s) skipped" in out
    for secret in ("DOE", "JANE", "PID77"):
        assert secret not in out


def test_route_without_a_calling_ae_says_so(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_series(tmp_path / "in", kernel="B", patient_id="P1")
    assert main(["route", "--config", str(config), str(tmp_path / "in")]) == 0
    out = capsys.readouterr().out
    assert "note: no --calling-ae given: every CallingAE condition fails" in out
    assert "CallingAE unknown" in out


def test_route_of_a_missing_folder_fails(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "--config", str(config), str(tmp_path / "nope")]) == 1
    assert f"route: {tmp_path / 'nope'}: no such file or folder" in capsys.readouterr().out


def test_route_without_rules_says_every_destination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plain.toml"
    path.write_text(CONFIG.format(var=tmp_path / "var").split("[[rules]]")[0])
    write_series(tmp_path / "in", kernel="B", patient_id="P1")
    assert main(["route", "--config", str(path), str(tmp_path / "in")]) == 0
    assert "no [[rules]]: every destination (pacs, cad); backend interpolation" in capsys.readouterr().out


def test_route_checks_the_routed_backend_s_spacing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nstorage_dir = "{tmp_path / "var"}"\n\n[[folder_destinations]]\nname = "pacs"\n'
                      f'path = "{tmp_path / "var" / "pacs"}"\n\n[[rules]]\nname = "to-cthnet"\n'
                      'match = { ConvolutionKernel = "^B$" }\nbackend = "cthnet"\ndestinations = ["pacs"]\n')
    folder = tmp_path / "in"
    folder.mkdir()
    for i, ds in enumerate(make_ct_series(slices=3, rows=16, cols=16, spacing_mm=8.0)):
        ds.ConvolutionKernel = "B"
        pydicom.dcmwrite(folder / f"IM{i}.dcm", ds, enforce_file_format=True)
    assert main(["route", "--config", str(config), str(folder)]) == 0
    out = capsys.readouterr().out
    assert "selection: accepted (3 slices at 8.00 mm)" in out          # interpolation, the [synth] default, takes it
    assert "-> rule to-cthnet: destinations pacs; backend cthnet" in out
    assert ("selection: rejected (spacing_out_of_range): slice spacing 8.000 mm is outside 4.0-6.0 mm, "
            "the range of backend cthnet") in out
