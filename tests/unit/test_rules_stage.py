"""Rules in the pipeline: evaluated after assembly, the winner's destinations and backend recorded and
used; no rule → `no_rule` (kept, removed by retention); the ledger migration that holds them."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.config import NodeConfig, parse_config
from dicom_node.disk import DiskGuard
from dicom_node.ledger import Ledger, SeriesState, open_engine, open_ledger, upgrade_schema
from dicom_node.metrics import NodeMetrics
from dicom_node.retention import sweep_retention
from dicom_node.spool import Spool
from dicom_node.synthesis import SynthesisStage
from synth.backends import build_synthesizer
from synth.config import SynthConfig
from synth.interpolate import InterpolationSynthesizer
from synth.seam import Synthesizer
from tests.support.ct_series import make_ct_series
from tests.support.ledger import new_ledger, view
from tests.support.tiny_cthnet import tiny_checkpoint

OWNER = "test-host:1:stage"
FOLDERS = [{"name": "pacs", "path": "pacs"}, {"name": "cad", "path": "cad"}]


def receive(ledger: Ledger, spool: Spool, *, calling_ae: str = "CT01", description: str = "CHEST 5mm",
            slices: int = 4, now: float = 1000.0, **kw: Any) -> str:
    datasets = make_ct_series(slices=slices, rows=32, cols=32, series_description=description, **kw)
    batch = []
    for ds in datasets:
        ds.ConvolutionKernel = "B"
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        batch.append((spool.put(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                                buffer.getvalue()), now, calling_ae))
    ledger.record_instances(batch, quiet_s=1.0)
    ledger.complete_due(now + 2.0)
    return str(datasets[0].SeriesInstanceUID)


class Rig:
    def __init__(self, tmp_path: Path, rules: list[dict[str, Any]], synthesizers: dict[str, Synthesizer] | None = None,
                 **extra: Any) -> None:
        self.cfg: NodeConfig = parse_config({"node": {"storage_dir": str(tmp_path / "var"), "disk_watermark": 0.999},
                                             "folder_destinations": FOLDERS, "rules": rules, **extra},
                                            base_dir=tmp_path)
        self.spool = Spool(self.cfg.storage_dir, fsync=False)
        self.ledger = new_ledger(self.cfg.database_url)
        self.events: list[tuple[str, str]] = []
        self.stage = SynthesisStage(
            self.cfg, ledger=self.ledger, spool=self.spool, synthesizer=InterpolationSynthesizer(),
            disk=DiskGuard(self.cfg.storage_dir, 0.999), metrics=NodeMetrics(self.ledger, self.cfg.storage_dir),
            owner=OWNER, clock=lambda: 2000.0, on_synthesized=lambda: None, synthesizers=synthesizers,
            notify=lambda event, uid: self.events.append((event, uid)))


def test_the_winning_rule_sends_only_to_its_destinations(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [{"name": "mr-only", "match": {"Modality": "^MR$"}, "destinations": ["pacs"]},
                         {"name": "ct01-to-cad", "match": {"CallingAE": "^CT01$", "SliceThickness": [4.0, 6.0]},
                          "destinations": ["cad"]}])
    uid = receive(rig.ledger, rig.spool)
    assert rig.stage.step() is None
    series = view(rig.ledger, uid)
    assert series is not None and series.state == SeriesState.SENDING
    assert series.rule == "ct01-to-cad" and series.route_destinations == ("cad",)
    assert series.backend == "interpolation"
    assert [j.destination for j in series.sends] == ["cad"]
    assert (series.series_description, series.convolution_kernel, series.slice_thickness_mm) == ("CHEST 5mm", "B", 5.0)
    # A restart keeps the choice: a fresh ledger on the same database sends only to cad.
    again = open_ledger(rig.cfg.database_url, migrate=False)
    assert again.claim_send("pacs", "other", 2001.0, 60) is None
    assert again.claim_send("cad", "other", 2001.0, 60) is not None


def test_no_rule_is_kept_with_its_reason_and_removed_by_retention(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [{"name": "mr-only", "match": {"Modality": "^MR$"}, "destinations": ["pacs"]},
                         {"name": "ct09", "match": {"CallingAE": "^CT09$"}, "destinations": ["cad"]}])
    uid = receive(rig.ledger, rig.spool)
    assert rig.stage.step() is None
    series = view(rig.ledger, uid)
    assert series is not None and series.state == SeriesState.NO_RULE and series.reason == "no_rule"
    assert series.detail == ("no rule holds: mr-only: Modality 'CT' does not match '^MR$'; "
                             "ct09: CallingAE 'CT01' does not match '^CT09$'")
    assert series.sends == () and series.derived_series_uid == ""
    assert rig.events == [("no_rule", uid)]
    assert len(rig.spool.instance_files(uid)) == 4                       # kept, not rejected, not deleted
    assert not (rig.spool.rejected / uid).exists()
    assert sweep_retention(rig.ledger, rig.spool, rig.cfg.retention, now=2000.0 + 86400.0) == 0
    assert sweep_retention(rig.ledger, rig.spool, rig.cfg.retention, now=2000.0 + 4 * 86400.0) == 1
    assert view(rig.ledger, uid) is None and rig.spool.instance_files(uid) == []


def test_a_no_rule_series_is_routed_again_by_retry(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [{"name": "mr-only", "match": {"Modality": "^MR$"}, "destinations": ["pacs"]}])
    uid = receive(rig.ledger, rig.spool)
    rig.stage.step()
    assert rig.ledger.retry(uid, 2000.0) == "queued for processing again"
    assert view(rig.ledger, uid).state == SeriesState.COMPLETE  # type: ignore[union-attr]


def test_without_rules_every_destination_as_before(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [])
    uid = receive(rig.ledger, rig.spool)
    rig.stage.step()
    series = view(rig.ledger, uid)
    assert series is not None and series.rule == "" and series.route_destinations == ("pacs", "cad")
    assert sorted(j.destination for j in series.sends) == ["cad", "pacs"]


def test_selection_checks_run_before_the_rules(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [{"name": "all", "destinations": ["pacs"]}])
    uid = receive(rig.ledger, rig.spool, gantry_tilt_deg=10.0)
    rig.stage.step()
    series = view(rig.ledger, uid)
    assert series is not None and series.state == SeriesState.REJECTED and series.reason == "gantry_tilt"
    assert series.rule == "" and series.series_description == "CHEST 5mm"     # facts kept for people
    assert rig.events == [("rejected", uid)]


class Counting:
    """A test double standing in for another backend: interpolation (and labelled so), counting its calls."""

    def __init__(self) -> None:
        self._inner = InterpolationSynthesizer()
        self.identity, self.factor, self.calls = self._inner.identity, self._inner.factor, 0

    def __call__(self, volume: Any, progress: Any = None) -> Any:
        self.calls += 1
        return self._inner(volume, progress)


def test_a_rule_backend_picks_that_backends_synthesizer(tmp_path: Path) -> None:
    other = Counting()
    rig = Rig(tmp_path, [{"name": "sharp", "match": {"ConvolutionKernel": "^B$"}, "backend": "cthnet",
                          "destinations": ["cad"]},
                         {"name": "rest", "destinations": ["pacs"]}], synthesizers={"cthnet": other})
    uid = receive(rig.ledger, rig.spool)
    rig.stage.step()
    assert other.calls == 1
    series = view(rig.ledger, uid)
    assert series is not None and series.rule == "sharp" and series.backend == "interpolation"  # what made it


@pytest.mark.slow
def test_a_rule_backend_overrides_the_synth_backend(tmp_path: Path) -> None:
    weights = tiny_checkpoint(tmp_path / "tiny.pt")
    cthnet = build_synthesizer(SynthConfig(backend="cthnet", weights=str(weights), device="cpu"))
    rig = Rig(tmp_path, [{"name": "sharp", "match": {"ConvolutionKernel": "^B$"}, "backend": "cthnet",
                          "destinations": ["cad"]}], synthesizers={"cthnet": cthnet},
              synth={"weights": str(weights), "device": "cpu",    # random weights make garbage, which the
                     "min_consistency_db": 0.0, "max_lung_bias_hu": 3072.0})   # self-check would replace by BIS
    uid = receive(rig.ledger, rig.spool)
    assert rig.stage.step() is None
    series = view(rig.ledger, uid)
    assert series is not None and series.state == SeriesState.SENDING and series.backend == "cthnet"
    files = rig.spool.derived_files(series.derived_series_uid)
    assert len(files) == 5 * 3 + 1
    ds = pydicom.dcmread(files[0])
    assert "CTHNet" in str(ds.DerivationDescription) or "cthnet" in str(ds.DerivationDescription).lower()


def test_the_no_destination_rule_set_finishes_done_and_notifies(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [])
    rig.cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")}})   # no destinations at all
    rig.stage = SynthesisStage(rig.cfg, ledger=rig.ledger, spool=rig.spool, synthesizer=InterpolationSynthesizer(),
                               disk=DiskGuard(rig.cfg.storage_dir, 0.999),
                               metrics=NodeMetrics(rig.ledger, rig.cfg.storage_dir), owner=OWNER,
                               clock=lambda: 2000.0, on_synthesized=lambda: None,
                               notify=lambda event, uid: rig.events.append((event, uid)))
    uid = receive(rig.ledger, rig.spool)
    rig.stage.step()
    assert rig.events == [("done", uid)]


# -- the migration -------------------------------------------------------------------------------
def test_migration_0004_keeps_rows_and_takes_the_long_states(tmp_path: Path) -> None:
    from alembic import command

    from dicom_node.ledger.db import _script

    db = tmp_path / "state.db"
    engine = open_engine(db)
    cfg, _ = _script()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    with engine.begin() as conn:                        # a 0003 ledger with a finished series in it
        conn.exec_driver_sql("INSERT INTO series (series_uid, study_uid, state, reason, detail, instance_count, "
                             "duplicate_count, generation, processed_generation, first_received_at, "
                             "last_received_at, derived_series_uid, derived_count, calling_ae, updated_at) VALUES "
                             "('1.2.3', '1.2', 'done', '', '', 4, 0, 1, 1, 1.0, 2.0, '2.25.9', 16, 'CT01', 3.0)")
        conn.exec_driver_sql("INSERT INTO instances (series_uid, sop_uid, digest, size, received_at, mtime_ns) "
                             "VALUES ('1.2.3', '1.2.3.1', 'x', 10, 1.0, 0)")
    upgrade_schema(engine)
    engine.dispose()
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    assert "state VARCHAR(32)" in raw.execute("SELECT sql FROM sqlite_master WHERE name = 'series'").fetchone()[0]
    raw.close()
    ledger = open_ledger(db, migrate=False)
    series = view(ledger, "1.2.3")
    assert series is not None and series.state == "done" and series.rule == "" and series.route_destinations == ()
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE series SET state = 'thin_series_exists' WHERE series_uid = '1.2.3'")
    assert view(ledger, "1.2.3").state == SeriesState.THIN_SERIES_EXISTS  # type: ignore[union-attr]


@pytest.mark.parametrize("target", ["0003"])
def test_migration_0004_downgrades(tmp_path: Path, target: str) -> None:
    from alembic import command

    from dicom_node.ledger.db import _script

    engine = open_engine(tmp_path / "state.db")
    upgrade_schema(engine)
    cfg, _ = _script()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, target)
    with engine.connect() as conn:
        columns = [row[1] for row in conn.exec_driver_sql("PRAGMA table_info(series)")]
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'series'").scalar_one()
    assert "rule" not in columns and "slice_thickness_mm" not in columns and "state VARCHAR(16)" in sql


def test_the_routed_backend_s_own_spacing_range_decides(tmp_path: Path) -> None:
    """An 8-mm series: interpolation (1.5-10 mm) takes it; a rule that routes it to cthnet (4-6 mm) keeps
    it rejected with the one spacing reason, naming the backend."""
    other = Counting()
    rig = Rig(tmp_path, [{"name": "sharp", "match": {"SeriesDescription": "SHARP"}, "backend": "cthnet",
                          "destinations": ["cad"]},
                         {"name": "rest", "destinations": ["pacs"]}], synthesizers={"cthnet": other})
    assert rig.cfg.assembly_spacing_mm() == (1.5, 10.0)
    sharp = receive(rig.ledger, rig.spool, description="SHARP 8mm", spacing_mm=8.0)
    rig.stage.step()
    refused = view(rig.ledger, sharp)
    assert refused is not None and refused.state == SeriesState.REJECTED
    assert refused.reason == "spacing_out_of_range" and other.calls == 0
    assert "outside 4.0-6.0 mm, the range of backend cthnet" in refused.detail
    soft = receive(rig.ledger, rig.spool, description="SOFT 8mm", spacing_mm=8.0)
    rig.stage.step()
    taken = view(rig.ledger, soft)
    assert taken is not None and taken.state == SeriesState.SENDING and taken.rule == "rest"
