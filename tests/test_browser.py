"""End to end in a real browser: `streamlit run app.py` driven by headless Chromium (Playwright).

One long test walks the first-experiment path a student follows: pick a backbone, toggle a block
and watch the meter, pick a data set, launch a one-epoch run, see the live curve, reload and
re-attach, then visit Compare and Inspect, and run a tiny lab from a shared link. It saves a projector-size screenshot of every page to
artifacts/screenshots/ (1600x1000 viewport, plus a full-height *_full.png). Another opens a deep link
as a fresh server's first request: the files of pages/ are never listed, and the page opens in the app's layout.
It then trains one text run through the UI (MiniLM on a few fine-food reviews, from the
Data page to the live curve). A third runs a server in classroom mode: two students in two browser contexts, each sees only their own run,
and the teacher's class board shows both.

Every wait is for a condition, never a fixed time: after an action, a script run that the server reports
finished on the page's websocket (``_rerun``); before a screenshot, the page at rest and its charts drawn; a
live chart's points, polled.
"""
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "screenshots"
VIEWPORT = {"width": 1600, "height": 1000}

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    if not Path(CHROMIUM).exists():
        assert not os.environ.get("CI"), f"{CHROMIUM} is absent: CI must run the browser tests (make browser)"
        pytest.skip(f"{CHROMIUM} is absent: run `make browser` (apt-get install chromium) to enable browser tests")
    if os.environ.get("CI"):  # CI runs the browser tests: a missing Playwright fails here
        import playwright.sync_api  # noqa: F401
    else:
        pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    port = _free_port()
    env = {**os.environ, "TL_RUNS_DIR": str(tmp_path / "runs"), "TL_DATA_ROOT": str(tmp_path / "data"),
           "TL_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "streamlit.log", "wb")  # a file, not a pipe: a full pipe can block the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
         "--client.toolbarMode", "viewer"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "streamlit.log").read_text()
            assert time.time() < deadline, "streamlit did not become healthy in 60 s"
            time.sleep(0.3)
        yield url, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        # stop any worker still training (they run in their own sessions by design)
        from tl_core.runs.store import RunStore

        store = RunStore(tmp_path / "runs")
        for r in store.list_runs():
            if r.active and r.pid:
                try:
                    os.kill(r.pid, 15)
                except OSError:
                    pass


# Watches the DOM from the first paint (a Playwright init script runs before the page's own scripts):
# every sidebar-navigation element that ever appears, the layouts the app view goes through, and whether
# the Train page's title was ever drawn outside the wide layout.
WATCH = """
window.__tl = {sidebarNav: [], layouts: [], trainOutsideLayout: 0};
new MutationObserver(() => {
  const w = window.__tl;
  document.querySelectorAll("[data-testid^='stSidebarNav']").forEach(
    n => w.sidebarNav.push(n.getAttribute('data-testid') + ': ' + n.textContent.slice(0, 60)));
  const app = document.querySelector("[data-testid='stAppViewContainer']");
  const layout = app ? app.getAttribute('data-layout') : null;
  if (w.layouts[w.layouts.length - 1] !== layout) w.layouts.push(layout);
  if (layout !== 'wide' && [...document.querySelectorAll('h1')].some(h => h.textContent.includes('Train'))) {
    w.trainOutsideLayout++;
  }
}).observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
"""
# Every plotly chart on screen is drawn (plotly has laid it out; Streamlit shows it once it knows its width).
CHARTS_DRAWN = """() => [...document.querySelectorAll("[data-testid='stPlotlyChart']")]
  .filter(c => c.getClientRects().length).every(c => {
    const g = c.querySelector('.js-plotly-plot');
    return g && g._fullLayout && g.querySelector('.main-svg') && getComputedStyle(g).visibility !== 'hidden'; })"""
# An element that stops moving (a smooth scroll, a layout change): the same box on two frames in a row.
STILL = """e => { const box = JSON.stringify(e.getBoundingClientRect()); const same = e.__tlBox === box;
                  e.__tlBox = box; return same; }"""


