"""kill -9 of the node at every stage, then a restart: every accepted series is delivered, once per UID.

A destination may see a re-send of the same deterministic UIDs; it must never see two different
derived series for one source. The expected derived UIDs are computed here from the ledger's derived
series UID exactly as the writer makes them, so "delivered" means every one of them and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicom_node.uids import derived_uid
from tests.fault.conftest import (
    NodeFactory,
    NodeProcess,
    PacsSCP,
    derived_count,
    scu,
    send_datasets,
    wait_for,
)
from tests.interop.peers import STORESCP, StoreSCP, require, start_storescp, stop_process, storescu
from tests.support.ct_series import make_ct_series, write_series

PacsFactory = Callable[..., PacsSCP]


def expected_sop_uids(derived_series_uid: str, count: int) -> set[str]:
    return {derived_uid("", "instance", derived_series_uid, str(k)) for k in range(count)}


def assert_delivered_once(node: NodeProcess, source_uid: str, thick: int, pacs: PacsSCP,
                          dcmtk: StoreSCP | None = None) -> None:
    """The source's one derived series, complete, at every destination; no other series for it."""
    row = node.wait_state(source_uid, "done", timeout_s=60)
    assert row["derived_count"] == derived_count(thick)
    expected = expected_sop_uids(row["derived_series_uid"], derived_count(thick))
    mine = [r for r in pacs.records() if r.source_series_uid == source_uid]
    assert {r.series_uid for r in mine} == {row["derived_series_uid"]}, "two derived series for one source"
    assert {r.sop_uid for r in mine} == expected
    if dcmtk is not None:
        got = wait_for(lambda: {s for _, s, _ in dcmtk.received().values()} >= {row["derived_series_uid"]}
                       and dcmtk.received(), 20, "dcmtk storescp to hold the files")
        series = {s for _, s, _ in got.values()}
        assert series == {row["derived_series_uid"]}
        assert {sop for _, _, sop in got.values()} == expected


@pytest.fixture
def cad(tmp_path: Path) -> Iterator[StoreSCP]:
    require(STORESCP)
    scp = start_storescp(tmp_path / "cad", tmp_path)
    yield scp
    if scp.process is not None:
        stop_process(scp.process)


def test_kill_while_receiving_keeps_what_was_acknowledged(node_factory: NodeFactory,
                                                          pacs_factory: PacsFactory) -> None:
    pacs = pacs_factory()
    node = node_factory(destinations=[pacs], quiet_period_s=2.0)
    source = make_ct_series(slices=12, seed=601)
    uid = str(source[0].SeriesInstanceUID)
    assoc = scu().associate("127.0.0.1", node.port, ae_title="SYNTHNODE")
    assert assoc.is_established
    acknowledged = [int(assoc.send_c_store(ds).Status) for ds in source[:5]]
    assert acknowledged == [0] * 5
    node.kill9()                                   # mid-association: the modality sees the link drop
    response = assoc.send_c_store(source[5]) if assoc.is_established else None
    assert response is None or "Status" not in response
    assoc.abort()

    node.start()
    # Nothing acknowledged was lost: every acknowledged instance is in the ledger after the restart.
    assert node.instance_uids(uid) >= {str(ds.SOPInstanceUID) for ds in source[:5]}
    # The modality re-sends the whole series after the failed association, as modalities do.
    assert send_datasets(source, node.port) == [0] * 12
    assert_delivered_once(node, uid, 12, pacs)


def test_kill_before_the_quiet_period_ends_keeps_the_timer(node_factory: NodeFactory, pacs_factory: PacsFactory,
                                                           tmp_path: Path) -> None:
    pacs = pacs_factory()
    node = node_factory(destinations=[pacs], quiet_period_s=3.0)
    source = make_ct_series(slices=8, seed=602)
    uid = str(source[0].SeriesInstanceUID)
    storescu(write_series(source, tmp_path / "src"), node.port, "SYNTHNODE")     # dcmtk as the modality
    # All eight recorded, the completion deadline pending: it exists only in the ledger now.
    wait_for(lambda: (r := node.series_rows().get(uid)) and r["instance_count"] == 8, 10, "8 instances recorded")
    assert node.state(uid) == "receiving"
    node.kill9()
    assert node.series_rows()[uid]["deadline_at"] is not None
    node.start()
    assert_delivered_once(node, uid, 8, pacs)


def test_kill_after_completion(node_factory: NodeFactory, pacs_factory: PacsFactory) -> None:
    pacs = pacs_factory()
    # A receive-only node completes series but never claims them: the kill lands exactly at `complete`.
    node = node_factory(destinations=[pacs], quiet_period_s=0.5, args=["--receive-only"])
    source = make_ct_series(slices=8, seed=603)
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port) == [0] * 8
    node.wait_state(uid, "complete")
    node.kill9()
    node.start()
    assert_delivered_once(node, uid, 8, pacs)


def test_kill_during_synthesis(node_factory: NodeFactory, pacs_factory: PacsFactory) -> None:
    pacs = pacs_factory()
    node = node_factory(destinations=[pacs], quiet_period_s=0.5)
    source = make_ct_series(slices=40, rows=512, cols=512, seed=604)
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port) == [0] * 40
    row = node.wait_state(uid, ("synthesizing", "sending", "done"), timeout_s=30)
    assert row["state"] == "synthesizing", "synthesis finished before the test could kill it; use a larger series"
    assert row["lease_owner"]
    node.kill9()
    assert node.state(uid) == "synthesizing"        # the dead process still holds the lease
    node.start()
    assert_delivered_once(node, uid, 40, pacs)


def test_kill_mid_send(node_factory: NodeFactory, pacs_factory: PacsFactory, cad: StoreSCP) -> None:
    pacs = pacs_factory(delay_s=0.05)               # a slow PACS: each C-STORE response waits 50 ms
    node = node_factory(destinations=[pacs, ("cad", cad.ae_title, cad.port)], quiet_period_s=0.5)
    source = make_ct_series(slices=12, seed=605)
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port) == [0] * 12
    wait_for(lambda: pacs.count() >= 10, 40, "the PACS to receive 10 instances", alive=node.died)
    assert pacs.count() < derived_count(12)
    node.kill9()
    before = pacs.count()
    node.start()
    assert_delivered_once(node, uid, 12, pacs, dcmtk=cad)
    assert pacs.count() >= derived_count(12) and before < derived_count(12)
