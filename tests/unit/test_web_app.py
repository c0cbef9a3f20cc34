"""The dashboard and JSON API against a real node (in-process, interpolation backend, port 0).

Three series go through the node by C-STORE before the tests: one whose second destination answers
0xA700 (failed), one delivered everywhere (done) and one with a missing slice (rejected). All carry
a patient name, ID and birth date that must never appear unless the config allows it and the
caller is logged in.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from dicom_node.app import Node
from dicom_node.config import parse_config
from dicom_node.web.app import build_app
from dicom_node.web.auth import CSRF_HEADER, SESSION_COOKIE
from dicom_node.web.openapi import PATHS, SCHEMAS
from dicom_node.web.preview import TARGET_WIDTH_PX
from dicom_node.web.queries import read_engine
from tests.integration.conftest import CollectingSCP, send_series, wait_until
from tests.support.ct_series import make_ct_series

TOKEN = "correct-horse-battery-staple"
PATIENT_NAME, PATIENT_ID, BIRTH_DATE = "DOE^JANE", "PID-778899", "19600101"
PHI = (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "DOE")
SLICES, SPACING_MM, MATRIX, PIXEL_MM = 8, 5.0, 48, 0.8
STATUS_OUT_OF_RESOURCES = 0xA700


@dataclass
class WebNode:
    node: Node
    client: TestClient
    pacs: CollectingSCP
    broken: CollectingSCP
    failed_uid: str
    done_uid: str
    rejected_uid: str
    logs: list[str]
    tmp: Path

    def state(self, uid: str) -> str | None:
        summary = self.node.ledger.summary(uid)
        return None if summary is None else summary.state

    def send(self, source: list[Dataset], state: str) -> str:
        uid = str(source[0].SeriesInstanceUID)
        assert send_series(source, self.node.scp.port if self.node.scp else 0) == [0] * len(source)
        wait_until(lambda: self.state(uid) == state, 30.0, f"series {uid} to be {state}")
        return uid

    def login(self) -> TestClient:
        client = TestClient(self.client.app)
        response = client.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
        assert response.status_code == 303 and SESSION_COOKIE in response.cookies
        return client


def with_patient(datasets: list[Dataset]) -> list[Dataset]:
    for ds in datasets:
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, BIRTH_DATE
    return datasets


def series(seed: int, **kwargs: Any) -> list[Dataset]:
    return with_patient(make_ct_series(slices=SLICES, rows=MATRIX, cols=MATRIX, spacing_mm=SPACING_MM,
                                       pixel_spacing=(PIXEL_MM, PIXEL_MM), seed=seed, **kwargs))


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


def node_config(tmp: Path, *, destinations: list[dict[str, Any]] | None = None, **web: Any) -> dict[str, Any]:
    return {
        "node": {"port": 0, "storage_dir": str(tmp / "var")},
        "series": {"quiet_period_s": 0.5},
        "send": {"retry_initial_s": 0.2, "retry_max_s": 0.4, "max_attempts": 1, "timeout_s": 5.0},
        "destinations": destinations or [],
        "web": {"token": TOKEN, "show_patient_data": True, **web},
    }


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    tmp = tmp_path_factory.mktemp("web")
    logs: list[str] = []
    handler = _Collect(logs)
    package_logger = logging.getLogger("dicom_node")
    old_level = package_logger.level
    package_logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    pacs, broken = CollectingSCP(), CollectingSCP(ae_title="BROKEN", status=STATUS_OUT_OF_RESOURCES)
    pacs.start()
    broken.start()
    raw = node_config(tmp, destinations=[
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
        {"name": "broken", "ae_title": "BROKEN", "host": "127.0.0.1", "port": broken.port}])
    node = Node(parse_config(raw))
    node.start()
    try:
        wn = WebNode(node, TestClient(build_app(node)), pacs, broken, "", "", "", logs, tmp)
        wn.failed_uid = wn.send(series(1), "failed")
        broken.status = 0
        wn.done_uid = wn.send(series(2), "done")
        wn.rejected_uid = wn.send(series(3, missing_slice=True), "rejected")
        yield wn
    finally:
        node.stop(drain_s=2.0)
        pacs.stop()
        broken.stop()
        logging.getLogger().removeHandler(handler)
        package_logger.setLevel(old_level)


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# -- pages ------------------------------------------------------------------------------------------
def test_overview_shows_model_device_disk_and_queues(web: WebNode) -> None:
    response = web.client.get("/")
    assert response.status_code == 200
    page = text_of(response.text)
    assert "interpolation" in page and "not AI" in page and "cpu (numpy)" in page
    assert "Queues by stage" in page and "Queues by destination" in page
    assert "broken" in page and "BROKEN@127.0.0.1" in page
    assert "series done" in page and "Watermark" in page and "ready" in page


def test_series_list_shows_state_reason_and_destination_results(web: WebNode) -> None:
    page = web.client.get("/series").text
    for uid in (web.failed_uid, web.done_uid, web.rejected_uid):
        assert f'data-series="{uid}"' in page
    assert "irregular_spacing" in page and "send_failed" in page
    assert "broken: failed" in text_of(page) and "pacs: done" in text_of(page)
    only_failed = web.client.get("/series?state=failed").text
    assert web.failed_uid in only_failed and web.done_uid not in only_failed
    assert web.client.get("/series?state=nonsense").status_code == 400


def test_series_page_has_previews_sends_and_no_actions_without_login(web: WebNode) -> None:
    page = web.client.get(f"/series/{web.failed_uid}").text
    for which in ("input", "output"):
        for view in ("coronal", "sagittal"):
            assert f'src="/series/{web.failed_uid}/preview/{which}/{view}.png"' in page
    assert "0xA700" in page and 'id="login-to-act"' in page and 'id="action-retry"' not in page
    assert web.client.get("/series/1.2.3.4").status_code == 404


def test_destinations_page_lists_failed_sends(web: WebNode) -> None:
    page = web.client.get("/destinations").text
    broken = page[page.index('id="dest-broken"'):]
    assert web.failed_uid[:14] in broken and "0xA700" in broken


def test_api_docs_page_lists_every_path(web: WebNode) -> None:
    page = web.client.get("/api").text
    for path in PATHS:
        assert path in page


# -- previews ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("view", ["coronal", "sagittal"])
def test_previews_are_aspect_correct_pngs(web: WebNode, view: str) -> None:
    images = {}
    for which in ("input", "output"):
        response = web.client.get(f"/series/{web.done_uid}/preview/{which}/{view}.png")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        images[which] = Image.open(io.BytesIO(response.content))
    px_per_mm = TARGET_WIDTH_PX / (MATRIX * PIXEL_MM)
    thin = (SLICES - 1) * 5 + 1
    assert images["input"].size == (TARGET_WIDTH_PX, round(SLICES * SPACING_MM * px_per_mm))
    assert images["output"].size == (TARGET_WIDTH_PX, round(thin * 1.0 * px_per_mm))
    pixels = np.asarray(images["output"])
    assert pixels.min() < 100 and pixels.max() > 200          # air and lung dark, tissue bright: a real section


def test_preview_errors(web: WebNode) -> None:
    assert web.client.get("/series/1.2.3/preview/input/coronal.png").status_code == 404
    assert web.client.get(f"/series/{web.done_uid}/preview/input/axial.png").status_code == 404
    assert web.client.get(f"/series/{web.done_uid}/preview/middle/coronal.png").status_code == 404
    rejected = web.client.get(f"/api/series/{web.rejected_uid}").json()
    assert set(rejected["previews"]) == {"input_coronal", "input_sagittal"}   # no output was derived
    assert web.client.get(f"/series/{web.rejected_uid}/preview/output/coronal.png").status_code == 404


# -- JSON API ---------------------------------------------------------------------------------------
def required(schema: str) -> list[str]:
    return list(SCHEMAS[schema]["required"])


def test_api_overview(web: WebNode) -> None:
    body = web.client.get("/api/overview").json()
    assert set(required("Overview")) <= set(body)
    assert body["series_by_state"]["failed"] >= 1 and body["series_by_state"]["rejected"] >= 1
    assert body["sends_by_destination"]["broken"]["failed"] >= 1
    assert body["sends_by_destination"]["pacs"]["done"] >= 2
    assert body["model"]["backend"] == "interpolation" and body["model"]["is_model"] is False
    assert 0 < body["disk"]["used_ratio"] < 1 and body["disk"]["incoming_bytes"] > 0
    assert body["throughput"]["last_hour"]["series_done"] >= 1
    assert body["throughput"]["last_hour"]["instances_received"] >= 3 * SLICES - 1
    assert body["ready"] is True


def test_api_series_list_and_detail(web: WebNode) -> None:
    listing = web.client.get("/api/series", params={"state": "failed"}).json()
    assert set(required("SeriesList")) <= set(listing)
    assert [s["series_uid"] for s in listing["series"]] == [web.failed_uid]
    detail = web.client.get(f"/api/series/{web.failed_uid}").json()
    assert set(required("Series")) <= set(detail)
    assert detail["state"] == "failed" and detail["reason"] == "send_failed"
    sends = {s["destination"]: s for s in detail["sends"]}
    assert sends["pacs"]["state"] == "done" and sends["pacs"]["sent"] == sends["pacs"]["total"] > 0
    assert sends["broken"]["state"] == "failed" and sends["broken"]["last_status"] == "0xA700"
    assert all(set(required("Send")) <= set(s) for s in detail["sends"])
    assert detail["synth_seconds"] > 0 and detail["total_seconds"] > 0
    assert detail["derived_count"] == (SLICES - 1) * 5 + 1
    assert detail["header"]["modality"] == "CT" and detail["patient"] is None
    assert web.client.get("/api/series", params={"limit": "0"}).status_code == 400
    assert web.client.get("/api/series", params={"limit": "x"}).status_code == 400
    assert web.client.get("/api/series/9.9.9").status_code == 404


def test_api_destinations(web: WebNode) -> None:
    body = {d["name"]: d for d in web.client.get("/api/destinations").json()}
    assert set(body) == {"pacs", "broken"}
    assert all(set(required("Destination")) <= set(d) for d in body.values())
    assert web.failed_uid in [j["series_uid"] for j in body["broken"]["failed"]]
    assert body["pacs"]["kind"] == "dicom" and body["pacs"]["target"].startswith("PACS@127.0.0.1:")


def test_openapi_describes_every_api_route(web: WebNode) -> None:
    doc = web.client.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    served: dict[str, set[str]] = {}
    for route in web.client.app.routes:  # type: ignore[attr-defined]
        path = getattr(route, "path", "")
        if path.startswith("/api/"):
            served.setdefault(path, set()).update(m.lower() for m in (route.methods or ()) if m != "HEAD")
    documented = {path: set(ops) for path, ops in doc["paths"].items()}
    for path, methods in served.items():
        if "{action}" in path:
            for action in ("retry", "resend", "discard"):
                assert documented[path.replace("{action}", action)] == methods
        else:
            assert documented[path] == methods, path
    refs = re.findall(r'"#/components/schemas/(\w+)"', web.client.get("/api/openapi.json").text)
    assert set(refs) <= set(doc["components"]["schemas"])


# -- health and metrics -----------------------------------------------------------------------------
def test_healthz_readyz_metrics(web: WebNode) -> None:
    assert web.client.get("/healthz").json() == {"status": "alive"}
    ready = web.client.get("/readyz")
    assert ready.status_code == 200
    checks = {c["name"]: c for c in ready.json()["checks"]}
    assert set(checks) == {"ledger", "disk", "synthesizer", "dicom", "associations"}
    assert checks["associations"]["ok"]
    assert checks["associations"]["detail"] == "0 of 32 association slots in use, 0 connection(s) waiting to associate"
    metrics = web.client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'dicom_node_series{state="failed"}' in text
    assert 'dicom_node_send_failures_total{destination="broken"}' in text
    assert "dicom_node_synthesis_seconds_bucket" in text and "dicom_node_disk_used_ratio" in text
    assert 'dicom_node_instances_received_total{outcome="new"}' in text
    assert 'dicom_node_associations{state="active"} 0.0' in text and "dicom_node_association_slots 32.0" in text


def test_readyz_says_why_it_is_not_ready(tmp_path: Path) -> None:
    raw = node_config(tmp_path)
    raw["node"]["disk_watermark"] = 0.0001            # any real disk is above this
    node = Node(parse_config(raw))                     # not started: no DICOM listener either
    response = TestClient(build_app(node)).get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    failing = {c["name"] for c in body["checks"] if not c["ok"]}
    assert failing == {"disk", "dicom"}
    assert any("0xA700" in r for r in body["reasons"]) and any("not running" in r for r in body["reasons"])


# -- security ---------------------------------------------------------------------------------------
def test_security_headers(web: WebNode) -> None:
    response = web.client.get("/")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert "no-store" not in web.client.get("/static/style.css").headers.get("cache-control", "")


def test_no_patient_data_without_login(web: WebNode) -> None:
    anonymous = [web.client.get(p).text for p in (
        "/", "/series", f"/series/{web.done_uid}", "/destinations", "/api/overview", "/api/series",
        f"/api/series/{web.done_uid}", "/api/destinations", "/metrics")]
    for body in anonymous:
        for value in PHI:
            assert value not in body


def test_patient_data_for_logged_in_users_when_configured(web: WebNode) -> None:
    client = web.login()
    page = client.get(f"/series/{web.done_uid}").text
    assert 'id="patient"' in page and PATIENT_NAME in page and PATIENT_ID in page and BIRTH_DATE in page
    assert client.get(f"/api/series/{web.done_uid}").json()["patient"]["patient_id"] == PATIENT_ID
    bearer = web.client.get(f"/api/series/{web.done_uid}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.json()["patient"]["patient_name"] == PATIENT_NAME


def test_logs_carry_no_patient_data(web: WebNode) -> None:
    web.login()
    assert web.logs, "the node logged nothing: the capture is broken"
    for line in web.logs:
        for value in PHI:
            assert value not in line, line


def test_login_flow(web: WebNode) -> None:
    client = TestClient(web.client.app)
    assert 'id="login-link"' in client.get("/").text
    wrong = client.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert wrong.status_code == 401 and SESSION_COOKIE not in client.cookies
    ok = client.post("/login", data={"token": TOKEN, "next": f"/series/{web.done_uid}"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == f"/series/{web.done_uid}"
    assert "httponly" in ok.headers["set-cookie"].lower() and "samesite=strict" in ok.headers["set-cookie"].lower()
    page = client.get(f"/series/{web.done_uid}").text
    assert 'id="logged-in"' in page and 'id="action-resend"' in page
    client.post("/logout", follow_redirects=False)
    client.cookies.set(SESSION_COOKIE, ok.cookies[SESSION_COOKIE])     # a stolen, logged-out cookie
    assert 'id="logged-in"' not in client.get("/").text


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example"])
def test_login_never_redirects_off_site(web: WebNode, target: str) -> None:
    response = TestClient(web.client.app).post("/login", data={"token": TOKEN, "next": target},
                                               follow_redirects=False)
    assert response.headers["location"] == "/"


def test_forged_session_cookie_is_ignored(web: WebNode) -> None:
    client = TestClient(web.client.app)
    client.cookies.set(SESSION_COOKIE, "9999999999.abcdef.0123")
    assert 'id="logged-in"' not in client.get("/").text
    assert client.post(f"/api/series/{web.failed_uid}/retry").status_code == 401


def test_private_node_needs_login_to_read(tmp_path: Path) -> None:
    node = Node(parse_config(node_config(tmp_path, public_read=False)))
    client = TestClient(build_app(node))
    redirect = client.get("/series", follow_redirects=False)
    assert redirect.status_code == 303 and redirect.headers["location"].startswith("/login?next=%2Fseries")
    assert client.get("/api/series").status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/series/1.2.3/preview/input/coronal.png").status_code == 401
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 503
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/series", headers=bearer).status_code == 200
    assert client.get("/metrics", headers=bearer).status_code == 200
    assert client.get("/api/series", headers={"Authorization": "Bearer wrong"}).status_code == 401
    client.post("/login", data={"token": TOKEN})
    assert client.get("/series").status_code == 200


def test_read_engine_cannot_write(web: WebNode) -> None:
    engine = read_engine(web.node.ledger.engine)
    assert engine is not web.node.ledger.engine
    with engine.connect() as conn, pytest.raises(OperationalError, match=r"readonly|read-only|query_only"):
        conn.execute(text("UPDATE series SET reason = 'x'"))
    engine.dispose()


# -- CSRF for session callers of the API ------------------------------------------------------------
def test_session_api_calls_need_the_csrf_header(web: WebNode) -> None:
    client = web.login()
    page = client.get(f"/series/{web.done_uid}").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert csrf is not None
    assert client.post(f"/api/series/{web.done_uid}/resend").status_code == 403
    ok = client.post(f"/api/series/{web.done_uid}/resend", headers={CSRF_HEADER: csrf.group(1)})
    assert ok.status_code == 200 and ok.json()["message"].startswith("re-queued")
    wait_until(lambda: web.state(web.done_uid) == "done", 20.0, "the re-send to finish")