def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


def _page(browser, errors: list):
    """A page in a context of its own, watched from the first paint (WATCH) and on its websocket (``_count_runs``);
    its JavaScript errors go to ``errors``."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.add_init_script(WATCH)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.tl_runs = 0
    page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: _count_runs(page, frame)))
    return page


def _count_runs(page, frame) -> None:
    """``page.tl_runs``: the script runs (fragment runs too) the server has told this page it finished (a
    ``script_finished`` message; not one cut short for a rerun)."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    if isinstance(frame, bytes):
        msg = ForwardMsg.FromString(frame)
        if msg.WhichOneof("type") == "script_finished" and msg.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
            page.tl_runs += 1


def _open(p, address: str):
    """A fresh browser whose first request is ``address``, watched from the first paint (WATCH); waits until
    the app has settled. Returns (browser, page, the page's JavaScript errors)."""
    browser, errors = _browser(p), []
    page = _page(browser, errors)
    page.goto(address)
    _settle(page)
    return browser, page, errors


def _settle(page, timeout=120_000):
    """Wait until the app is connected and its script is not running (a page just loaded: its state is 'initial'
    until its first run ends). After an action that reruns the script, use ``_rerun``."""
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=timeout)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=timeout)


@contextlib.contextmanager
def _rerun(page, timeout: float = 120):
    """``with _rerun(page): <an action that reruns the script>``: on leaving, waits until the server has
    finished a run begun after the action, and the page shows it."""
    before = page.tl_runs
    yield
    deadline = time.monotonic() + timeout
    while page.tl_runs <= before:
        assert time.monotonic() < deadline, f"no script run ended within {timeout} s of the action ({page.url})"
        page.wait_for_timeout(50)
    _settle(page)


def _still(page, locator) -> None:
    """Wait until ``locator``'s element has stopped moving."""
    page.wait_for_function(STILL, arg=locator.element_handle(), polling="raf", timeout=30_000)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(5, 995)  # no tooltip in the picture
    page.evaluate("() => { window.scrollTo(0, 0); const m = document.querySelector('[data-testid=\"stMain\"]');"
                  " if (m) m.scrollTop = 0; }")
    main = page.get_by_test_id("stMainBlockContainer")
    _still(page, main)
    page.wait_for_function(CHARTS_DRAWN, timeout=30_000)
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(int(height) + 40, 5000)})
    _still(page, main)
    page.wait_for_function(CHARTS_DRAWN, timeout=30_000)
    page.screenshot(path=str(SHOTS / f"{name}_full.png"))
    page.set_viewport_size(VIEWPORT)


def _shot_at(page, locator, name: str) -> None:
    """A viewport screenshot with ``locator`` (a section further down the page) at its top."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(5, 995)
    locator.scroll_into_view_if_needed()
    locator.evaluate("e => e.scrollIntoView({block: 'start'})")
    _still(page, locator)
    page.wait_for_function(CHARTS_DRAWN, timeout=30_000)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _nav(page, label: str) -> None:
    with _rerun(page):
        page.locator("[data-testid='stTopNavLink']", has_text=label).first.click()
        page.wait_for_url(re.compile(f"/{label.lower()}"))


def _select(page, label: str, option: str) -> None:
    """Pick ``option`` (not the one shown: a change reruns the script) in the select box ``label``."""
    page.get_by_role("combobox", name=label, exact=True).click()
    with _rerun(page):
        page.get_by_role("option", name=re.compile(re.escape(option))).first.click()


def _meter(page):
    return page.locator("[data-testid='stMetricValue']").first


def _enter(page, role: str, label: str, value: str) -> None:
    """Type ``value`` (a new one: a change reruns the script) into the input ``label`` and press Enter."""
    box = page.get_by_role(role, name=label, exact=True)
    assert box.input_value() != value, f"{label} is {value} already: no rerun would follow"
    box.fill(value)
    with _rerun(page):
        box.press("Enter")


def _launch(page, epochs: int, name: str) -> None:
    """On the Train page: set the epochs and the run's name, launch, wait until the page is attached to the run."""
    _enter(page, "spinbutton", "Epochs", str(epochs))
    _enter(page, "textbox", "Run name", name)
    with _rerun(page):
        page.get_by_role("button", name="Launch training").click()
        page.wait_for_url(re.compile("run="), timeout=60_000)


