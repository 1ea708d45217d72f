"""Sign-in in a real browser: `streamlit run app.py` (its st.App, with the cookie routes) driven by headless Chromium.

- **School sign-in**: a real OpenID Connect provider (``oidc-provider-mock``) and the app with an ``[auth]``
  section pointing at it (``--secrets.files``). Two students and a teacher sign in from three browser
  contexts on the provider's page; each student sees and stops only their own run; the teacher
  (``TL_TEACHERS``) sees the class board, also after a reload.
- **Password and signed join links** (``TL_CLASS_SIGNED_LINKS=1``): the teacher unlocks on /board, and the
  unlock survives a reload and a fresh tab at /board (an HttpOnly cookie; the password is never in an
  address); the teacher downloads the join links; a student's link admits her, the same link with
  another name (tampered) or a bare name (forged) is refused.

The runs are queued in the store directly (no worker takes them: they stay queued), so nothing trains.
Every wait is for a condition (``test_browser``'s helpers), never a fixed time.
"""
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from test_browser import CHROMIUM, ROOT, _browser, _free_port, _page, _rerun, _settle

from tl_core import classroom
from tl_core.runs.store import RunStore

pytestmark = pytest.mark.browser
USERS = {"ada": "ada@school.example", "ben": "ben@school.example", "miss": "miss@school.example"}
TINY = dict(data="faces", per_class=10, epochs=1, image_size=64, batch_size=16)
PASSWORD = "open sesame"


def _wait_until_up(url: str, proc, log: Path) -> None:
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.time() < deadline, f"{url} did not answer in 90 s: {log.read_text()[-2000:]}"
        time.sleep(0.3)


