"""Classroom mode: students' names, who sees and stops which run, the teacher's board (AppTest), and
the board's pooled numbers and figure (pure); signed join links, the teacher's cookie and one-time tickets
(pure), and the school sign-in's pages (AppTest with ``at.user``; tests/test_browser_signin.py signs in for real)."""
import io
import math
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tl_core import classroom
from tl_core.viz import figures as visuals
from tl_core.runs.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120
TINY = dict(data="faces", per_class=10, epochs=1, image_size=64, batch_size=16)
PASSWORD = "open sesame"


@pytest.fixture(autouse=True)
def _app_env(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_DATA_ROOT", str(tmp_path / "data"))


@pytest.fixture
def classroom_on(monkeypatch):
    monkeypatch.setenv(classroom.PASSWORD_ENV, PASSWORD)


@pytest.fixture(autouse=True)
def _no_sign_in_left_over():
    """The sign-in flag is process-wide (like Streamlit's secrets): a test that turned it on turns it off."""
    yield
    classroom.use_sign_in(False)


def _finished(store: RunStore, owner, acc: float, **cfg) -> str:
    rid = store.create({**TINY, **cfg}, owner=owner)
    store.append_metric(rid, "epoch", {"epoch": 1, "phase": 1, "val_acc": acc, "val_loss": 1 - acc,
                                       "train_acc": acc, "train_loss": 1 - acc, "drift": {"stem": 0.0}})
    store.finish(rid, "completed", None, {"final_val_acc": acc, "best_val_acc": acc, "wall_s": 2.0})
    return rid


def _class_runs() -> dict:
    """Alice and Bob each have a finished run and a queued one (no worker: it stays queued)."""
    store = RunStore()
    return {"store": store,
            "alice_done": _finished(store, "Alice", 0.8, name="alice done"),
            "bob_done": _finished(store, "Bob", 0.6, name="bob done", strategy="full"),
            "alice_queued": store.create({**TINY, "name": "alice waits"}, owner="Alice"),
            "bob_queued": store.create({**TINY, "name": "bob waits"}, owner="Bob")}


def _app(**query) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def _join(at: AppTest, name: str) -> AppTest:
    at.text_input(key="join_name").input(name)
    at.button(key="join").click().run()
    assert not at.exception, at.exception
    return at


def _page(at: AppTest, page: str, **query) -> AppTest:
    at.switch_page(f"pages/{page}.py")
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def _query(at: AppTest, key: str):
    value = at.query_params.get(key)
    return value[0] if isinstance(value, list) else value


# ------------------------------------------------------------------ who is who (pure)


def test_classroom_mode_password_and_names(monkeypatch):
    monkeypatch.delenv(classroom.PASSWORD_ENV, raising=False)
    assert not classroom.classroom_mode() and not classroom.check_teacher("")
    monkeypatch.setenv(classroom.PASSWORD_ENV, "")
    assert not classroom.classroom_mode()
    monkeypatch.setenv(classroom.PASSWORD_ENV, PASSWORD)
    assert classroom.classroom_mode()
    assert classroom.check_teacher(PASSWORD)
    assert not classroom.check_teacher("open sesam") and not classroom.check_teacher(None)
    assert classroom.clean_student_name("  Ada   Lovelace \n") == "Ada Lovelace"
    assert classroom.clean_student_name("[x](http://a.b)") == "[x](http://a.b)"  # kept; shown as plain text
    for bad, words in (("   ", "empty"), ("x" * 41, "at most 40"), ("a\x1b[31mb", "control"), ("Teacher", "kept")):
        with pytest.raises(ValueError, match=words) as err:
            classroom.clean_student_name(bad)
        assert "\n" not in str(err.value) and "What to do" in str(err.value)
    assert classroom.student_link("http://h:8501/", "Ada L") == "http://h:8501/?student=Ada+L"
    assert not classroom.may_stop("Bob", "Alice", teacher=False)
    assert classroom.may_stop("Bob", "Alice", teacher=True) and classroom.may_stop("Alice", "Alice", False)
    monkeypatch.delenv(classroom.PASSWORD_ENV)
    assert classroom.may_stop("Bob", None, teacher=False)  # single-user: anyone may
    assert classroom.stop_rights(None, False) == {"by": None, "teacher": True}


# ------------------------------------------------------------------ the board's numbers and figure


def _board_runs(store: RunStore) -> list:
    for owner, acc, cfg in (("Ada", 0.8, {}), ("Ben", 0.9, {}), ("Cy", 0.7, {}),
                            ("Di", 0.6, {"strategy": "full"}),
                            ("Ed", 0.5, {"strategy": "partial", "freeze_blocks": 2, "seed": 1}),
                            ("Flo", 0.7, {"strategy": "partial", "freeze_blocks": 2, "seed": 2}),
                            ("<b>Gus</b>", 0.4, {"strategy": "partial", "freeze_blocks": 4, "seed": 1})):
        _finished(store, owner, acc, name=f"{owner} run", **cfg)
    store.create({**TINY, "name": "still waiting"}, owner="Hal")  # listed, not pooled
    return store.list_runs()


def test_board_table_pools_mean_std_and_n_per_group():
    runs = _board_runs(RunStore())
    b = classroom.board_table(runs, "strategy")
    assert len(b.runs) == 8 and set(b.runs["student"]) >= {"Ada", "Hal", "<b>Gus</b>"}
    assert list(b.runs["group"])[:4] == ["Feature extraction"] * 4  # strategies in their catalogue order
    pooled = b.pooled.set_index("group")
    fe = pooled.loc["Feature extraction"]  # Ada, Ben, Cy: the queued run of Hal is not pooled
    assert fe["n"] == 3 and fe["mean"] == pytest.approx(0.8) and fe["std"] == pytest.approx(0.1)
    assert (fe["min"], fe["max"]) == pytest.approx((0.7, 0.9))
    assert pooled.loc["Full fine-tune", "n"] == 1 and math.isnan(pooled.loc["Full fine-tune", "std"])
    assert list(pooled.index) == ["Feature extraction", "Partial fine-tune", "Full fine-tune"]
    partial = pooled.loc["Partial fine-tune"]
    assert partial["n"] == 3 and partial["mean"] == pytest.approx(np.mean([0.5, 0.7, 0.4]))
    assert partial["std"] == pytest.approx(np.std([0.5, 0.7, 0.4], ddof=1))

    depth = classroom.board_table(runs, "depth").pooled.set_index("group")
    assert depth.loc["2", "n"] == 2 and depth.loc["2", "mean"] == pytest.approx(0.6)
    assert depth.loc["0", "n"] == 1 and depth.loc["4", "mean"] == pytest.approx(0.4)
    assert depth.loc["unknown", "n"] == 3  # feature extraction without a plan: the config cannot tell
    assert list(depth.index) == ["0", "2", "4", "unknown"]
    seed = classroom.board_table(runs, "seed").pooled.set_index("group")
    assert seed.loc["1", "n"] == 2 and seed.loc["0", "n"] == 4 and seed.loc["2", "mean"] == pytest.approx(0.7)
    assert classroom.frozen_depth({"plan": {"a": {"frozen": True}, "b": {"frozen": True}, "c": {"frozen": False}},
                                   "freeze_blocks": 1}) == 2  # the per-block plan wins
    assert classroom.board_summary(classroom.board_table(runs, "seed")) == \
        "8 runs by 8 students; 7 of 8 finished with an accuracy."
    empty = classroom.board_table([], "strategy")
    assert empty.runs.empty and empty.pooled.empty
    with pytest.raises(ValueError, match="What to do"):
        classroom.board_table(runs, "colour")


def test_board_figure_bars_spread_and_each_run():
    b = classroom.board_table(_board_runs(RunStore()), "strategy")
    fig = visuals.board_figure(b.runs, b.pooled, "strategy")
    bars, dots = fig.data
    assert list(bars.y) == pytest.approx(list(b.pooled["mean"]))
    assert list(bars.error_y.array) == pytest.approx([0.1, np.std([0.5, 0.7, 0.4], ddof=1), 0.0])
    assert len(dots.x) == 7 and sorted(dots.y) == pytest.approx(sorted([0.8, 0.9, 0.7, 0.6, 0.5, 0.7, 0.4]))
    assert all(-0.3 <= x - round(x) <= 0.3 for x in dots.x)  # each dot beside its group's bar
    assert any("&lt;b&gt;Gus&lt;/b&gt;" in t for t in dots.customdata)  # a name is text, never markup
    assert not any("<b>" in t for t in [*dots.customdata, *bars.customdata])
    assert list(fig.layout.xaxis.ticktext) == list(b.pooled["group"])
    empty = classroom.board_table([], "seed")
    assert len(visuals.board_figure(empty.runs, empty.pooled).data[1].x) == 0


# ------------------------------------------------------------------ the pages in classroom mode


def test_student_names_once_and_sees_only_own_runs(classroom_on):
    runs = _class_runs()
    at = _app()
    assert at.title[0].value == "Transfer Learning Lab · class"  # the name comes first
    assert not at.dataframe  # no home page content yet
    _join(at, "   ")
    assert any("empty" in e.value for e in at.error)
    _join(at, "  Alice ")
    assert at.session_state["student"] == "Alice" and _query(at, "student") == "Alice"
    assert at.title[0].value == "Transfer Learning Lab"
    assert any(t.value == "You are: Alice" for t in at.sidebar.text)

    _page(at, "train")
    assert set(at.selectbox(key="run_pick").options) == {
        f"alice waits · queued · {runs['alice_queued']}", f"alice done · completed · {runs['alice_done']}"}
    assert any(e.label == "Your runs (2)" for e in at.expander)
    assert _query(at, "student") == "Alice"  # back in the URL after the page change

    _page(at, "compare")
    assert at.dataframe[0].value["run"].tolist() == ["alice done"]
    _page(at, "board")  # the board is the teacher's
    assert any("for the teacher" in i.value for i in at.info) and not at.dataframe


def test_student_cannot_stop_anothers_run(classroom_on):
    runs = _class_runs()
    store = runs["store"]
    at = _page(_join(_app(), "Alice"), "train", run=runs["bob_queued"])  # Bob's run by its link
    assert any("another student's" in w.value for w in at.warning)
    assert not [b for b in at.button if b.key == f"stop_{runs['bob_queued']}"]
    assert set(at.selectbox(key="run_pick").options) == {  # every option is one of hers, none of Bob's
        f"alice waits · queued · {runs['alice_queued']}", f"alice done · completed · {runs['alice_done']}"}
    assert store.get(runs["bob_queued"]).status == "queued"
    with pytest.raises(PermissionError):
        store.request_stop(runs["bob_queued"], by="Alice")
    assert store.get(runs["bob_queued"]).status == "queued"

    at.query_params["run"] = runs["alice_queued"]  # her own: she may stop it
    at.run()
    at.button(key=f"stop_{runs['alice_queued']}").click().run()
    assert not at.exception and store.get(runs["alice_queued"]).status == "stopped"


def test_name_from_the_teachers_link_and_a_bad_one(classroom_on):
    _class_runs()
    at = _app(student="Bob")
    assert at.session_state["student"] == "Bob" and at.title[0].value == "Transfer Learning Lab"
    bad = _app(student="x" * 60)
    assert any("link cannot be used" in e.value and "at most 40" in e.value for e in bad.error)
    assert bad.title[0].value == "Transfer Learning Lab · class" and "student" not in bad.query_params


def test_teacher_password_opens_the_board_with_every_students_runs(classroom_on):
    runs = _class_runs()
    at = _app()
    at.text_input(key="teacher_pw_gate").input("guess")
    at.button(key="unlock_gate").click().run()
    assert any("Wrong password" in e.value and "What to do" in e.value for e in at.error)
    assert not at.session_state["teacher"] and at.title[0].value == "Transfer Learning Lab · class"

    at.text_input(key="teacher_pw_gate").input(PASSWORD)
    at.button(key="unlock_gate").click().run()
    assert at.session_state["teacher"] and at.title[0].value == "Transfer Learning Lab"
    _page(at, "board")
    assert at.title[0].value == "Class board"
    table = next(d.value for d in at.dataframe if "student" in d.value.columns)
    assert set(table["student"]) == {"Alice", "Bob"} and len(table) == 4
    assert any(c.value.replace("\\", "") == "Students: Alice, Bob" for c in at.caption)  # escaped markdown
    pooled = next(d.value for d in at.dataframe if "mean" in d.value.columns)
    assert pooled["n"].tolist() == [1, 1]
    at.segmented_control(key="board_group").set_value("seed").run()
    assert next(d.value for d in at.dataframe if "mean" in d.value.columns)["n"].tolist() == [2]

    at.selectbox(key="board_stop_pick").select(runs["bob_queued"]).run()  # the teacher stops anyone's run
    at.button(key="board_stop").click().run()
    assert not at.exception and runs["store"].get(runs["bob_queued"]).status == "stopped"


def test_uploads_are_listed_for_their_owner_only(classroom_on):
    at = _page(_join(_app(), "Alice"), "data")
    at.selectbox(key="data_pick").select("__upload__").run()
    at.file_uploader(key="data_upload").upload("alices shapes.zip", _zip_bytes(), "application/zip").run()
    assert not at.exception, at.exception
    assert at.session_state["inputs"]["data"].endswith(".zip")
    assert any(o == "My upload · alices shapes.zip" for o in at.selectbox(key="data_pick").options)
    bob = _page(_join(_app(), "Bob"), "data")
    assert not any(o.startswith("My upload") for o in bob.selectbox(key="data_pick").options)


def test_no_password_keeps_the_single_user_pages(monkeypatch):
    monkeypatch.delenv(classroom.PASSWORD_ENV, raising=False)
    runs = _class_runs()
    at = _app()
    assert at.title[0].value == "Transfer Learning Lab" and "student" not in at.query_params
    assert not at.sidebar.children  # nothing in the sidebar
    _page(at, "train")
    assert len(at.selectbox(key="run_pick").options) == 4 and any(e.label == "All runs (4)" for e in at.expander)
    at.query_params["run"] = runs["bob_queued"]
    at.run()
    at.button(key=f"stop_{runs['bob_queued']}").click().run()  # anyone may stop any run
    assert runs["store"].get(runs["bob_queued"]).status == "stopped"
    _page(at, "compare")
    assert sorted(at.dataframe[0].value["run"]) == ["alice done", "bob done"]
    _page(at, "board")
    assert at.title[0].value == "All runs"
    table = next(d.value for d in at.dataframe if "student" in d.value.columns)
    assert len(table) == 4


def test_user_text_is_shown_as_plain_text_not_markdown(monkeypatch):
    monkeypatch.delenv(classroom.PASSWORD_ENV, raising=False)
    store = RunStore()
    rid = store.create({**TINY, "name": "[free marks](http://evil.example) **now**"})
    at = _page(_app(), "train", run=rid)
    heading = next(m.value for m in at.markdown if m.value.startswith("###"))
    assert "](http" not in heading and "**now**" not in heading
    assert r"\[free marks\]\(http\:\/\/evil\.example\) \*\*now\*\*" in heading
    at.query_params["run"] = "[x](http://evil.example)"  # a ?run= value that is no run
    at.run()
    assert any(r"\[x\]\(http\:\/\/evil\.example\)" in w.value and "](http" not in w.value for w in at.warning)


def _zip_bytes(n: int = 6) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for ci, c in enumerate(("cats", "dogs")):
            for i in range(n):
                b = io.BytesIO()
                Image.fromarray(np.full((20, 20, 3), 40 * ci + i, np.uint8)).save(b, format="PNG")
                zf.writestr(f"set/{c}/{i}.png", b.getvalue())
    return buf.getvalue()


# ------------------------------------------------------------------ signed join links, the teacher's cookie (pure)


def test_class_secret_is_made_once_owner_only_and_a_damaged_one_is_named(tmp_path):
    secret = classroom.class_secret(tmp_path / "runs")
    path = tmp_path / "runs" / classroom.SECRET_FILE
    assert len(secret) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert classroom.class_secret(tmp_path / "runs") == secret  # kept: links handed out stay good
    path.chmod(0o644)
    assert classroom.class_secret(tmp_path / "runs") == secret and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [classroom.SECRET_FILE]  # no temporary file left
    path.write_text("not hex")
    with pytest.raises(ValueError, match="damaged. What to do: delete it"):
        classroom.class_secret(tmp_path / "runs")
    assert classroom.class_secret(tmp_path / "other") != secret  # every server makes its own


def test_signed_join_links_admit_their_name_and_refuse_a_changed_one(monkeypatch, tmp_path):
    monkeypatch.delenv(classroom.SIGNED_LINKS_ENV, raising=False)
    secret, other = classroom.class_secret(tmp_path / "a"), classroom.class_secret(tmp_path / "b")
    link = classroom.student_link("http://h:8501/", " Ada  L ", secret=secret)
    query = dict(pair.split("=") for pair in link.split("?")[1].split("&"))
    assert query["student"] == "Ada+L" and classroom.join_name("Ada L", query["sig"], secret) == "Ada L"
    assert classroom.join_name("  Ada   L", query["sig"], secret) == "Ada L"  # the cleaned name is signed
    for name, sig, key in (("Ben", query["sig"], secret), ("Ada L", query["sig"][:-1] + "A", secret),
                           ("Ada L", query["sig"], other), ("Ada L", "ü", secret)):
        with pytest.raises(ValueError, match="was changed.*What to do: open the link exactly"):
            classroom.join_name(name, sig, key)
    assert classroom.join_name("Ben", None, secret) == "Ben"  # a typed name is a label by default
    monkeypatch.setenv(classroom.SIGNED_LINKS_ENV, "1")
    with pytest.raises(ValueError, match="personal links only, and the name 'Ben' came without one"):
        classroom.join_name("Ben", "", secret)
    assert classroom.join_name("Ada L", query["sig"], secret) == "Ada L"
    with pytest.raises(ValueError, match="at most 40"):  # a bad name is named before its signature
        classroom.join_name("x" * 41, query["sig"], secret)

    links = classroom.join_links("http://h:8501", "Ada\n\n  ada \n<b>Ben</b>\n", secret)
    assert links["name"].tolist() == ["Ada", "<b>Ben</b>"]  # blank lines and repeats skipped
    assert links["link"][0] == classroom.student_link("http://h:8501", "Ada", secret=secret)
    page = classroom.join_links_page(links)
    assert "&lt;b&gt;Ben&lt;/b&gt;" in page and "<b>Ben</b>" not in page and page.count('class="slip"') == 2
    for names, words in (("Ada\nteacher", "Line 2: 'teacher' is kept"), ("  \n", "No names yet")):
        with pytest.raises(ValueError, match=words):
            classroom.join_links("http://h", names, secret)


def test_teacher_cookie_expires_and_is_bound_to_secret_and_password(monkeypatch, tmp_path):
    monkeypatch.setenv(classroom.PASSWORD_ENV, PASSWORD)
    secret = classroom.class_secret(tmp_path)
    cookie = classroom.teacher_cookie(secret, now=1000.0, hours=1)
    assert cookie.startswith("4600.") and PASSWORD not in cookie
    assert classroom.check_teacher_cookie(cookie, secret, now=4599.0)
    assert not classroom.check_teacher_cookie(cookie, secret, now=4600.0)  # expired
    expires, mac = cookie.split(".")
    for forged in ("9999999999." + mac, cookie[:-1] + ("A" if cookie[-1] != "A" else "B"), "", None, "x.y", mac):
        assert not classroom.check_teacher_cookie(forged, secret, now=1000.0)
    assert not classroom.check_teacher_cookie(cookie, classroom.class_secret(tmp_path / "b"), now=1000.0)
    monkeypatch.setenv(classroom.PASSWORD_ENV, "a new password")
    assert not classroom.check_teacher_cookie(cookie, secret, now=1000.0)  # a new password voids old cookies
    monkeypatch.delenv(classroom.PASSWORD_ENV)
    assert not classroom.check_teacher_cookie(classroom.teacher_cookie(secret), secret)  # no password, no teacher

    tickets = classroom.Tickets(ttl=60)
    t1, t2 = tickets.issue(now=0.0), tickets.issue(now=0.0)
    assert t1 != t2 and len(t1) >= 40
    assert tickets.redeem(t1, now=59.0) and not tickets.redeem(t1, now=59.0)  # good once
    assert not tickets.redeem(t2, now=60.0) and not tickets.redeem(t2, now=1.0)  # too old, then gone
    assert not tickets.redeem("made up") and not tickets.redeem(None)


def test_signed_in_identity_and_the_teachers_list(monkeypatch):
    assert classroom.identity({"sub": "ada", "email": "ada@school.example"}) == "ada@school.example"
    assert classroom.identity({"sub": "ada", "email": "ada@x.example", "email_verified": False}) == "ada"
    assert classroom.identity({"sub": "  ben "}) == "ben" and classroom.identity({"name": "Ada"}) is None
    monkeypatch.setenv(classroom.TEACHERS_ENV, " Miss@School.example, t42 ,,")
    assert classroom.listed_teacher("miss@school.example") and classroom.listed_teacher("t42")
    assert not classroom.listed_teacher("ada@school.example") and not classroom.listed_teacher(None)
    monkeypatch.delenv(classroom.PASSWORD_ENV, raising=False)
    assert not classroom.classroom_mode()
    classroom.use_sign_in(True)  # a sign-in alone is classroom mode: own runs, stop only one's own
    assert classroom.classroom_mode() and not classroom.may_stop("ben", "ada", teacher=False)
    assert classroom.stop_rights("ada", False) == {"by": "ada", "teacher": False}


# ------------------------------------------------------------------ signed links, the teacher's cookie and switch (pages)


def test_with_signed_links_only_a_signed_link_admits_a_name(classroom_on, monkeypatch):
    monkeypatch.setenv(classroom.SIGNED_LINKS_ENV, "1")
    _class_runs()
    sig = classroom.sign_name("Alice", classroom.class_secret(os.environ["TL_RUNS_DIR"]))
    for query, words in (({"student": "Alice"}, "personal links only"),
                         ({"student": "Bob", "sig": sig}, "was changed"),  # Alice's signature, Bob's name
                         ({}, None)):
        at = _app(**query)
        assert at.title[0].value == "Transfer Learning Lab · class" and "student" not in at.query_params
        assert "join_name" not in [t.key for t in at.text_input]
        assert any("personal links" in m.value for m in at.markdown)  # says how to join instead of a name field
        assert not words or any(words in e.value and "What to do" in e.value for e in at.error)
    at = _app(student="Alice", sig=sig)
    assert at.session_state["student"] == "Alice" and at.title[0].value == "Transfer Learning Lab"
    _page(at, "compare")  # the signature stays in the address: a reload joins again
    assert (_query(at, "student"), _query(at, "sig")) == ("Alice", sig)
    assert at.dataframe[0].value["run"].tolist() == ["alice done"]


def test_teacher_unlock_posts_a_ticket_and_hands_out_links_as_downloads_only(classroom_on):
    from pages import _routes

    _class_runs()
    at = _app()
    at.text_input(key="teacher_pw_gate").input(PASSWORD)
    at.button(key="unlock_gate").click().run()
    assert at.session_state["teacher"]
    post = at.get("html")[0].proto.body  # the page posts a one-time ticket to the cookie route, not the password
    assert f'action="{_routes.UNLOCK}"' in post and PASSWORD not in post
    ticket = post.split('name="ticket" value="')[1].split('"')[0]
    assert _routes.TICKETS.redeem(ticket) and not _routes.TICKETS.redeem(ticket)
    at.run()
    assert not at.get("html")  # posted once

    at.text_area(key="join_link_names").input("Ada\nBen").run()
    assert [d.proto.label for d in at.get("download_button")][-2:] == ["Printable page (2 links)", "Table (CSV)"]
    shown = " ".join(str(e.value) for kind in ("markdown", "text", "caption", "code") for e in at.get(kind)
                     if hasattr(e, "value"))
    assert "sig=" not in shown and "student=" not in shown  # the links are never drawn on screen
    at.text_area(key="join_link_names").input("Ada\nTeacher").run()
    assert any("Line 2" in e.value for e in at.error)

    at.button(key="teacher_lock").click().run()
    assert not at.session_state["teacher"] and f'action="{_routes.LOCK}"' in at.get("html")[0].proto.body


def test_teacher_switch_lists_every_students_runs_on_compare_and_inspect(classroom_on):
    runs = _class_runs()
    for rid in (runs["alice_done"], runs["bob_done"]):  # a model file, so Inspect lists the run
        (runs["store"].run_dir(rid) / "model.safetensors").write_bytes(b"")
    alice = _page(_join(_app(), "Alice"), "inspect")
    assert alice.selectbox(key="inspect_pick").options == [f"alice done · completed · {runs['alice_done']}"]
    teacher = _app()
    teacher.text_input(key="teacher_pw_gate").input(PASSWORD)
    teacher.button(key="unlock_gate").click().run()
    _page(teacher, "compare")
    assert any("No runs to compare" in i.value for i in teacher.info)  # the teacher's own runs: none yet

    def every_run(page: str) -> AppTest:  # the switch is in the sidebar, which AppTest draws on Home only
        teacher.switch_page("app.py")
        teacher.run()
        teacher.toggle(key="teacher_all").set_value(True).run()
        return _page(teacher, page)

    assert sorted(every_run("compare").dataframe[0].value["run"]) == ["alice done", "bob done"]
    assert len(every_run("inspect").selectbox(key="inspect_pick").options) == 2
    teacher.switch_page("app.py")
    teacher.run()
    teacher.toggle(key="teacher_all").set_value(False).run()
    assert any("No finished run" in i.value for i in _page(teacher, "inspect").info)


# ------------------------------------------------------------------ the school sign-in (pages)

AUTH = {"auth": {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                 "client_id": "lab", "client_secret": "s", "server_metadata_url":
                 "http://localhost:9400/.well-known/openid-configuration"}}


def _signed_in(user: dict, page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.secrets, at.user = dict(AUTH), dict(user)
    at.run()
    assert not at.exception, at.exception
    return _page(at, page) if page else at


def test_sign_in_replaces_names_and_password_with_the_verified_identity(monkeypatch):
    monkeypatch.delenv(classroom.PASSWORD_ENV, raising=False)
    monkeypatch.setenv(classroom.TEACHERS_ENV, "miss@school.example")
    store = RunStore()
    _finished(store, "ada@school.example", 0.8, name="ada's run")
    _finished(store, "ben@school.example", 0.6, name="ben's run")
    out = _signed_in({"is_logged_in": False})
    assert "sign_in" in [b.key for b in out.button] and not out.text_input  # no name field, no password
    ada = _signed_in({"is_logged_in": True, "email": "ada@school.example", "sub": "ada"})
    assert any(t.value == "Signed in as: ada@school.example" for t in ada.sidebar.text)
    assert "sign_out" in [b.key for b in ada.button] and not ada.toggle  # no teacher's switch
    assert _page(ada, "compare").dataframe[0].value["run"].tolist() == ["ada's run"]
    _page(ada, "board")
    assert any("for the teachers" in i.value for i in ada.info) and not ada.text_input
    miss = _signed_in({"is_logged_in": True, "email": "miss@school.example", "sub": "m"}, "board")
    assert miss.title[0].value == "Class board"
    assert set(next(d.value for d in miss.dataframe if "student" in d.value.columns)["student"]) == {
        "ada@school.example", "ben@school.example"}