POINTS = "g => g && g.data ? g.data.reduce((n, t) => n + (t.x ? t.x.length : 0), 0) : 0"


def _points(chart) -> int:
    """Points plotted in a plotly chart (a Playwright locator of its stPlotlyChart element)."""
    return chart.locator(".js-plotly-plot").first.evaluate(POINTS)


def _wait_for_points(chart, enough=lambda n: n > 0, timeout: float = 120) -> int:
    """Wait until ``chart`` (a locator of one stPlotlyChart; a fragment may redraw it) plots a number of points
    that is ``enough``; returns that number."""
    deadline = time.monotonic() + timeout
    while not (chart.locator(".js-plotly-plot").count() == 1 and enough(n := _points(chart))):
        assert time.monotonic() < deadline, f"the chart did not get its points within {timeout} s"
        chart.page.wait_for_timeout(250)
    return n


def test_first_experiment_in_a_real_browser(server):
    from playwright.sync_api import expect, sync_playwright

    url, tmp = server
    with sync_playwright() as p:
        browser, page, errors = _open(p, url)
        assert page.get_by_text("Your first experiment").is_visible()
        assert page.evaluate("window.__tl.sidebarNav") == []  # the files of pages/ were never listed
        _shot(page, "home")

        # Backbone: pick one, toggle a block, the meter changes
        with _rerun(page):
            page.get_by_text("Open Backbone").click()
        _select(page, "Backbone", "EfficientNet-Lite0")
        with _rerun(page):
            page.get_by_role("button", name="Two-phase").click()
        before = _meter(page).inner_text()
        # click a bar of the hierarchy picture: it selects that block
        block = page.get_by_role("combobox", name="Block", exact=True)
        picked = block.input_value()
        chart = page.locator("[data-testid='stPlotlyChart']").first
        chart.scroll_into_view_if_needed()
        _still(page, chart)
        page.wait_for_function(CHARTS_DRAWN, timeout=30_000)
        bar = chart.locator(".point path").nth(3).bounding_box()
        plot = chart.locator("rect.nsewdrag").first.bounding_box()
        page.mouse.click(bar["x"] + bar["width"] / 2, plot["y"] + plot["height"] - 8)  # bars run off the log axis
        expect(block).not_to_have_value(picked, timeout=60_000)  # the click's rerun selected another block
        _settle(page)
        with _rerun(page):
            page.get_by_role("button", name=re.compile(r"(Unf|F)reeze this block")).click()
        expect(_meter(page)).not_to_have_text(before)
        with _rerun(page):
            page.get_by_role("button", name=re.compile(r"(Unf|F)reeze this block")).click()  # back to the preset
        expect(_meter(page)).to_have_text(before)
        assert page.locator("[data-testid='stPlotlyChart']").count() >= 2
        _shot(page, "backbone")

        # Data: a small built-in set
        _nav(page, "Data")
        _select(page, "Dataset", "Faces")
        expect(page.get_by_text("Samples per class")).to_be_visible()
        _shot(page, "data")

        # Train: two epochs (two-phase: 1 epoch head only, then 1 epoch unfrozen), launch, the live curve appears
        _nav(page, "Train")
        _launch(page, 2, "browser run")
        run_id = page.url.split("run=")[1].split("&")[0]
        _wait_for_points(page.locator("[data-testid='stPlotlyChart']").first, timeout=240)  # the live curves
        page.get_by_text("Finished").wait_for(timeout=240_000)
        _settle(page)

        # Reload: a new session re-attaches to the run from the URL
        page.wait_for_url(re.compile(f"run={run_id}"), timeout=10_000)
        page.reload()
        _settle(page)
        assert run_id in page.url
        expect(page.get_by_text("Finished")).to_be_visible()
        assert page.get_by_role("heading", name=re.compile("browser run")).is_visible()
        assert _points(page.locator("[data-testid='stPlotlyChart']").first) > 0
        _shot(page, "train")  # after the reload the set-up form is folded away: the run fills the screen

        _nav(page, "Compare")
        expect(page.get_by_text("What did pretraining buy?")).to_be_visible()
        _shot(page, "compare")
        _nav(page, "Inspect")
        page.get_by_text("Misclassified examples").wait_for(timeout=60_000)
        _settle(page)
        assert page.get_by_role("button", name=re.compile("model.safetensors")).is_visible()
        _shot(page, "inspect")
        # what changed and what transfers: the CKA bars, the feature space and Grad-CAM, one screenshot each
        for heading, shot in (("What changed?", "inspect_what_changed"),
                              ("What transfers: the feature space", "inspect_feature_space"),
                              ("Where does it look? (Grad-CAM)", "inspect_grad_cam")):
            section = page.get_by_role("heading", name=heading)
            section.wait_for(timeout=120_000)
            _shot_at(page, section, shot)
        expect(page.get_by_text("1 = the same representation")).to_be_visible()
        expect(page.get_by_text("Nearest-class-mean accuracy")).to_be_visible()
        expect(page.get_by_text("Where the two look differs")).to_be_visible()
        assert page.locator("[data-testid='stPlotlyChart']").count() >= 9  # + CKA, drift, projection, Grad-CAM

        # Labs: a shared link opens the BatchNorm lab with a tiny setup; run it and see its chart
        page.goto(f"{url}/labs?lab=bn&per_class=5&image_size=32&epochs=1&seeds=1")
        _settle(page)
        expect(page.get_by_role("tab", name="BatchNorm pitfall", selected=True)).to_be_visible()
        assert page.get_by_role("spinbutton", name="Epochs", exact=True).first.input_value() == "1"
        page.get_by_role("tabpanel").get_by_role("button", name="Run this lab").click()
        panel = page.get_by_role("tabpanel")
        panel.locator("[data-testid='stAlert']", has_text="What we measured").wait_for(timeout=240_000)
        _wait_for_points(panel.locator("[data-testid='stPlotlyChart']"))  # the lab's chart, once
        _settle(page)
        expect(panel.get_by_text("BN frozen reached")).to_be_visible()
        _shot(page, "labs")
        # the text lab: its tab opens with its question and its Run button
        text_lab = page.get_by_role("tab", name=re.compile(r"^Text"))
        expect(text_lab).to_have_count(1)
        text_lab.click()
        expect(page.get_by_role("tab", name=re.compile(r"^Text"), selected=True)).to_be_visible()
        expect(page).to_have_url(re.compile(r"[?&]lab=text_race(&|$)"))  # the address follows the tab on screen
        panel = page.get_by_role("tabpanel")
        expect(panel.get_by_role("button", name="Run this lab")).to_be_visible()
        _shot(page, "labs_text")

        assert not page.locator("[data-testid='stException']").count(), "an exception box is on the page"
        assert not errors, errors
        browser.close()


