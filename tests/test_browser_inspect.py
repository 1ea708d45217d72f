"""In a real browser: a click on a cell of the Inspect page's confusion matrix shows that cell's images.

AppTest cannot click a chart, so this drives ``streamlit run app.py`` in headless Chromium (the fixtures and
waits of ``test_browser``: condition waits, never a fixed time). The run is real and tiny: MobileNetV2's head
trained for one epoch on 20 digits per class at 64 px (about 65% right: mistakes in many cells), in the
server's own run store.
"""
import re

import pytest

from test_browser import CHARTS_DRAWN, _open, _rerun, _shot_at, _still, server  # noqa: F401  (server: the fixture)
from tl_core.runs import worker
from tl_core.runs.store import RunStore
from tl_core.viz import figures as visuals

pytestmark = pytest.mark.browser


def test_a_click_on_a_confusion_cell_shows_its_images(server):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    url, tmp = server
    store = RunStore(tmp / "runs")
    run_id = store.create({"name": "digits", "backbone": "mobilenetv2", "strategy": "feature_extraction",
                           "data": "digits8", "per_class": 20, "image_size": 64, "epochs": 1, "batch_size": 16,
                           "num_threads": 2})
    assert worker.run(store, run_id, say=lambda line: None) == "completed", store.get(run_id).reason
    names, preds = store.get(run_id).summary["class_names"], store.predictions(run_id)
    counts, n = visuals.confusion_counts(preds["label"], preds["pred"], len(names)), len(names)
    shown_first = max([c for c in zip(*counts.nonzero()) if c[0] != c[1]] or zip(*counts.nonzero()),
                      key=lambda c: counts[c])  # the page opens on the most frequent mistake
    t, p = max((c for c in zip(*counts.nonzero()) if c != shown_first),
               key=lambda c: (c[0] != c[1], counts[c]))  # the next most frequent mistake

    with sync_playwright() as pw:
        browser, page, errors = _open(pw, f"{url}/inspect")
        page.get_by_text("Misclassified examples").wait_for(timeout=120_000)
        picker = page.get_by_role("combobox", name=re.compile("^Cell of the matrix"))
        first = f"true {names[shown_first[0]]} → predicted {names[shown_first[1]]} · {counts[shown_first]} images"
        expect(picker).to_have_value(first)
        chart = page.locator("[data-testid='stPlotlyChart']").first  # the confusion matrix
        chart.scroll_into_view_if_needed()
        _still(page, chart)
        page.wait_for_function(CHARTS_DRAWN, timeout=30_000)
        plot = chart.locator("rect.nsewdrag").first.bounding_box()  # the plot area: n x n cells, class 0 on top
        with _rerun(page):
            page.mouse.click(plot["x"] + (p + 0.5) * plot["width"] / n, plot["y"] + (t + 0.5) * plot["height"] / n)
        expect(picker).to_have_value(f"true {names[t]} → predicted {names[p]} · {counts[t, p]} images")
        view = page.locator(".st-key-inspect_cell_view")
        expect(view).to_contain_text(f"{counts[t, p]} validation images")
        captions = view.get_by_test_id("stImageCaption")  # one under each image
        expect(captions).to_have_count(min(int(counts[t, p]), 48))
        assert all(c.startswith(f"true {names[t]} → {names[p]} (") for c in captions.all_inner_texts())
        _shot_at(page, chart, "inspect_cell")  # artifacts/screenshots/: the matrix, the picked cell and its images
        assert not page.locator("[data-testid='stException']").count(), "an exception box is on the page"
        assert not errors, errors
        browser.close()
