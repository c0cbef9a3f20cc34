"""Synthesis speed per 61×512² chest series: CTHNet against the interpolation backend, in one run.

    .venv/bin/python bench/synth.py                        # CPU: shipped weights on lung2 vs interpolation
    .venv/bin/python bench/synth.py --legacy-crop 192      # + the pre-issue-14 engine settings on a crop
    .venv/bin/python bench/synth.py --device cuda --json synth-cuda.json   # the whole GPU measurement

Every figure comes with its reference measured in the same process, interleaved (the machine is noisy):
- **series**: the volume (`--volume`, default lung2 of the pyradiomics 3.0.1 sdist when present, else a
  random 61×512² volume) through the interpolation backend and through the CTHNet engine, as the node
  calls them (numpy HU in, numpy HU out: padding, every window, blending and any host↔device copies
  are included). Reported: seconds, and CTHNet ÷ interpolation.
- **legacy** (`--legacy-crop N`, CPU): the engine as it was before issue 14 (the spec's training tile
  with overlapping tiles, torch's threads, whole-tensor Swin blocks, one window at a time) against
  today's defaults on the central N×N crop of the same volume.
- **official** (`--official`, default on CUDA): the official-size spec (10.6 M parameters; random
  weights unless `--official-weights` names the released .pkl: speed does not depend on the values)
  on a 61×512² series, with `--precision` (CUDA default bf16 autocast) and `--batch-size` windows per
  batch; peak GPU memory from torch.cuda.max_memory_allocated. One untimed warm-up series first.
The table goes to stdout, the raw figures to `--json`. Not a test: the figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth.checkpoint import build_model, load_weights
from synth.config import SHIPPED_WEIGHTS
from synth.engine import CTHNetSynthesizer
from synth.interpolate import InterpolationSynthesizer
from synth.nets import CTHNet, CTHNetSpec
from synth.volume import CTVolume

LUNG2 = Path("/work/pr/pyradiomics-3.0.1/data/lung2_image.nrrd")
Synth = Callable[[CTVolume], CTVolume]


def load_volume(path: Path | None, shape: tuple[int, int, int] | None = None) -> tuple[CTVolume, str]:
    if shape is not None:
        rng = np.random.default_rng(0)
        return CTVolume(rng.uniform(-1000, 1000, shape).astype(np.float32), (5.0, 0.7, 0.7)), f"random {shape}"
    if path is not None and path.exists():
        import SimpleITK as sitk

        image = sitk.ReadImage(str(path))
        sx, sy, sz = image.GetSpacing()
        hu = sitk.GetArrayFromImage(image).astype(np.float32)
        return CTVolume(hu, (float(sz), float(sy), float(sx))), path.name
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1000, (61, 512, 512)).astype(np.float32)
    return CTVolume(hu, (5.0, 0.7, 0.7)), "random 61x512x512"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Synth, volume: CTVolume, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    out = fn(volume)
    sync(device)
    elapsed = time.perf_counter() - t0
    assert out.shape[0] == 5 * (volume.shape[0] - 1) + 1, out.shape
    return elapsed


def interleaved(named: dict[str, Synth], volume: CTVolume, repeats: int,
                device: torch.device) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in named}
    for repeat in range(repeats):
        for name, fn in named.items():
            times[name].append(timed(fn, volume, device))
            print(f"repeat {repeat + 1}: {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    return times


def shipped_engine(device: str, **options: Any) -> CTHNetSynthesizer:
    weights = load_weights(SHIPPED_WEIGHTS)
    return CTHNetSynthesizer(build_model(weights), weights_sha256=weights.sha256, device=device, **options)


def legacy_engine() -> CTHNetSynthesizer:
    """The engine's CPU behaviour before issue 14: training-size overlapping tiles, one window at a time,
    torch's intra-op threads, whole-tensor Swin blocks."""
    engine = shipped_engine("cpu", tile=load_weights(SHIPPED_WEIGHTS).spec.tile_size, cpu_workers=1)
    engine.model.chunk_tokens = None
    return engine


def official_engine(device: str, precision: str, batch_size: int, weights: Path | None) -> CTHNetSynthesizer:
    if weights is not None:
        loaded = load_weights(weights)
        return CTHNetSynthesizer(build_model(loaded), weights_sha256=loaded.sha256, device=device,
                                 precision=precision, batch_size=batch_size)
    torch.manual_seed(0)
    return CTHNetSynthesizer(CTHNet(CTHNetSpec()), weights_sha256="", device=device, precision=precision,
                             batch_size=batch_size)