def test_a_deep_link_as_a_fresh_servers_first_request_opens_in_the_app_layout(server):
    """A fresh server whose first request is /train?run=X: Streamlit would run pages/train.py alone in its
    pages-folder mode. The files of pages/ are never listed, not even for a moment, and the Train page
    opens attached to the run, in the app's wide layout with its top navigation."""
    from playwright.sync_api import sync_playwright

    from tl_core.runs.store import RunStore

    url, tmp = server
    store = RunStore(tmp / "runs")
    run_id = store.create({"backbone": "mobilenetv2", "data": "digits8", "device": "cpu", "name": "deep link run"})
    store.finish(run_id, "stopped", "stopped by request")
    with sync_playwright() as p:
        browser, page, errors = _open(p, f"{url}/train?run={run_id}")
        page.get_by_role("heading", name=re.compile("deep link run")).wait_for(timeout=60_000)
        _settle(page)
        seen = page.evaluate("window.__tl")
        assert seen["sidebarNav"] == [], seen["sidebarNav"][:5]  # no listing of pages/ at any point
        assert seen["trainOutsideLayout"] == 0, seen["layouts"]  # the page was never drawn outside app.py
        assert page.locator("[data-testid='stAppViewContainer']").get_attribute("data-layout") == "wide"
        nav = page.locator("[data-testid='stTopNavLink']")
        assert [t.split()[-1] for t in nav.all_inner_texts()] == [
            "Home", "Backbone", "Data", "Train", "Compare", "Inspect", "Labs"]
        assert page.get_by_role("heading", name="3 · Train").is_visible()
        assert page.get_by_text("Stopped: stopped by request").is_visible()
        assert f"run={run_id}" in page.url and "/train" in page.url
        assert not page.locator("[data-testid='stSidebar']").count()
        assert not page.locator("[data-testid='stException']").count(), "an exception box is on the page"
        _train_a_text_run(page)
        assert not page.locator("[data-testid='stException']").count(), "an exception box is on the page"
        assert not errors, errors
        browser.close()


