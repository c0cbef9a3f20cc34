"""skip_if_thin when the PACS does not answer: no reason to skip; the node logs why and goes on, within
the configured timeout (a refused port, and a listener that accepts and never speaks)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from dicom_node.config import DestinationSection
from dicom_node.ledger import SeriesState
from dicom_node.thincheck import find_thin_series
from tests.integration.conftest import NodeFactory, send_series, wait_until
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP listener that accepts and never answers (a hung PACS)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_a_hung_pacs_is_given_up_within_the_timeout(silent_port: int) -> None:
    started = time.monotonic()
    answer = find_thin_series(DestinationSection("pacs", "PACS", "127.0.0.1", silent_port), calling_ae="SYNTHNODE",
                              study_uid="1.2.3", max_thickness_mm=1.5, timeout_s=0.5, is_ours=lambda uid: False)
    assert time.monotonic() - started < 3.0
    assert answer.thin_series_uid == "" and "did not associate" in answer.error


def test_a_refused_pacs_means_process_and_log_why(node_factory: NodeFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_node.synthesis")
    node = node_factory(pacs_port=closed_port(), extra={
        "series": {"skip_if_thin": {"destination": "pacs", "max_thickness_mm": 1.5, "timeout_s": 1.0}},
        "rules": [{"name": "outbox-only", "destinations": ["outbox"]}]})
    series = make_ct_series(slices=3, rows=16, cols=16, seed=31)
    assert node.scp is not None and send_series(series, node.scp.port) == [0] * 3
    uid = str(series[0].SeriesInstanceUID)
    wait_until(lambda: getattr(view(node.ledger, uid), "state", "") == SeriesState.DONE, timeout_s=30,
               what="the series done in spite of the silent PACS")
    assert any(f"series {uid}: skip_if_thin: no answer from pacs" in r.getMessage() and "processing it" in
               r.getMessage() for r in caplog.records)
