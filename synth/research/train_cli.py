"""`python -m synth train DATA --out DIR`: train CTHNet with the official recipe.

DATA is a folder with `HD_1mm/` + `HD_5mm/` (the official layout; `thin/` + `thick/` DICOM series
folders also work), or with `--mode simulate` a folder of thin volumes whose thick partners are
simulated. `--phantoms N` trains on N generated chest phantoms instead of DATA. The split comes from
`--split` (the official HD_dict.json: {"train": [...], "val": [...]}) or `--val-fraction`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, nargs="?", help="data folder (omit with --phantoms)")
    parser.add_argument("--out", type=Path, required=True, help="folder for best.pt and the resumable last.pt")
    parser.add_argument("--mode", choices=("paired", "simulate"), default="paired")
    parser.add_argument("--intensity", choices=("auto", "hu", "unit"), default="auto",
                        help="stored intensities: HU, [0, 1] in [-1024, 2048] (unit), or detect (auto)")
    parser.add_argument("--split", type=Path, help="JSON with 'train' and 'val' case-name lists")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="without --split (default 0.15)")
    parser.add_argument("--phantoms", type=int, default=0, help="train on N generated phantoms")
    parser.add_argument("--phantom-seed", type=int, default=1000, help="first phantom seed (default 1000)")
    parser.add_argument("--phantom-slices", type=int, default=126)
    parser.add_argument("--phantom-size", type=int, default=256)
    parser.add_argument("--phantom-pixel-mm", type=float, default=1.4)
    parser.add_argument("--spec", default="official",
                        help="spec preset (official, cpu-residual, cpu-small, tiny) or a JSON file")
    parser.add_argument("--epochs", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--val-every", type=int, default=5)
    parser.add_argument("--patience", type=int, default=6)
    parser.add_argument("--max-lr-drops", type=int, default=4)
    parser.add_argument("--val-below-loss", type=float, default=0.01)
    parser.add_argument("--flip-p", type=float, default=0.2)
    parser.add_argument("--crops-per-case", type=int, default=1)
    parser.add_argument("--val-crop", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="wall-time limit (0: none)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from synth.research.datasets import DatasetError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2


def _load_spec(value: str) -> object:
    from synth.nets import CTHNetSpec
    from synth.research.train import SPEC_PRESETS, spec_preset

    if value in SPEC_PRESETS:
        return spec_preset(value)
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"--spec must be a preset {sorted(SPEC_PRESETS)} or a JSON file, got {value!r}")
    return CTHNetSpec.from_dict(json.loads(path.read_text(encoding="utf-8")))


def split_names(names: list[str], split: Path | None, val_fraction: float) -> tuple[list[str], list[str]]:
    if split is not None:
        raw = json.loads(split.read_text(encoding="utf-8"))
        train, val = list(raw.get("train", [])), list(raw.get("val", []))
        unknown = sorted(set(train + val) - set(names))
        if unknown:
            raise ValueError(f"{split}: cases not found in the data: {', '.join(unknown[:5])}")
        if not train or not val:
            raise ValueError(f"{split}: needs non-empty 'train' and 'val' lists")
        return train, val
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction must lie in (0, 1), got {val_fraction}")
    if len(names) < 2:
        raise ValueError(f"need at least 2 cases to split into training and validation, got {len(names)}")
    n_val = max(1, round(len(names) * val_fraction))
    ordered = sorted(names)
    return ordered[: len(ordered) - n_val], ordered[len(ordered) - n_val :]


def _run(args: argparse.Namespace) -> int:
    from synth.nets import CTHNetSpec
    from synth.research.datasets import PairedCase, iter_cases, simulated_pair
    from synth.research.phantom import PhantomSpec, make_phantom
    from synth.research.train import TrainConfig, train

    spec = _load_spec(args.spec)
    assert isinstance(spec, CTHNetSpec)
    cfg = TrainConfig(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, val_every=args.val_every,
        patience=args.patience, max_lr_drops=args.max_lr_drops, val_below_loss=args.val_below_loss,
        flip_p=args.flip_p, crops_per_case=args.crops_per_case, val_crop=args.val_crop, seed=args.seed,
        device=args.device, max_minutes=args.max_minutes, progress=not args.no_progress,
    )
    cases: list[PairedCase]
    if args.phantoms:
        if args.data is not None:
            raise ValueError("give either a data folder or --phantoms, not both")
        pspec = PhantomSpec(slices=args.phantom_slices, size=args.phantom_size, pixel_mm=args.phantom_pixel_mm)
        cases = [simulated_pair(f"phantom_{s:04d}", make_phantom(s, pspec).volume, spec.ratio)
                 for s in range(args.phantom_seed, args.phantom_seed + args.phantoms)]
        description = (f"{args.phantoms} synthetic chest phantoms (seeds {args.phantom_seed}.."
                       f"{args.phantom_seed + args.phantoms - 1}, {pspec.slices} x {pspec.size} x {pspec.size} at "
                       f"{pspec.slice_mm} x {pspec.pixel_mm} mm), thick simulated with the triangular 5/5 mm kernel")
    elif args.data is not None:
        cases = list(iter_cases(args.data, args.mode, spec.ratio, args.intensity))
        description = f"{len(cases)} cases from {args.data} ({args.mode})"
    else:
        raise ValueError("give a data folder or --phantoms N")
    by_name = {c.name: c for c in cases}
    train_names, val_names = split_names(list(by_name), args.split, args.val_fraction)
    print(f"training on {len(train_names)} cases, validating on {len(val_names)}; spec {spec}", flush=True)
    result = train(spec, [by_name[n] for n in train_names], [by_name[n] for n in val_names], args.out, cfg,
                   resume=args.resume, data_description=description)
    print(f"stopped after {result.epochs_run} epochs ({result.stopped_because}); best validation PSNR "
          f"{result.best_val_psnr:.2f} dB at epoch {result.best_epoch}; {args.out / 'best.pt'}")
    (args.out / "history.json").write_text(json.dumps(result.history), encoding="utf-8")
    return 0
