"""synth/ is arrays in, arrays out: it must never import a DICOM library or dicom_node."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {"pydicom", "pynetdicom", "highdicom", "dicom_node"}
SYNTH = Path(__file__).resolve().parents[2] / "synth"


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_synth_imports_no_dicom_library() -> None:
    files = sorted(SYNTH.rglob("*.py"))
    assert files, "synth/ has no Python files"
    offenders = {str(p.relative_to(SYNTH)): sorted(_imported_roots(p) & FORBIDDEN) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_layering_check_detects_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nfrom pydicom import dcmread\n")
    assert _imported_roots(bad) & FORBIDDEN == {"pydicom"}
