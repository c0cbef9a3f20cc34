"""The synthesis stage: the machine's failures put a series back in the queue; the series' own are kept."""

from __future__ import annotations

import errno
import io
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy.exc import OperationalError

from dicom_node import synthesis
from dicom_node.config import parse_config
from dicom_node.disk import DiskGuard, derived_bytes_estimate
from dicom_node.ledger import Ledger, SeriesState
from dicom_node.metrics import NodeMetrics
from dicom_node.spool import Spool
from dicom_node.stage import StageWait
from dicom_node.synthesis import SPOOL_FILE_DAMAGED, SPOOL_FILE_MISSING, SynthesisStage
from synth.interpolate import InterpolationSynthesizer
from tests.support.ct_series import make_ct_series
from tests.support.ledger import new_ledger, view

OWNER = "test-host:1:stage"


@dataclass
class Rig:
    ledger: Ledger
    spool: Spool
    stage: SynthesisStage
    uid: str
    now: list[float]
    synthesized: list[int]

    def state(self) -> str:
        summary = view(self.ledger, self.uid)
        assert summary is not None
        return summary.state


def receive(ledger: Ledger, spool: Spool, slices: int, now: float) -> str:
    datasets = make_ct_series(slices=slices, rows=32, cols=32)
    batch = []
    for ds in datasets:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        stored = spool.put(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                           buffer.getvalue())
        batch.append((stored, now, "MODALITY"))
    ledger.record_instances(batch, quiet_s=1.0)
    assert ledger.complete_due(now + 2.0) == [str(datasets[0].SeriesInstanceUID)]
    return str(datasets[0].SeriesInstanceUID)


def make_rig(tmp_path: Path, *, watermark: float = 0.999) -> Rig:
    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var"), "disk_watermark": watermark}})
    spool = Spool(cfg.storage_dir, fsync=False)
    ledger = new_ledger(cfg.database_url)
    now = [1000.0]
    uid = receive(ledger, spool, slices=4, now=now[0])
    synthesized: list[int] = []
    stage = SynthesisStage(cfg, ledger=ledger, spool=spool, synthesizer=InterpolationSynthesizer(),
                           disk=DiskGuard(cfg.storage_dir, watermark), metrics=NodeMetrics(ledger, cfg.storage_dir),
                           owner=OWNER, clock=lambda: now[0], on_synthesized=lambda: synthesized.append(1))
    return Rig(ledger, spool, stage, uid, now, synthesized)


def failing_once(real: Callable[..., Any], error: BaseException) -> Callable[..., Any]:
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise error
        return real(*args, **kwargs)

    return wrapper


def test_no_space_while_writing_puts_the_series_back_and_it_goes_through_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make_rig(tmp_path)
    monkeypatch.setattr(synthesis, "write_derived_series",
                        failing_once(synthesis.write_derived_series, OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError, match="No space left on device"):
        rig.stage.step()
    assert rig.state() == SeriesState.COMPLETE                 # back in the queue, not rejected
    assert not (rig.spool.rejected / rig.uid).exists()
    assert rig.stage.step() is None
    assert rig.state() == SeriesState.DONE and rig.synthesized == [1]


def test_a_full_database_when_recording_keeps_the_result_and_records_it_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make_rig(tmp_path)
    full = OperationalError("UPDATE series", {}, sqlite3.OperationalError("database or disk is full"))
    monkeypatch.setattr(rig.ledger, "series_synthesized", failing_once(rig.ledger.series_synthesized, full))
    with pytest.raises(OperationalError, match="database or disk is full"):
        rig.stage.step()
    assert rig.state() == SeriesState.SYNTHESIZING             # still ours; the result waits to be recorded
    second = receive(rig.ledger, rig.spool, slices=3, now=rig.now[0])
    assert rig.stage.step() is None                            # records the kept result first ...
    assert rig.state() == SeriesState.DONE
    summary = view(rig.ledger, second)
    assert summary is not None and summary.state == SeriesState.DONE   # ... and then takes the next series


def test_a_series_without_room_for_its_derived_series_waits(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, watermark=1e-6)                   # any real disk is above this
    with pytest.raises(StageWait) as waited:
        rig.stage.step()
    assert rig.state() == SeriesState.COMPLETE
    assert f"series {rig.uid} needs about" in waited.value.detail and "watermark" in waited.value.detail


def test_derived_estimate_is_factor_times_uncompressed_slices(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    files = rig.spool.instance_files(rig.uid)
    assert derived_bytes_estimate(files, 5) == 16 * (32 * 32 * 2 + 16 * 1024)
    assert derived_bytes_estimate([], 5) == 0


def test_a_spool_file_deleted_behind_the_nodes_back_is_named(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.spool.instance_files(rig.uid)[1].unlink()
    assert rig.stage.step() is None
    summary = view(rig.ledger, rig.uid)
    assert summary is not None and summary.state == SeriesState.REJECTED
    assert summary.reason == SPOOL_FILE_MISSING
    assert summary.detail.startswith("1 of 4 recorded instance file(s) are missing from the spool")


def test_a_spool_file_truncated_behind_the_nodes_back_is_named(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    victim = rig.spool.instance_files(rig.uid)[2]
    victim.write_bytes(victim.read_bytes()[:200])
    assert rig.stage.step() is None
    summary = view(rig.ledger, rig.uid)
    assert summary is not None and summary.reason == SPOOL_FILE_DAMAGED
    assert summary.detail.startswith("1 instance file(s) changed size on disk since they were received")
