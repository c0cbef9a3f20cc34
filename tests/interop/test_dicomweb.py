"""DICOMweb STOW-RS destinations against real Orthanc (DICOMweb plugin) and a local STOW-RS server.

The node runs in-process (resample backend, port 0); a small series goes in by C-STORE and its
derived series (36 instances) leaves by STOW-RS in requests of 10. Covered: the round trip (read
back and compared pixel for pixel), credentials refused (401/403: failed at once, no retry), a
server that is down (retried with backoff, then failed), 409 for some requests and 202 with some
failures, and a server that recovers after 503/429.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from dicom_node.app import Node
from dicom_node.config import parse_config
from dicom_node.ledger.queries import SendView
from tests.integration.conftest import send_series, wait_until
from tests.interop.orthanc_web import PASSWORD, USER, OrthancWeb, running_orthanc_web
from tests.interop.peers import free_port
from tests.support import TEST_RESERVE_MB
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view
from tests.support.stow_server import Answer, StowServer, running_stow_server, store_response

pytestmark = pytest.mark.interop

SLICES, DERIVED = 8, 36          # 8 slices at 5 mm -> 36 at 1 mm
PER_REQUEST = 10


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancWeb]:
    with running_orthanc_web(tmp_path / "orthanc", auth=True) as server:
        yield server


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(url: str, *, max_attempts: int = 3, retry_max_s: float = 0.2, **dest: Any) -> Node:
        raw = {
            "node": {"port": 0, "storage_dir": str(tmp_path / f"var{len(nodes)}"), "spool_reserve_mb": TEST_RESERVE_MB},
            "series": {"quiet_period_s": 1.0},
            "send": {"retry_initial_s": 0.1, "retry_max_s": retry_max_s, "max_attempts": max_attempts,
                     "timeout_s": 5.0},
            "dicomweb_destinations": [{"name": "web", "url": url, "instances_per_request": PER_REQUEST, **dest}],
        }
        node = Node(parse_config(raw))
        node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop(drain_s=2.0)


def process(node: Node, *, final: tuple[str, ...] = ("done", "failed")) -> tuple[str, SendView]:
    """C-STORE a small series into the node; wait until it is done or failed; its series UID and the send."""
    source = make_ct_series(slices=SLICES, rows=32, cols=32)
    assert node.scp is not None
    assert send_series(source, node.scp.port) == [0] * SLICES
    uid = str(source[0].SeriesInstanceUID)

    def finished() -> bool:
        found = view(node.ledger, uid)
        return found is not None and found.state in final

    wait_until(finished, 30.0, f"series to end {final}")
    found = view(node.ledger, uid)
    assert found is not None and len(found.sends) == 1
    return found.derived_series_uid, found.sends[0]


def test_round_trip_to_orthanc_over_stow_rs(make_node: Callable[..., Node], orthanc: OrthancWeb) -> None:
    node = make_node(orthanc.dicomweb_url, username=USER, password=PASSWORD)
    derived_uid, send = process(node)
    assert (send.state, send.attempts, send.sent, send.total, send.last_status) == ("done", 1, DERIVED, DERIVED, "ok")
    assert orthanc.instance_count(derived_uid) == DERIVED
    # read back through Orthanc and compare with what the node wrote, pixel for pixel
    series_id = orthanc.series_id(derived_uid)
    for instance_id in orthanc.get(f"/series/{series_id}")["Instances"][:5]:
        back = dcmread(io.BytesIO(orthanc.request("GET", f"/instances/{instance_id}/file")))
        mine = dcmread(node.spool.derived_dir(derived_uid) / f"{back.SOPInstanceUID}.dcm")
        assert np.array_equal(back.pixel_array, mine.pixel_array)
        assert back.SeriesInstanceUID == derived_uid


def test_check_reaches_orthanc_and_names_bad_credentials(make_node: Callable[..., Node],
                                                         orthanc: OrthancWeb) -> None:
    good = make_node(orthanc.dicomweb_url, username=USER, password=PASSWORD)
    result = good.operations.check_destination("web")
    assert result.ok and "reachable (HTTP 200" in result.message
    bad = make_node(orthanc.dicomweb_url, username=USER, password="wrong")
    result = bad.operations.check_destination("web")
    assert not result.ok and result.message.endswith("failed (HTTP 401)")
    assert "wrong" not in result.message and PASSWORD not in result.message
    assert orthanc.get("/instances") == []                                # a check sends no instance


def test_refused_credentials_fail_at_once_without_retry(make_node: Callable[..., Node], orthanc: OrthancWeb) -> None:
    node = make_node(orthanc.dicomweb_url, max_attempts=5, username=USER, password="not-the-password")
    _, send = process(node)
    assert (send.state, send.attempts, send.sent, send.last_status) == ("failed", 1, 0, "http-401")
    assert "credentials refused" in send.last_error and "not-the-password" not in send.last_error


def test_server_down_is_retried_then_failed(make_node: Callable[..., Node]) -> None:
    node = make_node(f"http://127.0.0.1:{free_port()}/dicom-web", max_attempts=3)
    _, send = process(node)
    assert (send.state, send.attempts, send.sent, send.last_status) == ("failed", 3, 0, "connection-failed")
    assert "ConnectError" in send.last_error


# Orthanc answers no 403 without an authorization plugin: a local server gives the other refusals.
@pytest.mark.parametrize(("status", "attempts"), [(401, 1), (403, 1), (404, 1), (413, 1), (400, 1)])
def test_refusals_from_a_local_server(make_node: Callable[..., Node], status: int, attempts: int) -> None:
    with running_stow_server(lambda _n, _uids: (status, None)) as server:
        node = make_node(server.url, max_attempts=4, token="s3cret-token")
        _, send = process(node)
    assert (send.state, send.attempts, send.last_status) == ("failed", attempts, f"http-{status}")
    assert server.requests[0]["authorization"] == "Bearer s3cret-token"
    assert server.requests[0]["content-type"].startswith('multipart/related; type="application/dicom"; boundary=')
    stopping = status != 400                  # a refused request as such: the other requests are not sent
    assert len(server.requests) == (1 if stopping else DERIVED // PER_REQUEST + 1)


def test_conflict_for_some_requests_keeps_the_rest_and_is_not_retried(make_node: Callable[..., Node]) -> None:
    def answer(number: int, uids: list[str]) -> Answer:
        if number == 1:                       # the second request: none stored, a conflict
            return 409, store_response([], failed=uids, reason=0x0110)
        return 200, store_response(uids)

    with running_stow_server(answer) as server:
        node = make_node(server.url, max_attempts=4)
        _, send = process(node)
    assert (send.state, send.attempts, send.last_status) == ("failed", 1, "http-409")
    assert send.sent == DERIVED - PER_REQUEST == len(server.received)
    assert "conflict" in send.last_error and "Failure Reason 0x0110" in send.last_error


def test_accepted_with_some_failures_is_retried(make_node: Callable[..., Node]) -> None:
    failing: set[str] = set()

    def answer(number: int, uids: list[str]) -> Answer:
        if number == 0:
            failing.update(uids[:2])
        bad = [u for u in uids if u in failing]
        return (202 if bad else 200), store_response([u for u in uids if u not in failing], failed=bad,
                                                     reason=0xA700)

    with running_stow_server(answer) as server:
        node = make_node(server.url, max_attempts=2)
        _, send = process(node)
    assert (send.state, send.attempts, send.last_status, send.sent) == ("failed", 2, "failure-0xA700", DERIVED - 2)


@pytest.mark.parametrize("transient", [503, 429, 408])
def test_a_server_that_recovers_gets_everything(make_node: Callable[..., Node], transient: int) -> None:
    def answer(number: int, uids: list[str]) -> Answer:
        return (transient, None) if number == 1 else (200, store_response(uids))

    with running_stow_server(answer) as server:
        node = make_node(server.url, max_attempts=3)
        _, send = process(node)
        received = {str(ds.SOPInstanceUID) for ds in server.received}
    assert (send.state, send.attempts, send.sent) == ("done", 2, DERIVED)
    assert len(received) == DERIVED


def test_a_busy_server_gets_nothing_more_until_its_retry_after(make_node: Callable[..., Node]) -> None:
    """503 with Retry-After: 2 to the first request: the rest of that attempt is not sent, and the next
    attempt comes no sooner than 2 s later although the backoff alone would be 0.1 s."""
    def answer(number: int, uids: list[str]) -> Answer:
        return (503, None) if number == 0 else (200, store_response(uids))

    with running_stow_server(answer) as server:
        server.retry_after = "2"
        node = make_node(server.url, max_attempts=3, retry_max_s=5.0)
        _, send = process(node)
        times = list(server.times)
    assert (send.state, send.attempts, send.sent) == ("done", 2, DERIVED)
    assert len(times) == 1 + -(-DERIVED // PER_REQUEST)          # one refused request, then every batch once
    assert times[1] - times[0] >= 2.0


def test_a_response_missing_instances_is_not_success(make_node: Callable[..., Node]) -> None:
    def answer(_number: int, uids: list[str]) -> Answer:
        return 200, store_response(uids[1:])      # one instance of each request silently not acknowledged

    with running_stow_server(answer) as server:
        node = make_node(server.url, max_attempts=1)
        _, send = process(node)
    assert isinstance(server, StowServer)
    assert (send.state, send.last_status) == ("failed", "unacknowledged")
    assert send.sent == DERIVED - (DERIVED // PER_REQUEST + 1)


def test_the_dashboard_checks_a_dicomweb_destination(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from dicom_node.web.app import build_app
    from tests.unit.test_web_actions import csrf_of

    with running_stow_server() as server:
        raw = {"node": {"port": 0, "storage_dir": str(tmp_path / "var"), "spool_reserve_mb": TEST_RESERVE_MB},
               "web": {"enabled": False, "token": "dash-token"},
               "dicomweb_destinations": [{"name": "web", "url": server.url, "token": "stow-token"}]}
        client = TestClient(build_app(Node(parse_config(raw)).operations))
        page = client.get("/destinations").text
        assert "dicomweb" in page and f"STOW-RS {server.url}/studies (bearer token)" in page
        assert "stow-token" not in page
        assert client.post("/login", data={"token": "dash-token", "next": "/"},
                           follow_redirects=False).status_code == 303
        page = client.get("/destinations").text
        assert 'id="check-web"' in page and "Check STOW-RS" in page
        done = client.post("/destinations/web/check", data={"csrf": csrf_of(page)}, follow_redirects=False)
        assert done.status_code == 303
        assert "reachable (HTTP 200 to an empty request)" in client.get(done.headers["location"]).text
        assert server.received == [] and len(server.requests) == 1
