"""Paper-style evaluation: PSNR/SSIM against the true 1-mm volume, medians [IQR], Wilcoxon p.

For every case each synthesizer (e.g. BIS and DLS) turns the thick volume into a thin one. With a
true thin volume: PSNR and SSIM as in `synth.research.metrics` (window [-1024, 2048] → [0, 1]; 5 edge slices
excluded at each end; SSIM per axial slice with an 11 x 11 Gaussian window, sigma 1.5). Always: the
data-consistency PSNR (re-thicken the output with the triangular simulation, compare with the
input). With a nodule list: the blob detector on thick, each output and the truth, and sensitivity
at a fixed number of false positives per case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from synth.research.metrics import data_consistency_psnr, psnr, ssim
from synth.research.nodules import Candidate, Sensitivity, detect_blobs, sensitivity_at_fp
from synth.research.phantom_spec import Nodule
from synth.seam import Synthesizer
from synth.volume import CTVolume

THICK, TRUTH = "thick", "truth"
BASELINE = "BIS"


@dataclass(frozen=True, slots=True)
class EvalCase:
    name: str
    thick: CTVolume
    thin: CTVolume | None = None                 # the true thin volume, when there is one
    nodules: tuple[Nodule, ...] | None = None    # known nodules (phantoms), in the thin volume's mm frame


@dataclass(frozen=True, slots=True)
class CaseScore:
    case: str
    method: str
    psnr_db: float           # nan without truth
    ssim: float              # nan without truth
    consistency_db: float    # re-thickened output vs the thick input
    offaxis_db: float = math.nan   # off-axis validation on held-out axial images (sr4zct; BIS alike)


@dataclass(frozen=True, slots=True)
class Views:
    """The central coronal plane and a sagittal plane through one lung (HU) of one case, for figures."""

    case: str
    coronal: dict[str, npt.NDArray[np.float32]]
    sagittal: dict[str, npt.NDArray[np.float32]]
    z_spacing_mm: dict[str, float]
    pixel_mm: float


@dataclass(frozen=True, slots=True)
class Summary:
    method: str
    n: int
    median: float
    q1: float
    q3: float


@dataclass
class Evaluation:
    methods: list[str]
    scores: list[CaseScore] = field(default_factory=list)
    views: list[Views] = field(default_factory=list)
    sensitivity: dict[str, Sensitivity] = field(default_factory=dict)
    fp_per_case: float = 2.0

    def values(self, method: str, metric: str) -> list[float]:
        return [float(getattr(s, metric)) for s in self.scores if s.method == method]

    def summary(self, method: str, metric: str) -> Summary:
        values = [v for v in self.values(method, metric) if not math.isnan(v)]
        if not values:
            return Summary(method, 0, math.nan, math.nan, math.nan)
        finite = np.asarray(values, dtype=np.float64)
        q1, med, q3 = np.percentile(finite, [25, 50, 75])
        return Summary(method, len(values), float(med), float(q1), float(q3))

    def wilcoxon_p(self, method: str, metric: str, baseline: str = BASELINE) -> float:
        """Two-sided Wilcoxon signed-rank p for method vs baseline on paired cases (nan if undefined)."""
        from scipy.stats import wilcoxon

        a = {s.case: float(getattr(s, metric)) for s in self.scores if s.method == method}
        b = {s.case: float(getattr(s, metric)) for s in self.scores if s.method == baseline}
        pairs = [(a[c], b[c]) for c in a if c in b and all(math.isfinite(v) for v in (a[c], b[c]))]
        diffs = [x - y for x, y in pairs]
        if len(pairs) < 2 or all(d == 0 for d in diffs):
            return math.nan
        return float(wilcoxon([x for x, _ in pairs], [y for _, y in pairs]).pvalue)


def _views(case: EvalCase, volumes: Mapping[str, CTVolume]) -> Views:
    coronal, sagittal, dz = {}, {}, {}
    for name, v in volumes.items():
        _, y, x = v.shape
        coronal[name] = np.ascontiguousarray(v.hu[:, y // 2, :])
        sagittal[name] = np.ascontiguousarray(v.hu[:, :, int(0.32 * x)])     # through a lung, not the spine
        dz[name] = v.spacing_mm[0]
    return Views(case.name, coronal, sagittal, dz, case.thick.spacing_mm[2])


def _offaxis(name: str, out: CTVolume, outputs: Mapping[str, CTVolume]) -> float:
    """A method's own off-axis PSNR; BIS gets the one an sr4zct run measured for it on the same images."""
    if "offaxis_psnr_db" in out.figures:
        return float(out.figures["offaxis_psnr_db"])
    if name == BASELINE:
        for other in outputs.values():
            if "offaxis_bis_psnr_db" in other.figures:
                return float(other.figures["offaxis_bis_psnr_db"])
    return math.nan


def evaluate(
    cases: Sequence[EvalCase],
    synthesizers: Mapping[str, Synthesizer],
    fp_per_case: float = 2.0,
    view_cases: int = 2,
    on_case: Callable[[str], None] | None = None,
) -> Evaluation:
    """Run every synthesizer on every case and score it.

    Views (coronal and sagittal) are kept for the first `view_cases` cases and for every case without
    truth (real thick data), which has nothing else to be judged by than data consistency and the eye.
    """
    if not cases:
        raise ValueError("evaluate needs at least one case")
    if not synthesizers:
        raise ValueError("evaluate needs at least one synthesizer")
    result = Evaluation(methods=list(synthesizers), fp_per_case=fp_per_case)
    detections: dict[str, list[tuple[list[Candidate], tuple[Nodule, ...]]]] = {}
    for index, case in enumerate(cases):
        if on_case is not None:
            on_case(case.name)
        outputs = {name: synth(case.thick) for name, synth in synthesizers.items()}
        for name, out in outputs.items():
            if case.thin is not None and out.shape != case.thin.shape:
                raise ValueError(
                    f"case {case.name}: {name} made {out.shape}, the true thin volume is {case.thin.shape}"
                )
            p = psnr(case.thin.hu, out.hu) if case.thin is not None else math.nan
            s = ssim(case.thin.hu, out.hu) if case.thin is not None else math.nan
            result.scores.append(CaseScore(case.name, name, p, s, data_consistency_psnr(case.thick, out),
                                           _offaxis(name, out, outputs)))
        if case.nodules is not None:
            shown = {THICK: case.thick, **outputs}
            if case.thin is not None:
                shown[TRUTH] = case.thin
            for name, vol in shown.items():
                detections.setdefault(name, []).append((detect_blobs(vol), case.nodules))
        if index < view_cases or case.thin is None:         # no truth: looking is the only other check
            shown_views = {THICK: case.thick, **outputs}
            if case.thin is not None:
                shown_views[TRUTH] = case.thin
            result.views.append(_views(case, shown_views))
    for name, per_case in detections.items():
        if sum(len(n) for _, n in per_case):
            result.sensitivity[name] = sensitivity_at_fp(per_case, fp_per_case)
    return result
