"""A lost or damaged state.db: the node refuses to start on it, and rebuild-ledger makes it again from the spool.

Real processes throughout: the node as a subprocess, a PACS stand-in that records what it receives, and
`dicom-node run | list | rebuild-ledger` as an administrator would type them.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.fault.conftest import (
    REPO,
    NodeFactory,
    NodeProcess,
    PacsSCP,
    derived_count,
    python_for_node,
    send_datasets,
    stays,
)
from tests.support.ct_series import make_ct_series
from tests.support.postgres import PostgresServer

PacsFactory = Callable[..., PacsSCP]


def cli(node: NodeProcess, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    """``dicom-node <args> --config <the node's config>``, stdout and stderr apart."""
    return subprocess.run([python_for_node(), "-m", "dicom_node", *args, "--config", str(node.config_path)],
                          capture_output=True, text=True, timeout=timeout_s, cwd=node.workdir,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


def one_line(text: str) -> str:
    assert "Traceback" not in text, text
    assert text.endswith("\n") and text.count("\n") == 1, f"not one line: {text!r}"
    return text.strip()


def assert_refused(node: NodeProcess, command: str, problem: str) -> None:
    result = cli(node, command)
    assert result.returncode == 1, result
    line = one_line(result.stderr)
    db = node.storage_dir / "state.db"
    prefix = "cannot start" if command in ("run", "worker") else command
    assert line.startswith(f"{prefix}: ledger {db} {problem}"), line
    assert line.endswith(f"rebuild it from the spool with: dicom-node rebuild-ledger --config {node.config_path}")


def by_uid(node: NodeProcess) -> dict[str, dict[str, object]]:
    return {str(r["series_uid"]): r for r in node.list_json()}


def test_an_empty_ledger_is_refused_and_rebuilt_without_sending_again(node_factory: NodeFactory,
                                                                      pacs_factory: PacsFactory) -> None:
    pacs = pacs_factory()
    node = node_factory(destinations=[pacs], quiet_period_s=0.5)
    good, bad = make_ct_series(slices=5, seed=711), make_ct_series(slices=1, seed=712)
    good_uid, bad_uid = str(good[0].SeriesInstanceUID), str(bad[0].SeriesInstanceUID)
    assert send_datasets(good, node.port) == [0] * 5
    assert send_datasets(bad, node.port) == [0]
    good_row = node.wait_state(good_uid, "done", timeout_s=60)
    node.wait_state(bad_uid, "rejected")
    assert pacs.count() == derived_count(5)
    refused = cli(node, "rebuild-ledger")                             # not under a running node
    assert refused.returncode == 1
    assert one_line(refused.stderr).startswith(f"rebuild-ledger: a node is running on {node.storage_dir}")
    assert node.terminate() == 0
    # One more series, received but not processed before the ledger is lost: a receive-only run.
    node.start(args=["--receive-only"])
    waiting = make_ct_series(slices=4, seed=713)
    waiting_uid = str(waiting[0].SeriesInstanceUID)
    assert send_datasets(waiting, node.port) == [0] * 4
    node.wait_state(waiting_uid, "complete")
    assert node.terminate() == 0

    node.engine().dispose()                                            # the test's own reader lets go too
    db = node.storage_dir / "state.db"
    assert not Path(f"{db}-wal").exists()                             # so the WAL is folded in: one file
    os.truncate(db, 0)
    assert_refused(node, "run", "is empty (0 bytes) while the spool holds 2 received, 1 rejected and 1 derived series")
    assert_refused(node, "worker", "is empty (0 bytes)")
    assert_refused(node, "list", "is empty (0 bytes)")                # no command makes a fresh ledger over it
    assert db.stat().st_size == 0

    # A second PACS joins before the rebuild: it has nothing yet, so it gets the derived series; the first
    # has it on record and gets nothing again.
    second = pacs_factory(ae_title="PACS2")
    node.write_config({"destinations": [*node.raw["destinations"],
                                        {"name": "pacs2", "ae_title": "PACS2", "host": "127.0.0.1",
                                         "port": second.port}]})
    rebuilt = cli(node, "rebuild-ledger")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"rebuilt ledger {db} from the spool: 3 series (1 receiving, 1 rejected, 1 sending)" in rebuilt.stdout
    assert "sends: pacs done 1, pacs2 pending 1" in rebuilt.stdout
    (aside,) = node.storage_dir.glob("state.db.damaged-*")
    assert aside.stat().st_size == 0 and f"old file kept as {aside}" in rebuilt.stdout

    listed = by_uid(node)
    assert (listed[bad_uid]["state"], listed[bad_uid]["reason"]) == ("rejected", "single_slice")
    assert listed[bad_uid]["detail"]
    assert listed[waiting_uid]["state"] == "receiving"
    assert listed[good_uid]["derived_series_uid"] == good_row["derived_series_uid"]

    node.start()
    node.wait_state(waiting_uid, "done", timeout_s=60)
    node.wait_state(good_uid, "done", timeout_s=60)
    assert node.state(bad_uid) == "rejected"
    derived_good = str(good_row["derived_series_uid"])
    assert {uid: len(r) for uid, r in second.series().items()} == {
        derived_good: derived_count(5), str(node.series_rows()[waiting_uid]["derived_series_uid"]): derived_count(4)}
    stays(lambda: len(pacs.series()[derived_good]) == derived_count(5)
          and pacs.count() == derived_count(5) + derived_count(4), 2.0, "the first PACS got the kept series once")


def test_random_bytes_are_refused_with_the_same_kind_of_message(node_factory: NodeFactory,
                                                                pacs_factory: PacsFactory) -> None:
    pacs = pacs_factory()
    node = node_factory(destinations=[pacs], quiet_period_s=0.5)
    source = make_ct_series(slices=3, seed=714)
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port) == [0] * 3
    node.wait_state(uid, "done", timeout_s=60)
    assert node.terminate() == 0
    node.engine().dispose()
    garbage = random.Random(714).randbytes(64 * 1024)
    (node.storage_dir / "state.db").write_bytes(garbage)
    assert_refused(node, "run", "is not a SQLite database (its header is wrong)")
    assert cli(node, "rebuild-ledger").returncode == 0
    (aside,) = node.storage_dir.glob("state.db.damaged-*")
    assert aside.read_bytes() == garbage                                # moved aside, byte for byte
    assert by_uid(node)[uid]["state"] == "done"
    node.start()
    stays(lambda: pacs.count() == derived_count(3), 2.0, "nothing sent again")


