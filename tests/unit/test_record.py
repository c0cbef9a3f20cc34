from __future__ import annotations

import io
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from dicom_node.ledger import Ledger, RecordOutcome, SeriesState
from dicom_node.record import InstanceRecorder, reconcile_spool
from dicom_node.spool import Spool, StoredInstance
from tests.support.ct_series import make_ct_series
from tests.support.ledger import deadline, new_ledger, record, view


def file_bytes(slices: int = 2) -> list[tuple[str, str, str, bytes]]:
    out = []
    for ds in make_ct_series(slices=slices):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), buf.getvalue()))
    return out


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return new_ledger(tmp_path / "state.db")


def test_recorder_batches_and_flushes(ledger: Ledger, tmp_path: Path) -> None:
    seen: list[RecordOutcome] = []
    recorder = InstanceRecorder(ledger, 10.0, lambda: 100.0, seen.extend)
    recorder.start()
    for i in range(50):
        recorder.put(StoredInstance("1.2", "1.2.3", f"1.2.3.{i}", Path("x"), 1, "d", 7), "SCANNER")
    recorder.put(StoredInstance("1.2", "1.2.3", "1.2.3.0", Path("x"), 1, "d", 7), "SCANNER")
    assert recorder.flush(10.0)
    summary = view(ledger, "1.2.3")
    assert summary is not None and summary.instance_count == 50
    assert seen.count(RecordOutcome.NEW) == 50 and seen.count(RecordOutcome.DUPLICATE) == 1
    assert deadline(ledger, "1.2.3") == 110.0         # the receive time, not the time it was recorded
    recorder.stop()


def locked() -> OperationalError:
    return OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))


def test_recorder_keeps_a_batch_until_the_ledger_takes_it(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    import dicom_node.record as record_module

    monkeypatch.setattr(record_module, "RETRY_INITIAL_S", 0.01)
    real = ledger.record_instances
    failures = threading.Semaphore(2)

    def flaky(batch, quiet_s, refusals=()):  # type: ignore[no-untyped-def]
        if failures.acquire(blocking=False):
            raise locked()
        return real(batch, quiet_s, refusals=refusals)

    monkeypatch.setattr(ledger, "record_instances", flaky)
    recorder = InstanceRecorder(ledger, 10.0, lambda: 1.0)
    recorder.start()
    recorder.put(StoredInstance("1.2", "1.2.3", "1.2.3.1", Path("x"), 1, "d", 7), "")
    assert recorder.flush(10.0)
    assert view(ledger, "1.2.3") is not None
    recorder.stop()


def test_intake_goes_on_past_a_poisoned_row(ledger: Ledger, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    real = ledger.record_instances
    poison = "1.2.3.666"

    def refuses_one(batch, quiet_s, refusals=()):  # type: ignore[no-untyped-def]
        if any(stored.sop_uid == poison for stored, _, _ in batch):
            raise IntegrityError("INSERT", {}, sqlite3.IntegrityError("CHECK constraint failed"))
        return real(batch, quiet_s, refusals=refusals)

    monkeypatch.setattr(ledger, "record_instances", refuses_one)
    recorder = InstanceRecorder(ledger, 10.0, lambda: 1.0)
    recorder.start()
    for sop in ("1.2.3.1", poison, "1.2.3.2"):
        recorder.put(StoredInstance("1.2", "1.2.3", sop, Path("x"), 1, "d", 7), "")
    assert recorder.flush(10.0)
    recorder.put(StoredInstance("1.2", "1.2.3", "1.2.3.3", Path("x"), 1, "d", 7), "")   # and after it
    assert recorder.flush(10.0)
    summary = view(ledger, "1.2.3")
    assert summary is not None and summary.instance_count == 3                 # every good row is in
    assert any(f"instance {poison} of series 1.2.3" in r.getMessage() and "kept" in r.getMessage()
               for r in caplog.records)
    recorder.stop()


def test_a_stop_ends_the_retrying_while_the_database_is_away(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    def away(batch, quiet_s, refusals=()):  # type: ignore[no-untyped-def]
        raise locked()

    monkeypatch.setattr(ledger, "record_instances", away)
    recorder = InstanceRecorder(ledger, 10.0, lambda: 1.0)
    recorder.start()
    recorder.put(StoredInstance("1.2", "1.2.3", "1.2.3.1", Path("x"), 1, "d", 7), "")
    started = time.monotonic()
    recorder.stop(timeout_s=0.5)
    assert time.monotonic() - started < 2.0 and recorder._thread is not None and not recorder._thread.is_alive()


def test_reconcile_records_files_received_before_a_crash(ledger: Ledger, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "var")
    files = file_bytes(3)
    stored = [spool.put(study, series, sop, data) for study, series, sop, data in files]
    record(ledger, stored[0], 50.0, 10.0)               # only the first made it to the ledger
    (spool.incoming / files[0][1] / ".tmp-half-written").write_bytes(b"partial")
    assert reconcile_spool(spool, ledger, 10.0, 100.0) == 2
    summary = view(ledger, files[0][1])
    assert summary is not None and summary.instance_count == 3 and summary.state == SeriesState.RECEIVING
    assert deadline(ledger, files[0][1]) == 110.0
    assert not (spool.incoming / files[0][1] / ".tmp-half-written").exists()
    assert reconcile_spool(spool, ledger, 10.0, 101.0) == 0     # nothing left to do


def test_reconcile_notices_a_file_replaced_before_the_crash(ledger: Ledger, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "var")
    study, series, sop, data = file_bytes(2)[0]
    record(ledger, spool.put(study, series, sop, data), 50.0, 10.0)
    spool.put(study, series, sop, data[:-2] + b"\x01\x02")          # changed bytes, never recorded
    assert reconcile_spool(spool, ledger, 10.0, 100.0) == 1
    summary = view(ledger, series)
    assert summary is not None and summary.instance_count == 1
