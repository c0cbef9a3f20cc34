"""A Markdown report of an Evaluation, with matplotlib PNG figures beside it.

Table as the paper's Table 2 (median [IQR] per method, Wilcoxon signed-rank p against BIS), the
data-consistency score, nodule sensitivity at a fixed false-positive rate, coronal and sagittal views
of thick, BIS, DLS and truth in a lung window, and box plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from synth.research.evaluate import BASELINE, THICK, TRUTH, Evaluation, Views

LUNG_WINDOW = (-600.0, 1500.0)          # level, width (HU)
METRICS = (("psnr_db", "PSNR (dB)", 2), ("ssim", "SSIM", 4), ("consistency_db", "Data consistency PSNR (dB)", 2),
           ("offaxis_db", "Off-axis validation PSNR (dB, held-out axial images)", 2))


def _fmt(value: float, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _p(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def table(evaluation: Evaluation) -> list[str]:
    methods = evaluation.methods
    lines = ["| metric | " + " | ".join(f"{m}, median [IQR]" for m in methods) + " | n | Wilcoxon p vs BIS |",
             "|---|" + "---|" * (len(methods) + 2)]
    for metric, label, digits in METRICS:
        summaries = [evaluation.summary(m, metric) for m in methods]
        if all(s.n == 0 for s in summaries):
            continue
        cells = [f"{_fmt(s.median, digits)} [{_fmt(s.q1, digits)}–{_fmt(s.q3, digits)}]" for s in summaries]
        others = [m for m in methods if m != BASELINE]
        ps = ", ".join(f"{m}: {_p(evaluation.wilcoxon_p(m, metric))}" for m in others) if BASELINE in methods else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {max(s.n for s in summaries)} | {ps or 'n/a'} |")
    return lines


def per_case_table(evaluation: Evaluation) -> list[str]:
    lines = ["| case | method | PSNR (dB) | SSIM | consistency (dB) | off-axis (dB) |", "|---|---|---|---|---|---|"]
    for s in evaluation.scores:
        lines.append(f"| {s.case} | {s.method} | {_fmt(s.psnr_db, 2)} | {_fmt(s.ssim, 4)} | "
                     f"{_fmt(s.consistency_db, 2)} | {_fmt(s.offaxis_db, 2)} |")
    return lines


def _show(ax: object, plane: npt.NDArray[np.float32], z_mm: float, pixel_mm: float, title: str) -> None:
    level, width = LUNG_WINDOW
    rows, cols = plane.shape
    extent = (0.0, cols * pixel_mm, rows * z_mm, 0.0)           # physical aspect, thick slices as slabs
    ax.imshow(plane, cmap="gray", vmin=level - width / 2, vmax=level + width / 2,  # type: ignore[attr-defined]
              extent=extent, interpolation="nearest")
    ax.set_title(title, fontsize=9)                              # type: ignore[attr-defined]
    ax.axis("off")                                               # type: ignore[attr-defined]


def views_figure(views: Views, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [THICK] + [m for m in views.coronal if m not in (THICK, TRUTH)] + [TRUTH]
    names = [n for n in order if n in views.coronal]
    truth_name = names[-1]
    rows, cols = views.coronal[truth_name].shape
    aspect = rows * views.z_spacing_mm[truth_name] / (cols * views.pixel_mm)     # height / width of a panel
    panel_w = 3.2
    fig, axes = plt.subplots(2, len(names), figsize=(panel_w * len(names), 2 * (panel_w * aspect + 0.5)),
                             squeeze=False)
    for col, name in enumerate(names):
        _show(axes[0][col], views.coronal[name], views.z_spacing_mm[name], views.pixel_mm, f"{name}, coronal")
        _show(axes[1][col], views.sagittal[name], views.z_spacing_mm[name], views.pixel_mm, f"{name}, sagittal")
    fig.suptitle(f"{views.case}: lung window (L {LUNG_WINDOW[0]:g}, W {LUNG_WINDOW[1]:g})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def box_plots(evaluation: Evaluation, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(metric, label) for metric, label, _ in METRICS
             if any(math.isfinite(v) for m in evaluation.methods for v in evaluation.values(m, metric))]
    if not shown:
        return False
    fig, axes = plt.subplots(1, len(shown), figsize=(4.0 * len(shown), 3.6), squeeze=False)
    for ax, (metric, label) in zip(axes[0], shown, strict=True):
        data = [[v for v in evaluation.values(m, metric) if math.isfinite(v)] for m in evaluation.methods]
        ax.boxplot(data, tick_labels=evaluation.methods)
        ax.set_title(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_report(evaluation: Evaluation, out_dir: Path, title: str, notes: Sequence[str] = ()) -> Path:
    """Write out_dir/report.md and its figures; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = sorted({s.case for s in evaluation.scores})
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    lines += [
        f"- Cases: {len(cases)}. Methods: {', '.join(evaluation.methods)}.",
        "- PSNR and SSIM against the true 1-mm volume, as the CTHNet paper: intensities clipped to "
        "[-1024, 2048] HU and scaled to [0, 1] (MAX = 1). All thin slices except 5 at each end (as the "
        "official validation). SSIM: per axial slice, Gaussian window 11 x 11 px (sigma 1.5), K1 0.01, "
        "K2 0.03, averaged over slices.",
        "- Data consistency: the output re-thickened with the triangular simulation (thickness = interval = "
        "thick spacing) against the thick input, PSNR on the same window, all thick slices. It needs no "
        "truth; a higher value means the output explains the input better (it does not prove detail is "
        "right).",
        "- p: two-sided Wilcoxon signed-rank test against BIS on paired cases (scipy), no correction.",
        "", "## Image quality (median [IQR])", "", *table(evaluation), "",
    ]
    if evaluation.sensitivity:
        lines += [
            f"## Nodule conspicuity (blob detector, {evaluation.fp_per_case:g} false positives per case)", "",
            "A simple 3-D blob detector (scale-normalised LoG proposals ranked by Hessian blobness, in the "
            "lungs) is run on each volume; a hit lies within radius + 3 mm of a known nodule centre. "
            "The thick volume is examined as stacked 5-mm slabs.", "",
            "| volume | sensitivity | detected / nodules | FP per case |", "|---|---|---|---|",
        ]
        for name, sens in evaluation.sensitivity.items():
            lines.append(f"| {name} | {sens.sensitivity:.2f} | {sens.detected}/{sens.nodules} | "
                         f"{sens.fp_per_case:.2f} |")
        lines.append("")
    if box_plots(evaluation, out_dir / "boxplots.png"):
        lines += ["## Distributions", "", "![box plots](boxplots.png)", ""]
    if evaluation.views:
        lines += ["## Views", ""]
        for views in evaluation.views:
            name = f"views_{views.case}.png"
            views_figure(views, out_dir / name)
            lines += [f"![{views.case}]({name})", ""]
    lines += ["## Per case", "", *per_case_table(evaluation), ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
