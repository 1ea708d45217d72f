"""Classroom mode in the pages: who is signed in, the teacher's unlock, and whose runs a page lists.

Two ways in (``tl_core.classroom``):

- **Sign-in**, when Streamlit's secrets have an ``[auth]`` section (OpenID Connect): ``st.login()``; the
  owner name is the verified identity (email, else subject), kept by Streamlit's own cookie across
  reloads; the teachers are ``$TL_TEACHERS``. No name field, no password.
- **Password** (``$TL_TEACHER_PASSWORD``): a student gives a name or opens a signed join link
  (``?student=NAME&sig=...``; with ``$TL_CLASS_SIGNED_LINKS=1`` only such a link admits a name). The
  name lives in the session and in the URL, so a reload keeps it. The teacher's unlock lives in the
  session and in an HttpOnly signed cookie that ``pages/_routes.py`` sets (the page posts it a one-time
  ticket, never the password), so a reload or a direct /board address stays unlocked.

Without either, every function here answers as the single-user app always did (no name, every run,
anyone may stop).
"""
from __future__ import annotations

import html
from urllib.parse import urlencode, urlsplit

import streamlit as st

from tl_core import classroom

from pages import _display, _routes, _store

URL_KEYS = ("student", "sig")  # what a student's link carries (pages that rewrite the URL keep these)


def sign_in() -> bool:
    """Whether the app has a school sign-in: an ``[auth]`` section in Streamlit's secrets."""
    return bool(st.secrets.load_if_toml_exists() and "auth" in st.secrets)


def on() -> bool:
    classroom.use_sign_in(sign_in())
    return classroom.classroom_mode()


on()  # at import too: the router lists the class board by classroom_mode() before the gate runs


def _secret() -> bytes:
    return classroom.class_secret(_store.runs_dir())


def signed_in() -> str | None:
    """The verified identity of a signed-in user (sign-in mode), else None."""
    return classroom.identity(st.user.to_dict()) if st.user.get("is_logged_in") else None


def is_teacher() -> bool:
    if not on():
        return False
    if sign_in():
        return classroom.listed_teacher(signed_in())
    if "teacher" not in st.session_state:  # a new session: the teacher's cookie, if this browser has one
        st.session_state["teacher"] = classroom.check_teacher_cookie(
            st.context.cookies.get(classroom.TEACHER_COOKIE), _secret())
    return bool(st.session_state["teacher"])


def owner() -> str | None:
    """Who launches and uploads in this session: None outside classroom mode; the signed-in identity; the
    student's name; ``classroom.TEACHER`` for a teacher who gave no name."""
    if not on():
        return None
    if sign_in():
        return signed_in()
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


# ------------------------------------------------------------------ name, join link and password
def _sync_name() -> None:
    """The URL's name wins (a teacher's link, a reload), checked against its signature; the session's name
    (and signature) go back into the URL after a navigation cleared them."""
    url, sig = st.query_params.get("student"), st.query_params.get("sig")
    if url and url != st.session_state.get("student"):
        try:
            st.session_state["student"] = classroom.join_name(url, sig, _secret())
            st.session_state["student_sig"] = sig
        except ValueError as exc:
            st.session_state["name_error"] = f"The name in this link cannot be used: {exc}"
            for key in URL_KEYS:
                st.query_params.pop(key, None)
    name, sig = st.session_state.get("student"), st.session_state.get("student_sig")
    if name and st.query_params.get("student") != name:
        st.query_params["student"] = name
    if name and sig and st.query_params.get("sig") != sig:
        st.query_params["sig"] = sig


def _join() -> None:
    try:
        st.session_state["student"] = classroom.join_name(st.session_state.get("join_name"), None, _secret())
        st.session_state["student_sig"] = None
        st.query_params["student"] = st.session_state["student"]
        st.query_params.pop("sig", None)
        st.session_state.pop("name_error", None)
    except ValueError as exc:
        st.session_state["name_error"] = str(exc)


def _leave() -> None:
    for key in ("student", "student_sig"):
        st.session_state.pop(key, None)
    for key in URL_KEYS:
        st.query_params.pop(key, None)


def _here() -> str:
    """This page's path and query (where the teacher's cookie route sends the browser back to)."""
    path = urlsplit(st.context.url or "").path or "/"
    query = urlencode(st.query_params.to_dict())
    return f"{path}?{query}" if query else path


def _unlock(where: str) -> None:
    key = f"teacher_pw_{where}"
    if classroom.check_teacher(st.session_state.get(key)):
        st.session_state["teacher"] = True
        st.session_state["cookie_post"] = (_routes.UNLOCK, _routes.TICKETS.issue())
        st.session_state.pop("teacher_error", None)
    else:
        st.session_state["teacher"] = False
        st.session_state["teacher_error"] = ("Wrong password: the class board and stopping others' runs stay locked. "
                                             "What to do: type the password the teacher set in TL_TEACHER_PASSWORD.")
    st.session_state[key] = ""


