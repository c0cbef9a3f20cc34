"""Scale-out on PostgreSQL: one receiver and two workers as separate processes sharing the ledger and the
storage; one worker is killed -9 while it synthesizes; every series is still delivered, once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.integration.conftest import CollectingSCP, send_series, wait_until
from tests.interop.peers import echo, free_port, stop_process
from tests.support.ct_series import make_ct_series
from tests.support.postgres import PostgresServer, postgres_bin, running_postgres

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL server binaries (Debian postgresql) absent"),
]
REPO = Path(__file__).resolve().parents[2]
SERIES = 4
SLICES = 24


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def _start(args: list[str], config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "dicom_node", *args, "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=config.parent)


def test_two_workers_share_the_work_and_survive_a_kill(postgres: PostgresServer, tmp_path: Path) -> None:
    pacs = CollectingSCP()
    pacs.start()
    port = free_port()
    config = tmp_path / "node.toml"
    config.write_text(f"""
[node]
port = {port}
storage_dir = "{tmp_path / 'shared'}"
[series]
quiet_period_s = 1.0
[database]
url = "{postgres.url}"
lease_s = 6.0
[send]
retry_initial_s = 1.0
retry_max_s = 2.0
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs.port}
""")
    receiver = _start(["run", "--receive-only"], config, tmp_path / "receiver.log")
    workers = [_start(["worker"], config, tmp_path / f"worker{i}.log") for i in range(2)]
    engine = create_engine(postgres.url)
    try:
        wait_until(lambda: echo(port, "SYNTHNODE"), timeout_s=60, what="the receiver to answer C-ECHO")
        sources = [make_ct_series(slices=SLICES, rows=256, cols=256, seed=i) for i in range(SERIES)]
        for series in sources:
            assert send_series(series, port) == [0] * SLICES

        def synthesizing_owner() -> str | None:
            with engine.connect() as conn:
                return conn.execute(text("SELECT lease_owner FROM series WHERE state = 'synthesizing' "
                                         "LIMIT 1")).scalar()

        owners: list[str] = []
        wait_until(lambda: bool(owner := synthesizing_owner()) and not owners.append(owner),  # type: ignore[func-returns-value]
                   timeout_s=90, what="a worker synthesizing")
        victim_pid = int(owners[0].split(":")[1])
        victim = next(w for w in workers if w.pid == victim_pid)
        victim.kill()                                      # kill -9 mid-job
        victim.wait(timeout=10)

        expected = 5 * (SLICES - 1) + 1
        wait_until(lambda: len(pacs.series()) == SERIES and all(
            len({ds.SOPInstanceUID for ds in v}) == expected for v in pacs.series().values()),
            timeout_s=180, what=f"{SERIES} derived series of {expected} instances")
        with engine.connect() as conn:
            states = dict(conn.execute(text("SELECT state, count(*) FROM series GROUP BY state")).all())
        assert states == {"done": SERIES}
        derived = pacs.series()
        by_source = {str(v[0].ReferencedSeriesSequence[0].SeriesInstanceUID) for v in derived.values()}
        assert by_source == {str(s[0].SeriesInstanceUID) for s in sources}    # one derived series per source
        # The killed worker was synthesizing, not sending: nothing reached the PACS twice.
        assert len(pacs.received) == SERIES * expected
        survivor = next(w for w in workers if w is not victim)
        assert survivor.poll() is None and receiver.poll() is None
    finally:
        for process in (receiver, *workers):
            stop_process(process, timeout_s=20)
        engine.dispose()
        pacs.stop()
