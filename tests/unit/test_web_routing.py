"""The dashboard, API, metrics and `dicom-node list` show what the rules did: SeriesDescription, kernel,
thickness, the rule and the backend; `no_rule` series are listed with their reason; no patient data
without a login (even with show_patient_data)."""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from starlette.testclient import TestClient

from dicom_node.app import Node
from dicom_node.cli import main
from dicom_node.config import parse_config
from dicom_node.web.app import build_app
from tests.integration.conftest import send_series, wait_until
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view

TOKEN = "routing-token-1234"
PHI = ("DOE^JANE", "PID-556677", "19510203")


@dataclass
class Web:
    node: Node
    client: TestClient
    routed: str
    unrouted: str
    config: Path


def series(seed: int, kernel: str, description: str) -> list[Dataset]:
    datasets = make_ct_series(slices=4, rows=16, cols=16, seed=seed, series_description=description)
    for ds in datasets:
        ds.ConvolutionKernel = kernel
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PHI
    return datasets


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    tmp = tmp_path_factory.mktemp("webrules")
    var = tmp / "var"
    toml = f"""
[node]
port = 0
storage_dir = "{var}"
[series]
quiet_period_s = 0.5
[web]
token = "{TOKEN}"
show_patient_data = true
[[folder_destinations]]
name = "pacs"
path = "{tmp / 'pacs'}"
[[folder_destinations]]
name = "cad"
path = "{tmp / 'cad'}"
[[rules]]
name = "sharp-to-cad"
match = {{ ConvolutionKernel = "^B45f$", SliceThickness = [4.0, 6.0] }}
destinations = ["cad"]
"""
    config = tmp / "node.toml"
    config.write_text(toml)
    import tomllib

    node = Node(parse_config(tomllib.loads(toml)))
    node.start()
    try:
        assert node.scp is not None
        routed, unrouted = series(1, "B45f", "LUNG 5.0 B45f"), series(2, "B30f", "MEDIASTINUM 5.0")
        assert send_series(routed, node.scp.port) == [0] * 4
        assert send_series(unrouted, node.scp.port) == [0] * 4
        r_uid, u_uid = str(routed[0].SeriesInstanceUID), str(unrouted[0].SeriesInstanceUID)
        wait_until(lambda: getattr(view(node.ledger, r_uid), "state", "") == "done"
                   and getattr(view(node.ledger, u_uid), "state", "") == "no_rule", 30, "done and no_rule")
        yield Web(node, TestClient(build_app(node.operations)), r_uid, u_uid, config)
    finally:
        node.stop(drain_s=2.0)


def test_the_series_list_shows_description_kernel_thickness_rule_and_backend(web: Web) -> None:
    page = html.unescape(web.client.get("/series").text)
    row = page.split(f'data-series="{web.routed}"')[1].split("</tr>")[0]
    for shown in ("LUNG 5.0 B45f", "B45f", "5 mm", "sharp-to-cad", "interpolation", "done"):
        assert shown in row
    other = page.split(f'data-series="{web.unrouted}"')[1].split("</tr>")[0]
    assert "no_rule" in other and "MEDIASTINUM 5.0" in other and "B30f" in other
    assert 'href="/series?state=no_rule"' in page and 'href="/series?state=thin_series_exists"' in page
    for secret in PHI:
        assert secret not in page


def test_the_series_page_shows_the_routing_and_no_patient_data_without_login(web: Web) -> None:
    page = html.unescape(web.client.get(f"/series/{web.routed}").text)
    routing = page.split('id="routing"')[1].split("</section>")[0]
    for shown in ('id="series-rule">sharp-to-cad', 'id="series-destinations">cad', 'id="series-backend">interpolation',
                  'id="series-kernel">B45f', 'id="series-thickness">5 mm', 'id="series-description">LUNG 5.0 B45f'):
        assert shown in routing
    no_rule = html.unescape(web.client.get(f"/series/{web.unrouted}").text)
    assert "no rule holds: sharp-to-cad: ConvolutionKernel 'B30f' does not match '^B45f$'" in no_rule
    for secret in PHI:
        assert secret not in page and secret not in no_rule


def test_the_api_has_the_fields(web: Web) -> None:
    data = web.client.get(f"/api/series/{web.routed}").json()
    assert (data["rule"], data["route_destinations"], data["backend"]) == ("sharp-to-cad", ["cad"], "interpolation")
    assert (data["series_description"], data["convolution_kernel"], data["slice_thickness_mm"]) == (
        "LUNG 5.0 B45f", "B45f", 5.0)
    assert data["patient"] is None
    listed = web.client.get("/api/series?state=no_rule").json()
    assert [s["series_uid"] for s in listed["series"]] == [web.unrouted]


def test_metrics_and_list_count_no_rule(web: Web, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = web.client.get("/metrics").text
    assert 'dicom_node_series{state="no_rule"} 1.0' in metrics
    assert 'dicom_node_series{state="thin_series_exists"} 0.0' in metrics
    assert 'dicom_node_series_processed_total{result="no_rule"} 1.0' in metrics
    assert main(["list", "--config", str(web.config), "--state", "no_rule", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["series_uid"] == web.unrouted and row["reason"] == "no_rule"


def test_list_shows_the_self_check_of_what_was_written(web: Web, capsys: pytest.CaptureFixture[str]) -> None:
    data = web.client.get(f"/api/series/{web.routed}").json()
    used = next(c for c in data["checks"] if c["used"])
    assert main(["list", "--config", str(web.config)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    lung = "" if used["lung_bias_hu"] is None else f", lung {used['lung_bias_hu']:+.1f} HU"
    verdict = "" if used["passed"] else f" (failed: {used['failure']})"
    assert lines[web.routed].endswith(f"; interpolation {used['consistency_db']:.1f} dB{lung}{verdict}")
    assert "dB" not in lines[web.unrouted]                       # no_rule: nothing was made, nothing checked