def _train_a_text_run(page) -> None:
    """A text run through the real UI: Texts on the Data page (MiniLM, fine-food reviews), the fewest reviews
    and tokens, then a two-epoch feature-extraction run launched from the Train page: its live curve and its end."""
    from playwright.sync_api import expect

    _nav(page, "Data")
    with _rerun(page):
        page.get_by_role("radio", name=re.compile("Texts")).click()
    for label in ("Training texts per class", "Tokens per text (max_tokens)"):
        with _rerun(page):  # the smallest: 5 reviews, 16 tokens
            page.locator(f"input[type='range'][aria-label='{label}']").press("Home")
    assert page.get_by_text("Fine-food reviews", exact=False).first.is_visible()
    assert page.get_by_text("10 training and 1,000 validation texts.").is_visible()
    assert page.locator(".tl-tok.special", has_text="[CLS]").count() == 1  # the example, cut by MiniLM's tokenizer
    _shot(page, "text_data")
    _nav(page, "Train")
    form = page.get_by_text("New run: your choices and the hyper-parameters")
    details = page.locator("details", has=form)
    if details.get_attribute("open") is None:  # folded while the deep-link run is attached
        form.click()  # an expander opens in the browser: no rerun
        expect(details).to_have_attribute("open", re.compile(".*"))
    expect(page.get_by_text("16 tokens").first).to_be_visible()
    expect(page.get_by_text("MiniLM").first).to_be_visible()
    _launch(page, 2, "text run")
    _wait_for_points(page.locator("[data-testid='stPlotlyChart']").first, timeout=180)
    page.get_by_text("Finished").wait_for(timeout=180_000)
    _settle(page)
    expect(page.get_by_role("heading", name=re.compile("text run"))).to_be_visible()
    expect(page.get_by_text("Attention of one validation sentence")).to_be_visible()
    form.click()  # fold the set-up form away: the run fills the screen
    expect(details).not_to_have_attribute("open", re.compile(".*"))
    _shot(page, "text_train")


@pytest.fixture
def classroom_password(monkeypatch):
    """Classroom mode for the server started by the ``server`` fixture (request this one first)."""
    monkeypatch.setenv("TL_TEACHER_PASSWORD", "open sesame")
    return "open sesame"


