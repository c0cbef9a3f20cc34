"""Graceful stop on SIGTERM: stop accepting, let the association in flight finish, exit 0, release leases."""

from __future__ import annotations

import signal
from collections.abc import Callable

from tests.fault.conftest import (
    NODE_AE,
    NodeFactory,
    PacsSCP,
    derived_count,
    echo_ok,
    scu,
    wait_for,
)
from tests.support.ct_series import make_ct_series

PacsFactory = Callable[..., PacsSCP]


def test_sigterm_finishes_the_association_in_flight_and_releases_work(node_factory: NodeFactory,
                                                                      pacs_factory: PacsFactory) -> None:
    pacs = pacs_factory(delay_s=0.03)              # a slow PACS keeps a send job leased during the stop
    node = node_factory(destinations=[pacs], quiet_period_s=0.5)
    sending = make_ct_series(slices=12, seed=690)
    arriving = make_ct_series(slices=8, seed=691)
    sending_uid, arriving_uid = str(sending[0].SeriesInstanceUID), str(arriving[0].SeriesInstanceUID)

    assoc = scu().associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    assert [int(assoc.send_c_store(ds).Status) for ds in sending] == [0] * 12
    assoc.release()
    wait_for(lambda: pacs.count() >= 3, 30, "the slow send to start", alive=node.died)

    modality = scu().associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert modality.is_established
    assert [int(modality.send_c_store(ds).Status) for ds in arriving[:3]] == [0] * 3
    assert node.process is not None
    node.process.send_signal(signal.SIGTERM)
    # It stops accepting new associations while ours is still open ...
    wait_for(lambda: not echo_ok(node.port, timeout_s=1.0), 20, "the node to stop accepting associations")
    assert node.running()
    # ... and the association in flight completes: every remaining instance is acknowledged.
    assert [int(modality.send_c_store(ds).Status) for ds in arriving[3:]] == [0] * 5
    modality.release()
    assert node.terminate(timeout_s=45) == 0
    assert "signal 15: stopping" in node.log_text() and "lease(s) released" in node.log_text()

    assert node.leases() == []
    assert node.series_rows()[arriving_uid]["instance_count"] == 8
    assert all(r["state"] != "sending" for r in node.send_rows())
    assert all(r["state"] != "synthesizing" for r in node.series_rows().values())

    node.start()                                   # nothing was lost: both series are delivered
    for uid, thick in ((sending_uid, 12), (arriving_uid, 8)):
        row = node.wait_state(uid, "done", timeout_s=45)
        assert pacs.sop_uids(str(row["derived_series_uid"])) and len(pacs.sop_uids(str(row["derived_series_uid"]))) \
            == derived_count(thick)
    assert len(pacs.series()) == 2
