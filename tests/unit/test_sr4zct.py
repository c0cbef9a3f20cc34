"""The sr4zct backend: exact degradation, the BIS grid, the budget, held-out images, figures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from synth.bspline import interpolate_z
from synth.interpolate import InterpolationSynthesizer
from synth.simulate import simulate_thick
from synth.sr4zct import backend as backend_module
from synth.sr4zct.backend import SpacingOutOfRangeError, SR4ZCTSynthesizer
from synth.sr4zct.degrade import degrade_rows, resample_rows, training_pair, upsample_rows
from synth.sr4zct.fit import FitSettings
from synth.sr4zct.net import NetSpec, SubPixelCNN
from synth.sr4zct.pairs import Degradation, axial_pairs, split_heldout
from synth.sr4zct.weights import Pretrained, SR4ZCTWeightsError, load, save
from synth.volume import CTVolume

SMALL_FIT = FitSettings(batch=2, crop_rows=4, crop_cols=16)


def phantomish(z: int = 6, n: int = 40, seed: int = 0) -> CTVolume:
    """A body-like disc with smooth blobs, at 5 mm × 0.8 mm."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    body = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (0.4 * n) ** 2).astype(np.float32)
    hu = np.stack([body * (40.0 + 300.0 * np.sin(yy / 3.0 + k) * np.cos(xx / 4.0)) + (1 - body) * -1000.0
                   for k in range(z)]).astype(np.float32) + rng.normal(0, 5, (z, n, n)).astype(np.float32)
    return CTVolume(hu, (5.0, 0.8, 0.8))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    net = SubPixelCNN(NetSpec(channels=4, layers=3))
    with torch.no_grad():                         # a non-zero last layer, so outputs differ from BIS
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("w") / "tiny-sr4zct.pt"
    save(path, net, {"training_data": "none (test)"})
    return path


@pytest.mark.parametrize(("pixel", "thickness", "interval"), [(1.0, 5.0, 5.0), (0.7, 5.0, 2.5), (0.647, 8.0, 8.0),
                                                               (0.842, 4.1, 3.3)])
def test_degradation_is_simulate_thick_along_the_axis(pixel: float, thickness: float, interval: float) -> None:
    image = np.random.default_rng(0).normal(0, 100, (90, 7)).astype(np.float32)
    expected = simulate_thick(CTVolume(image[:, :, None].copy(), (pixel, 1.0, 1.0)), thickness, interval).hu[:, :, 0]
    got = degrade_rows(image, pixel_mm=pixel, thickness_mm=thickness, interval_mm=interval)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert got.shape[0] == int(np.floor(89 * pixel / interval + 1e-6)) + 1


def test_overlap_blurs_more_than_the_interval_alone() -> None:
    """Thickness, not interval, sets the profile: 5 mm every 2.5 mm averages 5 mm of rows."""
    image = np.zeros((101, 1), dtype=np.float32)
    image[50] = 1.0
    thin_profile = degrade_rows(image, pixel_mm=0.5, thickness_mm=2.5, interval_mm=2.5)
    thick_profile = degrade_rows(image, pixel_mm=0.5, thickness_mm=5.0, interval_mm=2.5)
    assert np.count_nonzero(thick_profile) > np.count_nonzero(thin_profile)
    assert thick_profile.shape == thin_profile.shape


def test_upsampling_is_the_bis_backend() -> None:
    thick = np.random.default_rng(1).normal(0, 100, (9, 5, 4)).astype(np.float32)
    expected = interpolate_z(CTVolume(thick, (2.5, 1.0, 1.0)), 5).hu
    np.testing.assert_array_equal(upsample_rows(thick, interval_mm=2.5, factor=5), expected)


def test_target_is_the_image_where_the_grids_coincide_and_any_ratio_works() -> None:
    image = np.random.default_rng(2).normal(0, 100, (60, 3)).astype(np.float32)
    np.testing.assert_allclose(resample_rows(image, pixel_mm=0.5, step_mm=1.0, count=30), image[::2], atol=1e-3)
    degraded, target = training_pair(image, pixel_mm=0.7, thickness_mm=5.0, interval_mm=2.5, factor=5)
    assert degraded.shape == target.shape == (5 * (int(59 * 0.7 / 2.5) + 1 - 1) + 1, 3)
    with pytest.raises(ValueError, match=r"beyond the image's last row"):
        resample_rows(image, pixel_mm=0.5, step_mm=1.0, count=31)


def test_heldout_split_is_disjoint_and_spread() -> None:
    train, held = split_heldout(61)
    assert set(train).isdisjoint(held) and len(train) + len(held) == 61
    assert 0 not in held and 60 not in held and len(held) == 9
    with pytest.raises(ValueError, match=r"at least 3 axial images"):
        split_heldout(2)


def test_pairs_make_both_axes_the_first() -> None:
    vol = phantomish(z=3, n=40)
    pairs = axial_pairs(vol.hu, pixel_mm=(0.8, 0.8), deg=Degradation(5.0, 5.0, 5), indices=np.array([1]))
    assert len(pairs) == 2
    np.testing.assert_allclose(pairs[1].thick, degrade_rows(vol.hu[1].T.copy(), pixel_mm=0.8, thickness_mm=5.0,
                                                            interval_mm=5.0))


