"""The app server's own start: app.py's ``st.App`` runs ``lifespan`` when ``streamlit run app.py`` starts,
before any browser connects. It makes app.py's router serve the very first request (``route_from_the_start``)
and, in a thread of its own (the server answers at once), starts the warm pool, whose worker loads what a
first run needs (libraries, the default backbone and data), and imports what this process's pages draw with.
``warming()`` tells the Home page how far that has come."""
from __future__ import annotations

import importlib
import threading
import traceback
from contextlib import asynccontextmanager
from pathlib import Path

# this process's warm-up: the device whose pool it started (None: no pool), and whether its pages' modules are in
_progress: dict = {"started": False, "device": None, "pages": False}


def _page_modules() -> list[str]:
    return sorted(f"pages.{p.stem}" for p in Path(__file__).parent.glob("_*.py") if p.stem != "_server")


def warm() -> None:
    """Start the warm pool of the default device (with the default executor), then import the pages' modules."""
    _progress["started"] = True
    try:
        from pages import _store
        from tl_core.devices import device_key
        from tl_core.runs.launcher import get_executor

        start = getattr(get_executor(_store.store().runs_dir), "warm", None)  # only the local warm pool has one
        if start is not None:
            _progress["device"] = device_key("auto")
            start(_progress["device"])
    except Exception:  # only a head start: the first run says what is wrong
        traceback.print_exc()
    for name in _page_modules():
        try:
            importlib.import_module(name)
        except Exception:
            traceback.print_exc()
    _progress["pages"] = True


def route_from_the_start() -> None:
    """Streamlit decides at its first session whether the app uses a pages/ folder (ours holds the page files
    that app.py's st.navigation lists) and, until a session calls st.navigation, runs every request in that
    legacy mode. Deciding it now, for the whole server, makes the first request, whatever its address, run
    app.py's router like every later one (see pages/_router.py)."""
    from streamlit.runtime.pages_manager import PagesManager

    PagesManager.uses_pages_directory = False


@asynccontextmanager
async def lifespan(_app):
    route_from_the_start()
    threading.Thread(target=warm, name="warm-start", daemon=True).start()
    yield


def warming() -> tuple[float, str] | None:
    """While this server is still warming up: (fraction done, what it loads now); None once it is warm, or
    when it did not warm at its start (a test's app)."""
    if not _progress["started"]:
        return None
    from pages import _store
    from tl_core.runs.executor import WARM_STEPS, warming as pool_warming

    pool = pool_warming(_store.store(), _progress["device"]) if _progress["device"] else None
    steps = len(WARM_STEPS) + 1  # the worker's, and this process's own imports
    done = (len(WARM_STEPS) if pool is None else pool[0]) + _progress["pages"]
    if done >= steps:
        return None
    now = pool[1] if pool is not None else "the pages"
    return done / steps, now
