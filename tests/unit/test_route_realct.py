"""`dicom-node route` on real scanner series (TCIA Lung-PET-CT-Dx, ../shared/data): two vendors, kernels B
and L in one Philips study, B40f and B70f in one Siemens study; rules on kernel, vendor and patient ID."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.cli import main

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lung-pet-ct-dx"
CONFIG = """
[node]
storage_dir = "{var}"
[series]
max_spacing_mm = 9.0
[[folder_destinations]]
name = "cad"
path = "{var}/cad"
[[folder_destinations]]
name = "pacs"
path = "{var}/pacs"
[[rules]]
name = "lung-kernel-to-cad"
match = {{ ConvolutionKernel = "^(L|B70f)$", SliceThickness = [4.0, 9.0], PatientID = "^Lung_Dx-A000[12]$" }}
destinations = ["cad"]
[[rules]]
name = "philips-soft-to-pacs"
match = {{ Manufacturer = "(?i)philips", ConvolutionKernel = "^B$" }}
destinations = ["pacs"]
"""


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real CT series not found at {DATA}")
def test_route_on_real_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "node.toml"
    config.write_text(CONFIG.format(var=tmp_path / "var"))
    folders = {name: DATA / name for name in ("A0001-5mm-kernel-B", "A0001-5mm-kernel-L", "A0002-8mm-B40f",
                                              "A0002-8mm-B70f")}
    outcomes = {}
    for name, folder in folders.items():
        assert main(["route", "--config", str(config), str(folder)]) == 0
        out = capsys.readouterr().out
        assert "Lung_Dx" not in out                     # the patient ID a rule matched on is never printed
        outcomes[name] = [line.strip() for line in out.splitlines() if line.strip().startswith("->")]
    assert outcomes == {
        "A0001-5mm-kernel-B": ["-> rule philips-soft-to-pacs: destinations pacs; backend interpolation"],
        "A0001-5mm-kernel-L": ["-> rule lung-kernel-to-cad: destinations cad; backend interpolation"],
        "A0002-8mm-B40f": ["-> no rule holds: the series would be kept as no_rule"],
        "A0002-8mm-B70f": ["-> rule lung-kernel-to-cad: destinations cad; backend interpolation"],
    }