@contextlib.contextmanager
def _process(args: list, log: Path, env: dict, health: str):
    """A server process (its output in ``log``), up once ``health`` answers; ended on leaving."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(health, proc, log)
            yield proc
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            proc.kill()  # nothing to do when it has ended


@contextlib.contextmanager
def _app(tmp_path: Path, env: dict, *args: str, port: int | None = None):
    """`streamlit run app.py` on ``port`` (else a free one) with ``env`` added; yields its URL."""
    if not Path(CHROMIUM).exists():
        assert not os.environ.get("CI"), f"{CHROMIUM} is absent: CI must run the browser tests (make browser)"
        pytest.skip(f"{CHROMIUM} is absent: run `make browser` (apt-get install chromium) to enable browser tests")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, "TL_RUNS_DIR": str(tmp_path / "runs"), "TL_DATA_ROOT": str(tmp_path / "data"),
                "TL_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **env}
    with _process([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                   "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats",
                   "false", "--server.fileWatcherType", "none", *args],
                  tmp_path / "streamlit.log", full_env, f"{url}/_stcore/health"):
        yield url


def _queue(tmp_path: Path, owner: str) -> str:
    """A queued run of ``owner``: created in the store only, so no worker takes it and it stays queued."""
    return RunStore(tmp_path / "runs").create({**TINY, "name": f"{owner.split('@')[0]} run"}, owner=owner)


def _no_exception(*pages) -> None:
    for page in pages:
        assert not page.locator("[data-testid='stException']").count(), f"an exception box is on {page.url}"


def test_school_sign_in_each_student_sees_and_stops_own_runs_and_the_teacher_keeps_the_board(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    idp_port = _free_port()
    idp = f"http://127.0.0.1:{idp_port}"
    claims = [a for sub, email in USERS.items() for a in ("--user-claims", json.dumps({"sub": sub, "email": email}))]
    provider = [sys.executable, "-m", "oidc_provider_mock", "--port", str(idp_port), *claims]
    with _process(provider, tmp_path / "idp.log", dict(os.environ), f"{idp}/.well-known/openid-configuration"):
        port = _free_port()
        (tmp_path / "secrets.toml").write_text(
            f'[auth]\nredirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
            f'cookie_secret = "{secrets.token_hex(32)}"\nclient_id = "transfer-learning-lab"\n'
            f'client_secret = "{secrets.token_hex(16)}"\n'
            f'server_metadata_url = "{idp}/.well-known/openid-configuration"\n')
        with _app(tmp_path, {"TL_TEACHERS": USERS["miss"]}, "--secrets.files", str(tmp_path / "secrets.toml"),
                  port=port) as url, sync_playwright() as p:
            runs = {sub: _queue(tmp_path, USERS[sub]) for sub in ("ada", "ben")}
            browser, errors, pages = _browser(p), [], {}
            for sub in USERS:  # three contexts, three sign-ins on the provider's own page
                page = pages[sub] = _page(browser, errors)
                page.goto(url)
                _settle(page)
                assert not page.get_by_role("textbox", name="Your name").count()  # no name field
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(re.compile(re.escape(idp)))
                page.get_by_role("button", name=sub, exact=True).first.click()
                page.wait_for_url(re.compile(re.escape(url)))
                _settle(page)
                expect(page.get_by_text(f"Signed in as: {USERS[sub]}")).to_be_visible(timeout=60_000)

            for sub, other in (("ada", "ben"), ("ben", "ada")):
                page = pages[sub]
                page.goto(f"{url}/train?run={runs[other]}")  # the other's run by its address: not theirs to stop
                _settle(page)  # (a new session: the identity comes from the sign-in cookie)
                expect(page.get_by_text("is another student's")).to_be_visible(timeout=60_000)
                assert not page.get_by_text(f"{other} run").count()  # not shown, so no Stop for it
                page.goto(f"{url}/train?run={runs[sub]}")
                _settle(page)
                expect(page.get_by_text("Your runs (1)")).to_be_visible(timeout=60_000)
                assert f"{sub} run" in page.get_by_role("combobox", name="Run", exact=True).input_value()
                assert not page.get_by_text(f"{other} run").count()
                with _rerun(page):
                    page.get_by_role("button", name="Stop").click()
                assert RunStore(tmp_path / "runs").get(runs[sub]).status == "stopped"
                assert RunStore(tmp_path / "runs").get(runs[other]).status == ("queued" if sub == "ada" else "stopped")

            teacher = pages["miss"]
            teacher.goto(f"{url}/board")
            _settle(teacher)
            for _ in range(2):  # signed in, and again after a reload
                expect(teacher.get_by_role("heading", name="Class board")).to_be_visible(timeout=60_000)
                expect(teacher.get_by_text("Students: ada@school.example, ben@school.example")).to_be_visible()
                teacher.reload()
                _settle(teacher)

            ada = pages["ada"]
            ada.get_by_role("button", name="Sign out").click()
            ada.wait_for_url(lambda address: "/train" not in address)
            ada.goto(url)
            _settle(ada)
            expect(ada.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
            _no_exception(*pages.values())
            assert not errors, errors
            browser.close()


def test_teacher_unlock_survives_a_reload_and_a_tampered_join_link_is_refused(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with _app(tmp_path, {"TL_TEACHER_PASSWORD": PASSWORD, "TL_CLASS_SIGNED_LINKS": "1"}) as url, \
            sync_playwright() as p:
        browser, errors = _browser(p), []
        teacher = _page(browser, errors)
        teacher.goto(f"{url}/board")
        _settle(teacher)
        teacher.get_by_label("Teacher password").fill(PASSWORD)
        with teacher.expect_navigation(url=f"{url}/board", timeout=60_000):  # via the cookie route, and back
            teacher.get_by_role("button", name="Unlock").click()  # the page posts a one-time ticket, not the password
        _settle(teacher)
        expect(teacher.get_by_role("heading", name="Class board")).to_be_visible(timeout=60_000)
        expect(teacher.get_by_label("Teacher password")).to_have_count(0)
        cookie = next(c for c in teacher.context.cookies() if c["name"] == classroom.TEACHER_COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > time.time() + 3600
        assert PASSWORD not in cookie["value"]
        teacher.reload()
        _settle(teacher)
        expect(teacher.get_by_role("heading", name="Class board")).to_be_visible(timeout=60_000)
        tab = teacher.context.new_page()  # a direct /board address in a new tab: still unlocked
        tab.goto(f"{url}/board")
        _settle(tab)
        expect(tab.get_by_role("heading", name="Class board")).to_be_visible(timeout=60_000)
        assert not tab.get_by_label("Teacher password").count()
        tab.close()

        teacher.get_by_text("Join links for students").click()
        box = teacher.get_by_role("textbox", name="Names, one per line")
        box.fill("Ada")
        with _rerun(teacher):
            box.press("Control+Enter")
        with teacher.expect_download() as download:
            teacher.get_by_role("button", name=re.compile("Printable page")).click()
        links = re.findall(r'href="([^"]+)"', Path(download.value.path()).read_text())
        assert len(links) == 1 and not teacher.get_by_text("sig=").count()  # a download, not on screen
        link = links[0].replace("&amp;", "&")
        query = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
        assert query["student"] == "Ada" and query["sig"]
        for address in (link.replace("student=Ada", "student=Bob"), f"{url}/?student=Ada"):  # tampered, forged
            student = _page(browser, errors)
            student.goto(address)
            _settle(student)
            expect(student.get_by_text("The name in this link cannot be used")).to_be_visible(timeout=60_000)
            assert not student.get_by_role("textbox", name="Your name").count()
            student.context.close()
        ada = _page(browser, errors)
        ada.goto(link)
        _settle(ada)
        expect(ada.get_by_text("You are: Ada")).to_be_visible(timeout=60_000)

        with teacher.expect_navigation(url=f"{url}/board", timeout=60_000):
            teacher.get_by_role("button", name="Lock").click()
        _settle(teacher)
        expect(teacher.get_by_label("Teacher password").first).to_be_visible(timeout=60_000)
        assert classroom.TEACHER_COOKIE not in {c["name"] for c in teacher.context.cookies()}
        _no_exception(teacher, ada)
        assert not errors, errors
        browser.close()
