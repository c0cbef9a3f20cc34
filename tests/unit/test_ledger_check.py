"""The start-up check of state.db: empty or damaged ledgers are refused with the file and the command."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dicom_node.ledger import open_engine, open_ledger
from dicom_node.ledger_check import LedgerDamagedError, check_ledger, spool_work, sqlite_path
from dicom_node.spool import Spool, StoredInstance
from tests.support.ledger import record

HINT = r"rebuild it from the spool with: dicom-node rebuild-ledger --config /etc/node.toml$"


def check(var: Path) -> None:
    check_ledger(database_url=f"sqlite:///{var / 'state.db'}", storage_dir=var, config_source="/etc/node.toml")


def spool_with_work(var: Path) -> Spool:
    spool = Spool(var)
    spool.put("1.2", "1.2.3", "1.2.3.1", b"bytes")
    spool.reject("1.2.3", "single_slice", "1 slice")
    spool.put("1.2", "1.2.4", "1.2.4.1", b"bytes")
    return spool


def make_ledger(var: Path, instances: int = 0) -> Path:
    engine = open_engine(var / "state.db")
    ledger = open_ledger(engine, migrate=True)
    if instances:
        batch = [(StoredInstance("1.2", "1.2.9", f"1.2.9.{i}", Path("x"), 1, f"{i:064d}"), 1.0, "AE")
                 for i in range(instances)]
        ledger.record_instances(batch, 10.0)
    engine.dispose()
    return var / "state.db"


def test_a_fresh_node_starts_without_a_ledger_and_on_an_empty_file(tmp_path: Path) -> None:
    check(tmp_path / "var")                                    # nothing there at all
    Spool(tmp_path / "var")
    (tmp_path / "var" / "state.db").write_bytes(b"")
    check(tmp_path / "var")                                    # empty spool: nothing to lose


def test_a_sound_ledger_passes_even_while_it_is_open(tmp_path: Path) -> None:
    spool_with_work(tmp_path)
    make_ledger(tmp_path, instances=3)
    engine = open_engine(tmp_path / "state.db")
    ledger = open_ledger(engine, migrate=False)               # a running node holds it open (WAL)
    record(ledger, StoredInstance("1.2", "1.2.8", "1.2.8.1", Path("x"), 1, "d"), 2.0, 10.0)
    check(tmp_path)
    engine.dispose()


def test_an_empty_file_while_the_spool_holds_series_is_refused(tmp_path: Path) -> None:
    spool_with_work(tmp_path)
    (tmp_path / "state.db").write_bytes(b"")
    with pytest.raises(LedgerDamagedError, match=rf"^ledger {tmp_path}/state.db is empty \(0 bytes\) while the "
                                                 rf"spool holds 1 received, 1 rejected and 0 derived series: "
                                                 rf"refusing .*{HINT}"):
        check(tmp_path)


def test_a_missing_file_while_the_spool_holds_series_is_refused(tmp_path: Path) -> None:
    spool_with_work(tmp_path)
    with pytest.raises(LedgerDamagedError, match=rf"state.db is missing while the spool holds 1 received.*{HINT}"):
        check(tmp_path)


def test_random_bytes_are_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(bytes(range(256)) * 40)
    with pytest.raises(LedgerDamagedError, match=rf"state.db is not a SQLite database \(its header is wrong\).*{HINT}"):
        check(tmp_path)


def test_a_corrupt_page_fails_quick_check(tmp_path: Path) -> None:
    db = make_ledger(tmp_path, instances=400)
    data = bytearray(db.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    last = len(data) - page_size
    data[last + 5:last + 7] = b"\x00\x01"                       # the b-tree page's cell content offset
    db.write_bytes(bytes(data))
    with pytest.raises(LedgerDamagedError, match=rf"state.db fails PRAGMA quick_check \(\*\*\* in database main \*\*\* "
                                                 rf"Page \d+: .*\).*{HINT}"):
        check(tmp_path)


def test_a_truncated_database_cannot_be_read(tmp_path: Path) -> None:
    db = make_ledger(tmp_path, instances=400)
    db.write_bytes(db.read_bytes()[:4096 * 3])                  # header says more pages than there are
    with pytest.raises(LedgerDamagedError, match=rf"state.db (cannot be read as a database \(database disk image is "
                                                 rf"malformed\)|fails PRAGMA quick_check).*{HINT}"):
        check(tmp_path)


def test_a_database_without_the_ledger_tables(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("CREATE TABLE other (x)")
    conn.close()
    with pytest.raises(LedgerDamagedError, match=r"has no ledger tables \(alembic_version, series, instances, "
                                                 r"send_jobs missing\): refusing"):
        check(tmp_path)
    (tmp_path / "state.db").unlink()
    sqlite3.connect(tmp_path / "state.db").execute("PRAGMA user_version = 1").connection.close()
    check(tmp_path)                                            # empty database, empty spool: a fresh start
    spool_with_work(tmp_path)
    with pytest.raises(LedgerDamagedError, match=r"has no ledger tables .* while the spool holds 1 received"):
        check(tmp_path)


def test_only_sqlite_files_are_checked() -> None:
    assert sqlite_path("postgresql+psycopg://u:p@h/db") is None
    assert sqlite_path("sqlite://") is None and sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("sqlite:////var/lib/dicom-node/state.db") == Path("/var/lib/dicom-node/state.db")
    check_ledger(database_url="postgresql+psycopg://u:p@h/db", storage_dir=Path("/nonexistent"), config_source="c")


def test_spool_work_counts_series_folders_not_temporary_ones(tmp_path: Path) -> None:
    spool = spool_with_work(tmp_path)
    (spool.derived / ".tmp-1.2.5").mkdir()
    (spool.derived / "1.2.6").mkdir()
    assert spool_work(tmp_path).describe() == "1 received, 1 rejected and 1 derived series"
