"""The node with `synth.backend = "cthnet"` (a tiny random CTHNet on CPU): the derived series carries the
model's provenance and the weights' checksum; a spacing the model does not take is a named rejection."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.ledger import SeriesState
from synth.checkpoint import file_sha256
from synth.config import SHIPPED_WEIGHTS
from tests.integration.conftest import CollectingSCP, NodeFactory, send_series, wait_until
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view
from tests.support.tiny_cthnet import tiny_checkpoint


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt")


def test_cthnet_backend_in_the_node(node_factory: NodeFactory, pacs: CollectingSCP, weights: Path) -> None:
    # Random weights make garbage (16.5 dB consistency), which the self-check would replace by interpolation:
    # its thresholds are off here, to see the model's own provenance (tests/unit/test_quality.py tests them).
    node = node_factory(pacs=pacs, extra={"synth": {"backend": "cthnet", "weights": str(weights), "device": "cpu",
                                                    "min_input_spacing_mm": 4.5, "min_consistency_db": 0.0,
                                                    "max_lung_bias_hu": 3072.0}})
    assert node.synthesizer.identity.is_model
    source = make_ct_series(slices=4, rows=40, cols=48)
    send_series(source, node.scp.port)
    wait_until(lambda: len(pacs.received) == 16, timeout_s=60, what="16 derived instances")
    ds = sorted(pacs.received, key=lambda d: int(d.InstanceNumber))[0]
    sha = file_sha256(weights)
    assert ds.SeriesDescription.startswith("SYNTH 1.0mm CTHNet")
    assert sha in ds.DerivationDescription and "AI-synthesized" in ds.ImageComments
    assert "; self-check: consistency " in ds.DerivationDescription and ". self-check: " in ds.ImageComments
    assert sha in list(ds.ContributingEquipmentSequence[0].SoftwareVersions)
    assert (ds.Rows, ds.Columns) == (40, 48)

    coarse = make_ct_series(slices=4, rows=40, cols=48, spacing_mm=4.2)   # in the node's range, not the model's
    send_series(coarse, node.scp.port)
    uid = str(coarse[0].SeriesInstanceUID)

    def state() -> str:
        summary = view(node.ledger, uid)
        return "" if summary is None else summary.state

    wait_until(lambda: state() == SeriesState.REJECTED, timeout_s=60, what="rejection")
    summary = view(node.ledger, uid)
    assert summary is not None and summary.reason == "spacing_out_of_range"     # refused at assembly now
    assert "4.200 mm is outside 4.5-6.0 mm" in summary.detail


def test_cthnet_backend_out_of_the_box_says_not_for_clinical_use(node_factory: NodeFactory,
                                                                 pacs: CollectingSCP) -> None:
    """No synth.weights: the shipped phantom-trained weights, and every instance says what they are."""
    node = node_factory(pacs=pacs, extra={"synth": {"backend": "cthnet", "device": "cpu"}})
    source = make_ct_series(slices=3, rows=64, cols=64)
    send_series(source, node.scp.port)
    wait_until(lambda: len(pacs.received) == 11, timeout_s=60, what="11 derived instances")
    sha = file_sha256(SHIPPED_WEIGHTS)
    for ds in pacs.received:
        assert ds.SeriesDescription.startswith("SYNTH 1.0mm CTHNet NOT CLINICAL")
        assert ds.ImageComments.startswith("NOT FOR CLINICAL USE: weights trained on ")
        assert sha in ds.DerivationDescription
