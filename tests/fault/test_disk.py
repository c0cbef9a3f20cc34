"""Disk watermark: above it every C-STORE is answered 0xA700 and logged; below it stores are accepted."""

from __future__ import annotations

import shutil

import pytest

from tests.fault.conftest import NodeFactory, derived_count, send_datasets
from tests.interop.peers import PeerError, storescu
from tests.support.ct_series import make_ct_series, write_series

OUT_OF_RESOURCES = 0xA700


def test_watermark_refuses_then_accepts_after_restart(node_factory: NodeFactory, tmp_path: object) -> None:
    node = node_factory(outbox=True, overrides={"node": {"disk_watermark": 0.0001}})
    usage = shutil.disk_usage(node.storage_dir)
    if usage.used / usage.total <= 0.0001:
        pytest.skip("the test disk is (almost) empty; a tiny watermark cannot be exceeded")
    source = make_ct_series(slices=4, seed=630)
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port) == [OUT_OF_RESOURCES] * 4
    # dcmtk's storescu sees the failure status too (and says so).
    with pytest.raises(PeerError, match=r"A700|Out of Resources|Refused"):
        storescu(write_series(source[:1], node.workdir / "src"), node.port, "SYNTHNODE", "-v")
    assert uid not in node.series_rows()
    assert not (node.storage_dir / "incoming" / uid).exists()
    assert "refusing stores" in node.log_text()
    assert node.terminate() == 0

    usage = shutil.disk_usage(node.storage_dir)
    if usage.used / usage.total > 0.95:
        pytest.skip("the test disk itself is above 95 % full")
    node.start(overrides={"node": {"disk_watermark": 0.95}})
    assert send_datasets(source, node.port) == [0] * 4
    row = node.wait_state(uid, "done")
    assert row["derived_count"] == derived_count(4)