def test_postgres_is_rebuilt_into_an_empty_database_only(node_factory: NodeFactory, pacs_factory: PacsFactory,
                                                         postgres: PostgresServer) -> None:
    pacs = pacs_factory()
    node = node_factory(destinations=[pacs], quiet_period_s=0.5,
                        overrides={"database": {"url": postgres.create_database("fault_rebuild")}})
    good, bad = make_ct_series(slices=4, seed=715), make_ct_series(slices=1, seed=716)
    good_uid, bad_uid = str(good[0].SeriesInstanceUID), str(bad[0].SeriesInstanceUID)
    assert send_datasets(good, node.port) == [0] * 4 and send_datasets(bad, node.port) == [0]
    node.wait_state(good_uid, "done", timeout_s=60)
    node.wait_state(bad_uid, "rejected")
    assert node.terminate() == 0
    refused = cli(node, "rebuild-ledger")
    assert refused.returncode == 1
    assert one_line(refused.stderr) == (
        f"rebuild-ledger: database.url {node.database_url} already holds 2 series: rebuild-ledger fills only an "
        "empty database; restore a backup (pg_restore), or drop and create the database, then run rebuild-ledger "
        "again")
    node.engine().dispose()
    node._engine = None
    node.write_config({"database": {"url": postgres.create_database("fault_rebuild")}})   # the database is lost
    rebuilt = cli(node, "rebuild-ledger")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "2 series (1 done, 1 rejected)" in rebuilt.stdout and "old file kept" not in rebuilt.stdout
    listed = by_uid(node)
    assert (listed[bad_uid]["state"], listed[bad_uid]["reason"]) == ("rejected", "single_slice")
    assert listed[good_uid]["state"] == "done"
    node.start()
    stays(lambda: pacs.count() == derived_count(4), 2.0, "nothing sent again")
