"""A hostile network against the node as a subprocess (issue #11, items 1 and 5): half-sent PDUs, silent
and trickling connections, a stalled TLS handshake, oversized PDU headers, floods from one address,
SIGTERM with all of them open, and what idle associations cost. Attackers connect from 127.0.0.2,
honest senders from 127.0.0.1, so the per-address cap is exercised as it would be on a network.
Memory and CPU are the node's own, from /proc."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.fault.conftest import NodeFactory, TlsFiles, echo_ok, send_datasets, send_files_raw, wait_for
from tests.fault.hostile import (
    A_ABORT_FROM_PROVIDER,
    ATTACKER,
    HALF_REQUEST,
    ISSUE_HEADER,
    MIB,
    P_DATA_TF,
    MemoryProbe,
    association_gauges,
    big_private_element_file,
    close_all,
    connect,
    cpu_share,
    held_association,
    honest_senders,
    http_get,
    raw_socket_of,
    read_until_closed,
    readyz,
    rejection_of,
    still_open,
    stream_zeros,
)
from tests.interop.peers import free_port
from tests.support.ct_series import make_ct_series

DEFAULT_PENDING_PER_ADDRESS = 16     # node.max_pending_per_address
DEFAULT_REQUEST_TIMEOUT_S = 5.0      # node.association_request_timeout_s
DRAIN_S = 30.0                       # Node.stop's drain, deploy/README.md
HONEST_AT_ONCE = 14
OUT_OF_RESOURCES = 0xA700            # the conformance statement's status for a data set too large


def with_web(overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
    web_port = free_port()
    raw: dict[str, Any] = {"web": {"enabled": True, "port": web_port}}
    for key, value in (overrides or {}).items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw, web_port


def abort_all(assocs: list[Any]) -> None:
    for assoc in assocs:
        if assoc.is_established:
            assoc.abort()


@pytest.mark.parametrize(("hostile", "payload"), [(10, HALF_REQUEST), (50, HALF_REQUEST), (50, b"")],
                         ids=["10-half-requests", "50-half-requests", "50-silent"])
def test_connections_that_never_associate_do_not_lock_honest_senders_out(
        node_factory: NodeFactory, hostile: int, payload: bytes) -> None:
    overrides, web_port = with_web()
    node = node_factory(overrides=overrides)
    held = DEFAULT_PENDING_PER_ADDRESS
    socks = [connect(node.port, payload) for _ in range(hostile)]
    try:
        # Past the per-address cap, the node closes a connection at once ...
        over_cap = max(0, hostile - held)
        wait_for(lambda: sum(not still_open(s) for s in socks) >= over_cap, 3, f"{over_cap} closed at once")
        assert sum(still_open(s) for s in socks) == min(hostile, held)
        wait_for(lambda: association_gauges(web_port).get("pending") == min(hostile, held), 10,
                 "the held connections to show as pending")
        # ... and the ones it holds take no association slot: 14 honest senders at once all get in.
        assert honest_senders(node.port, HONEST_AT_ONCE) == [0] * HONEST_AT_ONCE
        # The node ends every connection that has not associated by its deadline, and the places come back.
        started = time.monotonic()
        assert all(read_until_closed(s, DEFAULT_REQUEST_TIMEOUT_S + 5) is not None for s in socks)
        assert time.monotonic() - started < DEFAULT_REQUEST_TIMEOUT_S + 5
        wait_for(lambda: association_gauges(web_port) == {"active": 0.0, "pending": 0.0}, 10, "all places free")
        assert honest_senders(node.port, HONEST_AT_ONCE, source=ATTACKER, seed=100) == [0] * HONEST_AT_ONCE
    finally:
        close_all(socks)
    log = node.log_text()
    assert "(request_deadline): no complete A-ASSOCIATE-RQ within 5 s" in log
    if hostile > held:
        assert f"refused connection from {ATTACKER}" in log and "(pending_cap)" in log


def test_the_issue_header_is_aborted_before_any_of_its_body_is_buffered(node_factory: NodeFactory) -> None:
    node = node_factory()
    assert node.process is not None
    memory = MemoryProbe.start(node.process.pid)
    socks = [connect(node.port, ISSUE_HEADER) for _ in range(10)]
    try:
        assert [read_until_closed(s, 3.0) for s in socks] == [A_ABORT_FROM_PROVIDER] * 10
        assert honest_senders(node.port, HONEST_AT_ONCE) == [0] * HONEST_AT_ONCE
        flood = connect(node.port, ISSUE_HEADER)        # the issue's attack: the header, then zeros
        try:
            stream_zeros(flood, 600 * MIB)
        finally:
            flood.close()
        assert memory.growth_mib() < 100, f"node RSS grew {memory.growth_mib():.0f} MiB"
    finally:
        close_all(socks)
    assert "(pdu_too_large): the first PDU (an A-ASSOCIATE-RQ) announced 4294967280 bytes" in node.log_text()
    assert echo_ok(node.port)


def test_a_p_data_pdu_longer_than_negotiated_is_aborted(node_factory: NodeFactory) -> None:
    node = node_factory()
    assoc: Any = held_association(node.port)
    try:
        assert assoc.acceptor.maximum_length == MIB     # the node negotiates node.max_pdu (default 1 MiB)
        raw_socket_of(assoc).sendall(bytes([P_DATA_TF, 0]) + (MIB + 1).to_bytes(4, "big"))
        wait_for(lambda: not assoc.is_established, 5, "the node to abort the association")
        assert assoc.is_aborted
    finally:
        abort_all([assoc])
    assert (f"a PDU of type 0x04 announced {MIB + 1} bytes, more than {MIB} (node.max_pdu): sent A-ABORT"
            in node.log_text())
    assert honest_senders(node.port, 2) == [0, 0]


@pytest.mark.parametrize("trickle", [False, True], ids=["half-then-silence", "trickle"])
def test_a_partial_pdu_cannot_hold_an_association_open(node_factory: NodeFactory, trickle: bool) -> None:
    timeout_s = 3.0
    node = node_factory(overrides={"node": {"pdu_read_timeout_s": timeout_s}})
    assoc: Any = held_association(node.port)
    try:
        sock = raw_socket_of(assoc)
        sock.sendall(bytes([P_DATA_TF, 0]) + (1000).to_bytes(4, "big") + b"\x00" * 10)
        started = time.monotonic()
        while assoc.is_established and time.monotonic() - started < timeout_s + 10:
            if trickle:
                try:
                    sock.send(b"\x00")                   # a byte every 0.3 s never completes the PDU
                except OSError:                          # the node aborted; pynetdicom closed our end
                    break
            time.sleep(0.3)
        elapsed = time.monotonic() - started
        wait_for(lambda: not assoc.is_established, 2, "the association to end")
        assert not assoc.is_established, "the node kept a half-received PDU open"
        assert elapsed >= timeout_s - 0.5
    finally:
        abort_all([assoc])
    assert "(pdu_deadline): a PDU did not arrive whole within 3 s (node.pdu_read_timeout_s)" in node.log_text()
    assert honest_senders(node.port, 2) == [0, 0]


def test_a_stalled_tls_handshake_blocks_no_one(node_factory: NodeFactory, tls_files: TlsFiles) -> None:
    client = tls_files.client_context()
    node = node_factory(overrides={"node": {"tls_cert": str(tls_files.server_cert),
                                            "tls_key": str(tls_files.server_key)}}, tls=client)
    stalled = connect(node.port)                         # connects, never sends a ClientHello
    garbage = connect(node.port, b"not TLS at all\r\n" * 8)
    try:
        assert echo_ok(node.port, tls=client, timeout_s=5.0), "a stalled handshake blocked the accept loop"
        assert read_until_closed(garbage, 3.0) is not None
        assert read_until_closed(stalled, DEFAULT_REQUEST_TIMEOUT_S + 5) is not None
    finally:
        close_all([stalled, garbage])
    log = node.log_text()
    assert "(tls_handshake): TLS handshake not finished within 5 s" in log
    assert "(tls_handshake): TLS handshake failed" in log


def test_refusals_are_logged_with_their_true_reason(node_factory: NodeFactory) -> None:
    node = node_factory(overrides={"node": {"max_associations": 2, "max_pending_per_address": 2,
                                            "association_request_timeout_s": 1.0,
                                            "allowed_callers": ["MODALITY", "ECHOPROBE", "OTHER"]}})
    assocs = [held_association(node.port), held_association(node.port)]
    try:
        assert rejection_of(node.port, "OTHER") == (0x02, 0x03, 0x02)          # transient, local limit
        abort_all(assocs[:1])
        wait_for(lambda: rejection_of(node.port, "OTHER") is None, 10, "the freed slot to be usable")
    finally:
        abort_all(assocs)
    assert rejection_of(node.port, "INTRUDER") == (0x01, 0x01, 0x03)
    assert rejection_of(node.port, "OTHER", called_ae="SOMEONE") == (0x01, 0x01, 0x07)
    socks = [connect(node.port, HALF_REQUEST) for _ in range(3)]
    try:
        assert read_until_closed(socks[2], 1.0) == b""                          # over the cap: at once
        assert read_until_closed(socks[0], 5.0) is not None                     # the 1 s deadline
    finally:
        close_all(socks)
    log = node.log_text()
    assert ("refused association from AE 'OTHER' at 127.0.0.1" in log
            and "(local limit exceeded: 2 of 2 association slots in use (node.max_associations)" in log)
    assert "refused association from AE 'INTRUDER' at 127.0.0.1" in log and "calling AE title not allowed" in log
    assert "(called AE title is not ours)" in log
    assert f"refused connection from {ATTACKER}" in log and "(node.max_pending_per_address)" in log
    assert "(request_deadline): no complete A-ASSOCIATE-RQ within 1 s" in log
    assert "calling or called AE not allowed" not in log


def test_readyz_and_metrics_show_association_slots(node_factory: NodeFactory) -> None:
    overrides, web_port = with_web({"node": {"max_associations": 3}})
    node = node_factory(overrides=overrides)
    assocs = [held_association(node.port), held_association(node.port)]
    pending = connect(node.port, HALF_REQUEST)
    try:
        wait_for(lambda: association_gauges(web_port) == {"active": 2.0, "pending": 1.0}, 10, "2 active, 1 pending")
        status, body = readyz(web_port)
        check = next(c for c in body["checks"] if c["name"] == "associations")  # type: ignore[attr-defined]
        assert status == 200 and check["ok"]
        assert check["detail"] == "2 of 3 association slots in use, 1 connection(s) waiting to associate"
        assocs.append(held_association(node.port))
        status, body = readyz(web_port)                  # a full house is load, not a fault: still ready
        check = next(c for c in body["checks"] if c["name"] == "associations")  # type: ignore[attr-defined]
        assert status == 200 and check["ok"]
        assert "new associations are refused (local limit exceeded)" in check["detail"]
        assert rejection_of(node.port, "MODALITY") == (0x02, 0x03, 0x02)
    finally:
        abort_all(assocs)
        pending.close()
    wait_for(lambda: association_gauges(web_port) == {"active": 0.0, "pending": 0.0}, 10, "the slots to free")
    assert "dicom_node_association_slots 3.0" in http_get(web_port, "/metrics")[1]
    assert 'dicom_node_connections_refused_total{reason="local_limit"} 1.0' in http_get(web_port, "/metrics")[1]


def test_sigterm_ends_the_node_within_the_drain_whatever_peers_do(node_factory: NodeFactory) -> None:
    # Deadlines longer than the drain, so that only the drain can end these connections.
    node = node_factory(overrides={"node": {"association_request_timeout_s": 120.0, "pdu_read_timeout_s": 600.0,
                                            "network_timeout_s": 600.0}})
    pending = [connect(node.port, HALF_REQUEST) for _ in range(5)]
    stuck: Any = held_association(node.port)
    stuck.network_timeout = 600                          # this peer never gives up by itself
    raw_socket_of(stuck).sendall(bytes([P_DATA_TF, 0]) + (1000).to_bytes(4, "big") + b"\x00" * 10)
    try:
        process = node.process
        assert process is not None
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert all(read_until_closed(s, 5.0) is not None for s in pending), "pending connections outlived SIGTERM"
        assert process.wait(timeout=DRAIN_S + 15) == 0
        assert DRAIN_S - 1 < time.monotonic() - started < DRAIN_S + 10
    finally:
        close_all(pending)
        abort_all([stuck])
    assert "aborting 1 association(s) still open after the 30 s drain" in node.log_text()


def test_idle_associations_cost_under_one_percent_of_a_core_each(node_factory: NodeFactory) -> None:
    count = 8
    node = node_factory(overrides={"node": {"network_timeout_s": 120.0}})
    assert node.process is not None
    pid = node.process.pid
    time.sleep(1.0)                                      # start-up work done (deliberate: no condition to poll)
    baseline = cpu_share(pid, 4.0)
    assocs = [held_association(node.port) for _ in range(count)]
    try:
        time.sleep(1.5)                                  # past idle_after_s (0.5 s): every association idle
        with_idle = cpu_share(pid, 6.0)
        assert all(a.is_established for a in assocs)     # type: ignore[attr-defined]
    finally:
        abort_all(assocs)
    per_association = (with_idle - baseline) / count
    assert per_association < 0.012, (f"{count} idle associations: {with_idle:.1%} of a core against "
                                     f"{baseline:.1%} without, {per_association:.2%} each")


def test_max_pdu_0_is_deprecated_and_means_the_default(node_factory: NodeFactory) -> None:
    node = node_factory(overrides={"node": {"max_pdu": 0}})
    assoc: Any = held_association(node.port)
    try:
        assert assoc.acceptor.maximum_length == MIB
    finally:
        abort_all([assoc])
    assert "node.max_pdu = 0 is deprecated (it meant unlimited): using the default 1048576 bytes" in node.log_text()


def test_a_data_set_above_max_dataset_mb_is_refused_without_being_held(node_factory: NodeFactory,
                                                                       tmp_path: Path) -> None:
    node = node_factory()                                # the default limit, node.max_dataset_mb = 64
    assert node.process is not None
    big = tmp_path / "big.dcm"
    big_ds = big_private_element_file(big, zeros_mib=160, deflated=False, seed=11)
    small = tmp_path / "small.dcm"
    small_ds = make_ct_series(slices=1, rows=16, cols=16, seed=12)[0]
    small_ds.save_as(small, enforce_file_format=True)
    memory = MemoryProbe.start(node.process.pid)
    # On one association: the big one is refused, and the association still serves the next instance.
    assert send_files_raw([big, small], node.port) == [OUT_OF_RESOURCES, 0]
    assert memory.growth_mib() < 120, f"node RSS grew {memory.growth_mib():.0f} MiB for a 64 MiB limit"
    assert "the data set is larger than 64 MiB" in node.log_text()
    stored = {p.stem for p in (node.storage_dir / "incoming").rglob("*.dcm")}
    assert str(small_ds.SOPInstanceUID) in stored and str(big_ds.SOPInstanceUID) not in stored


def test_a_deflate_bomb_is_refused_without_being_inflated(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory()                                # the default limit, node.max_dataset_mb = 64
    assert node.process is not None
    bombs = [tmp_path / f"bomb{i}.dcm" for i in range(3)]
    for i, path in enumerate(bombs):
        big_private_element_file(path, zeros_mib=500, deflated=True, seed=20 + i)
        assert path.stat().st_size < MIB                 # 500 MiB of zeros, deflated
    memory = MemoryProbe.start(node.process.pid)
    assert send_files_raw(bombs, node.port, syntax=DeflatedExplicitVRLittleEndian) == [OUT_OF_RESOURCES] * 3
    assert memory.growth_mib() < 100, f"node RSS grew {memory.growth_mib():.0f} MiB inflating deflate bombs"
    assert node.log_text().count("the data set inflates to more than 64 MiB") == 3
    honest = make_ct_series(slices=2, rows=16, cols=16, seed=30)
    for ds in honest:                                     # an honest deflated data set is still welcome
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    assert send_datasets(honest, node.port) == [0, 0]
