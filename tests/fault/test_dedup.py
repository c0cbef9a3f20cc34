"""Duplicates and loops: a re-sent instance is stored once; a re-sent series makes no new work; our own
output routed back is rejected as `own_output` and never processed again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread

from tests.fault.conftest import (
    NodeFactory,
    PacsSCP,
    derived_count,
    send_datasets,
    stays,
    wait_for,
)
from tests.interop.peers import storescu
from tests.support.ct_series import make_ct_series, write_series

PacsFactory = Callable[..., PacsSCP]


def test_instance_resent_while_pending_is_stored_once(node_factory: NodeFactory, pacs_factory: PacsFactory) -> None:
    pacs = pacs_factory()
    node = node_factory(destinations=[pacs], quiet_period_s=2.0)
    source = make_ct_series(slices=8, seed=620)
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port) == [0] * 8
    assert send_datasets(source[2:5], node.port) == [0] * 3       # a modality retrying part of it
    row = wait_for(lambda: (r := node.series_rows().get(uid)) and r["instance_count"] + r["duplicate_count"] == 11
                   and r, 10, "the ledger to record all 11 stores", alive=node.died)
    assert row["state"] == "receiving"
    assert row["instance_count"] == 8 and row["duplicate_count"] == 3
    assert len(list((node.storage_dir / "incoming" / uid).glob("*.dcm"))) == 8
    row = node.wait_state(uid, "done")
    assert row["derived_count"] == derived_count(8)
    assert pacs.count() == derived_count(8) and len(pacs.series()) == 1


def test_series_resent_after_done_makes_no_new_work(node_factory: NodeFactory, pacs_factory: PacsFactory,
                                                    tmp_path: Path) -> None:
    pacs = pacs_factory()
    node = node_factory(destinations=[pacs], quiet_period_s=0.5)
    source = make_ct_series(slices=6, seed=621)
    uid = str(source[0].SeriesInstanceUID)
    files = write_series(source, tmp_path / "src")
    storescu(files, node.port, "SYNTHNODE")
    done = node.wait_state(uid, "done")
    assert pacs.count() == derived_count(6)
    storescu(files, node.port, "SYNTHNODE")                        # the same bytes again, by dcmtk
    row = wait_for(lambda: (r := node.series_rows()[uid])["duplicate_count"] == 6 and r, 10,
                   "the ledger to record the 6 duplicates", alive=node.died)
    assert row["state"] == "done" and row["instance_count"] == 6 and row["generation"] == done["generation"]
    # Nothing is re-processed or re-sent: hold for several quiet periods and sweeps.
    stays(lambda: node.state(uid) == "done" and pacs.count() == derived_count(6), 3.0, "no new work")


def test_changed_instance_after_done_rebuilds_with_the_same_uids(node_factory: NodeFactory,
                                                                 pacs_factory: PacsFactory) -> None:
    pacs = pacs_factory()
    node = node_factory(destinations=[pacs], quiet_period_s=0.5)
    source = make_ct_series(slices=6, seed=622)
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port) == [0] * 6
    first = node.wait_state(uid, "done")
    first_uids = pacs.sop_uids()
    changed = source[3].copy()
    changed.WindowCenter = "40"                                     # same SOP Instance UID, new bytes
    assert send_datasets([changed], node.port) == [0]
    wait_for(lambda: pacs.count() == 2 * derived_count(6), 30, "the rebuilt series to be re-sent", alive=node.died)
    row = node.wait_state(uid, "done")
    assert row["derived_series_uid"] == first["derived_series_uid"]   # documented policy: same UIDs
    assert pacs.sop_uids() == first_uids and len(pacs.series()) == 1


def test_own_output_sent_back_is_rejected_not_reprocessed(node_factory: NodeFactory, pacs_factory: PacsFactory,
                                                          tmp_path: Path) -> None:
    node = node_factory(outbox=True, quiet_period_s=0.5)
    source = make_ct_series(slices=4, seed=623)
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port) == [0] * 4
    row = node.wait_state(uid, "done")
    derived_uid = str(row["derived_series_uid"])
    outbox = sorted((tmp_path / "node0" / "outbox" / derived_uid).glob("*.dcm"))
    assert len(outbox) == derived_count(4)
    # A PACS routing all CT back: our derived series arrives as input (dcmtk storescu, unchanged files).
    storescu(outbox, node.port, "SYNTHNODE", calling_ae="PACS")
    looped = node.wait_state(derived_uid, "rejected")
    assert looped["reason"] == "own_output" and looped["derived_series_uid"] == ""
    assert (node.storage_dir / "rejected" / derived_uid / "reason").read_text().startswith("own_output")
    # A copy whose description was edited by a PACS rule is still recognised (markers, not text).
    edited_dir = tmp_path / "edited"
    edited_dir.mkdir()
    edited = []
    for path in outbox[:5]:
        ds = dcmread(path)
        ds.SeriesDescription = "CHEST THIN"
        ds.SeriesInstanceUID = derived_uid + ".1"
        ds.save_as(edited_dir / path.name, enforce_file_format=True)
        edited.append(edited_dir / path.name)
    storescu(edited, node.port, "SYNTHNODE", calling_ae="PACS")
    assert node.wait_state(derived_uid + ".1", "rejected")["reason"] == "own_output"
    assert len(list((tmp_path / "node0" / "outbox").iterdir())) == 1     # nothing new was derived
    assert {uid, derived_uid, derived_uid + ".1"} == set(node.series_rows())
