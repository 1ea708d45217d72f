"""The app's router: its pages, ``st.navigation`` with top navigation, and the hand-over from
Streamlit's pages-folder mode.

Streamlit decides at a server's first session whether the app "uses a pages directory" (a ``pages/``
folder next to app.py does) and, until some session calls ``st.navigation``, runs every request in
that legacy mode: a deep link (``/train?run=...``) that is the server's first request would run
``pages/train.py`` alone, without app.py. ``streamlit run app.py`` serves app.py's ``st.App``, whose
lifespan decides it for the whole server at its start (``pages/_server.route_from_the_start``): every
request, the first one too, runs app.py's router. Should the legacy mode run anyway (a server started
some other way), two pieces keep it invisible:

- ``.streamlit/config.toml`` sets ``client.showSidebarNavigation = false``, so that mode never lists
  the files of ``pages/`` (its navigation is hidden from the first paint);
- a page that finds the router has not run in this server process (``ensure_routed``, called by
  ``_inputs.start_page``) calls ``st.navigation``, which switches the whole server to app.py's router for
  good, and reruns: the rerun goes through app.py (wide layout, top navigation) to the same page,
  with the same query parameters.
"""
from __future__ import annotations

import streamlit as st

# (page file, title, icon) in the order of the top navigation, after Home
PAGES = [
    ("pages/backbone.py", "Backbone", ":material/account_tree:"),
    ("pages/data.py", "Data", ":material/image:"),
    ("pages/train.py", "Train", ":material/model_training:"),
    ("pages/compare.py", "Compare", ":material/stacked_line_chart:"),
    ("pages/inspect.py", "Inspect", ":material/search:"),
    ("pages/labs.py", "Labs", ":material/science:"),
]
# the class board: in the top navigation in classroom mode; otherwise reachable by its links (and /board)
BOARD = ("pages/board.py", "Class board", ":material/groups:")
_state = {"ran": False}  # app.py's router has run in this server process (Streamlit's switch is process-wide too)


def _file_pages() -> list:
    from tl_core.classroom import classroom_mode

    path, title, icon = BOARD
    board = (st.Page(path, title=title, icon=icon) if classroom_mode()
             else st.Page(path, title="All runs", icon=icon, visibility="hidden"))
    return [*(st.Page(path, title=title, icon=icon) for path, title, icon in PAGES), board]


def route(home, gate=None) -> None:
    """app.py's router: Home (the function ``home``) and the page files, as top navigation; runs the
    page the URL names, after ``gate()`` (which may draw something else and ``st.stop()`` instead)."""
    page = st.navigation([st.Page(home, title="Home", icon=":material/home:", default=True), *_file_pages()],
                         position="top")
    _state["ran"] = True
    if gate is not None:
        gate()
    page.run()


def _home() -> None:
    """Stands for app.py's Home page in ``ensure_routed`` (the rerun goes through app.py at once)."""


def ensure_routed() -> None:
    """In a page: if app.py's router has not run yet, switch the server to it and rerun through it."""
    if not _state["ran"]:
        # resolves this same page, nothing is listed; a Home stands first, as the default page (which has no
        # address of its own): the page asked for keeps its address, so no "Page not found"
        st.navigation([st.Page(_home, title="Home", default=True), *_file_pages()], position="hidden")
        st.rerun()
