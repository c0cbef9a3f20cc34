"""Training on a tiny spec: the loss falls, crops align, resume continues, best.pt loads."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from synth.checkpoint import load_checkpoint
from synth.cli import main
from synth.nets import CTHNetSpec
from synth.research.datasets import PairedCase, simulated_pair
from synth.research.train import TrainConfig, _Case, sample_crop, spec_preset, train, window_starts
from synth.research.train_cli import split_names
from synth.volume import CTVolume

TINY = replace(spec_preset("tiny"), dec_drop_path=0.0)


def _case(name: str, seed: int, thick_slices: int = 4, size: int = 16) -> PairedCase:
    rng = np.random.default_rng(seed)
    n = 5 * (thick_slices - 1) + 1
    hu = rng.normal(-300, 400, (n, size, size)).astype(np.float32)
    return simulated_pair(name, CTVolume(hu, (1.0, 1.0, 1.0)))


def _cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(epochs=2, val_every=1, val_below_loss=10.0, flip_p=0.0, progress=False,
                                   val_crop=16, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("residual", [False, True], ids=["official", "global_residual"])
def test_two_steps_lower_the_loss_and_write_best(tmp_path: Path, residual: bool) -> None:
    spec = dataclasses.replace(TINY, global_residual=residual)
    case = _case("a", 0)                        # exactly one crop: the same pair each step
    result = train(spec, [case], [case], tmp_path, _cfg(), data_description="test pair")
    assert [h["epoch"] for h in result.history] == [0.0, 1.0]
    assert result.history[1]["loss"] < result.history[0]["loss"]
    assert result.best_epoch in (0, 1) and np.isfinite(result.best_val_psnr)
    loaded = load_checkpoint(tmp_path / "best.pt")
    assert loaded.spec == spec and loaded.metadata.training_data == "test pair"
    assert (tmp_path / "last.pt").exists()


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    case = _case("a", 0)
    train(TINY, [case], [case], tmp_path, _cfg(epochs=2))
    resumed = train(TINY, [case], [case], tmp_path, _cfg(epochs=3), resume=True)
    assert [h["epoch"] for h in resumed.history] == [0.0, 1.0, 2.0]
    fresh = train(TINY, [case], [case], tmp_path / "fresh", _cfg(epochs=3))
    assert resumed.history[2]["loss"] == pytest.approx(fresh.history[2]["loss"], rel=1e-4)   # seeded
    other = replace(TINY, enc_dim=4)
    with pytest.raises(ValueError, match="saved spec differs from the requested one; cannot resume"):
        train(other, [case], [case], tmp_path, _cfg(epochs=4), resume=True)


def test_stops_after_the_set_number_of_lr_drops(tmp_path: Path) -> None:
    case = _case("a", 0)
    result = train(TINY, [case], [case], tmp_path, _cfg(epochs=50, patience=0, plateau_threshold=10.0,
                                                        max_lr_drops=2))
    assert result.lr_drops == 2 and result.stopped_because == "2 learning-rate drops"
    assert result.epochs_run < 50


def test_crops_keep_thick_k_with_thin_5k() -> None:
    thin = np.arange(36, dtype=np.float32)[:, None, None] * np.ones((1, 20, 20), np.float32)
    thick = thin[::5].copy()
    spec = CTHNetSpec(**{**TINY.to_dict(), "enc_window": (2, 2, 2)})
    rng = np.random.default_rng(1)
    for _ in range(10):
        x, y = sample_crop(_Case("r", thick, thin), spec, rng, flip_p=0.5)
        assert x.shape == (4, 16, 16) and y.shape == (14, 16, 16)
        z_s = int(x[0, 0, 0]) // 5
        assert y[0, 0, 0] == 5 * z_s + spec.crop                   # first target = thin 5·z_s + crop
        assert z_s <= 8 - 4 - 1                                     # official: never the last window


def test_official_validation_windows() -> None:
    assert window_starts(26, 8) == [0, 6, 12, 18]
    assert window_starts(8, 8) == [0]
    assert window_starts(9, 8) == [0, 1]


def test_config_and_data_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"TrainConfig\.epochs must be a positive int, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="TrainConfig needs lr > 0, weight_decay >= 0 and patience >= 0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match=r"TrainConfig.flip_p must lie in \[0, 1\], got 2"):
        TrainConfig(flip_p=2.0)
    with pytest.raises(ValueError, match=r"TrainConfig\.max_minutes must not be negative, got -1"):
        TrainConfig(max_minutes=-1.0)
    with pytest.raises(ValueError, match="spec preset must be one of"):
        spec_preset("huge")
    small = _case("s", 0, size=8)
    with pytest.raises(ValueError, match=r"training case s: thick volume \(4, 8, 8\) is smaller than a 4 x 16 x 16"):
        train(TINY, [small], [small], tmp_path, _cfg())
    with pytest.raises(ValueError, match="no validation cases"):
        train(TINY, [_case("a", 0)], [], tmp_path, _cfg())
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        train(TINY, [_case("a", 0)], [_case("a", 0)], tmp_path, _cfg(device="tpu"))


def test_split_names(tmp_path: Path) -> None:
    assert split_names(["c", "a", "b", "d"], None, 0.25) == (["a", "b", "c"], ["d"])
    split = tmp_path / "HD_dict.json"
    split.write_text(json.dumps({"train": ["a"], "val": ["b"], "test": ["c"]}), encoding="utf-8")
    assert split_names(["a", "b", "c"], split, 0.2) == (["a"], ["b"])
    split.write_text(json.dumps({"train": ["a"], "val": ["z"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="cases not found in the data: z"):
        split_names(["a", "b"], split, 0.2)
    with pytest.raises(ValueError, match=r"--val-fraction must lie in \(0, 1\), got 1"):
        split_names(["a", "b"], None, 1.0)
    with pytest.raises(ValueError, match="need at least 2 cases to split into training and validation, got 1"):
        split_names(["a"], None, 0.5)


def test_cli_trains_on_phantoms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--phantoms", "2", "--phantom-slices", "16", "--phantom-size", "32", "--phantom-pixel-mm",
            "5", "--spec", "tiny", "--epochs", "1", "--val-every", "1", "--val-below-loss", "10",
            "--val-crop", "16", "--no-progress", "--val-fraction", "0.5", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "best validation PSNR" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "best.pt").metadata.training_data.startswith("2 synthetic chest phantoms")
    assert main(["train", "--out", str(tmp_path)]) == 2
    assert "give a data folder or --phantoms N" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path), "--spec", "nope", "--phantoms", "1"]) == 2
    assert "--spec must be a preset" in capsys.readouterr().err


def test_ratio_and_cli_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    thin = CTVolume(np.zeros((13, 16, 16), np.float32), (1.0, 1.0, 1.0))
    x3 = PairedCase("r3", thin, CTVolume(np.zeros((5, 16, 16), np.float32), (3.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="training case r3: thick/thin ratio 3, the spec needs 5"):
        train(TINY, [x3], [x3], tmp_path, _cfg())
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "val": ["a"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="needs non-empty 'train' and 'val' lists"):
        split_names(["a"], split, 0.2)
    assert main(["train", str(tmp_path), "--phantoms", "2", "--out", str(tmp_path / "o")]) == 2
    assert "give either a data folder or --phantoms, not both" in capsys.readouterr().err
