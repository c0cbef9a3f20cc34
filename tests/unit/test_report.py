"""Report generation: Markdown table, figures, per-case rows."""

from __future__ import annotations

from pathlib import Path

from synth.interpolate import InterpolationSynthesizer
from synth.research.evaluate import EvalCase, evaluate
from synth.research.report import table, write_report
from tests.unit.test_evaluate import Oracle, make_cases


def test_report_has_table_figures_and_cases(tmp_path: Path) -> None:
    cases, truths = make_cases(3)
    cases.append(EvalCase("real", cases[0].thick))           # thick only: consistency only
    result = evaluate(cases, {"BIS": InterpolationSynthesizer(5), "DLS": Oracle(truths, 3.072)}, view_cases=1)
    path = write_report(result, tmp_path / "out", "Test report", notes=["A note."])
    text = path.read_text(encoding="utf-8")
    assert path.name == "report.md" and text.startswith("# Test report")
    assert "- A note." in text
    assert "| PSNR (dB) | " in text and "60.00 [60.00–60.00]" in text
    assert "Wilcoxon" in text and "DLS: " in text
    assert "| real | BIS | n/a | n/a |" in text
    assert (tmp_path / "out" / "boxplots.png").stat().st_size > 1000
    assert (tmp_path / "out" / "views_case0.png").stat().st_size > 1000
    assert "![case0](views_case0.png)" in text


def test_table_without_baseline_or_truth() -> None:
    cases, _ = make_cases(2)
    only_thick = [EvalCase(c.name, c.thick) for c in cases]
    lines = table(evaluate(only_thick, {"B": InterpolationSynthesizer(5)}, view_cases=0))
    assert len(lines) == 3                                  # header, rule, consistency only
    assert lines[2].startswith("| Data consistency PSNR (dB) |") and lines[2].endswith("| 2 | n/a |")
