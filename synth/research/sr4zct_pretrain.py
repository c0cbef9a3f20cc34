"""`python -m synth sr4zct-pretrain --out W.pt`: the shipped SR4ZCT starting point, off-axis on real CT.

The recipe is the backend's own fine-tuning (synth.sr4zct.fit) on the axial images of the six real
series we have (synth.research.realct), each degraded with several thickness/interval pairs, since the
starting point must serve any series. The axial images each series holds out for its off-axis
validation in the backend (`split_heldout`) are never trained on here either, so that validation
stays honest for these series; after training the command prints it (network vs BIS) per series.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEGRADATIONS_MM = ((5.0, 5.0), (8.0, 8.0), (5.0, 2.5), (3.0, 1.5))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.pt)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall clock")
    parser.add_argument("--channels", type=int, default=12)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--every", type=int, default=2, help="use every N-th training axial image")
    parser.add_argument("--series", nargs="*", default=None, help="names from synth.research.realct.SERIES")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from synth.research.realct import SERIES, load_volume, series_path
    from synth.sr4zct.fit import FitSettings, fit, offaxis_psnr
    from synth.sr4zct.net import NetSpec, SubPixelCNN
    from synth.sr4zct.pairs import Degradation, Pair, axial_pairs, split_heldout
    from synth.sr4zct.weights import save

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    names = args.series or list(SERIES)
    pairs: list[Pair] = []
    held: dict[str, list[Pair]] = {}
    t0 = time.monotonic()
    for name in names:
        vol = load_volume(series_path(name))
        train_idx, held_idx = split_heldout(vol.shape[0])
        pixel = (vol.spacing_mm[1], vol.spacing_mm[2])
        for t, d in DEGRADATIONS_MM:
            pairs += axial_pairs(vol.hu, pixel_mm=pixel, deg=Degradation(t, d, 5), indices=train_idx[::args.every],
                                 keep_upsampled=False)
        own = Degradation(vol.thickness_mm, vol.spacing_mm[0], 5)
        held[name] = axial_pairs(vol.hu, pixel_mm=pixel, deg=own, indices=held_idx)
        print(f"{name}: {len(train_idx)} training / {len(held_idx)} held-out axial images", flush=True)
    pairs_s = time.monotonic() - t0
    net = SubPixelCNN(NetSpec(channels=args.channels, layers=args.layers))
    result = fit(net, pairs, deadline=time.monotonic() + 60.0 * args.minutes, settings=FitSettings(lr=args.lr),
                 rng=np.random.default_rng(args.seed))
    validation = {}
    for name, hp in held.items():
        net_db, bis_db = offaxis_psnr(net, hp)
        validation[name] = {"offaxis_psnr_db": round(net_db, 2), "offaxis_bis_psnr_db": round(bis_db, 2)}
        print(f"{name}: off-axis PSNR {net_db:.2f} dB, BIS {bis_db:.2f} dB", flush=True)
    metadata = {
        "training_data": "axial images of pyradiomics 3.0.1 lung1/lung2 and TCIA Lung-PET-CT-Dx A0001 (2) and "
                         "A0002 (2) series, each series' off-axis held-out images excluded",
        "series": names, "degradations_mm": [list(d) for d in DEGRADATIONS_MM], "every": args.every,
        "pairs": len(pairs), "pairs_s": round(pairs_s, 1), "steps": result.steps,
        "train_s": round(result.seconds, 1), "lr": args.lr, "batch": FitSettings().batch,
        "crop": [FitSettings().crop_rows, FitSettings().crop_cols], "seed": args.seed,
        "validation": validation, "not_for_clinical_use": True,
    }
    sha = save(args.out, net, metadata)
    print(json.dumps({"out": str(args.out), "sha256": sha, **metadata}, indent=1))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m synth.research.sr4zct_pretrain", description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
