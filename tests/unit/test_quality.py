"""The self-check policy through the synthesis stage: garbage output falls back to BIS or is rejected."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.config import parse_config, to_dict
from dicom_node.disk import DiskGuard
from dicom_node.errors import ConfigError
from dicom_node.ledger import Ledger, SeriesState
from dicom_node.metrics import NodeMetrics
from dicom_node.quality import QUALITY_CHECK_FAILED
from dicom_node.spool import Spool
from dicom_node.synthesis import SynthesisStage
from dicom_node.write import derived_series_uid
from synth.interpolate import InterpolationSynthesizer
from tests.support.ct_series import make_ct_series
from tests.support.garbage import GarbageSynthesizer
from tests.support.ledger import new_ledger, view

OWNER = "test-host:1:stage"
@dataclass
class Rig:
    ledger: Ledger
    spool: Spool
    stage: SynthesisStage
    metrics: NodeMetrics
    uid: str

    def derived(self) -> list[pydicom.Dataset]:
        summary = view(self.ledger, self.uid)
        assert summary is not None and summary.derived_series_uid
        files = sorted(self.spool.derived_dir(summary.derived_series_uid).glob("*.dcm"))
        return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def make_rig(tmp_path: Path, synthesizer: Any, *, rows: int = 64, slices: int = 6, **synth: Any) -> Rig:
    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")}, "synth": synth})
    spool = Spool(cfg.storage_dir, fsync=False)
    ledger = new_ledger(cfg.database_url)
    datasets = make_ct_series(slices=slices, rows=rows, cols=rows)
    batch = []
    for ds in datasets:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        batch.append((spool.put(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                                buffer.getvalue()), 1000.0, "MODALITY"))
    ledger.record_instances(batch, quiet_s=1.0)
    ledger.complete_due(1002.0)
    metrics = NodeMetrics(ledger, cfg.storage_dir)
    stage = SynthesisStage(cfg, ledger=ledger, spool=spool, synthesizer=synthesizer,
                           disk=DiskGuard(cfg.storage_dir, 0.999), metrics=metrics, owner=OWNER,
                           clock=lambda: 1003.0, on_synthesized=lambda: None)
    return Rig(ledger, spool, stage, metrics, str(datasets[0].SeriesInstanceUID))


def test_good_output_passes_and_every_instance_carries_its_figures(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, InterpolationSynthesizer(5))
    rig.stage.step()
    summary = view(rig.ledger, rig.uid)
    assert summary is not None and summary.state == SeriesState.DONE
    (check,) = summary.checks
    assert check.backend == "interpolation" and check.passed and check.used and check.failure == ""
    assert check.consistency_db > 35.0 and check.lung_bias_hu is not None and abs(check.lung_bias_hu) < 10.0
    line = f"self-check: consistency {check.consistency_db:.1f} dB, lung bias {check.lung_bias_hu:+.1f} HU"
    for ds in rig.derived():
        assert str(ds.ImageComments).endswith(f"not AI, not acquired data. {line}")
        assert str(ds.DerivationDescription).endswith(f"; {line}")
    assert rig.metric("dicom_node_self_check_outcomes_total", outcome="passed") == 1.0
    assert rig.metric("dicom_node_self_checks_total", backend="interpolation", result="passed") == 1.0


@pytest.mark.parametrize(("kind", "failure"), [("noise", "consistency"), ("shifted", "consistency"),
                                               ("darker lungs", "lung bias")])
def test_garbage_falls_back_to_interpolation_labelled_with_the_reason(tmp_path: Path, kind: str, failure: str) -> None:
    rig = make_rig(tmp_path, GarbageSynthesizer(kind))
    rig.stage.step()
    summary = view(rig.ledger, rig.uid)
    assert summary is not None and summary.state == SeriesState.DONE
    bis = InterpolationSynthesizer(5).identity
    assert summary.derived_series_uid == derived_series_uid(rig.uid, bis, "")     # the interpolation series
    sent, garbage = summary.checks                                                # the one sent first
    assert (sent.backend, sent.used, sent.passed) == ("interpolation", True, True)
    assert (garbage.backend, garbage.used, garbage.passed) == ("garbage", False, False)
    assert garbage.failure.startswith(failure) and (garbage.offaxis_psnr_db, garbage.offaxis_bis_psnr_db) == (20, 30)
    why = f"interpolation sent in place of the garbage output, which failed its self-check ({garbage.failure})"
    for ds in rig.derived():
        assert str(ds.SeriesDescription).startswith("INTERP 1.0mm not AI")
        assert why in str(ds.ImageComments) and why in str(ds.DerivationDescription)
        assert "self-check: consistency" in str(ds.ImageComments)
        assert "a model that went wrong" not in str(ds.DerivationDescription)
    assert rig.metric("dicom_node_self_check_outcomes_total", outcome="fallback") == 1.0
    assert rig.metric("dicom_node_self_checks_total", backend="garbage", result="failed") == 1.0
    assert rig.metric("dicom_node_self_check_offaxis_gain_db_count", backend="garbage") == 1.0


@pytest.mark.parametrize("kind", ["noise", "shifted", "darker lungs"])
def test_garbage_is_rejected_and_kept_with_its_reason_under_reject(tmp_path: Path, kind: str) -> None:
    rig = make_rig(tmp_path, GarbageSynthesizer(kind), on_check_fail="reject")
    rig.stage.step()
    summary = view(rig.ledger, rig.uid)
    assert summary is not None and summary.state == SeriesState.REJECTED
    assert summary.reason == QUALITY_CHECK_FAILED == "quality_check_failed"
    assert summary.detail.startswith("garbage output failed its self-check: ")
    assert summary.detail.endswith('(synth.on_check_fail = "reject")')
    (check,) = summary.checks
    assert check.backend == "garbage" and not check.passed and not check.used
    kept = rig.spool.rejected / rig.uid
    assert len(list(kept.glob("*.dcm"))) == 6                                     # nothing lost
    assert (kept / "reason").read_text().startswith("quality_check_failed\ngarbage output failed")
    assert not any(rig.spool.derived.iterdir())
    assert rig.metric("dicom_node_self_check_outcomes_total", outcome="rejected") == 1.0


def test_interpolation_below_the_thresholds_goes_out_under_fallback_and_is_rejected_under_reject(
        tmp_path: Path) -> None:
    """A 16 x 16 three-slice phantom reads about 26 dB even for BIS: the input is odd, not the method."""
    rig = make_rig(tmp_path / "a", InterpolationSynthesizer(5), rows=16, slices=3)
    rig.stage.step()
    summary = view(rig.ledger, rig.uid)
    assert summary is not None and summary.state == SeriesState.DONE
    (check,) = summary.checks
    assert check.used and not check.passed and check.failure.startswith("consistency ")
    assert "interpolation sent although its self-check failed" in str(rig.derived()[0].ImageComments)
    strict = make_rig(tmp_path / "b", InterpolationSynthesizer(5), rows=16, slices=3, on_check_fail="reject")
    strict.stage.step()
    summary = view(strict.ledger, strict.uid)
    assert summary is not None and summary.state == SeriesState.REJECTED and summary.reason == QUALITY_CHECK_FAILED


def test_thresholds_decide(tmp_path: Path) -> None:
    """The same garbage passes when the thresholds are off (0 dB; the widest bias)."""
    rig = make_rig(tmp_path, GarbageSynthesizer("shifted"), min_consistency_db=0.0, max_lung_bias_hu=3072.0)
    rig.stage.step()
    summary = view(rig.ledger, rig.uid)
    assert summary is not None and summary.self_check is not None
    assert summary.self_check.backend == "garbage" and summary.self_check.passed


def test_reprocessing_replaces_the_checks_and_discard_removes_them(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, GarbageSynthesizer("noise"), on_check_fail="reject")
    rig.stage.step()
    rig.ledger.retry(rig.uid, 1004.0)
    rig.stage.step()
    summary = view(rig.ledger, rig.uid)
    assert summary is not None and summary.state == SeriesState.REJECTED and len(summary.checks) == 1
    rig.ledger.discard(rig.uid)
    with rig.ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM self_checks").scalar() == 0


@pytest.mark.parametrize(("synth", "message"), [
    ({"on_check_fail": "ignore"}, r"synth\.on_check_fail must be one of \('fallback', 'reject'\), got 'ignore'"),
    ({"min_consistency_db": 101.0}, r"synth\.min_consistency_db must be between 0 and 100, got 101\.0"),
    ({"max_lung_bias_hu": -1}, r"synth\.max_lung_bias_hu must be between 0 and 3072, got -1\.0"),
    ({"max_lung_bias_hu": "10"}, r"synth\.max_lung_bias_hu: expected float, got '10'"),
    ({"min_consistency_db": float("nan")}, r"synth\.min_consistency_db: must be a finite number"),
])
def test_policy_keys_are_checked_by_name(synth: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"synth": synth}, source="node.toml")


def test_policy_keys_live_in_the_synth_table() -> None:
    cfg = parse_config({"synth": {"backend": "interpolation", "min_consistency_db": 30, "on_check_fail": "reject"}})
    assert (cfg.self_check.min_consistency_db, cfg.self_check.max_lung_bias_hu) == (30.0, 10.0)
    assert cfg.synth.backend == "interpolation" and cfg.self_check.on_check_fail == "reject"
    shown = to_dict(cfg)
    assert shown["synth"]["on_check_fail"] == "reject" and "self_check" not in shown
