"""The dashboard in a real browser: headless Debian Chromium driven by Playwright (no browser download).

A real node (web enabled, port 0) processes a series whose only destination answers 0xA700, with
`send.max_attempts = 1`, so the series fails. The browser loads the overview, the series list and the
series page, checks that every preview image decoded, logs in with the token, and retries the series
once the destination is fixed; the page then shows it done.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from dicom_node.app import Node
from dicom_node.config import parse_config
from tests.browser.conftest import CHROMIUM, TIMEOUT_MS
from tests.integration.conftest import CollectingSCP, send_series, wait_until
from tests.support import TEST_RESERVE_MB
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view as ledger_view

TOKEN = "browser-test-token"
STATUS_OUT_OF_RESOURCES = 0xA700

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (/usr/bin/chromium)"),
]


@pytest.fixture
def pacs() -> Iterator[CollectingSCP]:
    scp = CollectingSCP(status=STATUS_OUT_OF_RESOURCES)
    scp.start()
    yield scp
    scp.stop()


@pytest.fixture
def node(tmp_path: Path, pacs: CollectingSCP) -> Iterator[Node]:
    raw = {
        "node": {"port": 0, "storage_dir": str(tmp_path / "var"), "spool_reserve_mb": TEST_RESERVE_MB},
        "series": {"quiet_period_s": 0.5},
        "send": {"retry_initial_s": 0.2, "retry_max_s": 0.4, "max_attempts": 1, "timeout_s": 5.0},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
        "web": {"enabled": True, "port": 0, "token": TOKEN},
    }
    node = Node(parse_config(raw))
    node.start()
    yield node
    node.stop(drain_s=2.0)


def assert_image_decoded(page: Page, selector: str) -> None:
    image = page.locator(selector)
    expect(image).to_be_visible()
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=image.element_handle(),
                           timeout=TIMEOUT_MS)
    assert image.evaluate("el => el.naturalWidth") > 0
    assert image.evaluate("el => el.naturalHeight") > 0


def test_dashboard_previews_login_and_retry(browser: Browser, node: Node, pacs: CollectingSCP) -> None:
    source = make_ct_series(slices=8, rows=64, cols=64)
    uid = str(source[0].SeriesInstanceUID)
    assert node.scp is not None
    assert send_series(source, node.scp.port) == [0] * len(source)

    def state() -> str | None:
        summary = ledger_view(node.ledger, uid)
        return None if summary is None else summary.state

    wait_until(lambda: state() == "failed", 30.0, "the series to fail against the 0xA700 destination")

    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(node.web.url + "/")
    expect(page.locator("h1")).to_contain_text("Overview")
    expect(page.locator("#device")).to_have_text("cpu (numpy)")
    expect(page.locator("#destination-queues")).to_contain_text("pacs")

    page.click("nav >> text=Series")
    row = page.locator(f'tr[data-series="{uid}"]')
    expect(row).to_contain_text("failed")
    expect(row).to_contain_text("send_failed")
    row.locator("a").first.click()

    expect(page.locator("#series-uid")).to_have_text(uid)
    expect(page.locator("#series-state")).to_have_text("failed")
    for which in ("input", "output"):
        for view in ("coronal", "sagittal"):
            assert_image_decoded(page, f"#preview-{which}-{view}")
    expect(page.locator("#sends")).to_contain_text("0xA700")
    expect(page.locator("#action-retry")).to_have_count(0)      # no actions before logging in

    page.click("#login-to-act")
    page.fill("#token", TOKEN)
    page.click("#login-submit")
    expect(page.locator("#logged-in")).to_be_visible()
    expect(page.locator("#series-uid")).to_have_text(uid)     # back where we were

    pacs.status = 0                                             # the PACS has been fixed
    page.click("#action-retry")
    expect(page.locator("#flash")).to_contain_text("re-queued 1 failed send(s)")
    wait_until(lambda: state() == "done", 20.0, "the retried send to finish")
    page.reload()
    expect(page.locator("#series-state")).to_have_text("done")
    assert len(pacs.series()) == 1

    page.goto(node.web.url + "/series?state=done")
    expect(page.locator(f'tr[data-series="{uid}"]')).to_contain_text("pacs: done")


@pytest.fixture
def strict_node(tmp_path: Path) -> Iterator[Node]:
    raw = {
        "node": {"port": 0, "storage_dir": str(tmp_path / "var"), "spool_reserve_mb": TEST_RESERVE_MB},
        "web": {"enabled": True, "port": 0, "token": TOKEN, "auth_max_failures": 2, "auth_lockout_s": 300.0},
    }
    node = Node(parse_config(raw))
    node.start()
    yield node
    node.stop(drain_s=2.0)


def test_login_page_says_when_the_address_is_locked_out(browser: Browser, strict_node: Node) -> None:
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(strict_node.web.url + "/login")
    page.fill("#token", "wrong-guess-1")
    page.click("#login-submit")
    expect(page.locator("#login-failed")).to_contain_text("1 more failed try from your address")
    page.fill("#token", "wrong-guess-2")
    page.click("#login-submit")
    locked = page.locator("#login-locked")
    expect(locked).to_be_visible()
    expect(locked).to_contain_text("Too many failed attempts from your address")
    expect(locked).to_contain_text("locked for 5 min 0 s")
    page.fill("#token", TOKEN)                                   # even the right token waits for the lockout
    page.click("#login-submit")
    expect(page.locator("#login-locked")).to_be_visible()
    expect(page.locator("#logged-in")).to_have_count(0)
    page.goto(strict_node.web.url + "/login")                    # and the form says so before any try
    expect(page.locator("#login-locked")).to_contain_text("Try again after that")
