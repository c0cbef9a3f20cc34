"""Training CTHNet with the official recipe (spec §2), on paired or simulated data.

Defaults are the official ones: one random crop of `in_slices` thick slices x tile² per case per
epoch (thick z start uniform in [0, Z - in_slices - 1], y/x uniform), the central `out_slices` thin
slices as target (thin index ratio·z_s + crop onwards), horizontal flip with p = 0.2, L1 loss, AdamW
(lr 3e-4, weight decay 1e-4), batch 1. Every `val_every` epochs the scheduler
(ReduceLROnPlateau, factor 0.1, patience 6, threshold 1e-6) is stepped with the epoch's mean
training loss, and once the training loss is below `val_below_loss` the validation PSNR is measured
on a central crop of each validation volume (windows of in_slices thick slices at stride
in_slices - 2, edges excluded as in the official validation); the best model is kept. Training stops
after `max_lr_drops` learning-rate drops, `epochs` epochs or `max_minutes`.
bf16 autocast on CUDA; fp32 on CPU. Seeded; resumable from `last.pt`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from synth.checkpoint import save_checkpoint
from synth.device import autocast, resolve_device, resolve_precision
from synth.nets import CTHNet, CTHNetSpec
from synth.normalize import HU_MIN, HU_RANGE, hu_to_unit
from synth.research.datasets import PairedCase
from synth.research.metrics import EDGE_SLICES, psnr

logger = logging.getLogger(__name__)

STATE_FILE = "last.pt"
BEST_FILE = "best.pt"

# ~0.9 M parameters; about 0.5 s per 8x64² step on 2 CPU cores
_CPU_SMALL: dict[str, Any] = dict(enc_dim=16, enc_heads=4, enc_depth=2, feat_channels=4, t_depth=2, i_layers=1,
                                  i_depth=2, dec_heads=4, tile_size=64)

SPEC_PRESETS: dict[str, dict[str, Any]] = {
    "official": {},
    "cpu-small": _CPU_SMALL,
    # cpu-small learning only the correction to BIS (global residual, not in the official code); the
    # shipped phantom-trained model (synth/weights/MODEL_CARD.md)
    "cpu-residual": _CPU_SMALL | {"global_residual": True},
    # for tests: a few thousand parameters
    "tiny": dict(enc_dim=8, enc_heads=2, enc_depth=1, feat_channels=2, t_fold=4, t_depth=1, t_window=4,
                 i_layers=1, i_depth=1, i_window=4, dec_heads=2, mlp_ratio=2, tile_size=16, in_slices=4,
                 enc_window=(2, 2, 2), crop=1),
}


def spec_preset(name: str) -> CTHNetSpec:
    if name not in SPEC_PRESETS:
        raise ValueError(f"spec preset must be one of {sorted(SPEC_PRESETS)}, got {name!r}")
    return CTHNetSpec(**SPEC_PRESETS[name])


@dataclass(frozen=True, slots=True)
class TrainConfig:
    epochs: int = 3000
    lr: float = 3e-4
    weight_decay: float = 1e-4
    val_every: int = 5
    patience: int = 6
    plateau_threshold: float = 1e-6
    max_lr_drops: int = 4
    val_below_loss: float = 0.01
    flip_p: float = 0.2
    crops_per_case: int = 1
    val_crop: int = 256                 # central in-plane crop for validation (official 256)
    seed: int = 0
    device: str = "auto"
    max_minutes: float = 0.0            # 0: no wall-time limit
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "val_every": self.val_every, "crops_per_case": self.crops_per_case,
                    "val_crop": self.val_crop, "max_lr_drops": self.max_lr_drops}
        for name, value in positive.items():
            if type(value) is not int or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.patience >= 0):
            raise ValueError(
                f"TrainConfig needs lr > 0, weight_decay >= 0 and patience >= 0, got {self.lr}, "
                f"{self.weight_decay}, {self.patience}"
            )
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"TrainConfig.flip_p must lie in [0, 1], got {self.flip_p}")
        if self.max_minutes < 0:
            raise ValueError(f"TrainConfig.max_minutes must not be negative, got {self.max_minutes}")


@dataclass
class TrainResult:
    epochs_run: int
    best_val_psnr: float
    best_epoch: int
    lr_drops: int
    stopped_because: str
    history: list[dict[str, float]] = field(default_factory=list)


CheckpointWriter = Callable[[nn.Module, CTHNetSpec, dict[str, Any], Path], None]


def default_checkpoint_writer(model: nn.Module, spec: CTHNetSpec, metadata: dict[str, Any], path: Path) -> None:
    """Our checkpoint format (synth.checkpoint): state_dict + spec + metadata + sha256."""
    if not isinstance(model, CTHNet):
        raise TypeError(f"the checkpoint writer needs a CTHNet, got {type(model).__name__}")
    save_checkpoint(path, model, metadata=metadata)


@dataclass(frozen=True, slots=True)
class _Case:
    name: str
    thick: npt.NDArray[np.float32]      # [0, 1]
    thin: npt.NDArray[np.float32]


def _prepare(cases: Sequence[PairedCase], spec: CTHNetSpec, crop: int, role: str) -> list[_Case]:
    out = []
    for case in cases:
        factor = round(case.thick.spacing_mm[0] / case.thin.spacing_mm[0])
        if factor != spec.ratio:
            raise ValueError(f"{role} case {case.name}: thick/thin ratio {factor}, the spec needs {spec.ratio}")
        z, y, x = case.thick.shape
        if z < spec.in_slices or y < crop or x < crop:
            raise ValueError(
                f"{role} case {case.name}: thick volume {case.thick.shape} is smaller than a "
                f"{spec.in_slices} x {crop} x {crop} crop"
            )
        out.append(_Case(case.name, hu_to_unit(case.thick.hu), hu_to_unit(case.thin.hu)))
    if not out:
        raise ValueError(f"no {role} cases")
    return out


def sample_crop(
    case: _Case, spec: CTHNetSpec, rng: np.random.Generator, flip_p: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """One training pair: thick (in_slices, tile, tile) and thin target (out_slices, tile, tile)."""
    n = spec.tile_size
    z, y, x = case.thick.shape
    z_s = int(rng.integers(0, max(z - spec.in_slices - 1, 0) + 1))
    y_s, x_s = int(rng.integers(0, y - n + 1)), int(rng.integers(0, x - n + 1))
    thick = case.thick[z_s : z_s + spec.in_slices, y_s : y_s + n, x_s : x_s + n]
    t0 = spec.ratio * z_s + spec.crop
    thin = case.thin[t0 : t0 + spec.out_slices, y_s : y_s + n, x_s : x_s + n]
    if rng.random() < flip_p:
        thick, thin = thick[:, :, ::-1], thin[:, :, ::-1]
    return np.ascontiguousarray(thick), np.ascontiguousarray(thin)


def window_starts(n_thick: int, in_slices: int) -> list[int]:
    """Official z windows: 0, s, 2s, … (stride in_slices - 2) while start + in_slices < Z, then Z - in_slices."""
    stride = max(in_slices - 2, 1)
    starts = list(range(0, max(n_thick - in_slices, 0), stride)) or [0]
    if starts[-1] != n_thick - in_slices:
        starts.append(n_thick - in_slices)
    return starts


@torch.no_grad()
def predict_central(model: CTHNet, thick: npt.NDArray[np.float32], device: torch.device,
                    precision: torch.dtype | None = None) -> npt.NDArray[np.float32]:
    """Validation inference as the official val.py: windows written (not blended) into a thin buffer."""
    spec = model.spec
    z = thick.shape[0]
    out = np.zeros((spec.ratio * (z - 1) + 1, *thick.shape[1:]), dtype=np.float32)
    for s in window_starts(z, spec.in_slices):
        x = torch.from_numpy(np.ascontiguousarray(thick[s : s + spec.in_slices]))[None, None].to(device)
        with autocast(device, precision):
            y = model(x).float().clamp(0.0, 1.0)
        t0 = spec.ratio * s + spec.crop
        out[t0 : t0 + spec.out_slices] = y[0, 0].cpu().numpy()
    return out


def validate(model: CTHNet, cases: Sequence[_Case], crop: int, device: torch.device,
             precision: torch.dtype | None = None) -> float:
    """Mean PSNR (dB, MAX = 1) over the central crop, excluding EDGE_SLICES thin slices at each end."""
    step = model.spec.window_step
    model.eval()
    scores = []
    for case in cases:
        _, y, x = case.thick.shape
        size = min(crop, y, x) // step * step
        y0, x0 = (y - size) // 2, (x - size) // 2
        thick = case.thick[:, y0 : y0 + size, x0 : x0 + size]
        truth = case.thin[:, y0 : y0 + size, x0 : x0 + size]
        pred = predict_central(model, thick, device, precision)
        scale = np.float32(HU_RANGE)
        scores.append(psnr(truth * scale + np.float32(HU_MIN), pred * scale + np.float32(HU_MIN), EDGE_SLICES))
    model.train()
    return float(np.mean(scores))


def train(
    spec: CTHNetSpec,
    train_cases: Sequence[PairedCase],
    val_cases: Sequence[PairedCase],
    out_dir: Path,
    cfg: TrainConfig | None = None,
    resume: bool = False,
    data_description: str = "",
    write_checkpoint: CheckpointWriter = default_checkpoint_writer,
) -> TrainResult:
    """Train, writing `best.pt` (our checkpoint format) and the resumable `last.pt` under out_dir."""
    run = _Run(spec, train_cases, val_cases, out_dir, cfg or TrainConfig(), data_description, write_checkpoint)
    if resume:
        run.resume()
    return run.loop()


class _Run:
    """One training run's state: model, optimizer, scheduler, RNGs, the result so far."""

    def __init__(self, spec: CTHNetSpec, train_cases: Sequence[PairedCase], val_cases: Sequence[PairedCase],
                 out_dir: Path, cfg: TrainConfig, data_description: str, write_checkpoint: CheckpointWriter) -> None:
        self.spec, self.cfg, self.out_dir = spec, cfg, out_dir
        self.data_description, self.write_checkpoint = data_description, write_checkpoint
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(self.device, "auto")      # bf16 (or fp16) on CUDA, fp32 on CPU
        self.train_data = _prepare(train_cases, spec, spec.tile_size, "training")
        self.val_data = _prepare(val_cases, spec, 1, "validation")
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.model = CTHNet(spec).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=0.1, patience=cfg.patience, threshold=cfg.plateau_threshold)
        self.result = TrainResult(0, -math.inf, -1, 0, "epochs")
        self.start_epoch = 0
        self.state_path = out_dir / STATE_FILE

    def resume(self) -> None:
        if not self.state_path.exists():
            logger.info("no %s to resume from; starting afresh", self.state_path)
            return
        state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        if state["spec"] != self.spec.to_dict():
            raise ValueError(f"{self.state_path}: saved spec differs from the requested one; cannot resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.start_epoch = int(state["epoch"]) + 1
        self.result = TrainResult(self.start_epoch, float(state["best_val_psnr"]), int(state["best_epoch"]),
                                  int(state["lr_drops"]), "epochs", list(state["history"]))
        logger.info("resumed from %s at epoch %d", self.state_path, self.start_epoch)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def loop(self) -> TrainResult:
        cfg, result = self.cfg, self.result
        started = time.monotonic()
        epochs = range(self.start_epoch, cfg.epochs)
        bar: Any = epochs
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(epochs, initial=self.start_epoch, total=cfg.epochs, desc="train", unit="epoch",
                       dynamic_ncols=True)
        self.model.train()
        for epoch in bar:
            mean_loss = self.epoch()
            row: dict[str, float] = {"epoch": float(epoch), "loss": mean_loss, "lr": self.lr}
            if epoch % cfg.val_every == 0:
                self.schedule_and_validate(epoch, mean_loss, row)
            result.history.append(row)
            result.epochs_run = epoch + 1
            if cfg.progress:
                bar.set_postfix(loss=f"{mean_loss:.4f}", val_psnr=f"{result.best_val_psnr:.2f}", lr=f"{self.lr:.0e}")
            out_of_time = cfg.max_minutes > 0 and time.monotonic() - started > 60.0 * cfg.max_minutes
            if epoch % cfg.val_every == 0 or out_of_time or epoch + 1 == cfg.epochs:
                _save_state(self.state_path, self.model, self.optimizer, self.scheduler, self.rng, epoch, self.spec,
                            result)
            if result.lr_drops >= cfg.max_lr_drops:
                result.stopped_because = f"{result.lr_drops} learning-rate drops"
                break
            if out_of_time:
                result.stopped_because = f"time limit of {cfg.max_minutes:g} min"
                break
        if result.best_epoch < 0:
            logger.warning("validation never ran (training loss stayed ≥ %g); no best checkpoint",
                           cfg.val_below_loss)
        return result

    def epoch(self) -> float:
        """One pass over the training crops; returns the mean L1 loss."""
        losses = []
        order = self.rng.permutation(len(self.train_data) * self.cfg.crops_per_case) % len(self.train_data)
        for index in order:
            thick, thin = sample_crop(self.train_data[int(index)], self.spec, self.rng, self.cfg.flip_p)
            x = torch.from_numpy(thick)[None, None].to(self.device)
            target = torch.from_numpy(thin)[None, None].to(self.device)
            with autocast(self.device, self.precision):
                pred = self.model(x)
            loss = nn.functional.l1_loss(pred.float(), target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))

    def schedule_and_validate(self, epoch: int, mean_loss: float, row: dict[str, float]) -> None:
        before = self.lr
        self.scheduler.step(mean_loss)
        if self.lr < before:
            self.result.lr_drops += 1
            logger.info("epoch %d: learning rate %.1e → %.1e", epoch, before, self.lr)
        if mean_loss >= self.cfg.val_below_loss:
            return
        val_psnr = validate(self.model, self.val_data, self.cfg.val_crop, self.device, self.precision)
        row["val_psnr"] = val_psnr
        if val_psnr > self.result.best_val_psnr:
            self.result.best_val_psnr, self.result.best_epoch = val_psnr, epoch
            metadata = {"training_data": self.data_description or "unspecified", "epochs": epoch + 1,
                        "val_psnr_db": val_psnr, "train_config": asdict(self.cfg),
                        "train_cases": len(self.train_data), "val_cases": len(self.val_data)}
            self.write_checkpoint(self.model, self.spec, metadata, self.out_dir / BEST_FILE)


def _save_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    rng: np.random.Generator, epoch: int, spec: CTHNetSpec, result: TrainResult,
) -> None:
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(), "numpy_rng": rng.bit_generator.state, "epoch": epoch,
        "spec": spec.to_dict(), "best_val_psnr": result.best_val_psnr, "best_epoch": result.best_epoch,
        "lr_drops": result.lr_drops, "history": result.history,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
