"""Backend `sr4zct`: self-supervised through-plane enhancement (Shi, Pelt & Batenburg, SR4ZCT 2023).

Per series: a fresh copy of the shipped pretrained network is fine-tuned on the series' own axial
images (degraded along each in-plane axis with the series' own slice thickness and interval, F↓ then
F↑) for at most `budget_s` seconds of wall clock, counted from the start of the call and including
making the pairs; then the coronal and sagittal planes go through it (`synth.sr4zct.infer`).
A held-out subset of the axial images, never used to fine-tune, gives the off-axis validation PSNR
of the network and of BIS on the same images with the same degradation; both go in the output's
`figures` with the budget and the time spent fine-tuning. Nothing carries over between series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

import synth
from synth.config import SynthConfig
from synth.seam import ProgressCallback, SynthesisRefusedError, SynthIdentity
from synth.sr4zct.fit import FitSettings, fit, offaxis_psnr
from synth.sr4zct.infer import enhance
from synth.sr4zct.pairs import Degradation, Pair, axial_pairs, split_heldout
from synth.sr4zct.weights import SHIPPED, Pretrained, SR4ZCTWeightsError, load
from synth.volume import CTVolume

logger = logging.getLogger(__name__)
MIN_SLICES_TO_FINETUNE = 3        # below this no axial image can be held out, so none is trained on
CAUTION = ("NOT FOR CLINICAL USE: self-supervised SR4ZCT network (not CTHNet), pretrained on axial images of "
           "6 real CT series and fine-tuned on this series' own axial images")


def warm_up() -> None:
    """One Adam step on a dummy: torch's first optimizer step imports for seconds, not a series' budget."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=0.0)
    p.grad = torch.zeros(1)
    opt.step()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's (process-wide) CPU thread count set to `n` for the duration, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SpacingOutOfRangeError(SynthesisRefusedError):
    """The slice interval or thickness is outside the range this backend accepts."""

    reason = "spacing_out_of_range"


class SR4ZCTSynthesizer:
    """Implements synth.seam.Synthesizer: fine-tune within `budget_s`, then infer, per volume."""

    def __init__(self, pretrained: Pretrained, *, budget_s: float, min_spacing_mm: float = 1.5,
                 max_spacing_mm: float = 10.0, seed: int = 0, threads: int = 1,
                 fit_settings: FitSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if not budget_s >= 0:
            raise ValueError(f"synth.sr4zct.budget_s must be >= 0, got {budget_s}")
        self.pretrained = pretrained
        self.factor = pretrained.spec.factor
        self.budget_s = float(budget_s)
        self.min_spacing_mm, self.max_spacing_mm = min_spacing_mm, max_spacing_mm
        self.seed = seed
        self.threads = threads
        self.fit_settings = fit_settings or FitSettings()
        self.clock = clock
        self.identity = SynthIdentity(
            backend="sr4zct",
            name=(f"SR4ZCT self-supervised through-plane network ({pretrained.spec.channels}-channel "
                  f"{pretrained.spec.layers}-layer CNN), fine-tuned on this series for up to {self.budget_s:g} s"),
            version=synth.__version__, weights_sha256=pretrained.sha256, is_model=True, caution=CAUTION)
        warm_up()


    @classmethod
    def from_config(cls, cfg: SynthConfig) -> SR4ZCTSynthesizer:
        pretrained = load(cfg.sr4zct.weights or SHIPPED)
        if pretrained.spec.factor != cfg.factor:
            raise SR4ZCTWeightsError(
                f"synth.factor is {cfg.factor} but the sr4zct weights are for x{pretrained.spec.factor}")
        lo, hi = cfg.spacing_range_mm
        return cls(pretrained, budget_s=cfg.sr4zct.budget_s, min_spacing_mm=lo, max_spacing_mm=hi,
                   seed=cfg.sr4zct.seed, threads=cfg.sr4zct.threads)

    def check_spacing(self, volume: CTVolume) -> None:
        for what, value in (("slice interval", volume.spacing_mm[0]), ("slice thickness", volume.thickness_mm)):
            if not self.min_spacing_mm <= value <= self.max_spacing_mm:
                raise SpacingOutOfRangeError(
                    f"input {what} {value:.3g} mm is outside {self.min_spacing_mm:g}-{self.max_spacing_mm:g} mm, "
                    "the range the sr4zct backend accepts; set synth.min_input_spacing_mm/max_input_spacing_mm")

    def __call__(self, volume: CTVolume, progress: ProgressCallback | None = None) -> CTVolume:
        start = self.clock()
        self.check_spacing(volume)
        with torch_threads(self.threads):
            return self._run(volume, start, progress)

    def _run(self, volume: CTVolume, start: float, progress: ProgressCallback | None) -> CTVolume:
        deg = Degradation(thickness_mm=volume.thickness_mm, interval_mm=volume.spacing_mm[0], factor=self.factor)
        pixel = (volume.spacing_mm[1], volume.spacing_mm[2])
        n = volume.shape[0]
        if n >= MIN_SLICES_TO_FINETUNE:
            train_idx, held_idx = split_heldout(n)
        else:                     # too few to hold some out: the starting point as is, validated on all
            train_idx, held_idx = np.arange(0, dtype=np.int64), np.arange(n, dtype=np.int64)
        net = self.pretrained.fresh_net()               # never the previous series' fine-tuned state
        torch.manual_seed(self.seed)
        finetune_s, steps = 0.0, 0
        if self.budget_s > 0 and len(train_idx):
            deadline = start + self.budget_s
            pairs: list[Pair] = []                    # made one image at a time, within half the budget
            for i in np.random.default_rng(self.seed).permutation(train_idx):
                if pairs and self.clock() >= start + 0.5 * self.budget_s:
                    break
                pairs += axial_pairs(volume.hu, pixel_mm=pixel, deg=deg, indices=np.array([i]), keep_upsampled=False)
            result = fit(net, pairs, deadline=deadline, settings=self.fit_settings,
                         rng=np.random.default_rng(self.seed), clock=self.clock)
            finetune_s, steps = self.clock() - start, result.steps
        held = axial_pairs(volume.hu, pixel_mm=pixel, deg=deg, indices=held_idx)
        net_db, bis_db = offaxis_psnr(net, held)
        logger.info("sr4zct: %d fine-tuning steps in %.1f s (budget %g s); off-axis PSNR %.2f dB, BIS %.2f dB "
                    "on %d held-out axial images", steps, finetune_s, self.budget_s, net_db, bis_db, len(held_idx))
        thin = enhance(net, volume, progress)
        figures = {"offaxis_psnr_db": net_db, "offaxis_bis_psnr_db": bis_db, "budget_s": self.budget_s,
                   "finetune_s": finetune_s, "finetune_steps": float(steps), "heldout_images": float(len(held_idx))}
        return CTVolume(thin.hu, thin.spacing_mm, figures=figures)
