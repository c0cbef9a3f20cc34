"""A destination that refuses or is down for a while: delivered after it returns; the others are unaffected."""

from __future__ import annotations

from collections.abc import Callable

from tests.fault.conftest import (
    NodeFactory,
    PacsSCP,
    derived_count,
    port_is_free,
    send_datasets,
    wait_for,
)
from tests.interop.peers import free_port
from tests.support.ct_series import make_ct_series

PacsFactory = Callable[..., PacsSCP]
OUT_OF_RESOURCES = 0xA700


def test_refusing_destination_gets_it_later_and_blocks_no_one(node_factory: NodeFactory,
                                                              pacs_factory: PacsFactory) -> None:
    refusing = pacs_factory(ae_title="FULLPACS", status=OUT_OF_RESOURCES)
    healthy = pacs_factory(ae_title="PACS")
    node = node_factory(destinations=[refusing, healthy])
    sources = [make_ct_series(slices=6, seed=610 + i) for i in range(2)]
    for source in sources:
        assert send_datasets(source, node.port) == [0] * 6
    # The healthy destination gets both series while the other keeps refusing (and is retried).
    wait_for(lambda: healthy.count() == 2 * derived_count(6), 30, "both series at the healthy PACS", alive=node.died)
    wait_for(lambda: refusing.refused >= 4, 30, "the refusing PACS to be retried", alive=node.died)
    assert refusing.count() == 0
    uids = [str(source[0].SeriesInstanceUID) for source in sources]

    def healthy_jobs_done() -> bool:
        done = {r["series_uid"] for r in node.send_rows() if r["destination"] == "pacs1" and r["state"] == "done"}
        return done == set(uids)

    wait_for(healthy_jobs_done, 10, "the healthy destination's send jobs to be done", alive=node.died)
    jobs = {(r["series_uid"], r["destination"]): r for r in node.send_rows()}
    for source in sources:
        uid = str(source[0].SeriesInstanceUID)
        assert jobs[(uid, "pacs1")]["state"] == "done"
        assert jobs[(uid, "pacs")]["state"] in ("pending", "sending")
        assert node.state(uid) == "sending"
    refusing.status = 0                             # space freed at the PACS
    for source in sources:
        node.wait_state(str(source[0].SeriesInstanceUID), "done", timeout_s=30)
    # An attempt cut short when the PACS recovered mid-association is repeated whole: the same UIDs again.
    assert len(refusing.series()) == 2 and len(refusing.sop_uids()) == 2 * derived_count(6)
    assert healthy.count() == 2 * derived_count(6)  # nothing sent twice to the healthy one
    assert healthy.sop_uids() == refusing.sop_uids()
    assert all(r["last_status"] in ("ok", "") or r["state"] == "done" for r in node.send_rows())


def test_destination_down_then_up(node_factory: NodeFactory, pacs_factory: PacsFactory) -> None:
    down_port = free_port()                         # nothing listens here yet
    healthy = pacs_factory(ae_title="PACS")
    node = node_factory(destinations=[("later", "LATERPACS", down_port), healthy])
    source = make_ct_series(slices=6, seed=612)
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port) == [0] * 6
    wait_for(lambda: healthy.count() == derived_count(6), 30, "the healthy PACS to get it", alive=node.died)

    def later_attempts() -> int:
        return next((int(r["attempts"]) for r in node.send_rows() if r["destination"] == "later"), 0)

    wait_for(lambda: later_attempts() >= 2, 30, "two failed attempts to the down destination", alive=node.died)
    job = next(r for r in node.send_rows() if r["destination"] == "later")
    assert job["state"] == "pending" and job["last_status"].startswith("association")
    assert node.state(uid) == "sending"
    assert port_is_free(down_port)
    later = pacs_factory(ae_title="LATERPACS", port=down_port)        # it comes back on its port
    node.wait_state(uid, "done", timeout_s=30)
    assert later.count() == derived_count(6) and len(later.series()) == 1
    assert healthy.count() == derived_count(6)
