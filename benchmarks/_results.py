"""The benchmarks' results files: every figure a benchmark prints also goes to
``benchmarks/results/<name>.json`` with the date, commit, command, machine and the state of the caches,
so that the figures quoted in README.md and benchmarks/README.md can be checked against them
(``tests/test_figures.py``) and reproduced (``make bench``).

    import _results                      # benchmarks/ is on sys.path when a benchmark script runs
    _results.add_warm_flag(parser)       # --warm; cold caches are the default
    _results.write("text_first_metric", {"warm_s": 0.61, "cold_s": 8.1}, caches=_results.caches(args))

``TL_BENCH_RESULTS`` redirects the files (the tests use it).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_STATES = ("cold", "warm")
_LOAD_BEFORE = os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def results_dir() -> Path:
    return Path(os.environ.get("TL_BENCH_RESULTS") or ROOT / "benchmarks" / "results")


def add_warm_flag(parser) -> None:
    """``--warm``: measure with the caches (features, decoded data, workers) already filled by a first pass."""
    parser.add_argument("--warm", action="store_true",
                        help="measure with warm caches (default: cold, a fresh runs dir / feature cache)")


def caches(args) -> str:
    return "warm" if getattr(args, "warm", False) else "cold"


@contextlib.contextmanager
def isolated_caches(prefix: str = "tl_bench_"):
    """Point ``TL_RUNS_DIR`` (runs, feature cache) and ``TL_CACHE_DIR`` (decoded data sets) at new, empty
    folders for the benchmark and the processes it starts, so nothing it measures comes from an earlier run
    (and nothing lands in ./runs); restored and removed afterwards. Yields the temporary folder. A ``--warm``
    measurement fills these caches with an untimed first pass."""
    keys = ("TL_RUNS_DIR", "TL_CACHE_DIR")
    saved = {k: os.environ.get(k) for k in keys}
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.environ["TL_RUNS_DIR"], os.environ["TL_CACHE_DIR"] = f"{tmp}/runs", f"{tmp}/data_cache"
        try:
            yield Path(tmp)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _git(*cmd: str) -> str:
    out = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch": torch_version,
            "python": platform.python_version(), "platform": platform.platform()}


def default_command() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def _check(name: str, figures: dict, caches: str) -> None:
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"results name {name!r}: use letters, digits, '_' and '-' only")
    if caches not in CACHE_STATES:
        raise ValueError(f"caches={caches!r}: say 'cold' or 'warm'")
    if not figures:
        raise ValueError(f"{name}: no figures to write")

    def ok(v) -> bool:
        if isinstance(v, bool):
            return False
        if isinstance(v, (int, float)):
            return math.isfinite(v)
        return isinstance(v, str) or (isinstance(v, list) and all(ok(x) and not isinstance(x, list) for x in v))

    bad = [k for k, v in figures.items() if not ok(v)]
    if bad:
        raise ValueError(f"{name}: figures {bad} must be finite numbers, strings or lists of them")


def write(name: str, figures: dict, *, caches: str, params: dict | None = None, notes: str = "",
          command: str | None = None) -> Path:
    """Write ``results_dir()/<name>.json`` (replacing it) and return its path."""
    _check(name, figures, caches)
    head = _git("rev-parse", "--short", "HEAD")
    doc = {
        "name": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": head,
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if head else None,
        "command": command or default_command(),
        "caches": caches,
        "machine": machine(),
        "load_average": {"before": _LOAD_BEFORE,
                         "after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "params": params or {},
        "notes": notes,
        "figures": figures,
    }
    path = results_dir() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    try:
        shown = path.relative_to(ROOT)
    except ValueError:
        shown = path
    print(f"wrote {shown}", file=sys.stderr)
    return path


def read(name: str, directory: Path | None = None) -> dict:
    path = (directory or results_dir()) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results file {path}: run the benchmark that writes {name!r} (make bench)")
    return json.loads(path.read_text())
