"""The self-check end to end: C-STORE in, a synthesizer gone wrong, and what the PACS gets (or not)."""

from __future__ import annotations

from tests.integration.conftest import CollectingSCP, NodeFactory, send_series, wait_until
from tests.support.ct_series import make_ct_series
from tests.support.garbage import GarbageSynthesizer
from tests.support.ledger import view

SLICES = 6
THIN = 5 * (SLICES - 1) + 1


def test_garbage_output_falls_back_and_the_pacs_gets_interpolation_saying_why(
        node_factory: NodeFactory, pacs: CollectingSCP) -> None:
    node = node_factory(pacs=pacs, synthesizer=GarbageSynthesizer("shifted"))
    source = make_ct_series(slices=SLICES, seed=1301)
    assert send_series(source, node.scp.port) == [0] * SLICES
    wait_until(lambda: sum(map(len, pacs.series().values())) == THIN, what=f"{THIN} derived instances at the PACS")
    (derived,) = pacs.series().values()
    for ds in derived:
        assert str(ds.SeriesDescription).startswith("INTERP 1.0mm not AI")
        assert "interpolation sent in place of the garbage output, which failed its self-check (consistency" \
            in str(ds.ImageComments)
        assert "; self-check: consistency " in str(ds.DerivationDescription)
    summary = view(node.ledger, str(source[0].SeriesInstanceUID))
    assert summary is not None and [c.backend for c in summary.checks] == ["interpolation", "garbage"]


def test_garbage_output_is_rejected_under_reject_and_nothing_is_sent(
        node_factory: NodeFactory, pacs: CollectingSCP) -> None:
    node = node_factory(pacs=pacs, synthesizer=GarbageSynthesizer("noise"),
                        extra={"synth": {"on_check_fail": "reject"}})
    source = make_ct_series(slices=SLICES, seed=1302)
    uid = str(source[0].SeriesInstanceUID)
    assert send_series(source, node.scp.port) == [0] * SLICES
    wait_until(lambda: getattr(view(node.ledger, uid), "state", "") == "rejected", what="rejected")
    summary = view(node.ledger, uid)
    assert summary is not None and summary.reason == "quality_check_failed"
    assert (node.spool.rejected / uid / "reason").read_text().startswith("quality_check_failed\n")
    assert len(list((node.spool.rejected / uid).glob("*.dcm"))) == SLICES
    assert pacs.series() == {}