def test_untrained_network_with_no_budget_is_exactly_bis() -> None:
    net = SubPixelCNN(NetSpec(channels=4, layers=3))
    pre = Pretrained(spec=net.spec, state_dict=net.state_dict(), sha256="0" * 64, metadata={})
    vol = phantomish()
    out = SR4ZCTSynthesizer(pre, budget_s=0.0)(vol)
    bis = InterpolationSynthesizer(5)(vol)
    np.testing.assert_array_equal(out.hu, bis.hu)
    assert out.figures["offaxis_psnr_db"] == pytest.approx(out.figures["offaxis_bis_psnr_db"])


def test_output_grid_is_the_interpolation_backends(weights: Path) -> None:
    vol = phantomish(z=7, n=36)
    synth = SR4ZCTSynthesizer(load(weights), budget_s=0.0)
    out, bis = synth(vol), InterpolationSynthesizer(5)(vol)
    assert out.shape == bis.shape == (31, 36, 36)
    assert out.spacing_mm == bis.spacing_mm == (1.0, 0.8, 0.8)
    assert not np.array_equal(out.hu, bis.hu)
    assert synth.identity.backend == "sr4zct" and synth.identity.is_model and "not CTHNet" in synth.identity.caution


def test_budget_is_honoured_and_figures_reported(weights: Path) -> None:
    vol = phantomish(z=8, n=48)
    synth = SR4ZCTSynthesizer(load(weights), budget_s=1.5, fit_settings=SMALL_FIT)
    started = time.monotonic()
    out = synth(vol)
    elapsed = time.monotonic() - started
    f = out.figures
    assert {"offaxis_psnr_db", "offaxis_bis_psnr_db", "budget_s", "finetune_s"} <= set(f)
    assert f["budget_s"] == 1.5 and 1.4 <= f["finetune_s"] <= 1.5 + 0.5
    assert f["finetune_steps"] > 0
    assert elapsed < 1.5 + 10.0                   # validation and inference of a tiny volume on top
    assert np.isfinite(f["offaxis_psnr_db"]) and np.isfinite(f["offaxis_bis_psnr_db"])


def test_heldout_images_are_never_trained_on(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[set[int], bool]] = []
    real = backend_module.axial_pairs

    def spy(axial: np.ndarray, **kw: object) -> object:
        calls.append(({int(i) for i in kw["indices"]}, bool(kw.get("keep_upsampled", True))))  # type: ignore[attr-defined]
        return real(axial, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(backend_module, "axial_pairs", spy)
    SR4ZCTSynthesizer(load(weights), budget_s=0.3, fit_settings=SMALL_FIT)(phantomish(z=10))
    train = set().union(*(idx for idx, keep in calls if not keep))
    (held,) = [idx for idx, keep in calls if keep]
    assert train and held and train.isdisjoint(held)
    assert held == set(split_heldout(10)[1].tolist())


def test_each_series_starts_from_the_pretrained_network(weights: Path) -> None:
    pre = load(weights)
    before = {k: v.clone() for k, v in pre.state_dict.items()}
    synth = SR4ZCTSynthesizer(pre, budget_s=0.5, fit_settings=SMALL_FIT)
    synth(phantomish(seed=1))
    for k, v in pre.state_dict.items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(("spacing", "thickness", "what"), [(12.0, 0.0, "slice interval 12"),
                                                            (5.0, 11.0, "slice thickness 11"),
                                                            (1.0, 0.0, "slice interval 1 ")])
def test_spacing_outside_the_range_is_refused(weights: Path, spacing: float, thickness: float, what: str) -> None:
    vol = CTVolume(np.zeros((4, 8, 8), np.float32), (spacing, 1.0, 1.0), slice_thickness_mm=thickness)
    with pytest.raises(SpacingOutOfRangeError, match=what) as info:
        SR4ZCTSynthesizer(load(weights), budget_s=0.0)(vol)
    assert info.value.reason == "spacing_out_of_range"


def test_bad_weights_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"format": "other"}, bad)
    with pytest.raises(SR4ZCTWeightsError, match=r"bad.pt: not a sr4zct-v1 file"):
        load(bad)
    with pytest.raises(SR4ZCTWeightsError, match=r"cannot be read"):
        load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"budget_s must be >= 0"):
        SR4ZCTSynthesizer(Pretrained(NetSpec(), {}, "", {}), budget_s=-1.0)


def test_two_slices_use_the_starting_point_validated_on_both(weights: Path) -> None:
    vol = phantomish(z=2)
    out = SR4ZCTSynthesizer(load(weights), budget_s=5.0, fit_settings=SMALL_FIT)(vol)
    assert out.shape[0] == 6
    assert out.figures["finetune_steps"] == 0 and out.figures["heldout_images"] == 2
    assert out.figures["finetune_s"] == 0.0


def test_overlapping_series_is_degraded_with_its_thickness(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Degradation] = []
    real = backend_module.axial_pairs

    def spy(axial: np.ndarray, **kw: object) -> object:
        seen.append(kw["deg"])  # type: ignore[arg-type]
        return real(axial, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(backend_module, "axial_pairs", spy)
    vol = CTVolume(phantomish(z=9).hu, (2.5, 0.8, 0.8), slice_thickness_mm=5.0)   # 5 mm every 2.5 mm
    out = SR4ZCTSynthesizer(load(weights), budget_s=0.3, fit_settings=SMALL_FIT)(vol)
    assert set(seen) == {Degradation(thickness_mm=5.0, interval_mm=2.5, factor=5)}
    assert out.spacing_mm == (0.5, 0.8, 0.8) and out.shape[0] == 41
