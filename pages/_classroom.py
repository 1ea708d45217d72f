"""Classroom mode in the pages: the student's name, the teacher's unlock, and whose runs a page lists.

Only when ``$TL_TEACHER_PASSWORD`` is set (``tl_core.classroom.classroom_mode``); otherwise every
function here is a no-op or answers as the single-user app always did (no name, every run, anyone
may stop). The name lives in ``st.session_state["student"]`` and in the URL (``?student=NAME``), so
a reload keeps it; the teacher flag lives in the session only (a password never goes in a URL).
"""
from __future__ import annotations

import streamlit as st

from tl_core import classroom

from pages import _display, _store


def on() -> bool:
    return classroom.classroom_mode()


def is_teacher() -> bool:
    return on() and bool(st.session_state.get("teacher"))


def owner() -> str | None:
    """Who launches and uploads in this session: None outside classroom mode; the student's name;
    ``classroom.TEACHER`` for a teacher who gave no name."""
    if not on():
        return None
    return st.session_state.get("student") or (classroom.TEACHER if is_teacher() else None)


def shows_all() -> bool:
    """Whether the pages list everyone's runs: outside classroom mode, or a teacher who asked to."""
    return not on() or (is_teacher() and bool(st.session_state.get("teacher_all")))


def visible_runs() -> list:
    """The runs this session's pages list (newest first): its own, or all (``shows_all``)."""
    store = _store.store()
    return store.list_runs() if shows_all() else store.list_runs(owner=owner())


def may_see(info) -> bool:
    return shows_all() or getattr(info, "owner", None) == owner()


def may_stop(info) -> bool:
    return classroom.may_stop(getattr(info, "owner", None), owner(), is_teacher())


def stop(run_id: str) -> None:
    """A Stop button's callback: the store refuses another student's run (the message is kept for the page)."""
    try:
        _store.store().request_stop(run_id, **classroom.stop_rights(owner(), is_teacher()))
        st.session_state.pop("stop_error", None)
    except (PermissionError, KeyError) as exc:
        st.session_state["stop_error"] = str(exc).strip("'\"")


def stop_error() -> None:
    if st.session_state.get("stop_error"):
        st.error(_display.plain(st.session_state.pop("stop_error")))


# ------------------------------------------------------------------ name and password
def _sync_name() -> None:
    """The URL's name wins (a teacher's link, a reload); the session's goes back into the URL after a
    navigation cleared it."""
    url = st.query_params.get("student")
    if url and url != st.session_state.get("student"):
        try:
            st.session_state["student"] = classroom.clean_student_name(url)
        except ValueError as exc:
            st.session_state["name_error"] = f"The name in this link cannot be used: {exc}"
            st.query_params.pop("student", None)
    name = st.session_state.get("student")
    if name and st.query_params.get("student") != name:
        st.query_params["student"] = name


def _join() -> None:
    try:
        st.session_state["student"] = classroom.clean_student_name(st.session_state.get("join_name"))
        st.query_params["student"] = st.session_state["student"]
        st.session_state.pop("name_error", None)
    except ValueError as exc:
        st.session_state["name_error"] = str(exc)


def _leave() -> None:
    st.session_state.pop("student", None)
    st.query_params.pop("student", None)


def _unlock(where: str) -> None:
    key = f"teacher_pw_{where}"
    if classroom.check_teacher(st.session_state.get(key)):
        st.session_state["teacher"] = True
        st.session_state.pop("teacher_error", None)
    else:
        st.session_state["teacher"] = False
        st.session_state["teacher_error"] = ("Wrong password: the class board and stopping others' runs stay locked. "
                                             "What to do: type the password the teacher set in TL_TEACHER_PASSWORD.")
    st.session_state[key] = ""


def _lock() -> None:
    st.session_state["teacher"] = False
    st.session_state["teacher_all"] = False


def teacher_form(where: str) -> None:
    """The password form (``where`` keeps the keys of several forms apart)."""
    with st.form(f"teacher_form_{where}", border=where != "sidebar"):
        st.text_input("Teacher password", type="password", key=f"teacher_pw_{where}")
        st.form_submit_button("Unlock", key=f"unlock_{where}", on_click=_unlock, args=(where,),
                              icon=":material/lock_open:")
    if st.session_state.get("teacher_error"):
        st.error(st.session_state["teacher_error"])


def _sidebar() -> None:
    with st.sidebar:
        if st.session_state.get("student"):
            st.text(f"You are: {st.session_state['student']}")
            st.button("Change name", key="leave_class", on_click=_leave, icon=":material/logout:")
        if is_teacher():
            st.success("Teacher mode: the class board and Stop for every run.")
            st.toggle("Show every student's runs on all pages", key="teacher_all")
            st.page_link("pages/board.py", label="Open the class board", icon=":material/groups:")
            st.button("Lock", key="teacher_lock", on_click=_lock, icon=":material/lock:")
        else:
            with st.expander("Teacher"):
                teacher_form("sidebar")


def gate() -> None:
    """Called before every page in classroom mode: the session needs a name (or the teacher's
    password) first; then the sidebar says who is in and holds the teacher's switches."""
    if not on():
        return
    _sync_name()
    if owner() is None:
        st.title("Transfer Learning Lab · class")
        st.markdown("Your runs and uploads carry your name, and the pages show you your own. "
                    "Give it once; this tab remembers it (it is in the page address too).")
        with st.form("join_form"):
            st.text_input("Your name", max_chars=classroom.MAX_NAME, key="join_name", placeholder="e.g. Ada")
            st.form_submit_button("Join the class", type="primary", key="join", on_click=_join,
                                  icon=":material/login:")
        if st.session_state.get("name_error"):
            st.error(_display.plain(st.session_state["name_error"]))
        st.subheader("Teacher?")
        teacher_form("gate")
        st.stop()
    _sidebar()
