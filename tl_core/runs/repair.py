"""A damaged run store: detect it, move it aside, start a fresh one and rebuild it from the run folders.

``RunStore`` calls ``repair`` when opening or reading ``runs.sqlite`` raises a ``sqlite3.DatabaseError``
that means damage (``is_damage``: "database disk image is malformed", "file is not a database"; not
a busy or locked database). Under a file lock (so concurrent processes repair once), the damaged
file and its ``-wal``/``-shm`` companions are renamed ``runs.sqlite.damaged-<timestamp>``, a fresh
store is opened and every run folder is read back:

- ``run.json`` (written by the store when a run is created and when it ends): the run's row;
- ``summary.json``: its summary; ``metrics.jsonl``: its epoch and phase rows;
- a folder from before ``run.json`` existed: the config of ``model.json`` and the status of
  ``summary.json``, the creation time from the run id.

A run that was still queued or running is recorded as failed: its worker reported to the old file.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from pathlib import Path

RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
DAMAGE_WORDS = ("malformed", "not a database", "disk image", "encrypted")
INTERRUPTED = "interrupted: the run store was damaged while this run was active (rebuilt from its folder)"


def is_damage(exc: BaseException) -> bool:
    """Whether a sqlite error means a damaged file (not a busy, locked or misused database)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    if type(exc) is sqlite3.DatabaseError:
        return True
    return any(w in str(exc).lower() for w in DAMAGE_WORDS)


@contextlib.contextmanager
def _file_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _healthy(db_path: Path) -> bool:
    if not db_path.exists():
        return True
    try:
        db = sqlite3.connect(db_path, timeout=30)
        try:
            return db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return False


def _move_aside(db_path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = db_path.with_name(f"{db_path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = db_path.with_name(f"{db_path.name}.damaged-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(db_path) + suffix)
        if src.exists():
            os.replace(src, Path(str(aside) + suffix))
    return aside


def repair(store, exc: BaseException) -> str | None:
    """Move the damaged database of ``store`` aside, reopen ``store`` on a fresh one and rebuild it from
    the run folders. Returns the one-line message for the user (None if another process had already
    repaired it: ``store`` then simply uses the new file)."""
    db_path = store.db_path
    with store._lock, _file_lock(db_path.with_name(db_path.name + ".lock")):
        with contextlib.suppress(Exception):
            store._db.close()
        if _healthy(db_path):
            store._open()
            return None
        aside = _move_aside(db_path)
        store._open()
        recovered = rebuild(store)
    return (f"The run store {db_path} was damaged ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            f"it was moved to {aside.name} and a fresh one started with {recovered} run(s) recovered from their "
            "folders. Nothing to do; runs that were active then are marked failed.")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _created_from_id(run_id: str, folder: Path) -> float:
    try:
        return time.mktime(time.strptime(run_id[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        return folder.stat().st_mtime


def read_folder(folder: Path) -> tuple[dict, dict | None, list] | None:
    """(record, summary, [(kind, data)]) rebuilt from one run folder, or None when it holds too little."""
    record = _read_json(folder / "run.json")
    summary = _read_json(folder / "summary.json")
    if not isinstance(record, dict):
        model = _read_json(folder / "model.json")
        if not isinstance(model, dict) or not isinstance(model.get("config"), dict):
            return None
        config = model["config"]
        status = (summary or {}).get("status") or "completed"
        record = {"id": folder.name, "config": config, "status": status,
                  "name": config.get("name") or " · ".join(str(config.get(k)) for k in ("backbone", "strategy", "data")
                                                           if config.get(k)),
                  "device": (summary or {}).get("device") or "cpu", "created": _created_from_id(folder.name, folder),
                  "finished": (folder / "model.json").stat().st_mtime, "reason": (summary or {}).get("reason") or None}
    record["id"] = folder.name
    if record.get("status") in ("queued", "running"):
        record.update(status="failed", reason=INTERRUPTED, finished=record.get("finished") or time.time())
    metrics = []
    with contextlib.suppress(OSError):
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                row = json.loads(line)
                metrics.append((row["kind"], dict(row["data"])))
    return record, summary if isinstance(summary, dict) else None, metrics


def rebuild(store) -> int:
    """Insert every run folder of ``store.runs_dir`` that can be read back; returns how many."""
    done = 0
    for folder in sorted(p for p in store.runs_dir.iterdir() if p.is_dir() and RUN_ID.match(p.name)):
        got = read_folder(folder)
        if got is None:
            continue
        store.restore(*got)
        store._write_record(folder.name)
        done += 1
    return done
