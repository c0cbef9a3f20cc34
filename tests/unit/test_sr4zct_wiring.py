"""sr4zct in the registry, the node's config (one spacing rule per backend) and `python -m synth infer`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_node.cli import main as node_main
from dicom_node.config import parse_config
from dicom_node.errors import ConfigError
from synth.backends import build_synthesizer
from synth.cli import main as synth_main
from synth.config import SR4ZCTConfig, SynthConfig
from synth.sr4zct.backend import SR4ZCTSynthesizer
from synth.sr4zct.weights import SHIPPED, load


def test_each_backend_declares_its_spacing_range_and_overrides_apply() -> None:
    assert SynthConfig(backend="cthnet").spacing_range_mm == (4.0, 6.0)
    assert SynthConfig(backend="sr4zct").spacing_range_mm == (1.5, 10.0)
    assert SynthConfig(backend="interpolation").spacing_range_mm == (1.5, 10.0)
    assert SynthConfig(backend="cthnet", min_input_spacing_mm=4.5).spacing_range_mm == (4.5, 6.0)
    with pytest.raises(ValueError, match=r"min_input_spacing_mm must be positive and not above"):
        SynthConfig(backend="cthnet", min_input_spacing_mm=7.0)


def test_sr4zct_table_is_parsed_and_checked() -> None:
    cfg = parse_config({"synth": {"backend": "sr4zct", "sr4zct": {"budget_s": 5, "threads": 2}}})
    assert cfg.synth.sr4zct == SR4ZCTConfig(budget_s=5.0, threads=2)
    assert parse_config({}).synth.sr4zct.budget_s == SR4ZCTConfig().budget_s
    with pytest.raises(ConfigError, match=r"synth.sr4zct: synth.sr4zct.budget_s must be in \[0, 3600\] s"):
        parse_config({"synth": {"sr4zct": {"budget_s": -1.0}}})
    with pytest.raises(ConfigError, match=r"synth.sr4zct: unknown option\(s\) \['epochs'\]"):
        parse_config({"synth": {"sr4zct": {"epochs": 3}}})


def test_deprecated_series_keys_map_onto_synth_with_a_message() -> None:
    cfg = parse_config({"series": {"min_spacing_mm": 3.0}, "synth": {"backend": "sr4zct"}})
    assert cfg.synth.spacing_range_mm == (3.0, 6.0)           # the missing end at its old default
    assert cfg.deprecations == ("series.min_spacing_mm is deprecated: read as synth.min_input_spacing_mm = 3 "
                                "(one spacing range per backend, reason spacing_out_of_range)",)
    both = parse_config({"series": {"max_spacing_mm": 8.0}, "synth": {"max_input_spacing_mm": 9.0}})
    assert both.synth.spacing_range_mm == (4.0, 9.0)           # min from the old [series] default
    assert "series.max_spacing_mm is deprecated and ignored: synth.max_input_spacing_mm is set" in both.deprecations[0]
    assert parse_config({}).deprecations == ()


def test_check_config_shows_the_deprecation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\nport = 0\nstorage_dir = "{tmp_path / "var"}"\n[series]\nmax_spacing_mm = 8.0\n'
                    '[web]\nenabled = false\n')
    assert node_main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "series.max_spacing_mm is deprecated" in out


def test_registry_builds_sr4zct_from_the_shipped_weights() -> None:
    synth = build_synthesizer(SynthConfig(backend="sr4zct", sr4zct=SR4ZCTConfig(budget_s=7.0)))
    assert isinstance(synth, SR4ZCTSynthesizer)
    assert synth.budget_s == 7.0 and synth.factor == 5
    assert synth.identity.weights_sha256 == load(SHIPPED).sha256
    assert (synth.min_spacing_mm, synth.max_spacing_mm) == (1.5, 10.0)


def test_infer_cli_runs_sr4zct_and_prints_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray((rng.normal(0, 50, (5, 40, 36)) - 300).astype(np.int16))
    image.SetSpacing((0.7, 0.8, 8.0))
    src, dst = tmp_path / "thick.nrrd", tmp_path / "thin.nii.gz"
    sitk.WriteImage(image, str(src))
    assert synth_main(["infer", str(src), str(dst), "--backend", "sr4zct", "--budget-s", "0.5", "--quiet"]) == 0
    out = sitk.ReadImage(str(dst))
    assert out.GetSize() == (36, 40, 21)
    assert out.GetSpacing()[2] == pytest.approx(1.6)
    printed = capsys.readouterr().out
    assert "(sr4zct, weights sha256" in printed and "offaxis_psnr_db" in printed and "not CTHNet" in printed


def test_infer_cli_refuses_out_of_range_spacing_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = sitk.GetImageFromArray(np.zeros((4, 16, 16), np.int16))
    image.SetSpacing((1.0, 1.0, 12.0))
    src = tmp_path / "thick.nrrd"
    sitk.WriteImage(image, str(src))
    assert synth_main(["infer", str(src), str(tmp_path / "o.nii.gz"), "--backend", "sr4zct", "--quiet"]) == 2
    assert "slice interval 12 mm is outside 1.5-10 mm" in capsys.readouterr().err
