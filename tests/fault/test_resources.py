"""Resource errors are the machine's, not the series': a full disk or a database that goes away delays
the pipeline, it never rejects a series or ends a stage, and /readyz says why meanwhile.

The node runs as a subprocess; the disk is a real 64 MiB tmpfs filled with ballast, the database a
real PostgreSQL whose database refuses connections for a while (``ALLOW_CONNECTIONS false`` and
every backend terminated), exactly as a database server restart or a network cut looks to the node.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
from pydicom.dataset import Dataset

from tests.fault.conftest import (
    NodeFactory,
    NodeProcess,
    PacsSCP,
    PostgresServer,
    derived_count,
    send_datasets,
    stays,
    wait_for,
)
from tests.interop.peers import free_port
from tests.support.ct_series import make_ct_series

PacsFactory = Callable[..., PacsSCP]
OUT_OF_RESOURCES = 0xA700


def readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def lines_per_second(log: str, pattern: str) -> float:
    """The most lines matching `pattern` that the log has within any one second."""
    stamps = [m.group(1) for m in re.finditer(rf"^(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ .*{pattern}", log, re.M)]
    return max((stamps.count(s) for s in set(stamps)), default=0)


def test_a_series_without_room_for_its_derived_series_waits_for_space(
        small_disk: Path, node_factory: NodeFactory) -> None:
    web_port = free_port()
    node = node_factory(outbox=True, quiet_period_s=2.0,
                        overrides={"node": {"storage_dir": str(small_disk / "var"), "disk_watermark": 0.99},
                                   "web": {"enabled": True, "port": web_port}})
    source = make_ct_series(slices=8, rows=256, cols=256, seed=640)     # derived: 36 slices, ~5 MB
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port) == [0] * 8
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - (2 << 20)))   # 2 MiB left
    node.wait_state(uid, "complete", timeout_s=20)
    wait_for(lambda: "needs about" in node.log_text(), 20, "the stage to say it waits for space")
    stays(lambda: node.state(uid) == "complete", 3.0, "the series waiting (not rejected, not started)")
    status, body = readyz(web_port)
    assert status == 503
    assert any("synthesis" in str(r) and "needs about" in str(r) for r in body["reasons"])
    ballast.unlink()                                            # space returns; no restart
    row = node.wait_state(uid, "done", timeout_s=30)
    assert row["derived_count"] == derived_count(8) and row["reason"] == ""
    assert readyz(web_port)[0] == 200
    log = node.log_text()
    assert "processing_error" not in log and "restarting" not in log
    assert lines_per_second(log, "waits:") <= 1


def _database_away(server: PostgresServer, name: str, away: bool) -> None:
    with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres",
                         autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if away else "true"}')
        if away:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def test_the_pipeline_survives_the_database_going_away(node_factory: NodeFactory, pacs_factory: PacsFactory,
                                                       postgres: PostgresServer) -> None:
    name = "fault_outage"
    url = postgres.create_database(name)
    pacs = pacs_factory()
    web_port = free_port()
    node = node_factory(destinations=[pacs], quiet_period_s=1.0,
                        overrides={"database": {"url": url}, "web": {"enabled": True, "port": web_port}})
    first = make_ct_series(slices=4, seed=641)
    assert send_datasets(first, node.port) == [0] * 4
    node.wait_state(str(first[0].SeriesInstanceUID), "done")
    try:
        _database_away(postgres, name, away=True)
        outage_started = time.monotonic()
        second = make_ct_series(slices=5, seed=642)
        uid = str(second[0].SeriesInstanceUID)
        assert send_datasets(second, node.port) == [0] * 5       # the files are durable; the ledger catches up
        wait_for(lambda: readyz(web_port)[0] == 503, 20, "/readyz to turn 503")
        time.sleep(max(0.0, 5.0 - (time.monotonic() - outage_started)))   # a few seconds of outage
        assert node.running()
    finally:
        _database_away(postgres, name, away=False)
    row = node.wait_state(uid, "done", timeout_s=60)
    assert row["derived_count"] == derived_count(5)
    wait_for(lambda: readyz(web_port)[0] == 200, 30, "/readyz to be 200 again")
    assert len(pacs.sop_uids(row["derived_series_uid"])) == derived_count(5)
    log = node.log_text()
    assert "restarting" not in log and "stopped by" not in log   # no stage died
    assert "rejected" not in log
    for cause in ("timer complete-due failed", "synthesis: OperationalError", "could not record"):
        assert lines_per_second(log, cause) <= 1, f"{cause!r} logged more than once a second"


def _cut_short(node_factory: NodeFactory, small_disk: Path,
               refused_wait_s: float) -> tuple[NodeProcess, str, list[Dataset]]:
    """Slices 0-3 stored, 4-5 refused (disk above the watermark), 6-7 stored once space is back."""
    node = node_factory(outbox=True, quiet_period_s=1.0,
                        overrides={"node": {"storage_dir": str(small_disk / "var"), "disk_watermark": 0.6},
                                   "series": {"refused_wait_s": refused_wait_s}})
    source = make_ct_series(slices=8, seed=643 + int(refused_wait_s))
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source[:4], node.port) == [0] * 4
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (48 << 20))                       # 48 of 64 MiB: above the 60 % watermark
    probe = make_ct_series(slices=1, seed=649)                      # another series, to see the guard turn
    wait_for(lambda: send_datasets(probe, node.port) == [OUT_OF_RESOURCES], 10, "stores to be refused")
    assert send_datasets(source[4:6], node.port) == [OUT_OF_RESOURCES] * 2
    ballast.unlink()
    wait_for(lambda: send_datasets(probe, node.port) == [0], 10, "stores to be accepted again")
    assert send_datasets(source[6:], node.port) == [0] * 2
    return node, uid, list(source)


def test_a_series_cut_short_by_a_full_disk_waits_for_the_rest(
        small_disk: Path, node_factory: NodeFactory) -> None:
    node, uid, source = _cut_short(node_factory, small_disk, refused_wait_s=600.0)
    stays(lambda: node.state(uid) == "receiving", 3.0, "the series waiting for its refused instances")
    assert send_datasets(source[4:6], node.port) == [0] * 2
    row = node.wait_state(uid, "done")
    assert row["derived_count"] == derived_count(8) and row["instance_count"] == 8


def test_a_series_whose_refused_instances_never_come_is_named_incomplete(
        small_disk: Path, node_factory: NodeFactory) -> None:
    node, uid, _source = _cut_short(node_factory, small_disk, refused_wait_s=3.0)
    row = node.wait_state(uid, "rejected", timeout_s=30)
    assert row["reason"] == "incomplete_series"
    assert row["detail"].startswith("2 instance(s) were refused for lack of disk space (0xA700)")
