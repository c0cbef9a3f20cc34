"""Retry, re-send and discard from the dashboard's forms and the JSON API, with their refusals."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dicom_node.app import Node
from dicom_node.config import parse_config
from dicom_node.web.app import build_app
from tests.integration.conftest import CollectingSCP, wait_until
from tests.unit.test_web_app import STATUS_OUT_OF_RESOURCES, TOKEN, WebNode, node_config, series

BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    tmp = tmp_path_factory.mktemp("web-actions")
    pacs, broken = CollectingSCP(), CollectingSCP(ae_title="BROKEN")
    pacs.start()
    broken.start()
    node = Node(parse_config(node_config(tmp, destinations=[
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
        {"name": "broken", "ae_title": "BROKEN", "host": "127.0.0.1", "port": broken.port}])))
    node.start()
    try:
        yield WebNode(node, TestClient(build_app(node.operations)), pacs, broken, "", "", "", [], tmp)
    finally:
        node.stop(drain_s=2.0)
        pacs.stop()
        broken.stop()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


def test_actions_need_a_login(web: WebNode) -> None:
    uid = web.send(series(20), "done")
    assert web.client.post(f"/api/series/{uid}/resend").status_code == 401
    assert web.client.post(f"/api/series/{uid}/resend", headers={"Authorization": "Bearer no"}).status_code == 401
    form = web.client.post(f"/series/{uid}/resend", data={"csrf": "x"}, follow_redirects=False)
    assert form.status_code == 303 and form.headers["location"] == f"/login?next=%2Fseries%2F{uid}"
    assert web.state(uid) == "done"


def test_retry_a_failed_series_from_its_page(web: WebNode) -> None:
    web.broken.status = STATUS_OUT_OF_RESOURCES
    uid = web.send(series(21), "failed")
    web.broken.status = 0                                  # the PACS is fixed; the admin retries
    client = web.login()
    page = client.get(f"/series/{uid}").text
    assert 'id="action-retry"' in page and 'id="action-retry" disabled' not in page
    forged = client.post(f"/series/{uid}/retry", data={"csrf": "0" * 64}, follow_redirects=False)
    assert forged.status_code == 403 and web.state(uid) == "failed"
    done = client.post(f"/series/{uid}/retry", data={"csrf": csrf_of(page)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith(f"/series/{uid}?msg=retry")
    assert "re-queued 1 failed send(s)" in client.get(done.headers["location"]).text
    wait_until(lambda: web.state(uid) == "done", 20.0, "the retried send")
    assert 'id="series-state">done<' in client.get(f"/series/{uid}").text


def test_retry_a_rejected_series_by_api(web: WebNode) -> None:
    uid = web.send(series(22, missing_slice=True), "rejected")
    response = web.client.post(f"/api/series/{uid}/retry", headers=BEARER)
    assert response.status_code == 200
    assert response.json() == {"series_uid": uid, "action": "retry", "message": "queued for processing again"}
    wait_until(lambda: web.state(uid) == "rejected", 20.0, "the series to be processed (and rejected) again")


def test_resend_to_one_destination_by_api(web: WebNode) -> None:
    uid = web.send(series(23), "done")
    derived = web.client.get(f"/api/series/{uid}").json()["derived_series_uid"]
    before_pacs, before_broken = len(web.pacs.series()[derived]), len(web.broken.series()[derived])
    response = web.client.post(f"/api/series/{uid}/resend", headers=BEARER, json={"destination": "pacs"})
    assert response.status_code == 200 and response.json()["message"] == "re-queued 1 send(s)"
    wait_until(lambda: len(web.pacs.series()[derived]) == 2 * before_pacs, 20.0, "the re-send to the PACS")
    wait_until(lambda: web.state(uid) == "done", 20.0, "the series to be done again")
    assert len(web.broken.series()[derived]) == before_broken


def test_discard_removes_the_series_and_its_files(web: WebNode) -> None:
    uid = web.send(series(24), "done")
    derived = web.client.get(f"/api/series/{uid}").json()["derived_series_uid"]
    spool = web.node.spool
    assert spool.instance_files(uid) and spool.derived_dir(derived).is_dir()
    client = web.login()
    csrf = csrf_of(client.get(f"/series/{uid}").text)
    unconfirmed = client.post(f"/series/{uid}/discard", data={"csrf": csrf}, follow_redirects=False)
    assert unconfirmed.status_code == 400 and web.state(uid) == "done"
    gone = client.post(f"/series/{uid}/discard", data={"csrf": csrf, "confirm": "yes"}, follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"].startswith("/series?msg=discard")
    assert web.state(uid) is None
    assert client.get(f"/api/series/{uid}").status_code == 404
    assert not spool.instance_files(uid) and not spool.derived_dir(derived).exists()


def test_action_refusals(web: WebNode) -> None:
    uid = web.send(series(25), "done")
    retry = web.client.post(f"/api/series/{uid}/retry", headers=BEARER)
    assert retry.status_code == 409 and "only failed, no_rule, rejected or thin_series_exists" in retry.json()["error"]
    assert web.client.post("/api/series/1.2.3/retry", headers=BEARER).status_code == 404
    unknown = web.client.post(f"/api/series/{uid}/resend", headers=BEARER, json={"destination": "nowhere"})
    assert unknown.status_code == 409 and "nowhere" in unknown.json()["error"]
    assert web.client.post(f"/api/series/{uid}/explode", headers=BEARER).status_code == 404
    bad = web.client.post(f"/api/series/{uid}/resend", headers={**BEARER, "Content-Type": "application/json"},
                          content=b"{not json")
    assert bad.status_code == 400
    assert web.client.post(f"/api/series/{uid}/resend", headers=BEARER, json=["pacs"]).status_code == 400
    page = web.login().get(f"/series/{uid}").text
    assert 'id="action-retry" disabled' in page and 'id="action-resend" ' in page


def test_no_token_means_no_actions(tmp_path: Path) -> None:
    raw = node_config(tmp_path)
    raw["web"] = {"token": ""}
    client = TestClient(build_app(Node(parse_config(raw)).operations))
    refused = client.post("/api/series/1.2.3/retry", headers=BEARER)
    assert refused.status_code == 403 and "web.token is empty" in refused.json()["error"]
    assert "Logging in is disabled" in client.get("/login").text
    assert client.post("/login", data={"token": ""}).status_code == 403
    assert client.get("/").status_code == 200                  # reading stays public


def test_check_destinations(web: WebNode, tmp_path: Path) -> None:
    ok = web.client.post("/api/destinations/pacs/check", headers=BEARER)
    assert ok.status_code == 200 and ok.json()["ok"] is True and "success" in ok.json()["message"]
    assert web.client.post("/api/destinations/pacs/check").status_code == 401
    assert web.client.post("/api/destinations/nowhere/check", headers=BEARER).status_code == 404
    client = web.login()
    page = client.get("/destinations").text
    assert 'id="check-broken"' in page
    done = client.post("/destinations/broken/check", data={"csrf": csrf_of(page)}, follow_redirects=False)
    assert done.status_code == 303
    assert "C-ECHO BROKEN@127.0.0.1" in client.get(done.headers["location"]).text


def test_check_reports_an_unreachable_destination(tmp_path: Path) -> None:
    raw = node_config(tmp_path, destinations=[{"name": "gone", "ae_title": "GONE", "host": "127.0.0.1", "port": 9}])
    raw["send"]["timeout_s"] = 2.0
    raw["folder_destinations"] = [{"name": "outbox", "path": str(tmp_path / "not" / "yet")}]
    client = TestClient(build_app(Node(parse_config(raw)).operations))
    gone = client.post("/api/destinations/gone/check", headers=BEARER).json()
    assert gone["ok"] is False and "no association" in gone["message"]
    outbox = client.post("/api/destinations/outbox/check", headers=BEARER).json()
    assert outbox["ok"] is True and outbox["message"].endswith("writable")
