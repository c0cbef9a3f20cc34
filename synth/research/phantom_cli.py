"""`python -m synth phantom OUT --count N --seed S`: synthetic chest phantoms in the official layout.

Writes OUT/HD_1mm/<case>.nii.gz (thin truth), OUT/HD_5mm/<case>.nii.gz (thick, simulated with the
triangular 5/5 mm kernel) and OUT/nodules.json (per case: centre in mm and voxels, diameter, kind).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="folder to create HD_1mm/, HD_5mm/ and nodules.json in")
    parser.add_argument("--count", type=int, default=4, help="number of phantoms (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first phantom; then seed+1, …")
    parser.add_argument("--slices", type=int, default=126, help="1-mm slices; 5(N-1)+1 keeps all (126)")
    parser.add_argument("--size", type=int, default=256, help="rows = columns (default 256)")
    parser.add_argument("--pixel-mm", type=float, default=1.4, help="in-plane spacing (default 1.4)")
    parser.add_argument("--thickness", type=float, default=5.0, help="simulated thick-slice thickness")
    parser.add_argument("--prefix", default="phantom", help="case name prefix (default 'phantom')")


def run(args: argparse.Namespace) -> int:
    from synth.research.datasets import DEFAULT_GEOMETRY, simulated_pair, write_volume
    from synth.research.phantom import PhantomSpec, make_phantom

    if args.count < 1:
        print(f"phantom: --count must be at least 1, got {args.count}", file=sys.stderr)
        return 2
    try:
        spec = PhantomSpec(slices=args.slices, size=args.size, pixel_mm=args.pixel_mm)
    except ValueError as exc:
        print(f"phantom: {exc}", file=sys.stderr)
        return 2
    listing: dict[str, list[dict[str, object]]] = {}
    for i in range(args.count):
        seed = args.seed + i
        name = f"{args.prefix}_{seed:04d}"
        phantom = make_phantom(seed, spec)
        pair = simulated_pair(name, phantom.volume, factor=5, thickness_mm=args.thickness)
        write_volume(pair.thin, DEFAULT_GEOMETRY, args.output / "HD_1mm" / f"{name}.nii.gz")
        write_volume(pair.thick, DEFAULT_GEOMETRY, args.output / "HD_5mm" / f"{name}.nii.gz")
        listing[name] = [
            {"center_mm": list(n.center_mm), "center_voxel": list(n.center_voxel(phantom.volume.spacing_mm)),
             "diameter_mm": n.diameter_mm, "kind": n.kind}
            for n in phantom.nodules
        ]
        print(f"{name}: {pair.thin.shape[0]} thin / {pair.thick.shape[0]} thick slices, "
              f"{len(phantom.nodules)} nodules")
    (args.output / "nodules.json").write_text(json.dumps(listing, indent=1), encoding="utf-8")
    return 0
