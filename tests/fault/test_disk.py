"""Disk watermark: above it every C-STORE is answered 0xA700 and logged; below it stores are accepted."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.fault.conftest import NodeFactory, derived_count, send_datasets, wait_for
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


def test_write_error_never_acknowledges_success(node_factory: NodeFactory) -> None:
    node = node_factory(outbox=True)
    source = make_ct_series(slices=4, seed=631)
    uid = str(source[0].SeriesInstanceUID)
    blocker = node.storage_dir / "incoming" / uid
    blocker.write_bytes(b"a file where the series folder should be")    # every write for this series fails
    assert send_datasets(source, node.port) == [OUT_OF_RESOURCES] * 4
    assert uid not in node.series_rows()
    blocker.unlink()                                                   # space (or sanity) returns
    assert send_datasets(source, node.port) == [0] * 4
    assert node.wait_state(uid, "done")["derived_count"] == derived_count(4)


def test_watermark_recovers_by_itself_when_space_returns(small_disk: Path, node_factory: NodeFactory) -> None:
    node = node_factory(outbox=True, overrides={"node": {"storage_dir": str(small_disk / "var"),
                                                         "disk_watermark": 0.5}})
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (40 << 20))                    # 40 of 64 MiB: above the 50 % watermark
    source = make_ct_series(slices=4, seed=632)
    uid = str(source[0].SeriesInstanceUID)
    wait_for(lambda: send_datasets(source[:1], node.port) == [OUT_OF_RESOURCES], 10, "stores to be refused")
    assert send_datasets(source, node.port) == [OUT_OF_RESOURCES] * 4
    ballast.unlink()                                           # space returns; no restart
    started = time.monotonic()
    wait_for(lambda: send_datasets(source[:1], node.port) == [0], 10, "stores to be accepted again")
    assert time.monotonic() - started < 5
    assert send_datasets(source, node.port) == [0] * 4
    assert node.wait_state(uid, "done")["derived_count"] == derived_count(4)
    log = node.log_text()
    assert "refusing stores" in log and "accepting stores" in log
