"""Access: an allow-list of calling AE titles (optionally @host), called-AE checking, and DICOM TLS both ways."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.fault.conftest import (
    NODE_AE,
    NodeFactory,
    PacsSCP,
    TlsFiles,
    derived_count,
    echo_ok,
    send_datasets,
    wait_for,
)
from tests.support.ct_series import make_ct_series

PacsFactory = Callable[..., PacsSCP]
ECHOSCU = "/usr/bin/echoscu"


def associate(port: int, calling_ae: str, called_ae: str = NODE_AE) -> tuple[bool, bool]:
    """(established, rejected) for a C-ECHO association from ``calling_ae``."""
    ae = AE(calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    established, rejected = assoc.is_established, assoc.is_rejected
    if established:
        assoc.release()
    return established, rejected


def test_allow_list_with_and_without_host(node_factory: NodeFactory) -> None:
    node = node_factory(overrides={"node": {"allowed_callers": ["SCANNER", "CT2@127.0.0.1", "CT3@10.9.8.7"]}},
                        start=False)
    node.start(wait=False)
    wait_for(lambda: associate(node.port, "SCANNER")[0], 40, "the node to accept SCANNER", alive=node.died)
    assert associate(node.port, "CT2")[0]                              # AE and host match
    source = make_ct_series(slices=4, seed=680)
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port, calling_ae="INTRUDER") == [-1] * 4
    assert send_datasets(source, node.port, calling_ae="CT3") == [-1] * 4
    assert send_datasets(source, node.port, calling_ae="SCANNER", called_ae="WRONG") == [-1] * 4
    assert uid not in node.series_rows()
    assert send_datasets(source, node.port, calling_ae="CT2") == [0] * 4
    node.wait_state(uid, "done")
    # Refusals are A-ASSOCIATE-RJ (not a dropped connection) and logged with the caller's AE and address.
    assert associate(node.port, "SCANNER", called_ae="NOTTHENODE") == (False, True)
    assert associate(node.port, "INTRUDER") == (False, True)
    assert associate(node.port, "CT3") == (False, True)                # AE matches, host does not
    if shutil.which(ECHOSCU):                                          # dcmtk sees the rejection too
        refused = subprocess.run([ECHOSCU, "-aet", "INTRUDER", "-aec", NODE_AE, "127.0.0.1", str(node.port)],
                                 capture_output=True, text=True, timeout=30, check=False)
        assert refused.returncode != 0 and "Rejected" in refused.stdout + refused.stderr, refused.stdout
        allowed = subprocess.run([ECHOSCU, "-aet", "SCANNER", "-aec", NODE_AE, "127.0.0.1", str(node.port)],
                                 capture_output=True, text=True, timeout=30, check=False)
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    log = node.log_text()
    assert "refused association from AE 'INTRUDER' at 127.0.0.1" in log
    assert "refused association from AE 'CT3' at 127.0.0.1" in log


def test_called_ae_mismatch_is_refused_without_allow_list(node_factory: NodeFactory) -> None:
    node = node_factory()
    assert associate(node.port, "ANYONE") == (True, False)
    assert associate(node.port, "ANYONE", called_ae="SYNTHNODE2") == (False, True)
    assert associate(node.port, "ANYONE", called_ae="ANY-SCP") == (False, True)


def test_tls_both_ways(node_factory: NodeFactory, pacs_factory: PacsFactory, tls_files: TlsFiles) -> None:
    pacs = pacs_factory(ae_title="TLSPACS", tls=tls_files.server_context())
    node = node_factory(
        overrides={
            "node": {"tls_cert": str(tls_files.server_cert), "tls_key": str(tls_files.server_key)},
            "destinations": [{"name": "tlspacs", "ae_title": "TLSPACS", "host": "127.0.0.1", "port": pacs.port,
                              "tls": True, "tls_ca": str(tls_files.ca)}],
        },
        start=False,
    )
    node.start(tls=tls_files.client_context())
    assert not echo_ok(node.port)                                      # plain DICOM is not spoken there
    source = make_ct_series(slices=5, seed=681)
    uid = str(source[0].SeriesInstanceUID)
    assert send_datasets(source, node.port, tls=tls_files.client_context()) == [0] * 5
    row = node.wait_state(uid, "done")
    assert pacs.count() == derived_count(5) and pacs.sop_uids() == pacs.sop_uids(str(row["derived_series_uid"]))


def test_tls_with_client_certificates(node_factory: NodeFactory, tls_files: TlsFiles) -> None:
    node = node_factory(
        overrides={"node": {"tls_cert": str(tls_files.server_cert), "tls_key": str(tls_files.server_key),
                            "tls_ca": str(tls_files.ca)}},
        start=False,
    )
    node.start(tls=tls_files.client_context(with_cert=True))
    assert not echo_ok(node.port, tls=tls_files.client_context(with_cert=False))
    assert echo_ok(node.port, tls=tls_files.client_context(with_cert=True))
    source = make_ct_series(slices=3, seed=682)
    assert send_datasets(source, node.port, tls=tls_files.client_context(with_cert=True)) == [0] * 3


@pytest.mark.parametrize("entry", ["BAD\\AE", "", "@127.0.0.1"])
def test_bad_allow_list_entries_are_config_errors(node_factory: NodeFactory, entry: str) -> None:
    node = node_factory(overrides={"node": {"allowed_callers": [entry]}}, start=False)
    proc = node.spawn("check-config", log_name="check.log")
    assert proc.wait(timeout=60) == 2