def test_two_students_see_their_own_runs_and_the_class_board_shows_both(classroom_password, server):
    """Classroom mode: two students in two browser contexts each give a name and launch one tiny run;
    each sees only their own run (also after a reload: the name is in the URL); the teacher, after the
    password, sees both on the class board with the pooled result."""
    from playwright.sync_api import expect, sync_playwright

    url, tmp = server
    with sync_playwright() as p:
        browser, errors, pages = _browser(p), [], {}
        for student in ("Alice", "Bob"):
            page = _page(browser, errors)
            page.goto(f"{url}/data")
            _settle(page)
            page.get_by_role("textbox", name="Your name", exact=True).fill(student)
            with _rerun(page):
                page.get_by_role("button", name="Join the class").click()
            _select(page, "Dataset", "Faces")
            _nav(page, "Train")
            _launch(page, 1, f"{student} run")
            pages[student] = page
        for student, page in pages.items():  # a reload keeps the name (URL) and lists only their own run
            page.reload()
            _settle(page)
            assert f"student={student}" in page.url
            expect(page.get_by_text("Your runs (1)")).to_be_visible(timeout=60_000)
            assert f"{student} run" in page.get_by_role("combobox", name="Run", exact=True).input_value()
            other = "Bob" if student == "Alice" else "Alice"
            assert not page.get_by_text(f"{other} run").count()

        teacher = _page(browser, errors)
        teacher.goto(f"{url}/board")
        _settle(teacher)
        teacher.get_by_label("Teacher password").fill(classroom_password)
        with _rerun(teacher):
            teacher.get_by_role("button", name="Unlock").click()
        expect(teacher.get_by_role("heading", name="Class board")).to_be_visible(timeout=60_000)
        expect(teacher.get_by_text("Students: Alice, Bob")).to_be_visible(timeout=60_000)
        # the board refreshes itself while runs are active: wait for both results, pooled in one group
        teacher.get_by_text("2 runs by 2 students; 2 of 2 finished with an accuracy.").wait_for(timeout=300_000)
        chart = teacher.locator("[data-testid='stPlotlyChart']")
        _wait_for_points(chart, lambda n: n == 3)  # one pooled bar and two students' dots, in the one chart
        _settle(teacher)
        assert chart.count() == 1 and _points(chart) == 3
        for page in (*pages.values(), teacher):
            assert not page.locator("[data-testid='stException']").count(), "an exception box is on the page"
        assert not errors, errors
        browser.close()


def test_the_layer_probe_lab_runs_from_a_shared_link(server):
    """Issue 22: one of the labs on a shifted target, run from the Labs page: a shared link opens "Which layer to
    probe" with a tiny setup (MobileNetV2 at 32 px, two depths, a near and a far target, one seed), and its
    background lab process trains the four probes; the page then shows its chart and the verdict on its claim."""
    from playwright.sync_api import expect, sync_playwright

    url, tmp = server
    with sync_playwright() as p:
        browser, page, errors = _open(p, f"{url}/labs?lab=layer_probe&domains=faces,digits8&depths=1,2&per_class=5"
                                         "&image_size=32&epochs=1&seeds=1")
        expect(page.get_by_role("tab", name="Which layer to probe", selected=True)).to_be_visible()
        panel = page.get_by_role("tabpanel")
        expect(panel.get_by_role("textbox", name="Depths n to sweep (block groups)")).to_have_value("1,2")
        panel.get_by_role("button", name="Run this lab").click()
        panel.locator("[data-testid='stAlert']", has_text="What we measured").wait_for(timeout=240_000)
        assert _wait_for_points(panel.locator("[data-testid='stPlotlyChart']").first) >= 4  # 2 targets × 2 depths
        _settle(page)
        expect(panel.get_by_text("for the far target (digits8) the best probe sits earlier")).to_be_visible()
        _shot(page, "labs_layer_probe")
        assert not page.locator("[data-testid='stException']").count(), "an exception box is on the page"
        assert not errors, errors
        browser.close()
