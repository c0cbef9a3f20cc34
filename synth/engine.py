"""Backend `cthnet`: CTHNet inference over a whole volume, every thin slice predicted, no seams.

Against the official inference (spec §3) this engine:
- predicts every thin slice, the first and last three too (reflect-padding in z instead of zeros),
  and works for any N ≥ 2 thick slices (the official code needs N > 8);
- runs the whole plane as one in-plane window (rounded up to the network's window grid): the network
  has no absolute in-plane position, so a larger window gives the same values away from its borders
  and has no inner tile borders to blend (no redundant overlap). Planes beyond `max_tile` (default
  512) are tiled with overlapping `max_tile` tiles, blended with feathered weights (zero in a margin
  at inner tile edges, then a linear ramp); an explicit `tile` keeps that tiling at any size. z
  windows overlap and blend the same way. Nothing is overwritten, nothing is left unpredicted;
- streams windows into one accumulator (memory: the volume, its thin accumulator and the windows in
  flight), under torch.inference_mode. CUDA: batches of windows, bf16/fp16 autocast, pinned host
  memory and non-blocking copies; a CUDA out-of-memory halves the batch and carries on. CPU: fp32,
  `cpu_workers` windows at once, each on one thread with in-place chunked Swin blocks (no barrier
  between cores, so a busy core does not stall the other; bench/README.md has the figures);
- keeps the output float32 HU (no int16 truncation) and reports progress.

Spacing policy: the network maps 5 mm to 1 mm (×5) and is applied as is to any slice spacing d in
[synth.min_input_spacing_mm, synth.max_input_spacing_mm] (default 4–6 mm), giving d/5; anything
else is refused with UnsupportedSpacingError rather than producing untrained-for output. We do not
resample to 5 mm first: that would interpolate the very slices the model is meant to replace.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

import synth
from synth.checkpoint import build_model, load_weights
from synth.config import SynthConfig
from synth.device import autocast, resolve_device, resolve_precision
from synth.nets import CTHNetSpec
from synth.normalize import hu_to_unit, unit_to_hu
from synth.seam import ProgressCallback, SynthesisRefusedError, SynthIdentity
from synth.tiling import VolumePlan, plan_volume
from synth.volume import CTVolume

logger = logging.getLogger(__name__)


CPU_CHUNK_TOKENS = 4096
"""Tokens per in-place chunk of a Swin block on CPU (keeps its qkv and MLP intermediates in cache)."""


def default_cpu_workers() -> int:
    """Windows computed at once on CPU: as many as torch would use threads (its default is one per core;
    OMP_NUM_THREADS or torch.set_num_threads lower it, e.g. for several workers on one machine), at most
    one per core this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, torch.get_num_threads()))


