"""The cthnet engine: every thin slice predicted, exact tiling, no seams, any N ≥ 2 and any plane size."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synth.backends import build_synthesizer
from synth.checkpoint import CheckpointMetadata, file_sha256, save_checkpoint
from synth.config import SynthConfig
from synth.engine import CPU_CHUNK_TOKENS, CTHNetSynthesizer, UnsupportedSpacingError
from synth.nets import CTHNet, CTHNetSpec
from synth.normalize import hu_to_unit, unit_to_hu
from synth.seam import SynthesisRefusedError, output_slices
from synth.volume import CTVolume
from tests.support.tiny_cthnet import TINY
from tests.unit.test_tiling_plan import min_weight

OFFICIAL_GEOMETRY = CTHNetSpec(tile_size=32, enc_dim=8, enc_heads=2, enc_depth=2, feat_channels=2,
                               t_fold=4, t_depth=2, i_layers=1, i_depth=2, dec_heads=2)   # 8 → 36, crop 3


class LinearZ(nn.Module):
    """Identity-like stand-in: thin slice j of a window is the linear z interpolation at thick j/ratio.

    `band` > 0 adds `bump` to the outer `band` pixels of every tile (fake border artefacts).
    """

    def __init__(self, spec: CTHNetSpec, band: int = 0, bump: float = 0.5) -> None:
        super().__init__()
        self.spec, self.band, self.bump = spec, band, bump
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        s = self.spec
        full = F.interpolate(x, size=(s.window_slices, x.shape[3], x.shape[4]), mode="trilinear", align_corners=True)
        out = full[:, :, s.crop:s.window_slices - s.crop].clone()
        if self.band:
            b = self.band
            for region in (np.s_[..., :b, :], np.s_[..., -b:, :], np.s_[..., :, :b], np.s_[..., :, -b:]):
                out[region] += self.bump
        return out


def linear_reference(hu: npt.NDArray[np.float32], ratio: int) -> npt.NDArray[np.float32]:
    unit = hu_to_unit(hu).astype(np.float64)
    n = unit.shape[0]
    pos = np.arange(ratio * (n - 1) + 1) / ratio
    lo = np.minimum(np.floor(pos).astype(int), n - 2)
    frac = (pos - lo)[:, None, None]
    return unit_to_hu(unit[lo] * (1 - frac) + unit[lo + 1] * frac)


def random_volume(n: int, rows: int, cols: int, seed: int = 0, spacing: float = 5.0) -> CTVolume:
    rng = np.random.default_rng(seed)
    return CTVolume(rng.uniform(-1000, 2000, (n, rows, cols)).astype(np.float32), (spacing, 0.7, 0.8))


@pytest.mark.parametrize("tiled", [False, True], ids=["whole-plane", "spec-tiles"])
@pytest.mark.parametrize("spec", [TINY, OFFICIAL_GEOMETRY], ids=["tiny", "8-slice-windows"])
@pytest.mark.parametrize(("n", "rows", "cols"), [(2, 32, 32), (3, 20, 45), (8, 64, 40), (9, 33, 70), (17, 50, 50)])
def test_tiler_reproduces_the_stand_in_exactly_and_covers_every_voxel(spec: CTHNetSpec, n: int, rows: int,
                                                                       cols: int, tiled: bool) -> None:
    volume = random_volume(n, rows, cols)
    engine = CTHNetSynthesizer(LinearZ(spec), weights_sha256="", device="cpu",
                               tile=spec.tile_size if tiled else None)
    assert min_weight(engine.plan(volume.shape)) > 0
    out = engine(volume)
    assert out.shape == (output_slices(n, 5), rows, cols)
    assert out.spacing_mm == (1.0, 0.7, 0.8)
    np.testing.assert_allclose(out.hu, linear_reference(volume.hu, 5), atol=0.02)


def test_tile_border_artefacts_are_blended_away() -> None:
    # Each tile's outer 2 pixels are wrong by 1500 HU; the margin gives them weight 0, inside the image.
    volume = random_volume(5, 70, 90, seed=3)
    engine = CTHNetSynthesizer(LinearZ(TINY, band=2), weights_sha256="", device="cpu", tile=32, min_overlap=12,
                               margin=2)
    plan = engine.plan(volume.shape)
    assert len(plan.y.in_starts) > 2 and len(plan.x.in_starts) > 2
    out = engine(volume).hu
    ref = linear_reference(volume.hu, 5)
    inner = np.s_[:, 2:-2, 2:-2]                 # the image's own border has no neighbour tile to take over
    np.testing.assert_allclose(out[inner], ref[inner], atol=0.02)


def _period_error(hu: npt.NDArray[np.float32], period: int, border: int) -> float:
    inner = hu[:, border:-border, border:-border]
    return float(max(np.abs(inner[:, :, period:] - inner[:, :, :-period]).max(),
                     np.abs(inner[:, period:, :] - inner[:, :-period, :]).max()))


def test_no_seams_with_the_real_network_on_a_constant_input() -> None:
    # A random tiny CTHNet maps a constant input to a pattern with the period of its window grid (4).
    # Seams would break that periodicity at tile boundaries; feathered, grid-aligned tiles don't.
    torch.manual_seed(0)
    model = CTHNet(TINY)
    with torch.no_grad():
        model.conv_last.bias += 0.4 - model(torch.full((1, 1, 4, 32, 32), 0.35)).mean()   # keep it inside [0, 1]
    volume = CTVolume(np.full((2, 64, 64), 40.0, np.float32), (5.0, 0.7, 0.7))
    blended = CTHNetSynthesizer(model, weights_sha256="", device="cpu", tile=32, min_overlap=24, margin=8,
                                batch_size=25)
    naive = CTHNetSynthesizer(model, weights_sha256="", device="cpu", tile=32, min_overlap=8, margin=0, batch_size=9)
    assert len(blended.plan(volume.shape)) == 25
    out, out_naive = blended(volume).hu, naive(volume).hu
    assert np.ptp(out[:, 10:-10, 10:-10]) > 300                            # the pattern is there …
    assert _period_error(out, period=4, border=10) < 5.0                   # … unbroken by the tiles (HU)
    assert _period_error(out_naive, period=4, border=10) > 30.0            # the test can see a seam


def test_windows_are_batched_and_a_memory_error_halves_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    class OOMAbove2(LinearZ):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 2:
                self.batches.append(-x.shape[0])
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().forward(x)

    model = OOMAbove2(TINY)
    volume = random_volume(6, 64, 64, seed=4)
    engine = CTHNetSynthesizer(model, weights_sha256="", device="cpu", tile=32, batch_size=8)
    calls: list[tuple[int, int]] = []
    with caplog.at_level(logging.WARNING, logger="synth.engine"):
        out = engine(volume, progress=lambda done, total: calls.append((done, total)))
    assert model.batches[:2] == [-8, -4] and max(model.batches[2:]) == 2 and min(model.batches[2:]) >= 1
    assert "out of memory with a batch of 8 windows; going on with 4" in caplog.text
    np.testing.assert_allclose(out.hu, linear_reference(volume.hu, 5), atol=0.02)
    total = len(engine.plan(volume.shape))
    assert calls[-1] == (total, total) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_a_memory_error_with_batch_one_is_raised() -> None:
    class AlwaysOOM(LinearZ):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    engine = CTHNetSynthesizer(AlwaysOOM(TINY), weights_sha256="", device="cpu", batch_size=2)
    with pytest.raises(torch.OutOfMemoryError, match=r"CUDA out of memory \(simulated\)"):
        engine(random_volume(3, 32, 32))


@pytest.mark.parametrize("spacing", [3.0, 6.5])
def test_spacing_outside_the_range_is_refused(spacing: float) -> None:
    engine = CTHNetSynthesizer(LinearZ(TINY), weights_sha256="", device="cpu")
    with pytest.raises(UnsupportedSpacingError, match=rf"input slice spacing {spacing:g} mm is outside 4-6 mm"):
        engine(random_volume(3, 32, 32, spacing=spacing))
    assert issubclass(UnsupportedSpacingError, SynthesisRefusedError)          # the node quarantines it by reason
    assert UnsupportedSpacingError.reason == "spacing_out_of_range"   # one reason code for every backend


def test_spacing_inside_the_range_scales_by_the_ratio() -> None:
    engine = CTHNetSynthesizer(LinearZ(TINY), weights_sha256="", device="cpu", min_spacing_mm=2.0)
    assert engine(random_volume(3, 32, 32, spacing=2.5)).spacing_mm == (0.5, 0.7, 0.8)


def test_real_tiny_network_end_to_end_shapes_and_range() -> None:
    torch.manual_seed(0)
    engine = CTHNetSynthesizer(CTHNet(TINY), weights_sha256="", device="cpu", batch_size=3)
    out = engine(random_volume(5, 40, 36))
    assert out.shape == (21, 40, 36) and out.hu.dtype == np.float32
    assert out.hu.min() >= -1024.0 and out.hu.max() <= 2048.0


def test_from_config_loads_a_checkpoint_and_reports_its_identity(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, CTHNet(TINY), CheckpointMetadata(training_data="unit test"))
    synth = build_synthesizer(SynthConfig(backend="cthnet", weights=str(path), device="cpu", batch_size=4))
    assert isinstance(synth, CTHNetSynthesizer)
    assert synth.identity.backend == "cthnet" and synth.identity.is_model
    assert synth.identity.weights_sha256 == file_sha256(path)
    assert "CTHNet" in synth.identity.name and "checkpoint weights" in synth.identity.name
    assert synth.factor == 5 and synth.batch_size == 1 and synth.device.type == "cpu"   # CPU: one window at a time
    assert synth(random_volume(2, 32, 32)).shape == (6, 32, 32)
    assert synth.identity.caution == ""


def test_weights_marked_not_for_clinical_use_carry_a_caution(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "demo.pt"
    save_checkpoint(path, CTHNet(TINY), CheckpointMetadata(training_data="3 phantoms", not_for_clinical_use=True))
    synth = build_synthesizer(SynthConfig(backend="cthnet", weights=str(path), device="cpu"))
    assert synth.identity.caution == "NOT FOR CLINICAL USE: weights trained on 3 phantoms"
    assert "marked not for clinical use" in caplog.text


def test_from_config_refuses_a_factor_the_weights_are_not_for(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, CTHNet(TINY), CheckpointMetadata(training_data="unit test"))
    with pytest.raises(ValueError, match=r"synth.factor is 4 but the CTHNet weights are for x5"):
        build_synthesizer(SynthConfig(backend="cthnet", weights=str(path), device="cpu", factor=4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, r"batch_size must be at least 1, got 0"),
        ({"tile": 30}, r"tile must be a positive multiple of 4 for this spec, got 30"),
        ({"z_stride": 3}, r"z stride must be 1\.\.2 thick slices so that windows overlap or touch, got 3"),
        ({"margin": 8, "min_overlap": 10}, r"tiling needs 2·margin < min_overlap < tile, got margin 8, min_overlap 10"),
        ({"min_spacing_mm": 7.0}, r"spacing range must satisfy 0 < min <= max, got 7.0, 6.0"),
        ({"precision": "int8"}, r"precision must be one of \('auto', 'fp32', 'bf16', 'fp16'\), got 'int8'"),
    ],
)
def test_bad_engine_options_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CTHNetSynthesizer(LinearZ(TINY), weights_sha256="", device="cpu", **kwargs)  # type: ignore[arg-type]


def test_a_model_without_a_spec_is_refused() -> None:
    with pytest.raises(TypeError, match=r"needs a model with a CTHNetSpec `spec`, got Linear"):
        CTHNetSynthesizer(nn.Linear(1, 1), weights_sha256="")


def test_normalisation_is_the_trained_window() -> None:
    hu = np.array([-3000.0, -1024.0, 0.0, 2048.0, 4000.0], np.float32)
    np.testing.assert_allclose(hu_to_unit(hu), [0.0, 0.0, 1024 / 3072, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(unit_to_hu(np.array([-0.5, 0.0, 0.5, 1.0, 2.0])), [-1024, -1024, 512, 2048, 2048])


def test_chunked_engine_equals_plain_engine() -> None:
    torch.manual_seed(0)
    model = CTHNet(TINY)
    volume = random_volume(3, 40, 40, seed=5)
    plain = CTHNetSynthesizer(model, weights_sha256="", device="cpu")(volume).hu
    engine = CTHNetSynthesizer(model, weights_sha256="", device="cpu", chunk_tokens=128)
    assert model.chunk_tokens == 128
    np.testing.assert_allclose(engine(volume).hu, plain, atol=0.05)
    with pytest.raises(ValueError, match=r"chunk_tokens must be positive or None, got 0"):
        CTHNetSynthesizer(model, weights_sha256="", device="cpu", chunk_tokens=0)


def _smooth_model_and_volume() -> tuple[CTHNet, CTVolume]:
    torch.manual_seed(0)
    model = CTHNet(TINY)
    with torch.no_grad():
        model.conv_last.bias += 0.4 - model(torch.full((1, 1, 4, 32, 32), 0.35)).mean()   # keep it inside [0, 1]
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.normal(0.0, 1.0, (1, 1, 3, 64, 64)))
    hu = F.avg_pool3d(noise, (1, 9, 9), stride=1, padding=(0, 4, 4))[0, 0].numpy() * 9000 + 50
    return model, CTVolume(hu.astype(np.float32), (5.0, 0.7, 0.7))


def test_whole_plane_output_is_the_seam_free_limit_of_tiling() -> None:
    # The network has no absolute in-plane position: away from tile borders a tile computes what the whole
    # plane computes. So tiled output converges to the whole-plane output as the blend margins grow.
    model, volume = _smooth_model_and_volume()
    whole = CTHNetSynthesizer(model, weights_sha256="", device="cpu")
    assert len(whole.plan(volume.shape)) == len(whole.plan(volume.shape).z.in_starts)   # one window per z step
    reference = whole(volume).hu
    assert np.ptp(reference) > 300                                                      # a real pattern
    errors = []
    for overlap, margin in [(8, 2), (16, 4), (24, 8)]:
        tiled = CTHNetSynthesizer(model, weights_sha256="", device="cpu", tile=32, min_overlap=overlap, margin=margin)
        assert len(tiled.plan(volume.shape).y.in_starts) > 2
        errors.append(float(np.abs(tiled(volume).hu - reference).max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 10.0                                                             # HU, against an 845 HU range


def test_parallel_cpu_windows_equal_one_window_at_a_time() -> None:
    model, volume = _smooth_model_and_volume()
    volume = CTVolume(np.ascontiguousarray(volume.hu[:, :40, :40]), volume.spacing_mm)
    parallel = CTHNetSynthesizer(model, weights_sha256="", device="cpu", tile=32, cpu_workers=2)
    serial = CTHNetSynthesizer(model, weights_sha256="", device="cpu", tile=32, cpu_workers=1)
    assert parallel.cpu_workers == 2 and serial.cpu_workers == 1 and model.chunk_tokens == CPU_CHUNK_TOKENS
    calls: list[tuple[int, int]] = []
    out = parallel(volume, progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_allclose(out.hu, serial(volume).hu, atol=1e-3)
    total = len(parallel.plan(volume.shape))
    assert calls == [(k, total) for k in range(1, total + 1)]
    with pytest.raises(ValueError, match=r"cpu_workers must be positive or None, got 0"):
        CTHNetSynthesizer(model, weights_sha256="", device="cpu", cpu_workers=0)


def test_a_failing_window_on_a_cpu_worker_is_raised() -> None:
    class FailsOnThird(LinearZ):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if len(self.batches) == 2:
                raise RuntimeError("window failed (simulated)")
            return super().forward(x)

    engine = CTHNetSynthesizer(FailsOnThird(TINY), weights_sha256="", device="cpu", tile=32, cpu_workers=2)
    with pytest.raises(RuntimeError, match=r"window failed \(simulated\)"):
        engine(random_volume(9, 70, 70))


def test_default_plan_for_a_512_series_is_whole_planes_and_max_tile_bounds_it() -> None:
    engine = CTHNetSynthesizer(LinearZ(CTHNetSpec()), weights_sha256="", device="cpu")
    plan = engine.plan((61, 512, 512))
    assert len(plan) == 12 and plan.y.in_size == plan.x.in_size == 512
    assert engine.plan((61, 500, 384)).y.in_size == 504 and engine.plan((61, 500, 384)).x.in_size == 384
    big = engine.plan((61, 1024, 512))
    assert big.y.in_size == 512 and len(big.y.in_starts) == 3 and min_weight(big) > 0
    with pytest.raises(ValueError, match=r"max_tile must be a positive multiple of 8 for this spec, got 100"):
        CTHNetSynthesizer(LinearZ(CTHNetSpec()), weights_sha256="", device="cpu", max_tile=100)


def test_cpu_workers_follow_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert CTHNetSynthesizer(LinearZ(TINY), weights_sha256="", device="cpu").cpu_workers == 1
    finally:
        torch.set_num_threads(before)
