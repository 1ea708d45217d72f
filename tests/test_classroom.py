"""Classroom mode: students' names, who sees and stops which run, the teacher's board (AppTest), and
the board's pooled numbers and figure (pure)."""
import io
import math
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
