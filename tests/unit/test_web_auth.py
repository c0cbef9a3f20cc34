"""Failed authentication through the app: counted per address, locked out with 429, logged without the guess.

The node is built but not started (no DICOM listener needed); the app runs in Starlette's TestClient,
whose `client=` sets the caller's address. The real server under parallel guessing is in
tests/fault/test_web_hostile.py.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from dicom_node.app import Node
from dicom_node.config import parse_config
from dicom_node.web.app import build_app
from dicom_node.web.auth import SESSION_COOKIE
from tests.unit.test_web_app import TOKEN, node_config

ATTACKER = ("192.0.2.66", 40000)
HONEST = ("198.51.100.7", 40001)
GUESSES = [f"guess-{i}-Zq8pX" for i in range(6)]


def app(tmp_path: Path, **web: Any) -> TestClient:
    node = Node(parse_config(node_config(tmp_path, **web)))
    return TestClient(build_app(node.operations), client=ATTACKER)


def metric(client: TestClient, line: str) -> float:
    text = TestClient(client.app, client=HONEST).get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    found = re.search(rf"^{re.escape(line)} (\S+)$", text, re.M)
    assert found is not None, f"no {line} in /metrics"
    return float(found.group(1))


def test_failed_logins_lock_the_address_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = app(tmp_path, auth_max_failures=2, auth_lockout_s=120.0)
    with caplog.at_level(logging.INFO, logger="dicom_node"):
        first = client.post("/login", data={"token": GUESSES[0], "next": "/"}, follow_redirects=False)
        assert first.status_code == 401 and 'id="login-failed"' in first.text
        assert "1 more failed try from your address" in re.sub(r"\s+", " ", first.text)
        second = client.post("/login", data={"token": GUESSES[1], "next": "/"}, follow_redirects=False)
        assert second.status_code == 429 and second.headers["retry-after"] == "120"
        assert 'id="login-locked"' in second.text and "locked for 2 min 0 s" in re.sub(r"\s+", " ", second.text)
        right = client.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
        assert right.status_code == 429 and SESSION_COOKIE not in right.cookies      # refused unread
        assert 'id="login-locked"' in client.get("/login").text
        bearer = client.get("/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 429 and bearer.json()["error"].startswith("too many failed authentication")
        assert int(bearer.headers["retry-after"]) in range(115, 121)
        assert client.get("/api/overview").status_code == 200      # no credential: public reading goes on
        other = TestClient(client.app, client=HONEST)
        ok = other.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
        assert ok.status_code == 303 and SESSION_COOKIE in ok.cookies                # other addresses log in
    assert metric(client, 'dicom_node_web_auth_failures_total{kind="login"}') == 2
    assert metric(client, "dicom_node_web_lockouts_total") == 1
    assert metric(client, 'dicom_node_web_auth_refused_total{kind="login"}') == 1
    assert metric(client, 'dicom_node_web_auth_refused_total{kind="bearer"}') == 1
    assert metric(client, "dicom_node_web_locked_addresses") == 1
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "failed login from 192.0.2.66 (a wrong token): failure 1 of 2 within 300 s" in log
    assert "failed login from 192.0.2.66 (a wrong token): 2 failures within 300 s, address locked out for 120 s" in log
    assert "login from 192.0.2.66 refused unread: locked out for another 120 s" in log
    for secret in [*GUESSES, TOKEN]:
        assert secret not in log


def test_wrong_bearer_tokens_lock_the_address_out_and_the_lock_ends(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    client = app(tmp_path, auth_max_failures=3, auth_lockout_s=0.5, auth_lockout_max_s=0.5)
    with caplog.at_level(logging.INFO, logger="dicom_node"):
        first_failure = time.monotonic()
        statuses = [client.get("/api/series", headers={"Authorization": f"Bearer {g}"}).status_code
                    for g in GUESSES]
        assert statuses == [401, 401, 401, 429, 429, 429]
        assert client.get("/api/series", headers={"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 429
        assert TestClient(client.app, client=HONEST).get(
            "/api/series", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        deadline = time.monotonic() + 10
        while client.get("/api/series", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 429:
            assert time.monotonic() < deadline, "the 0.5-s lockout did not end"
            time.sleep(0.05)
        time.sleep(max(0.0, first_failure + 1.1 - time.monotonic()))   # past the 1-s log interval of the cause
        assert client.get("/api/series", headers={"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 401
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "failed bearer from 192.0.2.66 (a wrong bearer token): failure 1 of 3 within 300 s" in log
    assert "3 failures within 300 s, address locked out for 0.5 s (lockout 1)" in log
    assert re.search(r"failed bearer from 192\.0\.2\.66 \(an Authorization header that is not Bearer\): failure 1 of 3 "
                     r"within 300 s \(1 similar in the last \d+ s\)", log)      # failure 2 was held back
    assert metric(client, 'dicom_node_web_auth_failures_total{kind="bearer"}') == 4
    for secret in [*GUESSES, TOKEN, "dXNlcjpwYXNz"]:
        assert secret not in log


def test_an_empty_authorization_header_is_no_credential(tmp_path: Path) -> None:
    client = app(tmp_path, auth_max_failures=1)
    for _ in range(3):
        assert client.get("/api/series", headers={"Authorization": ""}).status_code == 200
    assert metric(client, 'dicom_node_web_auth_failures_total{kind="bearer"}') == 0


def test_a_token_less_node_counts_any_bearer_as_a_failure(tmp_path: Path) -> None:
    node = Node(parse_config(node_config(tmp_path, token="", show_patient_data=False, auth_max_failures=1)))
    client = TestClient(build_app(node.operations), client=ATTACKER)
    assert client.get("/api/series", headers={"Authorization": "Bearer anything"}).status_code == 401
    assert client.get("/api/series", headers={"Authorization": "Bearer anything"}).status_code == 429
    assert client.post("/login", data={"token": "x"}).status_code == 429           # locked out: nothing is read
    honest = TestClient(client.app, client=HONEST)
    assert honest.post("/login", data={"token": "x"}).status_code == 403           # no login to guess at all