def to_device(array: npt.NDArray[np.float32], device: torch.device) -> torch.Tensor:
    """A numpy array on `device`; to CUDA through pinned memory with a non-blocking copy."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class UnsupportedSpacingError(SynthesisRefusedError):
    """The input slice spacing is outside the range the model is applied to."""

    reason = "spacing_out_of_range"

    def __init__(self, spacing_mm: float, min_mm: float, max_mm: float, ratio: int) -> None:
        super().__init__(
            f"input slice spacing {spacing_mm:.3g} mm is outside {min_mm:g}-{max_mm:g} mm, the range this "
            f"CTHNet (trained for 5 mm -> 1 mm, x{ratio}) is applied to; set "
            "synth.min_input_spacing_mm/max_input_spacing_mm to change it"
        )
        self.spacing_mm = spacing_mm


class CTHNetSynthesizer:
    """Implements synth.seam.Synthesizer with a CTHNet-like model (any module with `.spec`)."""

    def __init__(self, model: nn.Module, *, weights_sha256: str, name: str = "CTHNet", device: str = "auto",
                 batch_size: int = 1, precision: str = "auto", z_stride: int | None = None, tile: int | None = None,
                 max_tile: int = 512, min_overlap: int | None = None, margin: int | None = None,
                 min_spacing_mm: float = 4.0, max_spacing_mm: float = 6.0, chunk_tokens: int | None = None,
                 cpu_workers: int | None = None, caution: str = "") -> None:
        spec = getattr(model, "spec", None)
        if not isinstance(spec, CTHNetSpec):
            raise TypeError(f"CTHNetSynthesizer needs a model with a CTHNetSpec `spec`, got {type(model).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 < min_spacing_mm <= max_spacing_mm:
            raise ValueError(f"spacing range must satisfy 0 < min <= max, got {min_spacing_mm}, {max_spacing_mm}")
        self.spec = spec
        step = spec.window_step
        for option, value in (("tile", tile), ("max_tile", max_tile)):
            if value is not None and (value < step or value % step):
                raise ValueError(f"{option} must be a positive multiple of {step} for this spec, got {value}")
        self.tile, self.max_tile = tile, max_tile
        self.min_overlap, self.margin = min_overlap, margin
        # default: windows overlap by one thick step (5 thin slices of the 30 returned)
        self.z_stride = max(1, spec.out_slices // spec.ratio - 1) if z_stride is None else z_stride
        self.align = step
        self.plan((2, 1, 1))                                          # validates the tiling options now
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_precision(self.device, precision)
        self.batch_size = batch_size
        self.min_spacing_mm, self.max_spacing_mm = min_spacing_mm, max_spacing_mm
        if chunk_tokens is not None and chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be positive or None, got {chunk_tokens}")
        if cpu_workers is not None and cpu_workers < 1:
            raise ValueError(f"cpu_workers must be positive or None, got {cpu_workers}")
        on_cpu = self.device.type == "cpu"
        self.cpu_workers = (cpu_workers or default_cpu_workers()) if on_cpu else 1
        if on_cpu and chunk_tokens is None:
            chunk_tokens = CPU_CHUNK_TOKENS
        self.model = model.to(self.device).eval()
        if hasattr(self.model, "chunk_tokens"):
            # In-place chunks of windows keep Swin intermediates in cache: a clear win on CPU with one
            # thread per window (see bench/README.md); on CUDA whole tensors are faster.
            setattr(self.model, "chunk_tokens", chunk_tokens)  # noqa: B010 (nn.Module typing of attributes)
        self.factor = spec.ratio
        self.identity = SynthIdentity(backend="cthnet", name=name, version=synth.__version__,
                                      weights_sha256=weights_sha256, is_model=True, caution=caution)

    @classmethod
    def from_config(cls, cfg: SynthConfig, *, precision: str = "auto", chunk_tokens: int | None = None,
                    cpu_workers: int | None = None) -> CTHNetSynthesizer:
        """Load weights (our checkpoint or the official .pkl), check them, and place the model.

        CPU runs `cpu_workers` single windows at once (batches gain nothing there); synth.batch_size
        applies on CUDA.
        """
        weights = load_weights(cfg.weights_path)
        if cfg.factor != weights.spec.ratio:
            raise ValueError(f"synth.factor is {cfg.factor} but the CTHNet weights are for x{weights.spec.ratio}")
        device = resolve_device(cfg.device)
        model = build_model(weights)
        n_params = sum(p.numel() for p in model.parameters())
        name = (f"CTHNet thick-to-thin CT synthesis (Yu et al., npj Digit. Med. 2024), "
                f"{weights.source} weights, {n_params} parameters")
        caution = ""
        if weights.metadata.not_for_clinical_use:
            caution = f"NOT FOR CLINICAL USE: weights trained on {weights.metadata.training_data}"
            logger.warning("synth weights %s are marked not for clinical use (trained on %s); every derived "
                           "series says so", weights.sha256[:12], weights.metadata.training_data)
        return cls(model, weights_sha256=weights.sha256, name=name, caution=caution, device=str(device),
                   precision=precision, chunk_tokens=chunk_tokens, cpu_workers=cpu_workers,
                   batch_size=cfg.batch_size if device.type == "cuda" else 1,
                   min_spacing_mm=cfg.spacing_range_mm[0], max_spacing_mm=cfg.spacing_range_mm[1])

    def plane_tile(self, length: int) -> int:
        """The in-plane window along an axis of `length` pixels: `tile` if set, else the whole axis
        rounded up to the window grid (at least two grid steps), at most `max_tile`."""
        if self.tile is not None:
            return self.tile
        return min(self.max_tile, max(2 * self.align, -(-length // self.align) * self.align))

    def plan(self, shape: tuple[int, int, int]) -> VolumePlan:
        s = self.spec
        ty, tx = self.plane_tile(shape[1]), self.plane_tile(shape[2])
        oy, ox = (ty // 4, tx // 4) if self.min_overlap is None else (self.min_overlap, self.min_overlap)
        my, mx = (ty // 16, tx // 16) if self.margin is None else (self.margin, self.margin)
        return plan_volume(shape, s.ratio, s.in_slices, s.crop, (ty, tx), self.z_stride, (oy, ox), (my, mx),
                           self.align)

    def check_spacing(self, spacing_mm: float) -> None:
        if not self.min_spacing_mm <= spacing_mm <= self.max_spacing_mm:
            raise UnsupportedSpacingError(spacing_mm, self.min_spacing_mm, self.max_spacing_mm, self.spec.ratio)

    def __call__(self, volume: CTVolume, progress: ProgressCallback | None = None) -> CTVolume:
        dz, dy, dx = volume.spacing_mm
        self.check_spacing(dz)
        plan = self.plan(volume.shape)
        unit = plan.pad(hu_to_unit(volume.hu))
        thin = self.predict_unit(unit, plan, progress)
        return CTVolume(unit_to_hu(thin), (dz / self.spec.ratio, dy, dx))

    def predict_unit(self, padded: npt.NDArray[np.float32], plan: VolumePlan,
                     progress: ProgressCallback | None = None) -> npt.NDArray[np.float32]:
        """Blend all windows of `plan` over the padded [0, 1] input; returns the [0, 1] thin volume."""
        dev = self.device
        src = to_device(padded, dev)
        spans = (plan.z.span, plan.y.span, plan.x.span)
        acc = torch.zeros(tuple(hi - lo for lo, hi in spans), dtype=torch.float32, device=dev)
        profiles = [[to_device(w, dev) for w in axis.weights] for axis in (plan.z, plan.y, plan.x)]
        windows = list(plan.windows())
        done = 0
        with torch.inference_mode():
            parallel = self.cpu_workers > 1 and self.batch_size == 1
            outputs = self._cpu_outputs(src, plan, windows) if parallel else self._batched_outputs(src, plan, windows)
            for chunk, out in outputs:
                for (k, j, i), window in zip(chunk, out, strict=True):
                    z0 = plan.z.out_starts[k] - spans[0][0]
                    y0 = plan.y.out_starts[j] - spans[1][0]
                    x0 = plan.x.out_starts[i] - spans[2][0]
                    wz, wy, wx = profiles[0][k], profiles[1][j], profiles[2][i]
                    weight = wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
                    target = acc[z0:z0 + plan.z.out_size, y0:y0 + plan.y.out_size, x0:x0 + plan.x.out_size]
                    target.addcmul_(window, weight)
                done += len(chunk)
                if progress is not None:
                    progress(done, len(windows))
            (zlo, _), (ylo, _), (xlo, _) = spans
            acc = acc[-zlo:-zlo + plan.z.length, -ylo:-ylo + plan.y.length, -xlo:-xlo + plan.x.length]
            acc /= to_device(plan.z.weight_sum(), dev)[:, None, None]
            acc /= to_device(plan.y.weight_sum(), dev)[None, :, None]
            acc /= to_device(plan.x.weight_sum(), dev)[None, None, :]
            result: npt.NDArray[np.float32] = acc.cpu().numpy()
        return result

    def _batched_outputs(self, src: torch.Tensor, plan: VolumePlan, windows: list[tuple[int, int, int]]
                         ) -> Iterator[tuple[Sequence[tuple[int, int, int]], torch.Tensor]]:
        """Batches of windows in order, in this thread; a CUDA out-of-memory halves the batch."""
        batch, done = self.batch_size, 0
        while done < len(windows):
            chunk = windows[done:done + batch]
            try:
                out = self._forward(src, plan, chunk)
            except torch.OutOfMemoryError:
                if batch == 1:
                    raise
                batch //= 2
                logger.warning("out of memory with a batch of %d windows; going on with %d", 2 * batch, batch)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            done += len(chunk)
            yield chunk, out

    def _cpu_outputs(self, src: torch.Tensor, plan: VolumePlan, windows: list[tuple[int, int, int]]
                     ) -> Iterator[tuple[Sequence[tuple[int, int, int]], torch.Tensor]]:
        """One window per task on `cpu_workers` single-threaded workers, yielded in order; at most
        cpu_workers + 1 windows are in flight (memory stays bounded)."""
        def run(chunk: list[tuple[int, int, int]]) -> torch.Tensor:
            with torch.inference_mode():
                return self._forward(src, plan, chunk)

        with ThreadPoolExecutor(self.cpu_workers, thread_name_prefix="cthnet",
                                initializer=torch.set_num_threads, initargs=(1,)) as pool:
            pending: list[tuple[list[tuple[int, int, int]], Future[torch.Tensor]]] = []
            try:
                for window in windows:
                    pending.append(([window], pool.submit(run, [window])))
                    if len(pending) > self.cpu_workers:
                        chunk, future = pending.pop(0)
                        yield chunk, future.result()
                while pending:
                    chunk, future = pending.pop(0)
                    yield chunk, future.result()
            finally:
                for _, future in pending:
                    future.cancel()

    def _forward(self, src: torch.Tensor, plan: VolumePlan, chunk: Sequence[tuple[int, int, int]]) -> torch.Tensor:
        """(B, out_slices, tile, tile) clamped to [0, 1], float32."""
        n, t = plan.z.in_size, plan.y.in_size
        batch = torch.stack([
            src[plan.z.in_starts[k]:plan.z.in_starts[k] + n,
                plan.y.in_starts[j]:plan.y.in_starts[j] + t,
                plan.x.in_starts[i]:plan.x.in_starts[i] + plan.x.in_size]
            for k, j, i in chunk
        ])[:, None]
        with autocast(self.device, self.autocast_dtype):
            out = self.model(batch)
        result: torch.Tensor = out[:, 0].float().clamp_(0.0, 1.0)
        return result
