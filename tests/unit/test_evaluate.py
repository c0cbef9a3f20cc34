"""Evaluation: scores, summaries and the Wilcoxon test on known inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from synth.interpolate import InterpolationSynthesizer
from synth.research.evaluate import THICK, TRUTH, EvalCase, Evaluation, evaluate
from synth.research.phantom import PhantomSpec, make_phantom
from synth.seam import ProgressCallback, SynthIdentity
from synth.simulate import simulate_thick
from synth.volume import CTVolume


class Oracle:
    """Returns a stored thin volume plus a fixed offset: a stand-in for a model."""

    factor = 5
    identity = SynthIdentity("test", "oracle", "0")

    def __init__(self, truths: dict[int, CTVolume], offset_hu: float) -> None:
        self.truths, self.offset = truths, np.float32(offset_hu)

    def __call__(self, volume: CTVolume, progress: ProgressCallback | None = None) -> CTVolume:
        truth = self.truths[volume.shape[0] * 1000 + int(volume.hu[0, 0, 0])]
        return CTVolume(truth.hu + self.offset, truth.spacing_mm)


def make_cases(n: int = 6) -> tuple[list[EvalCase], dict[int, CTVolume]]:
    cases, truths = [], {}
    for i in range(n):
        rng = np.random.default_rng(i)
        hu = ndimage.gaussian_filter(rng.normal(-500, 300, (26, 24, 24)), 2).astype(np.float32)
        hu[:, 0, 0] = -1000 + i                       # a key the oracle recognises its case by
        thin = CTVolume(hu, (1.0, 1.0, 1.0))
        thick = simulate_thick(thin)
        truths[thick.shape[0] * 1000 + int(thick.hu[0, 0, 0])] = thin
        cases.append(EvalCase(f"case{i}", thick, thin))
    return cases, truths


@pytest.fixture(scope="module")
def evaluation() -> Evaluation:
    cases, truths = make_cases()
    return evaluate(cases, {"BIS": InterpolationSynthesizer(5), "DLS": Oracle(truths, 3.072)})


def test_scores_for_every_case_and_method(evaluation: Evaluation) -> None:
    assert evaluation.methods == ["BIS", "DLS"]
    assert len(evaluation.scores) == 12
    # 3.072 HU everywhere = 0.001 of the window: 60 dB
    assert all(s.psnr_db == pytest.approx(60.0, abs=1e-3) for s in evaluation.scores if s.method == "DLS")
    assert all(s.psnr_db < 60.0 for s in evaluation.scores if s.method == "BIS")


def test_summary_and_wilcoxon(evaluation: Evaluation) -> None:
    dls = evaluation.summary("DLS", "psnr_db")
    assert dls.n == 6 and dls.median == pytest.approx(60.0, abs=1e-3)
    # DLS above BIS in all 6 pairs: exact two-sided p = 2 / 2^6
    assert evaluation.wilcoxon_p("DLS", "psnr_db") == pytest.approx(2 / 64)
    assert math.isnan(evaluation.wilcoxon_p("BIS", "psnr_db"))      # identical pairs
    assert evaluation.summary("nope", "psnr_db").n == 0


def test_identical_output_gives_inf_psnr_and_unit_ssim() -> None:
    cases, truths = make_cases(2)
    result = evaluate(cases, {"DLS": Oracle(truths, 0.0)})
    assert all(s.psnr_db == math.inf and s.ssim == 1.0 and s.consistency_db == math.inf for s in result.scores)
    assert math.isnan(result.wilcoxon_p("DLS", "psnr_db"))


def test_thick_only_cases_get_consistency_only() -> None:
    cases, _ = make_cases(1)
    result = evaluate([EvalCase("real", cases[0].thick)], {"BIS": InterpolationSynthesizer(5)}, view_cases=0)
    (score,) = result.scores
    assert math.isnan(score.psnr_db) and math.isnan(score.ssim) and 20 < score.consistency_db < math.inf
    assert set(result.views[0].coronal) == {THICK, "BIS"}      # shown even beyond view_cases


def test_phantom_nodules_and_views() -> None:
    spec = PhantomSpec(slices=46, size=96, pixel_mm=3.5, nodules_min=2, nodules_max=2, noise_hu=5.0)
    phantom = make_phantom(11, spec)
    thin = CTVolume(phantom.volume.hu[:46].copy(), phantom.volume.spacing_mm)
    case = EvalCase("ph", simulate_thick(thin), thin, phantom.nodules)
    result = evaluate([case], {"BIS": InterpolationSynthesizer(5)}, view_cases=1)
    assert set(result.sensitivity) == {THICK, "BIS", TRUTH}
    assert all(s.nodules == 2 for s in result.sensitivity.values())
    views = result.views[0]
    assert views.coronal[TRUTH].shape == (46, 96) and views.coronal[THICK].shape == (10, 96)


def test_evaluate_arguments_are_checked() -> None:
    cases, _ = make_cases(1)
    with pytest.raises(ValueError, match="evaluate needs at least one case"):
        evaluate([], {"BIS": InterpolationSynthesizer(5)})
    with pytest.raises(ValueError, match="evaluate needs at least one synthesizer"):
        evaluate(cases, {})
    short = EvalCase("short", cases[0].thick, CTVolume(cases[0].thin.hu[:16].copy(), (1.0, 1.0, 1.0)))  # type: ignore[union-attr]
    made = r"case short: BIS made \(26, 24, 24\), the true thin volume is \(16, 24, 24\)"
    with pytest.raises(ValueError, match=made):
        evaluate([short], {"BIS": InterpolationSynthesizer(5)})


def test_cli_bis_and_dls_on_a_paired_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from synth.cli import main
    from synth.research.datasets import DEFAULT_GEOMETRY, simulated_pair, write_volume
    from synth.research.train import TrainConfig, spec_preset, train

    spec = PhantomSpec(slices=16, size=32, pixel_mm=5.0, nodules_min=0, nodules_max=0)
    pairs = [simulated_pair(f"p{s}", make_phantom(s, spec).volume) for s in (1, 2)]
    for pair in pairs:
        write_volume(pair.thin, DEFAULT_GEOMETRY, tmp_path / "data" / "HD_1mm" / f"{pair.name}.nii.gz")
        write_volume(pair.thick, DEFAULT_GEOMETRY, tmp_path / "data" / "HD_5mm" / f"{pair.name}.nii.gz")
    tiny = replace(spec_preset("tiny"), dec_drop_path=0.0)
    train(tiny, pairs, pairs, tmp_path / "w", TrainConfig(epochs=1, val_every=1, val_below_loss=10.0,
                                                         val_crop=16, progress=False), data_description="t")
    out = tmp_path / "report"
    args = ["evaluate", str(tmp_path / "data"), "--out", str(out), "--weights", str(tmp_path / "w" / "best.pt"),
            "--device", "cpu", "--views", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "psnr_db         BIS: median" in printed and "psnr_db         DLS: median" in printed
    assert "| PSNR (dB) |" in (out / "report.md").read_text(encoding="utf-8")
    assert main(["evaluate", "--out", str(out)]) == 2
    assert "nothing to evaluate: give DATA, --phantoms N or --thick FILE" in capsys.readouterr().err
