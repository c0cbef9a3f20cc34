"""Load: four senders at once (two pynetdicom SCUs, two dcmtk storescu), each two series of 61 slices:
every series processed, none mixed up (each derived series belongs to its source's patient, study and
extent, with its own UIDs)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from tests.fault.conftest import NodeFactory, PacsSCP, derived_count, send_datasets
from tests.interop.peers import STORESCU, require, storescu
from tests.support.ct_series import make_ct_series, position_mm, sorted_by_position, write_series

PacsFactory = Callable[..., PacsSCP]
SENDERS, SERIES_PER_SENDER, SLICES = 4, 2, 61


def test_four_concurrent_senders(node_factory: NodeFactory, pacs_factory: PacsFactory, tmp_path: Path) -> None:
    require(STORESCU)
    pacs = pacs_factory()
    node = node_factory(destinations=[pacs], outbox=True, quiet_period_s=2.0)
    plan: list[list[list[Dataset]]] = [
        [make_ct_series(slices=SLICES, rows=32, cols=32, seed=700 + 10 * s + k, patient_id=f"LOAD{s}{k}",
                        shuffled=k == 1, z_start_mm=-150.0 + 20 * s + 5 * k)
         for k in range(SERIES_PER_SENDER)]
        for s in range(SENDERS)
    ]
    start = threading.Barrier(SENDERS)
    results: dict[int, list[int] | str] = {}

    def pynetdicom_sender(s: int) -> None:
        start.wait(timeout=30)
        statuses: list[int] = []
        for source in plan[s]:
            statuses += send_datasets(source, node.port, calling_ae=f"SENDER{s}")
        results[s] = statuses

    def dcmtk_sender(s: int) -> None:
        folders = [write_series(source, tmp_path / f"sender{s}" / f"series{k}") for k, source in enumerate(plan[s])]
        start.wait(timeout=30)
        try:
            storescu(tmp_path / f"sender{s}", node.port, "SYNTHNODE", calling_ae=f"SENDER{s}")
            results[s] = [0] * sum(map(len, folders))
        except Exception as exc:
            results[s] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=pynetdicom_sender if s % 2 == 0 else dcmtk_sender, args=(s,))
               for s in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(results.get(s) == [0] * (SERIES_PER_SENDER * SLICES) for s in range(SENDERS)), results

    sources = {str(src[0].SeriesInstanceUID): src for sender in plan for src in sender}
    assert len(sources) == SENDERS * SERIES_PER_SENDER
    rows = {uid: node.wait_state(uid, "done", timeout_s=60) for uid in sources}
    assert len({r["derived_series_uid"] for r in rows.values()}) == len(sources)
    by_series = pacs.series()
    assert set(by_series) == {r["derived_series_uid"] for r in rows.values()}
    for uid, source in sources.items():
        row = rows[uid]
        assert row["instance_count"] == SLICES and row["derived_count"] == derived_count(SLICES)
        derived = by_series[row["derived_series_uid"]]
        assert len({r.sop_uid for r in derived}) == derived_count(SLICES)
        assert {r.source_series_uid for r in derived} == {uid}
        assert {r.study_uid for r in derived} == {str(source[0].StudyInstanceUID)}
        assert {r.patient_id for r in derived} == {str(source[0].PatientID)}
        z = np.sort([r.z_mm for r in {r.sop_uid: r for r in derived}.values()])
        ordered = sorted_by_position(source)
        np.testing.assert_allclose([z[0], z[-1]], [position_mm(ordered[0])[2], position_mm(ordered[-1])[2]],
                                   atol=1e-3)
        np.testing.assert_allclose(np.diff(z), 1.0, atol=1e-3)
    assert len(pacs.sop_uids()) == len(sources) * derived_count(SLICES)
