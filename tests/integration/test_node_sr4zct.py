"""The sr4zct backend in the node: the real 8-mm series (outside CTHNet's range) is processed, not refused."""

from __future__ import annotations

import pydicom
import pytest

from dicom_node.ledger import SeriesState
from tests.integration.conftest import CollectingSCP, NodeFactory, send_series, wait_until
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view
from tests.support.realct import shared_series


@pytest.mark.slow
def test_real_8mm_series_is_processed_by_sr4zct(node_factory: NodeFactory, pacs: CollectingSCP) -> None:
    files = shared_series("A0002-8mm-B40f")
    datasets = [pydicom.dcmread(p) for p in files]
    node = node_factory(pacs=pacs, extra={"synth": {"backend": "sr4zct", "sr4zct": {"budget_s": 1.0}}})
    assert node.synthesizer.identity.backend == "sr4zct"
    assert set(send_series(datasets, node.scp.port)) == {0}
    n_out = 5 * (len(datasets) - 1) + 1
    wait_until(lambda: len(pacs.received) == n_out, timeout_s=400, what=f"{n_out} derived instances")
    ds = pacs.received[0]
    assert float(ds.SliceThickness) == pytest.approx(1.6)
    assert ds.SeriesDescription.startswith("SYNTH 1.6mm SR4ZCT NOT CLINICAL")       # never labelled CTHNet
    assert "NOT FOR CLINICAL USE" in ds.ImageComments and "not CTHNet" in ds.ImageComments
    summary = view(node.ledger, str(datasets[0].SeriesInstanceUID))
    assert summary is not None and summary.state != SeriesState.REJECTED


def test_spacing_outside_every_range_is_refused_at_assembly(node_factory: NodeFactory, pacs: CollectingSCP) -> None:
    node = node_factory(pacs=pacs, extra={"synth": {"backend": "sr4zct", "sr4zct": {"budget_s": 0.0}}})
    coarse = make_ct_series(slices=4, rows=24, cols=24, spacing_mm=12.0)
    send_series(coarse, node.scp.port)
    uid = str(coarse[0].SeriesInstanceUID)
    wait_until(lambda: (s := view(node.ledger, uid)) is not None and s.state == SeriesState.REJECTED,
               timeout_s=60, what="rejection")
    summary = view(node.ledger, uid)
    assert summary is not None and summary.reason == "spacing_out_of_range"
    assert "12.000 mm is outside 1.5-10.0 mm" in summary.detail
