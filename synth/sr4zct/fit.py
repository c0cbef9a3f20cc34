"""Training within a wall-clock budget, and the off-axis validation PSNR (network vs BIS)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from synth.normalize import HU_MAX, HU_MIN, HU_RANGE
from synth.sr4zct.net import HU_PER_UNIT, SubPixelCNN, pad_planes, to_net
from synth.sr4zct.pairs import Pair

Clock = Callable[[], float]
AIR_HU = -900.0


@dataclass(frozen=True, slots=True)
class FitSettings:
    lr: float = 1e-3
    batch: int = 16
    crop_rows: int = 12           # thick rows per crop (× factor output rows)
    crop_cols: int = 96
    max_steps: int = 1_000_000


@dataclass(frozen=True, slots=True)
class FitResult:
    steps: int
    seconds: float
    last_loss: float


def fit(net: SubPixelCNN, pairs: Sequence[Pair], *, deadline: float, settings: FitSettings,
        rng: np.random.Generator, clock: Clock = time.monotonic) -> FitResult:
    """Adam on random crops of `pairs` (MSE on the residual) until `clock()` passes `deadline`."""
    start = clock()
    if not pairs or start >= deadline:
        return FitResult(steps=0, seconds=0.0, last_loss=math.nan)
    spec = net.spec
    padded = [pad_planes(to_net(torch.from_numpy(p.thick))[None, None], spec)[0, 0] for p in pairs]
    targets = [torch.from_numpy(p.residual) / HU_PER_UNIT for p in pairs]
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    net.train()
    steps, loss_value = 0, math.nan
    while clock() < deadline and steps < settings.max_steps:
        x, y = _batch(pairs, padded, targets, spec.factor, settings, rng, spec.radius)
        loss = torch.mean((net(x) - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        steps += 1
        loss_value = float(loss.detach())
    net.eval()
    return FitResult(steps=steps, seconds=clock() - start, last_loss=loss_value)


def _batch(pairs: Sequence[Pair], padded: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], factor: int,
           settings: FitSettings, rng: np.random.Generator,
           radius: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    rr, rc = radius
    xs, ys = [], []
    for _ in range(settings.batch):
        for _attempt in range(8):                      # prefer crops with some tissue in them
            i = int(rng.integers(len(pairs)))
            n, w = pairs[i].thick.shape
            h, cw = min(settings.crop_rows, n - 1), min(settings.crop_cols, w)
            r0, c0 = int(rng.integers(n - h)), int(rng.integers(w - cw + 1))
            if pairs[i].thick[r0:r0 + h, c0:c0 + cw].max() > AIR_HU:
                break
        xs.append(padded[i][r0:r0 + h + 2 * rr, c0:c0 + cw + 2 * rc])
        ys.append(targets[i][r0 * factor:(r0 + h) * factor, c0:c0 + cw])
    if len({x.shape for x in xs}) > 1:                 # pairs of different sizes: crop to the smallest
        hh = min(x.shape[0] for x in xs) - 2 * rr
        ww = min(x.shape[1] for x in xs) - 2 * rc
        xs = [x[:hh + 2 * rr, :ww + 2 * rc] for x in xs]
        ys = [y[:hh * factor, :ww] for y in ys]
    return torch.stack(xs)[:, None], torch.stack(ys)[:, None]


@torch.inference_mode()
def predict_plane(net: SubPixelCNN, thick_hu: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The residual (HU) for planes (B, n, w) of thick rows → (B, factor·(n−1)+1, w)."""
    x = pad_planes(to_net(torch.from_numpy(np.ascontiguousarray(thick_hu)))[:, None], net.spec)
    r = net(x)[:, 0] * HU_PER_UNIT
    n = thick_hu.shape[1]
    out: npt.NDArray[np.float32] = r[:, : net.spec.factor * (n - 1) + 1].numpy()
    return out


def offaxis_psnr(net: SubPixelCNN, pairs: Sequence[Pair]) -> tuple[float, float]:
    """(network, BIS) PSNR in dB over the pairs' output grids, HU window [−1024, 2048] → [0, 1]."""
    if not pairs:
        raise ValueError("off-axis validation needs at least one held-out pair")
    se_net = se_bis = 0.0
    count = 0
    for p in pairs:
        truth = p.upsampled + p.residual
        pred = p.upsampled + predict_plane(net, p.thick[None])[0]
        se_net += _sq_err(truth, pred)
        se_bis += _sq_err(truth, p.upsampled)
        count += truth.size
    return _db(se_net / count), _db(se_bis / count)


def _sq_err(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    ua = (np.clip(a.astype(np.float64), HU_MIN, HU_MAX) - HU_MIN) / HU_RANGE
    ub = (np.clip(b.astype(np.float64), HU_MIN, HU_MAX) - HU_MIN) / HU_RANGE
    return float(np.sum((ua - ub) ** 2))


def _db(mse: float) -> float:
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)
