"""The ledger on a real PostgreSQL: a series delivered; concurrent claimers never share a series.

The server is started by the session fixture ``postgres`` (initdb + pg_ctl on a free loopback port);
the tests skip only when the PostgreSQL server binaries are absent.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.fault.conftest import (
    REPO,
    NodeFactory,
    PacsSCP,
    PostgresServer,
    derived_count,
    python_for_node,
    send_datasets,
)
from tests.support.ct_series import make_ct_series

PacsFactory = Callable[..., PacsSCP]
SYNTHESIZED = re.compile(r"\] series ([0-9.]+): \d+ slices at")


def test_node_on_postgres_delivers(node_factory: NodeFactory, pacs_factory: PacsFactory,
                                   postgres: PostgresServer) -> None:
    url = postgres.create_database("fault_deliver")
    pacs = pacs_factory()
    node = node_factory(destinations=[pacs], quiet_period_s=0.5, overrides={"database": {"url": url}})
    source = make_ct_series(slices=6, seed=710)
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port) == [0] * 6
    row = node.wait_state(uid, "done")
    assert pacs.sop_uids() == pacs.sop_uids(str(row["derived_series_uid"])) and pacs.count() == derived_count(6)
    assert not (node.storage_dir / "state.db").exists()            # the ledger really is in PostgreSQL
    listed = {r["series_uid"]: r for r in node.list_json()}
    sends = listed[uid]["sends"]
    assert listed[uid]["state"] == "done" and (sends[0]["destination"], sends[0]["state"]) == ("pacs", "done")


def test_receiver_and_two_workers_never_share_a_series(node_factory: NodeFactory, pacs_factory: PacsFactory,
                                                       postgres: PostgresServer) -> None:
    url = postgres.create_database("fault_workers")
    pacs = pacs_factory()
    node = node_factory(destinations=[pacs], quiet_period_s=0.5, overrides={"database": {"url": url}},
                        args=["--receive-only"])
    workers = [node.spawn("worker", log_name=f"worker{i}.log") for i in range(2)]
    node.extra_processes += workers
    sources = [make_ct_series(slices=5, seed=720 + i) for i in range(8)]
    for source in sources:
        assert send_datasets(source, node.port) == [0] * 5
    uids = [str(s[0].SeriesInstanceUID) for s in sources]
    for uid in uids:
        node.wait_state(uid, "done", timeout_s=60)
    synthesized: dict[str, list[int]] = {}
    for i in range(2):
        for line in (node.workdir / f"worker{i}.log").read_text().splitlines():
            if m := SYNTHESIZED.search(line):
                synthesized.setdefault(m.group(1), []).append(i)
    assert sorted(synthesized) == sorted(uids)
    assert all(len(by) == 1 for by in synthesized.values()), synthesized        # each by exactly one worker
    assert len(pacs.records()) == len(pacs.sop_uids()) == 8 * derived_count(5)  # each instance sent once
    assert all(w.poll() is None for w in workers)


CLAIMER = """
import json, sys, time
from dicom_node.ledger import open_ledger
ledger = open_ledger(sys.argv[1], migrate=False)
owner, start_at = sys.argv[2], float(sys.argv[3])
while time.time() < start_at:
    time.sleep(0.001)
claimed = []
while (claim := ledger.claim_series(owner, time.time(), 60.0)) is not None:
    claimed.append(claim.series_uid)
print(json.dumps(claimed))
"""


def test_concurrent_claims_never_share_a_series(postgres: PostgresServer, tmp_path: Path) -> None:
    from dicom_node.spool import StoredInstance
    from tests.support.ledger import new_ledger, record

    url = postgres.create_database("fault_claims")
    ledger = new_ledger(url)
    now = time.time()
    uids = [f"1.2.826.0.1.3680043.10.543.73.{i}" for i in range(60)]
    for uid in uids:
        record(ledger, StoredInstance("1.2.3", uid, f"{uid}.1", tmp_path / "x.dcm", 1, "0" * 64), now, 0.0)
    assert sorted(ledger.complete_due(now + 1)) == sorted(uids)
    ledger.engine.dispose()
    start_at = time.time() + 3.0                     # both processes start claiming at the same instant
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([python_for_node(), "-c", CLAIMER, url, f"claimer{i}", str(start_at)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for i in range(2)]
    claimed = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        claimed.append(json.loads(out))
    a, b = set(claimed[0]), set(claimed[1])
    assert not a & b, f"claimed by both: {sorted(a & b)}"
    assert a | b == set(uids) and len(claimed[0]) + len(claimed[1]) == len(uids)
