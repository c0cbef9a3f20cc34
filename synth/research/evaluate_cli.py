"""`python -m synth evaluate [DATA] --out DIR [--weights W]`: DLS vs BIS, paper-style report.

Cases come from DATA (`HD_1mm/` + `HD_5mm/`, or `--mode simulate` for thin volumes only), from
`--phantoms N` (generated, held-out seeds, with known nodules for the conspicuity check), and from
`--thick FILE...` (real thick volumes without truth: data consistency only). BIS (cubic B-spline in
z, SimpleITK) is always evaluated; DLS when `--weights` names a CTHNet checkpoint; SR4ZCT with
`--sr4zct` (fine-tuned per case for `--sr4zct-budget-s`; its off-axis validation PSNR, and BIS's on the
same held-out axial images, are reported for every case, real ones included).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synth.seam import Synthesizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, nargs="?", help="paired data folder (HD_1mm/ + HD_5mm/)")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md and its figures")
    parser.add_argument("--weights", type=Path, help="CTHNet weights (our checkpoint or the official .pkl)")
    parser.add_argument("--sr4zct", action="store_true", help="also evaluate the sr4zct backend (SR4ZCT)")
    parser.add_argument("--sr4zct-budget-s", type=float, default=None, help="its per-case fine-tuning budget")
    parser.add_argument("--sr4zct-weights", type=Path, default=None, help="its starting point (default: shipped)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tile", type=int, default=0, help="in-plane inference tile (0: the spec's tile size)")
    parser.add_argument("--mode", choices=("paired", "simulate"), default="paired")
    parser.add_argument("--intensity", choices=("auto", "hu", "unit"), default="auto")
    parser.add_argument("--phantoms", type=int, default=0, help="also evaluate N generated phantoms")
    parser.add_argument("--phantom-seed", type=int, default=5000, help="first phantom seed (default 5000)")
    parser.add_argument("--phantom-slices", type=int, default=126)
    parser.add_argument("--phantom-size", type=int, default=256)
    parser.add_argument("--phantom-pixel-mm", type=float, default=1.4)
    parser.add_argument("--thick", type=Path, nargs="*", default=[], help="real thick volumes without truth")
    parser.add_argument("--fp-per-case", type=float, default=2.0, help="operating point of the nodule check")
    parser.add_argument("--views", type=int, default=2,
                        help="cases with truth shown as coronal/sagittal figures (cases without truth always are)")
    parser.add_argument("--title", default="Thick-to-thin CT synthesis: DLS vs BIS")


def run(args: argparse.Namespace) -> int:
    from synth.research.datasets import DatasetError

    try:
        return _run(args)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2


def _dls(args: argparse.Namespace) -> object:
    from synth.checkpoint import build_model, load_weights
    from synth.engine import CTHNetSynthesizer

    weights = load_weights(args.weights)
    model = build_model(weights)
    return CTHNetSynthesizer(model, weights_sha256=weights.sha256, name="DLS", device=args.device,
                             tile=args.tile or None)


def _sr4zct(args: argparse.Namespace) -> Synthesizer:
    from synth.backends import build_synthesizer
    from synth.config import SR4ZCTConfig, SynthConfig

    default = SR4ZCTConfig()
    sub = SR4ZCTConfig(budget_s=default.budget_s if args.sr4zct_budget_s is None else args.sr4zct_budget_s,
                       weights=str(args.sr4zct_weights or ""))
    return build_synthesizer(SynthConfig(backend="sr4zct", sr4zct=sub))


def _run(args: argparse.Namespace) -> int:
    from synth.infer_cli import slice_thickness_mm
    from synth.interpolate import InterpolationSynthesizer
    from synth.research.datasets import iter_cases, read_volume, simulated_pair
    from synth.research.evaluate import EvalCase, evaluate
    from synth.research.phantom import PhantomSpec, make_phantom
    from synth.research.report import write_report

    cases: list[EvalCase] = []
    notes: list[str] = []
    if args.data is not None:
        for pair in iter_cases(args.data, args.mode, 5, args.intensity):
            cases.append(EvalCase(pair.name, pair.thick, pair.thin))
        notes.append(f"Data: {args.data} ({args.mode}).")
    if args.phantoms:
        pspec = PhantomSpec(slices=args.phantom_slices, size=args.phantom_size, pixel_mm=args.phantom_pixel_mm)
        for seed in range(args.phantom_seed, args.phantom_seed + args.phantoms):
            phantom = make_phantom(seed, pspec)
            pair = simulated_pair(f"phantom_{seed:04d}", phantom.volume)
            cases.append(EvalCase(pair.name, pair.thick, pair.thin, phantom.nodules))
        notes.append(f"Phantoms: {args.phantoms} generated chest phantoms, seeds {args.phantom_seed}.."
                     f"{args.phantom_seed + args.phantoms - 1} ({pspec.slices} x {pspec.size} x {pspec.size} at "
                     f"{pspec.slice_mm} x {pspec.pixel_mm} mm), thick simulated with the triangular 5/5 mm kernel.")
    for path in args.thick:
        thick, _ = read_volume(path, args.intensity)
        thick = dataclasses.replace(thick, slice_thickness_mm=slice_thickness_mm(path))
        cases.append(EvalCase(path.name.split(".")[0], thick))
        notes.append(f"Real thick volume without truth: {path.name} ({thick.shape[0]} slices at "
                     f"{thick.spacing_mm[0]:g} mm): data consistency only.")
    if not cases:
        raise ValueError("nothing to evaluate: give DATA, --phantoms N or --thick FILE")
    synthesizers: dict[str, Synthesizer] = {"BIS": InterpolationSynthesizer(5)}
    if args.weights is not None:
        dls = _dls(args)
        synthesizers["DLS"] = dls  # type: ignore[assignment]
        notes.append(f"DLS weights: {args.weights.name} (sha256 {dls.identity.weights_sha256[:16]}…).")  # type: ignore[attr-defined]
    if args.sr4zct:
        synthesizers["SR4ZCT"] = _sr4zct(args)
        notes.append(f"SR4ZCT: {synthesizers['SR4ZCT'].identity.name} (starting point sha256 "
                     f"{synthesizers['SR4ZCT'].identity.weights_sha256[:16]}…).")
    evaluation = evaluate(cases, synthesizers, fp_per_case=args.fp_per_case, view_cases=args.views,
                          on_case=lambda name: print(f"evaluating {name}", flush=True))
    path = write_report(evaluation, args.out, args.title, notes)
    for metric in ("psnr_db", "ssim", "consistency_db"):
        for method in evaluation.methods:
            s = evaluation.summary(method, metric)
            if s.n:
                print(f"{metric:15s} {method}: median {s.median:.4f} [{s.q1:.4f}-{s.q3:.4f}] (n={s.n})")
    print(f"report: {path}")
    return 0