def crop(volume: CTVolume, size: int) -> CTVolume:
    _, rows, cols = volume.shape
    y0, x0 = max(0, (rows - size) // 2), max(0, (cols - size) // 2)
    return CTVolume(np.ascontiguousarray(volume.hu[:, y0:y0 + size, x0:x0 + size]), volume.spacing_mm)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def machine(device: torch.device) -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], check=False).stdout.strip()
    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {
        "commit": commit, "torch": torch.__version__, "cpu": cpu, "cpus": len(os.sched_getaffinity(0)),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "loadavg_before": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--volume", type=Path, default=LUNG2, help="thick volume (NRRD/NIfTI); random if missing")
    parser.add_argument("--shape", default=None, help="Z,Y,X: a random volume of this shape instead (smoke runs)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved timed runs of each method")
    parser.add_argument("--legacy-crop", type=int, default=0, help="CPU: also time the pre-issue-14 engine on NxN")
    parser.add_argument("--official", action="store_true", help="also the official-size spec (default on CUDA)")
    parser.add_argument("--official-weights", type=Path, default=None, help="the released .pkl, if you have it")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--batch-size", type=int, default=4, help="windows per batch on CUDA")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    engine = shipped_engine(args.device, precision=args.precision, batch_size=args.batch_size)
    device = engine.device
    if device.type != "cuda":
        engine.batch_size = 1
    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else None
    volume, source = load_volume(args.volume, shape)  # type: ignore[arg-type]
    result: dict[str, Any] = {"machine": machine(device), "volume": source, "shape": list(volume.shape),
                              "repeats": args.repeats, "device": str(device)}
    interp = InterpolationSynthesizer(5)
    if device.type == "cuda":
        timed(engine, crop(volume, 64), device)                   # CUDA context, kernels, allocator
    series = interleaved({"interpolation": interp, "cthnet (shipped weights)": engine}, volume, args.repeats,
                         device)
    result["series_s"] = series
    result["cthnet_windows"] = len(engine.plan(volume.shape))
    result["cpu_workers"] = engine.cpu_workers
    if args.legacy_crop and device.type == "cpu":
        small = crop(volume, args.legacy_crop)
        legacy = legacy_engine()
        result["legacy_crop"] = {
            "shape": list(small.shape), "windows_legacy": len(legacy.plan(small.shape)),
            "windows_now": len(engine.plan(small.shape)),
            "s": interleaved({"interpolation": interp, "cthnet legacy engine": legacy, "cthnet now": engine},
                             small, args.repeats, device),
        }
    if args.official or device.type == "cuda":
        result["official"] = run_official(args, device, volume)
    result["peak_memory_gb"] = peak_memory_gb(device)
    result["machine"]["loadavg_after"] = os.getloadavg()
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_official(args: argparse.Namespace, device: torch.device, volume: CTVolume) -> dict[str, Any]:
    official = official_engine(str(device), args.precision, args.batch_size if device.type == "cuda" else 1,
                               args.official_weights)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[official.autocast_dtype]
    timed(official, volume, device)                                  # warm-up series (untimed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [timed(official, volume, device) for _ in range(max(1, args.repeats if device.type == "cpu" else 3))]
    print(f"official-size spec: {', '.join(f'{t:.2f}' for t in times)} s", file=sys.stderr, flush=True)
    return {"s": times, "precision": precision, "batch_size": official.batch_size,
            "windows": len(official.plan(volume.shape)), "peak_memory_gb": peak_memory_gb(device),
            "weights": str(args.official_weights) if args.official_weights else "random (speed only)",
            "parameters": sum(p.numel() for p in official.model.parameters())}


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    series = result["series_s"]
    base = median(series["interpolation"])
    lines = [f"{result['volume']} {tuple(result['shape'])}, device {result['device']}, {m['cpus']} CPUs ({m['cpu']}), "
             f"torch {m['torch']}, commit {m['commit']}, load {m['loadavg_before'][0]:.1f} -> "
             f"{m['loadavg_after'][0]:.1f}, median of {result['repeats']}",
             "", "| what | seconds | vs interpolation (same run) |", "|---|---|---|"]
    for name, values in series.items():
        lines.append(f"| {name}, whole series | {median(values):.2f} | {median(values) / base:.1f}x |")
    if "legacy_crop" in result:
        lc = result["legacy_crop"]
        ref = median(lc["s"]["interpolation"])
        for name, values in lc["s"].items():
            lines.append(f"| {name}, crop {tuple(lc['shape'])} | {median(values):.2f} | {median(values) / ref:.1f}x |")
    if "official" in result:
        off = result["official"]
        lines.append(f"| official-size spec ({off['parameters']} params, {off['precision']}, batch "
                     f"{off['batch_size']}, {off['windows']} windows), whole series | {median(off['s']):.2f} | "
                     f"{median(off['s']) / base:.1f}x |")
        lines.append(f"\nofficial-size spec peak memory: {off['peak_memory_gb']:.2f} GB")
    lines.append(f"cthnet windows per series: {result['cthnet_windows']}; CPU workers: {result['cpu_workers']}; "
                 f"process peak memory {result['peak_memory_gb']:.2f} GB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
