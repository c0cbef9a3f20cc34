"""skip_if_thin against a real Orthanc: C-FIND at SERIES level on the study; a thin CT series there ends
the node's series as `thin_series_exists` (nothing made or sent); a thick-only study goes through."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicom_node.app import Node
from dicom_node.config import DestinationSection, parse_config
from dicom_node.ledger import SeriesState
from dicom_node.thincheck import find_thin_series
from tests.integration.conftest import send_series, wait_until
from tests.interop.peers import NODE_AE, Orthanc, OrthancFactory, free_port
from tests.support import TEST_RESERVE_MB
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view
from tests.support.webhook_receiver import HookReceiver

pytestmark = pytest.mark.interop

STUDY_WITH_THIN = "1.2.826.0.1.3680043.8.498.4242001"
STUDY_THICK_ONLY = "1.2.826.0.1.3680043.8.498.4242002"


def upload(orthanc: Orthanc, *, study_uid: str, thickness_mm: float, seed: int, modality: str = "CT") -> str:
    series = make_ct_series(slices=3, rows=16, cols=16, spacing_mm=thickness_mm, study_uid=study_uid, seed=seed,
                            modality=modality)
    for ds in series:
        ds.SliceThickness = f"{thickness_mm:g}"
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        orthanc.post("/instances", buffer.getvalue())
    return str(series[0].SeriesInstanceUID)


@pytest.fixture
def pacs(orthanc_factory: OrthancFactory) -> Orthanc:
    """Orthanc holding a thin (1 mm) CT series and a thick (5 mm) one in one study, a 5 mm one in another,
    and a thin MR series in that other study (not CT: no reason to skip)."""
    orthanc = orthanc_factory(free_port())          # its auto-route goes nowhere; only C-FIND is used here
    upload(orthanc, study_uid=STUDY_WITH_THIN, thickness_mm=5.0, seed=11)
    upload(orthanc, study_uid=STUDY_WITH_THIN, thickness_mm=1.0, seed=12)
    upload(orthanc, study_uid=STUDY_THICK_ONLY, thickness_mm=5.0, seed=13)
    upload(orthanc, study_uid=STUDY_THICK_ONLY, thickness_mm=1.0, seed=14, modality="MR")
    return orthanc


def dest(orthanc: Orthanc) -> DestinationSection:
    return DestinationSection("pacs", orthanc.ae_title, "127.0.0.1", orthanc.port)


def test_c_find_on_orthanc_finds_the_thin_ct_series(pacs: Orthanc) -> None:
    found = find_thin_series(dest(pacs), calling_ae=NODE_AE, study_uid=STUDY_WITH_THIN, max_thickness_mm=1.5,
                             timeout_s=10, is_ours=lambda uid: False)
    assert found.error == "" and found.thin_series_uid and found.thickness_mm == 1.0 and found.series_seen == 2
    thick_only = find_thin_series(dest(pacs), calling_ae=NODE_AE, study_uid=STUDY_THICK_ONLY, max_thickness_mm=1.5,
                                  timeout_s=10, is_ours=lambda uid: False)
    assert thick_only.error == "" and thick_only.thin_series_uid == "" and thick_only.series_seen == 2
    ours = find_thin_series(dest(pacs), calling_ae=NODE_AE, study_uid=STUDY_WITH_THIN, max_thickness_mm=1.5,
                            timeout_s=10, is_ours=lambda uid: True)      # our own derived series never counts
    assert ours.thin_series_uid == ""


def test_a_caller_orthanc_does_not_know_gets_a_reason_not_a_skip(pacs: Orthanc) -> None:
    refused = find_thin_series(dest(pacs), calling_ae="STRANGER", study_uid=STUDY_WITH_THIN, max_thickness_mm=1.5,
                               timeout_s=5, is_ours=lambda uid: False)
    assert refused.thin_series_uid == "" and refused.error.startswith("C-FIND got no valid response")


@pytest.fixture
def hooks() -> Iterator[HookReceiver]:
    receiver = HookReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def node(tmp_path: Path, pacs: Orthanc, hooks: HookReceiver) -> Iterator[Node]:
    cfg = parse_config({
        "node": {"port": 0, "storage_dir": str(tmp_path / "var"), "ae_title": NODE_AE,
                 "spool_reserve_mb": TEST_RESERVE_MB},
        "series": {"quiet_period_s": 1.0, "skip_if_thin": {"destination": "pacs", "max_thickness_mm": 1.5}},
        "destinations": [{"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}],
        "folder_destinations": [{"name": "outbox", "path": str(tmp_path / "outbox")}],
        "rules": [{"name": "to-outbox", "destinations": ["outbox"]}],
        "webhooks": [{"url": hooks.url, "events": ["thin_series_exists", "done"]}],
    })
    node = Node(cfg)
    node.start()
    yield node
    node.stop(drain_s=2.0)


def test_the_node_skips_a_study_that_has_a_thin_series_and_processes_one_that_does_not(
        node: Node, tmp_path: Path, hooks: HookReceiver) -> None:
    assert node.scp is not None
    skipped = make_ct_series(slices=4, rows=16, cols=16, study_uid=STUDY_WITH_THIN, seed=21)
    processed = make_ct_series(slices=4, rows=16, cols=16, study_uid=STUDY_THICK_ONLY, seed=22)
    assert send_series(skipped, node.scp.port) == [0] * 4
    assert send_series(processed, node.scp.port) == [0] * 4

    def state(series: list[pydicom.Dataset]) -> str:
        found = view(node.ledger, str(series[0].SeriesInstanceUID))
        return found.state if found is not None else ""

    wait_until(lambda: state(skipped) == SeriesState.THIN_SERIES_EXISTS and state(processed) == SeriesState.DONE,
               timeout_s=60, what="one series skipped, the other done")
    skipped_view = view(node.ledger, str(skipped[0].SeriesInstanceUID))
    assert skipped_view is not None and skipped_view.reason == "thin_series_exists"
    assert "pacs holds CT series" in skipped_view.detail and "at 1 mm" in skipped_view.detail
    assert skipped_view.derived_series_uid == "" and skipped_view.sends == ()
    outbox = [p.name for p in (tmp_path / "outbox").iterdir()]
    done_view = view(node.ledger, str(processed[0].SeriesInstanceUID))
    assert done_view is not None and outbox == [done_view.derived_series_uid]     # only the processed one
    wait_until(lambda: len(hooks.bodies()) == 2, timeout_s=10, what="two webhook events")
    events = {body["event"]: body for body in hooks.bodies()}
    assert events["thin_series_exists"]["series_uid"] == str(skipped[0].SeriesInstanceUID)
    assert events["thin_series_exists"]["reason"] == "thin_series_exists"
    assert events["done"]["series_uid"] == str(processed[0].SeriesInstanceUID)
