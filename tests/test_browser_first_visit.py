"""A fresh app server (`streamlit run app.py`): it warms before any browser connects, and its very first request,
a deep link, opens that page at once, with no "Page not found" dialog (Streamlit's pages-folder mode would
answer it, see pages/_router.py)."""
import re

import pytest
from test_browser import _browser, _page, _settle, server  # noqa: F401  (server: the fixture)
from test_runs import wait_until

from tl_core.runs import executor
from tl_core.runs.store import RunStore

pytestmark = pytest.mark.browser

# every "Page not found" text that ever appears, from the first paint on
NOT_FOUND = """window.__notFound = [];
new MutationObserver(() => { if (document.body && /Page not found/.test(document.body.innerText))
  window.__notFound.push(document.body.innerText.slice(0, 200)); })
  .observe(document, {subtree: true, childList: true, characterData: true});"""


@pytest.mark.parametrize("path, heading", [("/backbone", "1 · Backbone"), ("/labs?lab=race", "Strategy race")])
def test_a_fresh_server_warms_at_its_start_and_its_first_request_a_deep_link_opens_its_page(server, path, heading):
    from playwright.sync_api import sync_playwright

    url, tmp = server
    store = RunStore(tmp / "runs")
    try:
        # before any browser connects, the server's start has started the warm pool
        wait_until(lambda: executor.live_workers(store, "cpu"), timeout=60)
        with sync_playwright() as p:
            browser, errors = _browser(p), []
            page = _page(browser, errors)
            page.add_init_script(NOT_FOUND)
            page.goto(url + path)
            _settle(page)
            page.get_by_role("heading", name=re.compile(re.escape(heading))).first.wait_for(timeout=60_000)
            _settle(page)
            assert page.evaluate("window.__notFound") == []
            assert path.split("?")[0] in page.url
            assert not page.locator("[data-testid='stException']").count(), "an exception box is on the page"
            assert not errors, errors
            browser.close()
    finally:
        executor.stop_pool(store)
