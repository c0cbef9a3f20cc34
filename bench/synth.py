"""CTHNet inference throughput for the default (official) spec: per window and per series.

    .venv/bin/python bench/synth.py                          # CPU here: 1 warm-up + 2 timed windows
    .venv/bin/python bench/synth.py --device cuda --precision bf16 --batch-size 8 --series
    .venv/bin/python bench/synth.py --json synth.json

Measures, with random weights (speed does not depend on the values):
- seconds per 8×256² window (one forward of CTHNet, batch `--batch-size`, inference_mode);
- FLOPs per window, counted with torch.utils.flop_counter on an 8×64² window and scaled ×16 (every
  layer is per-pixel or per fixed-size window, so the count is exactly linear in the plane);
  achieved TFLOP/s, and that against the device's nominal peak;
- peak memory: CUDA max_memory_allocated, or the process's peak RSS on CPU;
- seconds per 61×512² series: measured through the whole engine with `--series` (tiling, blending,
  transfers included); otherwise extrapolated = windows in the engine's plan × seconds per window.
  The official code's plan for the same series (10 z windows × 4 tiles) is given for comparison.
Not a test: the figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth.engine import CTHNetSynthesizer
from synth.nets import CTHNet, CTHNetSpec
from synth.volume import CTVolume

OFFICIAL_WINDOW_TFLOP = 1.785  # spec §1.7, counted on the official code
OFFICIAL_CPU_S_PER_WINDOW = 40.0  # spec §1.7, official code, 2-core CPU, fp32
# nominal dense peaks (TFLOP/s); the CPU figure assumes 2 × 512-bit FMA units per core at 2.6 GHz
GPU_PEAK_TFLOPS = {
    "H100": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0},
    "H200": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0},
    "A100": {"fp32": 19.5, "bf16": 312.0, "fp16": 312.0},
}


def window_flops(spec: CTHNetSpec) -> float:
    model = CTHNet(spec).eval()
    small = torch.rand(1, 1, spec.in_slices, 64, 64)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(small)
    return float(counter.get_total_flops()) * (spec.tile_size / 64) ** 2


def nominal_peak(device: torch.device, precision: str) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK_TFLOPS.items():
            if key in name:
                return peaks[precision], f"{key} dense {precision}, datasheet"
        return float("nan"), f"unknown GPU {name}"
    cores = torch.get_num_threads()
    return cores * 2.6e9 * 64 / 1e12, f"{cores} cores × 2.6 GHz × 64 fp32 FLOP/cycle (assumed)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--windows", type=int, default=2, help="timed forward calls (after one warm-up)")
    parser.add_argument("--series", action="store_true", help="also time a whole 61×512² series through the engine")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--chunk-tokens", type=int, default=None, help="in-place chunked Swin blocks (CPU)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = CTHNetSpec()
    model = CTHNet(spec)
    engine = CTHNetSynthesizer(model, weights_sha256="", device=args.device, precision=args.precision,
                               batch_size=args.batch_size, chunk_tokens=args.chunk_tokens)
    device = engine.device
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[engine.autocast_dtype]
    load_before = os.getloadavg()
    flops = window_flops(spec)

    def forward(x: torch.Tensor) -> float:
        sync(device)
        t0 = time.perf_counter()
        if engine.autocast_dtype is None:
            model(x)
        else:
            with torch.autocast(device.type, dtype=engine.autocast_dtype):
                model(x)
        sync(device)
        return time.perf_counter() - t0

    full = torch.rand(args.batch_size, 1, spec.in_slices, spec.tile_size, spec.tile_size, device=device)
    with torch.inference_mode():
        # warm-up: a full window on CUDA (kernel selection, allocator), a 64² one on CPU
        warm = forward(full if device.type == "cuda" else full[:, :, :, :64, :64].contiguous())
        print(f"warm-up: {warm:.2f} s", file=sys.stderr, flush=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for i in range(args.windows):
            elapsed = forward(full)
            print(f"forward {i}: {elapsed:.2f} s for {args.batch_size} window(s)", file=sys.stderr, flush=True)
            times.append(elapsed / args.batch_size)
    s_per_window = float(np.median(times))
    peak_mem_gb = (
        torch.cuda.max_memory_allocated(device) / 1e9
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    )
    peak_tflops, peak_note = nominal_peak(device, precision)
    achieved = flops / s_per_window / 1e12

    series_shape = (61, 512, 512)
    plan_windows = len(engine.plan(series_shape))
    series: dict[str, object] = {
        "windows_in_plan": plan_windows,
        "official_plan_windows": 40,
        "extrapolated_s": plan_windows * s_per_window,
    }
    if args.series:
        rng = np.random.default_rng(0)
        volume = CTVolume(rng.uniform(-1000, 1000, series_shape).astype(np.float32), (5.0, 0.7, 0.7))
        sync(device)
        t0 = time.perf_counter()
        out = engine(volume)
        sync(device)
        series["measured_s"] = time.perf_counter() - t0
        series["output_shape"] = list(out.shape)

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": precision,
        "batch_size": args.batch_size,
        "chunk_tokens": args.chunk_tokens,
        "s_per_window": s_per_window,
        "window_times_s": times,
        "window_tflop": flops / 1e12,
        "achieved_tflops": achieved,
        "nominal_peak_tflops": peak_tflops,
        "peak_note": peak_note,
        "fraction_of_peak": achieved / peak_tflops if peak_tflops == peak_tflops else None,
        "peak_memory_gb": peak_mem_gb,
        "speedup_vs_official_cpu_window": OFFICIAL_CPU_S_PER_WINDOW / s_per_window if device.type == "cpu" else None,
        "series_61x512x512": series,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
