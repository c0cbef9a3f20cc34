"""The node end to end in-process: receive → complete → assemble → synthesize → write → send."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import text

from dicom_node.disk import DiskGuard
from dicom_node.errors import StartupError
from dicom_node.ledger import SeriesState
from dicom_node.polling import IDLE_DELAY_S, REACTOR_ATTRIBUTE
from dicom_node.receive import STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES
from tests.integration.conftest import CollectingSCP, NodeFactory, send_series, wait_until
from tests.support.ct_series import make_ct_series, position_mm, slice_normal, sorted_by_position
from tests.support.ledger import view


def node_state(node, series_uid: str) -> str:  # type: ignore[no-untyped-def]
    summary = view(node.ledger, series_uid)
    return "" if summary is None else str(summary.state)


def test_series_round_trip(node_factory: NodeFactory, pacs: CollectingSCP, tmp_path: Path) -> None:
    node = node_factory(pacs=pacs)
    source = make_ct_series(slices=6, shuffled=True)
    assert send_series(source, node.scp.port) == [0] * 6
    wait_until(lambda: sum(map(len, pacs.series().values())) == 26, what="26 derived instances at the PACS")
    (derived,) = pacs.series().values()
    derived.sort(key=lambda ds: int(ds.InstanceNumber))
    first = sorted_by_position(source)[0]
    normal = slice_normal(first)
    for k, ds in enumerate(derived):
        np.testing.assert_allclose(position_mm(ds), position_mm(first) + k * 1.0 * normal, atol=1e-3)
    assert derived[0].SeriesInstanceUID != source[0].SeriesInstanceUID
    assert derived[0].StudyInstanceUID == source[0].StudyInstanceUID
    wait_until(lambda: node_state(node, source[0].SeriesInstanceUID) == SeriesState.DONE, what="done")
    outbox = tmp_path / "outbox" / str(derived[0].SeriesInstanceUID)
    assert len(list(outbox.glob("*.dcm"))) == 26


def test_series_over_several_associations_is_one_series(node_factory: NodeFactory, pacs: CollectingSCP) -> None:
    node = node_factory(pacs=pacs, quiet_period_s=1.0)
    source = make_ct_series(slices=6)
    assert send_series(source[:3], node.scp.port) == [0] * 3
    assert send_series(source[3:], node.scp.port) == [0] * 3
    wait_until(lambda: sum(map(len, pacs.series().values())) == 26, what="one derived series")
    assert len(pacs.series()) == 1


def test_resend_of_a_done_series_makes_no_new_series(node_factory: NodeFactory, pacs: CollectingSCP) -> None:
    node = node_factory(pacs=pacs)
    source = make_ct_series(slices=4)
    uid = str(source[0].SeriesInstanceUID)
    send_series(source, node.scp.port)
    wait_until(lambda: node_state(node, uid) == SeriesState.DONE, what="first pass done")
    first_uids = {ds.SOPInstanceUID for ds in pacs.received}
    assert send_series(source, node.scp.port) == [0] * 4
    summary = view(node.ledger, uid)
    assert summary is not None and summary.state == SeriesState.DONE
    assert len(pacs.received) == 16 and {ds.SOPInstanceUID for ds in pacs.received} == first_uids


def test_changed_series_is_rebuilt_with_the_same_uids(node_factory: NodeFactory, pacs: CollectingSCP) -> None:
    node = node_factory(pacs=pacs)
    source = make_ct_series(slices=4)
    uid = str(source[0].SeriesInstanceUID)
    send_series(source[:3], node.scp.port)
    wait_until(lambda: node_state(node, uid) == SeriesState.DONE, what="first pass done")
    send_series(source[3:], node.scp.port)       # a late slice: the series is processed again
    wait_until(lambda: len(pacs.received) == 11 + 16, what="second pass sent")
    assert len(pacs.series()) == 1                # same derived series UID both times


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_unsafe_or_missing_uids_get_a_failure_status(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory()
    bad = make_ct_series(slices=3)
    bad[0].SeriesInstanceUID = "../../etc"
    bad[1].StudyInstanceUID = ""
    assert send_series(bad, node.scp.port) == [STATUS_CANNOT_UNDERSTAND, STATUS_CANNOT_UNDERSTAND, 0]
    assert not list((tmp_path / "var").rglob("etc*"))


def test_other_sop_classes_are_refused_at_negotiation(node_factory: NodeFactory) -> None:
    node = node_factory()
    ae = AE("MODALITY")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="SYNTHNODE")
    assert not assoc.is_established or not assoc.accepted_contexts
    if assoc.is_established:
        assoc.release()


def test_bad_series_is_kept_with_reason_and_node_keeps_serving(node_factory: NodeFactory, pacs: CollectingSCP,
                                                                tmp_path: Path) -> None:
    node = node_factory(pacs=pacs)
    tilted = make_ct_series(slices=4, gantry_tilt_deg=20)
    send_series(tilted, node.scp.port)
    uid = str(tilted[0].SeriesInstanceUID)
    wait_until(lambda: node_state(node, uid) == SeriesState.REJECTED, what="rejection")
    folder = tmp_path / "var" / "rejected" / uid
    assert (folder / "reason").read_text().startswith("gantry_tilt\n")
    assert len(list(folder.glob("*.dcm"))) == 4
    good = make_ct_series(slices=3)
    send_series(good, node.scp.port)
    wait_until(lambda: node_state(node, str(good[0].SeriesInstanceUID)) == SeriesState.DONE, what="good done")


def test_our_own_output_sent_back_is_not_processed(node_factory: NodeFactory, pacs: CollectingSCP) -> None:
    node = node_factory(pacs=pacs)
    source = make_ct_series(slices=3)
    send_series(source, node.scp.port)
    wait_until(lambda: len(pacs.received) == 11, what="derived series")
    echoed: list[Dataset] = list(pacs.received)
    for ds in echoed:
        ds.SeriesDescription = "renamed by a PACS"
    assert send_series(echoed, node.scp.port) == [0] * 11
    uid = str(echoed[0].SeriesInstanceUID)
    wait_until(lambda: node_state(node, uid) == SeriesState.REJECTED, what="own output recognised")
    summary = view(node.ledger, uid)
    assert summary is not None and summary.reason == "own_output"
    assert len(pacs.received) == 11


def test_failing_destination_does_not_block_the_others(node_factory: NodeFactory, pacs: CollectingSCP,
                                                       tmp_path: Path) -> None:
    pacs.status = STATUS_OUT_OF_RESOURCES
    node = node_factory(pacs=pacs)
    source = make_ct_series(slices=3)
    uid = str(source[0].SeriesInstanceUID)
    send_series(source, node.scp.port)
    wait_until(lambda: node_state(node, uid) == SeriesState.FAILED, what="send given up", timeout_s=30)
    summary = view(node.ledger, uid)
    assert summary is not None
    sends = {j.destination: (j.state, j.attempts, j.last_status) for j in summary.sends}
    assert sends["outbox"] == ("done", 1, "ok")
    assert sends["pacs"] == ("failed", 3, "0xA700")
    assert len(list((tmp_path / "outbox").rglob("*.dcm"))) == 11
    pacs.status = 0                                      # the PACS is back: an administrator retries
    node.ledger.retry(uid, node.clock())
    wait_until(lambda: node_state(node, uid) == SeriesState.DONE, what="delivered after retry")
    assert len(pacs.received) == 11


def test_destination_down_then_back_is_delivered(node_factory: NodeFactory) -> None:
    pacs = CollectingSCP()
    pacs.start()
    port = pacs.port
    pacs.stop()                                          # the PACS is down: nothing listens there
    node = node_factory(pacs_port=port, extra={"send": {"max_attempts": 50, "retry_max_s": 0.2}})
    source = make_ct_series(slices=3)
    uid = str(source[0].SeriesInstanceUID)
    send_series(source, node.scp.port)

    def attempts() -> int:
        summary = view(node.ledger, uid)
        return 0 if summary is None else max((j.attempts for j in summary.sends if j.destination == "pacs"), default=0)

    wait_until(lambda: attempts() >= 2, what="two failed attempts")
    assert node_state(node, uid) == SeriesState.SENDING
    back = CollectingSCP()
    back.start(port=port)
    try:
        wait_until(lambda: node_state(node, uid) == SeriesState.DONE, what="delivered once back")
        assert len(back.received) == 11
    finally:
        back.stop()


def _deadline(node, series_uid: str) -> float | None:  # type: ignore[no-untyped-def]
    with node.ledger.engine.connect() as conn:
        return conn.execute(text("SELECT deadline_at FROM series WHERE series_uid = :u"), {"u": series_uid}).scalar()


def test_restart_keeps_the_completion_deadline(node_factory: NodeFactory, pacs: CollectingSCP) -> None:
    quiet_s = 6.0
    first = node_factory(pacs=pacs, quiet_period_s=quiet_s)
    source = make_ct_series(slices=3)
    uid = str(source[0].SeriesInstanceUID)
    send_series(source, first.scp.port)
    first.recorder.flush()
    persisted = _deadline(first, uid)
    first.stop(drain_s=1.0)                               # stopped before the quiet period ends
    assert node_state(first, uid) == SeriesState.RECEIVING and persisted is not None
    second = node_factory(pacs=pacs, quiet_period_s=quiet_s)  # a new process on the same storage
    assert _deadline(second, uid) == persisted            # the restart kept it: not reset to now + quiet
    assert time.time() < persisted                         # (so the check above was made in time)
    wait_until(lambda: len(pacs.received) == 11, timeout_s=30, what="delivered after restart")
    assert time.time() >= persisted                        # and it was not completed before it


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=["rle", "jpegls", "j2k"])
def test_compressed_input_is_decoded(node_factory: NodeFactory, pacs: CollectingSCP, syntax: str) -> None:
    node = node_factory(pacs=pacs)
    source = make_ct_series(slices=3, signed=True, rescale_intercept=0.0)
    for ds in source:
        ds.compress(syntax)
    assert send_series(source, node.scp.port) == [0] * 3
    wait_until(lambda: len(pacs.received) == 11, what=f"derived series from {syntax}")
    plain = make_ct_series(slices=3, signed=True, rescale_intercept=0.0)
    expected = sorted_by_position(plain)[0].pixel_array
    derived = sorted(pacs.received, key=lambda ds: int(ds.InstanceNumber))
    np.testing.assert_array_equal(derived[0].pixel_array, expected)


def test_disk_watermark_refuses_with_out_of_resources(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory(disk_watermark=0.000001)
    assert send_series(make_ct_series(slices=2), node.scp.port) == [STATUS_OUT_OF_RESOURCES] * 2
    guard = DiskGuard(tmp_path, 1.0)
    assert guard() == 0


def test_allow_list_refuses_unknown_callers(node_factory: NodeFactory) -> None:
    node = node_factory(allowed_callers=["SCANNER1"])
    source = make_ct_series(slices=2)
    assert send_series(source, node.scp.port, calling_ae="STRANGER") == [-1, -1]
    assert send_series(source, node.scp.port, calling_ae="SCANNER1") == [0, 0]
    assert send_series(source, node.scp.port, calling_ae="SCANNER1", called_ae="OTHERNODE") == [-1, -1]


def test_logs_carry_uids_but_no_patient_data(node_factory: NodeFactory, pacs: CollectingSCP,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="dicom_node")
    node = node_factory(pacs=pacs)
    source = make_ct_series(slices=3, patient_id="PID778899")
    bad = make_ct_series(slices=3, gantry_tilt_deg=10, patient_id="PID778899")
    send_series(source, node.scp.port)
    send_series(bad, node.scp.port)
    wait_until(lambda: node_state(node, str(source[0].SeriesInstanceUID)) == SeriesState.DONE, what="done")
    wait_until(lambda: node_state(node, str(bad[0].SeriesInstanceUID)) == SeriesState.REJECTED, what="rejected")
    text = caplog.text
    assert str(source[0].SeriesInstanceUID) in text and "gantry_tilt" in text
    for phi in ("PID778899", str(source[0].PatientName), "PHANTOM"):
        assert phi not in text


def test_echo_command_reports_success_and_failure(pacs: CollectingSCP, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_node.cli import main

    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nstorage_dir = "{tmp_path}"\n[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
                      f'host = "127.0.0.1"\nport = {pacs.port}\n')
    assert main(["echo", "--config", str(config)]) == 0
    assert "pacs: PACS@127.0.0.1" in capsys.readouterr().out
    assert main(["echo", "--config", str(config), "--destination", "nope"]) == 1
    assert "no destination named 'nope'" in capsys.readouterr().err
    closed = CollectingSCP()
    closed.start()
    port = closed.port
    closed.stop()
    assert main(["echo", "--config", str(config), "--host", "127.0.0.1", "--remote-port", str(port),
                 "--timeout", "2"]) == 1
    assert "C-ECHO failed (no association)" in capsys.readouterr().out


def test_a_busy_port_fails_start_up_and_stops_what_ran(node_factory: NodeFactory) -> None:
    first = node_factory()
    second = node_factory(start=False, port=first.scp.port)
    with pytest.raises(StartupError, match=rf"node.port {first.scp.port} on 127.0.0.1: in use \(is the node already"):
        second.start()
    assert not any(check.ok for check in second.health())      # its timers and stages were stopped again


def test_retention_removes_finished_work_but_keeps_rejected(node_factory: NodeFactory, pacs: CollectingSCP,
                                                            tmp_path: Path) -> None:
    node = node_factory(pacs=pacs, extra={"retention": {"done_days": 0.0, "sweep_interval_s": 0.5}})
    good, bad = make_ct_series(slices=3), make_ct_series(slices=1)
    send_series(good, node.scp.port)
    send_series(bad, node.scp.port)
    good_uid, bad_uid = str(good[0].SeriesInstanceUID), str(bad[0].SeriesInstanceUID)
    wait_until(lambda: len(pacs.received) == 11, what="derived series delivered")
    wait_until(lambda: view(node.ledger, good_uid) is None and not (tmp_path / "var" / "incoming" / good_uid).exists()
               and not any((tmp_path / "var" / "derived").iterdir()), what="finished series and its files removed")
    wait_until(lambda: node_state(node, bad_uid) == SeriesState.REJECTED, what="rejected")
    assert (tmp_path / "var" / "rejected" / bad_uid / "reason").read_text().startswith("single_slice")


def test_busy_associations_are_polled_fast_in_both_loops_and_idle_ones_slowly(
        node_factory: NodeFactory, pacs: CollectingSCP) -> None:
    node = node_factory(pacs=pacs, extra={"node": {"receive_poll_us": 50}})
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title=node.cfg.node.identity.ae_title)
    try:
        assert assoc.is_established
        server = node.scp._server
        wait_until(lambda: len(server.active_associations) == 1, what="the association on the node")
        acceptor = server.active_associations[0]

        def paces() -> tuple[float, float]:
            return acceptor.dul._run_loop_delay, getattr(acceptor, REACTOR_ATTRIBUTE)

        assert paces() == (50e-6, 50e-6)                             # just accepted: busy
        wait_until(lambda: paces() == (IDLE_DELAY_S, IDLE_DELAY_S), timeout_s=5, what="idle pace")
        status = assoc.send_c_store(make_ct_series(slices=1, rows=16, cols=16)[0])
        assert status.Status == 0x0000
        assert paces() == (50e-6, 50e-6)                             # a C-STORE speeds it up again
    finally:
        assoc.release()
