"""The dashboard and JSON API against a real node (in-process, interpolation backend, port 0).

Three series go through the node by C-STORE before the tests: one whose second destination answers
0xA700 (failed), one delivered everywhere (done) and one with a missing slice (rejected). All carry
a patient name, ID and birth date that must never appear unless the config allows it and the
caller is logged in.
"""

from __future__ import annotations

import ast
import html
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
from dicom_node.ledger.queries import read_engine
from dicom_node.web import actions as web_actions
from dicom_node.web import api as api_module
from dicom_node.web.app import build_app
from dicom_node.web.auth import CSRF_HEADER, SESSION_COOKIE
from dicom_node.web.limits import ParamError, int_param
from dicom_node.web.openapi import PATHS, SCHEMAS
from dicom_node.web.preview import TARGET_WIDTH_PX
from tests.integration.conftest import CollectingSCP, send_series, wait_until
from tests.support import TEST_RESERVE_MB
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view as ledger_view

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
        summary = ledger_view(self.node.ledger, uid)
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
        "node": {"port": 0, "storage_dir": str(tmp / "var"), "spool_reserve_mb": TEST_RESERVE_MB},
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
        wn = WebNode(node, TestClient(build_app(node.operations)), pacs, broken, "", "", "", logs, tmp)
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


def test_series_page_and_api_show_the_self_check(web: WebNode) -> None:
    detail = web.client.get(f"/api/series/{web.done_uid}").json()
    (check,) = detail["checks"]
    assert set(required("SelfCheck")) <= set(check)
    assert check["backend"] == "interpolation" and check["used"] and check["passed"] and check["failure"] == ""
    page = web.client.get(f"/series/{web.done_uid}").text
    card = page[page.index('id="self-check"'):]
    assert f'{check["consistency_db"]:.1f} dB' in card and "(sent)" in card and "passed" in card
    bias = "no lungs found" if check["lung_bias_hu"] is None else f'{check["lung_bias_hu"]:+.1f} HU'
    assert bias in card
    assert "Not checked (yet)" in web.client.get(f"/series/{web.rejected_uid}").text


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
    assert set(checks) == {"ledger", "disk", "synthesizer", "dicom", "associations", "synthesis", "send-pacs",
                           "send-broken", "timers"}
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
    assert 'dicom_node_self_check_outcomes_total{outcome="passed"}' in text
    assert 'dicom_node_self_checks_total{backend="interpolation",result="passed"}' in text
    assert 'dicom_node_self_check_consistency_db_bucket{backend="interpolation",le="35.0"}' in text


def test_readyz_says_why_it_is_not_ready(tmp_path: Path) -> None:
    raw = node_config(tmp_path)
    raw["node"]["disk_watermark"] = 0.0001            # any real disk is above this
    node = Node(parse_config(raw))                     # not started: no DICOM listener either
    response = TestClient(build_app(node.operations)).get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    failing = {c["name"] for c in body["checks"] if not c["ok"]}
    assert failing == {"disk", "dicom", "synthesis", "timers"}       # nothing runs before start()
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
    client = TestClient(build_app(node.operations))
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


# -- bounded parameters -----------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "message"), [
    ("/series?page=1e23", r"page must be an integer 1-20000000, got '1e23'"),
    ("/series?page=100000000000000000000000", r"page must be 1-20000000, got 100000000000000000000000"),
    ("/series?page=0", r"page must be 1-20000000, got 0"),
    ("/series?page=-3", r"page must be 1-20000000, got -3"),
    ("/series?page=%D9%A3", r"page must be an integer 1-20000000, got '٣'"),          # a non-ASCII digit
    ("/api/series?offset=9223372036854775808", r"offset must be 0-1000000000, got 9223372036854775808"),
    ("/api/series?offset=2**63", r"offset must be an integer 0-1000000000, got '2\*\*63'"),
    ("/api/series?offset=-1", r"offset must be 0-1000000000, got -1"),
    ("/api/series?limit=0", r"limit must be 1-1000, got 0"),
    ("/api/series?limit=1001", r"limit must be 1-1000, got 1001"),
    ("/api/series?limit=1.5", r"limit must be an integer 1-1000, got '1.5'"),
    ("/api/series?limit=" + "9" * 5000, r"^limit must be 1-1000, got 9{24}…$"),
])
def test_int_parameters_out_of_range_are_400_naming_the_parameter(web: WebNode, path: str, message: str) -> None:
    response = web.client.get(path)
    assert response.status_code == 400, response.text[:300]
    shown = response.json()["error"] if path.startswith("/api/") else html.unescape(text_of(response.text))
    assert re.search(message, shown.strip()), shown[:300]


def test_int_parameters_in_range_are_served(web: WebNode) -> None:
    assert web.client.get("/series?page=20000000").status_code == 200              # an empty page, not an error
    listing = web.client.get("/api/series?offset=1000000000&limit=1000").json()
    assert listing["series"] == [] and listing["offset"] == 1000000000 and listing["limit"] == 1000
    assert web.client.get("/api/series?offset=%2B0").json()["offset"] == 0


