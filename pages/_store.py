"""Where the app keeps things: the runs folder, the process-wide RunStore, fresh paths for uploads."""
from __future__ import annotations

import uuid
from pathlib import Path

import streamlit as st

from tl_core.paths import default_runs_dir


def runs_dir() -> Path:
    return default_runs_dir().resolve()


def upload_path(kind: str, suffix: str) -> Path:
    """A fresh server-side path with a generated name (never the uploader's file name)."""
    if kind == "data":
        from tl_core.data.sources import data_root

        folder = data_root() / "uploads"
    else:
        folder = runs_dir() / "uploads" / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{uuid.uuid4().hex[:12]}{suffix}"


@st.cache_resource(show_spinner=False)
def _open(path: str):
    from tl_core.runs.store import RunStore

    return RunStore(path)


def store():
    """The process-wide RunStore for $TL_RUNS_DIR (thread-safe, shared by all sessions), reaped at every page
    run (``executor.reap``: runs whose worker died end as failed, a dead warm pool restarts)."""
    from tl_core.runs.executor import reap

    runs = _open(str(runs_dir()))
    reap(runs)
    return runs