def _lock() -> None:
    st.session_state["teacher"] = False
    st.session_state["teacher_all"] = False
    st.session_state["cookie_post"] = (_routes.LOCK, "")


def _post_cookie_route() -> None:
    """Once after an unlock or a lock: the browser posts to the cookie route (``pages/_routes.py``) with the
    one-time ticket, and comes back to this page. A button does it where scripts do not run."""
    route, ticket = st.session_state.pop("cookie_post")
    label = "Keep the teacher mode after a reload" if ticket else "Lock this browser"
    st.html(f'<form id="tl-cookie" method="post" action="{html.escape(route)}">'
            f'<input type="hidden" name="ticket" value="{html.escape(ticket)}">'
            f'<input type="hidden" name="next" value="{html.escape(_here())}">'
            f'<button type="submit">{label}</button></form>'
            '<script>document.getElementById("tl-cookie").submit()</script>', unsafe_allow_javascript=True)


def teacher_form(where: str) -> None:
    """The password form (``where`` keeps the keys of several forms apart)."""
    with st.form(f"teacher_form_{where}", border=where != "sidebar"):
        st.text_input("Teacher password", type="password", key=f"teacher_pw_{where}")
        st.form_submit_button("Unlock", key=f"unlock_{where}", on_click=_unlock, args=(where,),
                              icon=":material/lock_open:")
    if st.session_state.get("teacher_error"):
        st.error(st.session_state["teacher_error"])


def _join_links() -> None:
    """The teacher's signed join links, as a printable page and a table: downloads only, never on screen
    (the board may be on the projector)."""
    with st.expander("Join links for students"):
        st.caption("One personal link per student: it carries the name and a signature, so nobody joins as "
                   "someone else" + (" (this class admits names only from these links)."
                                     if classroom.signed_links_required() else
                                     ". Set TL_CLASS_SIGNED_LINKS=1 to admit names only from these links."))
        names = st.text_area("Names, one per line", key="join_link_names", height=120)
        if not names.strip():
            return
        url = urlsplit(st.context.url or "http://localhost:8501")
        try:
            links = classroom.join_links(f"{url.scheme}://{url.netloc}", names, _secret())
        except ValueError as exc:
            st.error(_display.plain(exc))
            return
        st.download_button(f"Printable page ({len(links)} link{'s' if len(links) != 1 else ''})", classroom.join_links_page(links),
                           file_name="join_links.html", mime="text/html", key="join_links_html",
                           icon=":material/print:", on_click="ignore")
        st.download_button("Table (CSV)", links.to_csv(index=False), file_name="join_links.csv", mime="text/csv",
                           key="join_links_csv", icon=":material/download:", on_click="ignore")


def _teacher_tools() -> None:
    st.success("Teacher mode: the class board and Stop for every run.")
    st.toggle("Show every student's runs on all pages", key="teacher_all")
    st.page_link("pages/board.py", label="Open the class board", icon=":material/groups:")


def _sidebar() -> None:
    with st.sidebar:
        if sign_in():
            st.text(f"Signed in as: {signed_in()}")
            st.button("Sign out", key="sign_out", on_click=st.logout, icon=":material/logout:")
            if is_teacher():
                _teacher_tools()
            return
        if st.session_state.get("student"):
            st.text(f"You are: {st.session_state['student']}")
            st.button("Change name", key="leave_class", on_click=_leave, icon=":material/logout:")
        if is_teacher():
            _teacher_tools()
            _join_links()
            st.button("Lock", key="teacher_lock", on_click=_lock, icon=":material/lock:")
        else:
            with st.expander("Teacher"):
                teacher_form("sidebar")
        if "cookie_post" in st.session_state:
            _post_cookie_route()


def _sign_in_gate() -> None:
    if signed_in() is None:
        st.title("Transfer Learning Lab · class")
        if st.user.get("is_logged_in"):
            st.error("Your account gave neither an email address nor a subject, so your runs cannot carry your "
                     "name. What to do: ask the teacher to check the school sign-in.")
            st.button("Sign out", key="sign_out_gate", on_click=st.logout, icon=":material/logout:")
        else:
            st.markdown("Sign in with your school account: your runs and uploads carry your name, and the pages "
                        "show you your own. The page remembers you after a reload.")
            st.button("Sign in", type="primary", key="sign_in", on_click=st.login, icon=":material/login:")
        st.stop()


def gate() -> None:
    """Called before every page in classroom mode: the session needs a signed-in user, a name (or the
    teacher's password) first; then the sidebar says who is in and holds the teacher's switches."""
    if not on():
        return
    if sign_in():
        _sign_in_gate()
        _sidebar()
        return
    _sync_name()
    if owner() is None:
        st.title("Transfer Learning Lab · class")
        if classroom.signed_links_required():
            st.markdown("This class joins with **personal links**: open the link your teacher gave you. Your runs "
                        "and uploads carry your name, and the pages show you your own.")
        else:
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
        if "cookie_post" in st.session_state:
            _post_cookie_route()
        st.stop()
    _sidebar()