def test_int_param_messages() -> None:
    from starlette.requests import Request as StarletteRequest

    def request(query: str) -> StarletteRequest:
        return StarletteRequest({"type": "http", "query_string": query.encode(), "headers": []})

    assert int_param(request("n=7"), "n", default=1, lo=1, hi=9) == 7
    assert int_param(request("n="), "n", default=3, lo=1, hi=9) == 3
    with pytest.raises(ParamError, match=r"^n must be 1-9, got 10$"):
        int_param(request("n=10"), "n", default=1, lo=1, hi=9)
    with pytest.raises(ParamError, match=r"^n must be an integer 1-9, got ' 7'$"):
        int_param(request("n=%207"), "n", default=1, lo=1, hi=9)


# -- request bodies ---------------------------------------------------------------------------------
def test_a_declared_body_above_the_limit_is_413_unread(web: WebNode) -> None:
    limit = web.node.cfg.web.max_body_bytes
    page = web.client.post("/login", content=b"token=" + b"a" * limit,
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert page.status_code == 413 and page.headers["connection"] == "close"
    assert page.text == f"request body too large: at most {limit} bytes (web.max_body_bytes)"
    assert page.headers["x-frame-options"] == "DENY"                # the refusal still carries the headers
    api = web.client.post(f"/api/series/{web.done_uid}/resend", content=b"{}" + b" " * limit,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert api.status_code == 413 and api.json()["error"].startswith("request body too large: at most")


def refused_bodies(web: WebNode) -> float:
    found = re.search(r"^dicom_node_web_bodies_refused_total (\S+)$", web.client.get("/metrics").text, re.M)
    assert found is not None, "no dicom_node_web_bodies_refused_total in /metrics"
    return float(found.group(1))


def test_a_streamed_body_is_cut_at_the_limit(web: WebNode) -> None:
    before = refused_bodies(web)

    def chunks() -> Iterator[bytes]:               # chunked: no Content-Length to refuse up front
        for _ in range(1000):
            yield b"a" * 4096

    response = web.client.post("/login", content=chunks(),
                               headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413 and "at most 16384 bytes" in response.text
    assert refused_bodies(web) == before + 1
    ok = web.client.post("/login", content=iter([b"token=nope&next=/"]),
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert ok.status_code == 401                      # a small streamed body is read as usual


# -- OpenAPI against the handlers ----------------------------------------------------------------------
ACTION_SOURCES = ("api.py", "actions.py")


def statuses_in_source(function_names: set[str]) -> set[str]:
    """HTTP statuses that `error(NNN, …)` and `ActionError(NNN, …)` calls in the named functions can answer."""
    found: set[str] = set()
    for name in ACTION_SOURCES:
        source = (Path(api_module.__file__).parent / name).read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in function_names:
                for call in ast.walk(node):
                    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                            and call.func.id in ("error", "ActionError") and call.args
                            and isinstance(call.args[0], ast.Constant)):
                        found.add(str(call.args[0].value))
    return found


def test_openapi_documents_every_status_an_action_can_answer(web: WebNode) -> None:
    from_source = statuses_in_source({"action", "_actor", "perform"})
    from_source |= {str(status) for status in web_actions.HTTP_STATUS.values()}   # perform maps admin's refusals
    middleware = {"413", "429"}                             # BodyLimit and BearerGuard, before any handler
    assert {"400", "401", "403", "409"} <= from_source, from_source   # the parse found the handlers' calls
    for action in ("retry", "resend", "discard"):
        documented = set(PATHS[f"/api/series/{{series_uid}}/{action}"]["post"]["responses"])
        assert from_source | middleware | {"200"} <= documented, (action, documented)
    check = set(PATHS["/api/destinations/{name}/check"]["post"]["responses"])
    assert statuses_in_source({"check", "_actor", "check_destination"}) | middleware | {"200"} <= check


def test_openapi_documents_the_resend_destination(web: WebNode) -> None:
    op = PATHS["/api/series/{series_uid}/resend"]["post"]
    params = {p["name"]: p for p in op["parameters"]}
    assert params["destination"]["in"] == "query" and params["destination"]["required"] is False
    assert "destination" in op["requestBody"]["content"]["application/json"]["schema"]["properties"]
    for other in ("retry", "discard"):
        names = {p["name"] for p in PATHS[f"/api/series/{{series_uid}}/{other}"]["post"]["parameters"]}
        assert "destination" not in names
    listing = {p["name"]: p["schema"] for p in PATHS["/api/series"]["get"]["parameters"]}
    assert listing["offset"]["maximum"] == 10**9 and listing["limit"]["maximum"] == 1000


def test_action_statuses_seen_are_documented(web: WebNode) -> None:
    """Drive each refusal of POST /api/series/{uid}/resend and check the status is in the document."""
    documented = set(PATHS["/api/series/{series_uid}/resend"]["post"]["responses"])
    url = f"/api/series/{web.done_uid}/resend"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    seen = {
        web.client.post(url).status_code,                                                # 401: no login
        web.client.post(url, headers=bearer, content=b"not json").status_code,           # 400
        web.client.post(url, headers=bearer, json=["pacs"]).status_code,                 # 400
        web.client.post(url, headers=bearer, json={"destination": "nowhere"}).status_code,   # 409
        web.client.post(url, headers=bearer, params={"destination": "nowhere"}).status_code,  # 409
        web.client.post("/api/series/1.2.3/resend", headers=bearer).status_code,         # 404
        web.client.post(url, headers=bearer, content=b" " * 20000).status_code,         # 413
    }
    assert seen == {400, 401, 404, 409, 413}, seen
    assert {str(s) for s in seen} <= documented
