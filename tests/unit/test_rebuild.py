"""rebuild-ledger: a spool read back into ledger rows; the old file kept; never under a running node."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.config import NodeConfig, parse_config
from dicom_node.delivery import record_delivery
from dicom_node.ledger import open_engine, open_ledger, queries
from dicom_node.ledger_check import check_ledger
from dicom_node.nodelock import NodeLock
from dicom_node.rebuild import RebuildError, rebuild_ledger
from dicom_node.record import reconcile_spool
from dicom_node.spool import Spool, StoredInstance
from dicom_node.write import DerivedSeries, write_derived_series
from synth.interpolate import InterpolationSynthesizer
from tests.support.ct_series import make_ct_series
from tests.support.ledger import deadline, new_ledger, record, view
from tests.unit.test_assemble import run

NOW = 2_000_000_000.0
QUIET = 7.0


@pytest.fixture
def cfg(tmp_path: Path) -> NodeConfig:
    return parse_config({
        "node": {"storage_dir": str(tmp_path / "var")},
        "series": {"quiet_period_s": QUIET},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
        "folder_destinations": [{"name": "outbox", "path": str(tmp_path / "outbox")}],
    }, source="node.toml")


def receive(spool: Spool, series: list[Dataset]) -> str:
    for ds in series:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        spool.put(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), buffer.getvalue())
    return str(series[0].SeriesInstanceUID)


def derive(spool: Spool, series: list[Dataset]) -> DerivedSeries:
    volume, source = run(series)
    synth = InterpolationSynthesizer(5)
    return write_derived_series(synth(volume), source, identity=synth.identity, factor=5, spool=spool)


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))


def rows(cfg: NodeConfig) -> dict[str, tuple[str, str, str, int, str, tuple[tuple[str, str], ...]]]:
    engine = open_engine(cfg.database_url)
    try:
        return {s.series_uid: (s.state, s.reason, s.detail, s.instance_count, s.derived_series_uid,
                               tuple((j.destination, j.state) for j in s.sends))
                for s in queries.list_series(engine, limit=1000)[0]}
    finally:
        engine.dispose()                 # closed, as a stopped node leaves it: no -wal beside state.db


def test_each_series_becomes_what_its_folders_say(cfg: NodeConfig) -> None:
    spool = Spool(cfg.storage_dir)
    half = make_ct_series(slices=5, seed=1)                       # derived, delivered to pacs only
    half_uid, half_derived = receive(spool, half), derive(spool, half)
    record_delivery(half_derived.directory, destination="pacs", sent=half_derived.count, now=NOW - 50)
    full = make_ct_series(slices=4, seed=2)                       # derived, delivered everywhere
    full_uid, full_derived = receive(spool, full), derive(spool, full)
    for name in ("pacs", "outbox"):
        record_delivery(full_derived.directory, destination=name, sent=full_derived.count, now=NOW - 40)
    bad = make_ct_series(slices=3, seed=3)                        # rejected
    bad_uid = receive(spool, bad)
    spool.reject(bad_uid, "irregular_spacing", "gap 7.500 mm between slices 1 and 2, median 5.000 mm")
    waiting = make_ct_series(slices=3, seed=4)                    # only received
    waiting_uid = receive(spool, waiting)

    report = rebuild_ledger(cfg, now=NOW)

    got = rows(cfg)
    assert got[half_uid] == ("sending", "", "", 5, half_derived.series_uid, (("outbox", "pending"), ("pacs", "done")))
    assert got[full_uid] == ("done", "", "", 4, full_derived.series_uid, (("outbox", "done"), ("pacs", "done")))
    assert got[bad_uid] == ("rejected", "irregular_spacing", "gap 7.500 mm between slices 1 and 2, median 5.000 mm",
                            3, "", ())
    assert got[waiting_uid] == ("receiving", "", "", 3, "", ())
    assert dict(report.states) == {"done": 1, "receiving": 1, "rejected": 1, "sending": 1}
    assert report.instances == 15 and report.moved_aside == () and report.warnings == ()
    assert set(report.sends) == {("pacs", "done", 2), ("outbox", "done", 1), ("outbox", "pending", 1)}
    ledger = new_ledger(cfg.database_url)
    assert deadline(ledger, waiting_uid) == pytest.approx(NOW + QUIET)   # the received series is processed
    assert ledger.is_derived_series(half_derived.series_uid)      # our own output stays recognised
    # The instance rows carry each file's digest and mtime: a restart's reconciliation finds nothing new,
    # and a re-sent identical instance is a duplicate, not a change that re-opens a finished series.
    assert reconcile_spool(spool, ledger, QUIET, NOW) == 0
    path = spool.instance_files(full_uid)[0]
    stamps = ledger.instance_stamps([full_uid])
    assert stamps[(full_uid, path.stem)] == path.stat().st_mtime_ns
    again = StoredInstance("", full_uid, path.stem, path, path.stat().st_size,
                           hashlib.sha256(path.read_bytes()).hexdigest())
    assert record(ledger, again, NOW + 1, QUIET).value == "duplicate"
    assert view(ledger, full_uid).state == "done"  # type: ignore[union-attr]


def test_the_latest_outcome_wins(cfg: NodeConfig) -> None:
    spool = Spool(cfg.storage_dir)
    t = time.time()                                  # file times in the past, in a set order
    # Rejected, then retried and derived: the reason file stays, older than the manifest.
    retried = make_ct_series(slices=3, seed=5)
    retried_uid = receive(spool, retried)
    spool.reject(retried_uid, "processing_error", "MemoryError")
    for f in (spool.rejected / retried_uid).iterdir():
        set_mtime(f, t - 100)
    retried_derived = derive(spool, [pydicom.dcmread(p) for p in spool.instance_files(retried_uid)])
    # Derived, then a new instance arrived: it is received again and processed anew.
    reopened = make_ct_series(slices=4, seed=6)
    reopened_uid = receive(spool, reopened[:3])
    reopened_derived = derive(spool, reopened[:3])
    for f in (spool.incoming / reopened_uid).iterdir():
        set_mtime(f, t - 200)
    set_mtime(reopened_derived.directory / "manifest.txt", t - 100)
    receive(spool, reopened[3:])
    set_mtime(spool.incoming / reopened_uid / f"{reopened[3].SOPInstanceUID}.dcm", t - 10)
    # A rejection cut short: instances moved, no reason written yet.
    cut = make_ct_series(slices=3, seed=7)
    cut_uid = receive(spool, cut)
    (spool.rejected / cut_uid).mkdir()
    for f in (spool.incoming / cut_uid).iterdir():
        f.rename(spool.rejected / cut_uid / f.name)

    rebuild_ledger(cfg, now=NOW)

    got = rows(cfg)
    assert got[retried_uid][:2] == ("sending", "") and got[retried_uid][4] == retried_derived.series_uid
    assert got[reopened_uid][:5] == ("receiving", "", "", 4, reopened_derived.series_uid)
    assert got[reopened_uid][5] == ()
    assert got[cut_uid][:4] == ("receiving", "", "", 3)


def test_unusable_folders_are_reported_and_left_alone(cfg: NodeConfig) -> None:
    spool = Spool(cfg.storage_dir)
    (spool.derived / "1.2.3.4").mkdir()                             # no manifest
    (spool.incoming / "not-a-uid").mkdir()
    (spool.incoming / "1.2.3.5").mkdir()                            # no files
    (spool.incoming / ".tmp-1.2.3.6").mkdir()                       # a write in progress: not a series
    report = rebuild_ledger(cfg, now=NOW)
    assert report.states == ()
    assert sorted(report.warnings) == [
        "1.2.3.5: a folder without instance files; left in place, not in the ledger",
        "derived/1.2.3.4: no manifest.txt; left in place, not in the ledger",
        "series folder 'not-a-uid' is not a dotted numeric UID; left in place, not in the ledger",
    ]
    assert (spool.derived / "1.2.3.4").is_dir() and (spool.incoming / "not-a-uid").is_dir()


def test_a_damaged_file_is_moved_aside_with_its_wal_and_the_new_ledger_passes(cfg: NodeConfig) -> None:
    spool = Spool(cfg.storage_dir)
    uid = receive(spool, make_ct_series(slices=3, seed=8))
    db = cfg.storage_dir / "state.db"
    db.write_bytes(b"\x89garbage" * 100)
    Path(f"{db}-wal").write_bytes(b"old wal")
    report = rebuild_ledger(cfg, now=NOW)
    assert [p.name for p in report.moved_aside] == ["state.db.damaged-20330518T033320Z",
                                                   "state.db-wal.damaged-20330518T033320Z"]
    assert report.moved_aside[0].read_bytes() == b"\x89garbage" * 100        # kept, byte for byte
    assert not Path(f"{db}-wal").exists()
    check_ledger(database_url=cfg.database_url, storage_dir=cfg.storage_dir, config_source="node.toml")
    assert rows(cfg)[uid][0] == "receiving"
    db.write_bytes(b"")                                                         # a second rebuild, same second
    again = rebuild_ledger(cfg, now=NOW)
    assert [p.name for p in again.moved_aside] == ["state.db.damaged-20330518T033320Z-1"]


def test_a_sound_ledger_needs_force_and_is_kept(cfg: NodeConfig) -> None:
    spool = Spool(cfg.storage_dir)
    uid = receive(spool, make_ct_series(slices=3, seed=9))
    engine = open_engine(cfg.database_url)
    open_ledger(engine, migrate=True)
    engine.dispose()
    with pytest.raises(RebuildError, match=r"ledger .*state.db passes its checks: .* add --force"):
        rebuild_ledger(cfg, now=NOW)
    # The check's reader may leave SQLite's (empty) -wal and -shm beside the file: they move with it.
    held = [name for name in ("state.db", "state.db-wal", "state.db-shm") if (cfg.storage_dir / name).exists()]
    assert held[0] == "state.db"
    report = rebuild_ledger(cfg, now=NOW, force=True)
    assert [p.name for p in report.moved_aside] == [f"{name}.replaced-20330518T033320Z" for name in held]
    assert rows(cfg)[uid][0] == "receiving"


def test_refused_while_a_node_holds_the_storage(cfg: NodeConfig) -> None:
    cfg.storage_dir.mkdir(parents=True)
    (cfg.storage_dir / "state.db").write_bytes(b"")
    with NodeLock(cfg.storage_dir, exclusive=False), pytest.raises(  # the lock `run` and `worker` hold
            RebuildError, match=r"a node is running on .*var \(.*node.lock is held\): stop every node"):
        rebuild_ledger(cfg, now=NOW)
    assert (cfg.storage_dir / "state.db").exists()
    assert rebuild_ledger(cfg, now=NOW).moved_aside                   # stopped: it goes ahead


def test_no_storage_no_rebuild(cfg: NodeConfig) -> None:
    with pytest.raises(RebuildError, match=r"node.storage_dir .*var does not exist: there is no spool"):
        rebuild_ledger(cfg, now=NOW)
