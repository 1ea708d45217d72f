"""Where tl_core keeps what it writes by default: the runs folder (``$TL_RUNS_DIR``, else ``./runs``)."""
from __future__ import annotations

import os
from pathlib import Path


def default_runs_dir() -> Path:
    return Path(os.environ.get("TL_RUNS_DIR") or "runs")
