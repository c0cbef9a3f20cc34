"""Our checkpoint: state_dict + spec + metadata + digest, weights_only=True, strict keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synth.checkpoint import (
    CheckpointError,
    CheckpointMetadata,
    build_model,
    file_sha256,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    state_digest,
)
from synth.nets import CTHNet
from tests.support.tiny_cthnet import TINY

META = CheckpointMetadata(training_data="synthetic phantoms, 12 cases", epochs=40, val_psnr_db=38.5)


def test_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CTHNet(TINY).eval()
    path = tmp_path / "tiny.pt"
    sha = save_checkpoint(path, model, META)
    assert sha == file_sha256(path) and len(sha) == 64
    loaded = load_checkpoint(path)
    assert (loaded.spec, loaded.metadata, loaded.sha256, loaded.source) == (TINY, META, sha, "checkpoint")
    rebuilt = build_model(loaded)
    x = torch.rand(1, 1, 4, 32, 32)
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), model(x))
    assert load_weights(path).sha256 == sha
    assert not list(tmp_path.glob(".*.tmp"))


def test_corrupted_state_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, CTHNet(TINY), META)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["conv_last.bias"] += 1.0
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"state_dict digest mismatch: the weights are corrupted or were edited"):
        load_checkpoint(path)


def test_state_that_does_not_fit_the_spec_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, CTHNet(TINY), META)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["extra.weight"] = torch.zeros(2)
    del raw["state_dict"]["conv_last.bias"]
    raw["state_dict"]["conv_last.weight"] = torch.zeros(1, 2, 1, 1, 1)
    raw["state_sha256"] = state_digest(raw["state_dict"])
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=(r"does not match the CTHNet spec: 1 missing \(first conv_last.bias\), "
                                               r"1 unexpected \(first extra.weight\), 1 of wrong shape \(first "
                                               r"conv_last.weight: \(1, 2, 1, 1, 1\) for \(1, 16, 1, 1, 1\)\)")):
        load_checkpoint(path)


def test_wrong_files_are_refused_with_reasons(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(CTHNet(TINY).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"is a bare state_dict without a spec"):
        load_checkpoint(path)
    torch.save({"format": "something-else"}, path)
    with pytest.raises(CheckpointError, match=r"is not a synth\.cthnet\.checkpoint file"):
        load_checkpoint(path)
    torch.save({"format": "synth.cthnet.checkpoint", "format_version": 99}, path)
    with pytest.raises(CheckpointError, match=r"format_version 99 is not supported \(this code reads 1\)"):
        load_checkpoint(path)
    torch.save({"format": "synth.cthnet.checkpoint", "format_version": 1, "spec": {"bogus": 1}, "metadata": {}}, path)
    with pytest.raises(CheckpointError, match=r"invalid spec or metadata: CTHNetSpec: unknown field\(s\) \['bogus'\]"):
        load_checkpoint(path)
    torch.save({"format": "synth.cthnet.checkpoint", "format_version": 1, "spec": TINY.to_dict(),
                "metadata": {"training_data": "x"}, "state_dict": [1]}, path)
    with pytest.raises(CheckpointError, match=r"has no state_dict of tensors"):
        load_checkpoint(path)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"w\.pt: unreadable as an official CTHNet pickle \(UnpicklingError"):
        load_weights(path)
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such file"):
        load_weights(tmp_path / "missing.pt")


def test_metadata_and_save_arguments_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"training_data must be a non-empty string, got ''"):
        CheckpointMetadata(training_data="")
    with pytest.raises(ValueError, match=r"epochs must be a non-negative int or None, got -1"):
        CheckpointMetadata(training_data="x", epochs=-1)
    with pytest.raises(ValueError, match=r"val_psnr_db must be a float or None, got '40'"):
        CheckpointMetadata(training_data="x", val_psnr_db="40")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"save_checkpoint needs a CTHNet, got Linear"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(1, 1), META)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"save_checkpoint needs CheckpointMetadata or a mapping, got list"):
        save_checkpoint(tmp_path / "x.pt", CTHNet(TINY), [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"CheckpointMetadata.extra must be a dict, got list"):
        CheckpointMetadata(training_data="x", extra=[])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"not_for_clinical_use must be a bool, got 'yes'"):
        CheckpointMetadata(training_data="x", not_for_clinical_use="yes")  # type: ignore[arg-type]


def test_metadata_from_a_plain_mapping_keeps_extra_keys(tmp_path: Path) -> None:
    raw = {"training_data": "phantoms", "epochs": 3, "val_psnr_db": 31, "train_cases": 4,
           "train_config": {"lr": 3e-4, "out_dir": tmp_path, "sizes": (1, 2)}}
    path = tmp_path / "t.pt"
    save_checkpoint(path, CTHNet(TINY), raw)
    meta = load_checkpoint(path).metadata
    assert (meta.training_data, meta.epochs, meta.val_psnr_db) == ("phantoms", 3, 31.0)
    assert meta.extra == {"train_cases": 4, "train_config": {"lr": 3e-4, "out_dir": str(tmp_path), "sizes": [1, 2]}}
