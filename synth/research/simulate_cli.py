"""`python -m synth simulate-thick IN OUT --thickness 5 --interval 5`: a realistic thick volume."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="thin volume: NIfTI/NRRD file or DICOM series folder")
    parser.add_argument("output", type=Path, help="thick volume to write (NIfTI/NRRD by suffix)")
    parser.add_argument("--thickness", type=float, default=5.0, help="slice thickness t in mm (default 5)")
    parser.add_argument("--interval", type=float, default=5.0, help="slice interval d in mm (default 5)")


def run(args: argparse.Namespace) -> int:
    from synth.research.datasets import DatasetError, read_volume, write_volume
    from synth.simulate import simulate_thick

    try:
        thin, geometry = read_volume(args.input)
        thick = simulate_thick(thin, thickness_mm=args.thickness, interval_mm=args.interval)
        write_volume(thick, geometry, args.output)
    except (DatasetError, ValueError) as exc:
        print(f"simulate-thick: {exc}", file=sys.stderr)
        return 2
    print(f"{thin.shape[0]} slices at {thin.spacing_mm[0]:g} mm -> {thick.shape[0]} at "
          f"{args.interval:g} mm (thickness {args.thickness:g} mm): {args.output}")
    return 0
