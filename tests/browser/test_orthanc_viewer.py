"""A real viewer opens the derived series: Orthanc's Web Viewer (Debian orthanc-webviewer) in headless Chromium.

The node (in-process, resample backend) sends its derived series to Orthanc by STOW-RS, JPEG 2000
lossless. Chromium opens the Web Viewer on that series, steps its slider through every slice, and
the test checks that the viewer asked for and got each slice Orthanc lists for the series (its
/web-viewer/series API, the one the page calls), that the canvas shows an image, and saves a
screenshot under the test's tmp dir.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Response

from dicom_node.app import Node
from dicom_node.config import parse_config
from tests.browser.conftest import CHROMIUM, TIMEOUT_MS
from tests.integration.conftest import send_series, wait_until
from tests.interop.orthanc_web import OrthancWeb, running_orthanc_web
from tests.support import TEST_RESERVE_MB
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view

pytestmark = [
    pytest.mark.browser,
    pytest.mark.interop,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (/usr/bin/chromium)"),
]

SLICES, DERIVED = 5, 21

LIT_PIXELS_JS = """() => {
  const canvas = document.querySelector('#dicomImage canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] > 16) lit++;
  return lit;
}"""


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancWeb]:
    with running_orthanc_web(tmp_path / "orthanc", webviewer=True) as server:
        yield server


def derived_series_in_orthanc(tmp_path: Path, orthanc: OrthancWeb) -> str:
    """Run a series through the node into Orthanc (STOW-RS, JPEG 2000 lossless); the derived series UID."""
    raw = {
        "node": {"port": 0, "storage_dir": str(tmp_path / "var"), "spool_reserve_mb": TEST_RESERVE_MB},
        "series": {"quiet_period_s": 1.0},
        "send": {"retry_initial_s": 0.1, "max_attempts": 2, "timeout_s": 10.0},
        "dicomweb_destinations": [{"name": "viewer-pacs", "url": orthanc.dicomweb_url,
                                   "transfer_syntax": "jpeg2000-lossless"}],
    }
    node = Node(parse_config(raw))
    node.start()
    try:
        source = make_ct_series(slices=SLICES, rows=64, cols=64)
        assert node.scp is not None and send_series(source, node.scp.port) == [0] * SLICES
        uid = str(source[0].SeriesInstanceUID)

        def done() -> bool:
            found = view(node.ledger, uid)
            return found is not None and found.state in ("done", "failed")

        wait_until(done, 30.0, "the derived series to reach Orthanc")
        found = view(node.ledger, uid)
        assert found is not None and found.state == "done"
        return found.derived_series_uid
    finally:
        node.stop(drain_s=2.0)


def test_orthanc_web_viewer_shows_every_derived_slice(tmp_path: Path, browser: Browser,
                                                      orthanc: OrthancWeb) -> None:
    derived_uid = derived_series_in_orthanc(tmp_path, orthanc)
    series_id = orthanc.series_id(derived_uid)
    assert series_id is not None
    slices = orthanc.get(f"/web-viewer/series/{series_id}")["Slices"]
    assert len(slices) == DERIVED

    loaded: dict[str, int] = {}

    def on_response(response: Response) -> None:
        if "/web-viewer/instances/" in response.url:
            slice_id = response.url.rsplit("/", 1)[1].split("-", 1)[1]      # "<quality>-<instance>_<frame>"
            loaded[slice_id] = response.status

    page = browser.new_page(viewport={"width": 800, "height": 600})
    page.set_default_timeout(TIMEOUT_MS)
    page.on("response", on_response)
    page.goto(f"{orthanc.base}/web-viewer/app/viewer.html?series={series_id}")
    page.wait_for_function(f"() => window.jQuery && jQuery('#slider').slider('option', 'max') === {DERIVED - 1}")
    page.focus("#slider .ui-slider-handle")
    for _ in range(DERIVED - 1):
        page.keyboard.press("ArrowRight")
    page.wait_for_function(f"() => jQuery('#slider').slider('value') === {DERIVED - 1}")
    wait_until(lambda: len(loaded) == DERIVED, 15.0, "the viewer to fetch every slice")
    page.screenshot(path=str(tmp_path / "orthanc-web-viewer.png"))

    assert set(loaded) == set(slices) and set(loaded.values()) == {200}
    assert page.evaluate(LIT_PIXELS_JS) > 1000                               # the last slice is drawn
    description = orthanc.get(f"/series/{series_id}")["MainDicomTags"]["SeriesDescription"]
    assert description.startswith("INTERP") and description in page.locator("#topright").inner_text()
    assert (tmp_path / "orthanc-web-viewer.png").stat().st_size > 1000
