"""The run store: one SQLite file and one folder per run, shared by every process that reads or
writes runs.

A run flows one way: page/CLI → ``launch(cfg)`` → a worker (``tl_core.executor``: today one
``python -m tl_core.worker RUN_ID`` process per run) → ``RunStore`` → any number of readers (pages,
other tabs, the CLI).

The store is one SQLite file in WAL mode (``runs.sqlite``: run rows and metric rows) plus one
folder per run for artefacts (``worker.log``, ``snapshots/epoch_NNN.npz``, ``model.safetensors``,
``model.json``, ``summary.json``). Nothing is ever pickled. Every SQL statement lives here; what the
rows mean for execution (device slots, queue order, when a worker counts as dead) is decided in
``tl_core.executor``.

Liveness: a worker updates its heartbeat every ``HEARTBEAT_S``. Any reader that sees an active
run whose worker is gone, or whose heartbeat is older than ``STALE_S``, marks it failed, so a
run never stays "running" forever.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import executor
from .executor import (  # noqa: F401  (re-exported: the queue policy and launching used to live here)
    DIED, NEVER_STARTED_S, STALE_S, Executor, ProcessExecutor, device_limit, launch, resolve_device,
)
from .executor import pid_alive as _pid_alive  # noqa: F401

STATUSES = ("queued", "running", "completed", "stopped", "failed", "diverged")
ACTIVE = ("queued", "running")
HEARTBEAT_S = 2.0
STEP_EVERY_S = 0.5  # step rows are throttled to at most one per this interval
DB_NAME = "runs.sqlite"
STOP_FILE = "STOP"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    n INTEGER PRIMARY KEY AUTOINCREMENT,       -- FIFO order
    id TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    config TEXT NOT NULL,
    device TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    pid INTEGER,
    heartbeat REAL,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    info TEXT,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,     -- monotonically increasing, readers follow it
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,                        -- epoch | step | phase
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics (run_id, kind, seq);
"""


def default_runs_dir() -> Path:
    return Path(os.environ.get("TL_RUNS_DIR") or "runs")


def _jsonable(value):
    """JSON-safe copy: numpy/torch scalars → numbers, NaN/inf → None, tuples → lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _dumps(value) -> str:
    return json.dumps(_jsonable(value), allow_nan=False)


def _loads(text: str | None):
    return None if text is None else json.loads(text)


@dataclass
class RunInfo:
    id: str
    name: str
    status: str
    reason: str | None
    config: dict
    created: float
    started: float | None
    finished: float | None
    device: str
    summary: dict | None
    queue_position: int | None = None  # 1 = next to start; None unless queued
    info: dict | None = None  # the trainer's before_fit info (steps_per_epoch, total_epochs, ...)
    pid: int | None = None
    heartbeat: float | None = None
    stop_requested: bool = False

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


class RunStore:
    """SQLite (WAL) run store + one folder per run. Safe to share between threads of one process;
    any number of processes may open the same ``runs_dir``."""

    def __init__(self, runs_dir: str | os.PathLike | None = None):
        self.runs_dir = Path(runs_dir or default_runs_dir()).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.runs_dir / DB_NAME, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA busy_timeout = 30000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)

    # --- low level ------------------------------------------------------------------------------
    def _q(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _tx(self, fn):
        """Run ``fn(db)`` in one write transaction (BEGIN IMMEDIATE: serialises writers)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def run_dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
            raise KeyError(f"invalid run id {run_id!r}")
        return self.runs_dir / run_id

    def log_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "worker.log"

    # --- runs -----------------------------------------------------------------------------------
    def create(self, cfg, device: str | None = None) -> str:
        """Register a queued run for ``cfg`` (a TrainConfig or its dict); returns the run id."""
        config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        name = config.get("name") or " · ".join(
            str(config.get(k)) for k in ("backbone", "strategy", "data") if config.get(k)
        )
        device = device or executor.resolve_device(config.get("device"))
        self.run_dir(run_id).mkdir(parents=True)
        self._q(
            "INSERT INTO runs (id, name, status, reason, config, device, created) VALUES (?,?,?,?,?,?,?)",
            (run_id, name, "queued", "waiting for the worker to start", _dumps(config), device, time.time()),
        )
        return run_id

    def get(self, run_id: str) -> RunInfo:
        self.reap()
        rows = self._q("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise KeyError(f"no run {run_id!r} in {self.runs_dir}")
        return self._info(rows[0])

    def list_runs(self) -> list[RunInfo]:
        """All runs, newest first."""
        self.reap()
        return [self._info(r) for r in self._q("SELECT * FROM runs ORDER BY n DESC")]

    def _info(self, row: sqlite3.Row) -> RunInfo:
        position = None
        if row["status"] == "queued":
            with self._lock:
                position = executor.POLICY.position(row["id"], self._queued(self._db, row["device"]))
        return RunInfo(
            id=row["id"], name=row["name"], status=row["status"], reason=row["reason"],
            config=_loads(row["config"]), created=row["created"], started=row["started"],
            finished=row["finished"], device=row["device"], summary=_loads(row["summary"]),
            queue_position=position, info=_loads(row["info"]), pid=row["pid"],
            heartbeat=row["heartbeat"], stop_requested=bool(row["stop_requested"]),
        )

    def reap(self) -> list[str]:
        """Mark active runs whose worker is gone (``executor.why_dead``) as failed. Returns their ids."""
        now = time.time()
        failed = []
        for row in self._q("SELECT id, status, pid, heartbeat, created FROM runs WHERE status IN ('queued','running')"):
            reason = executor.why_dead(row["pid"], row["heartbeat"], row["created"], now)
            if reason:
                failed += [r[0] for r in self._q(
                    "UPDATE runs SET status='failed', reason=?, finished=? WHERE id=? AND status=? AND pid IS ? "
                    "RETURNING id",
                    (reason, now, row["id"], row["status"], row["pid"]),
                )]
        return failed

    def request_stop(self, run_id: str) -> str:
        """Stop a run: a queued run is cancelled at once, a running one stops within a batch.
        Returns the run's status after the request."""
        info = self.get(run_id)
        if info.status == "queued":
            self._q(
                "UPDATE runs SET status='stopped', reason='cancelled before it started', finished=?, "
                "stop_requested=1 WHERE id=? AND status='queued'",
                (time.time(), run_id),
            )
        elif info.status == "running":
            (self.run_dir(run_id) / STOP_FILE).touch()
            self._q("UPDATE runs SET stop_requested=1 WHERE id=?", (run_id,))
        return self.get(run_id).status

    def stop_requested(self, run_id: str) -> bool:
        """Cheap check for the worker (a file existence test, fine to call every batch)."""
        return (self.run_dir(run_id) / STOP_FILE).exists()

    # --- worker side ----------------------------------------------------------------------------
    def attach_worker(self, run_id: str, pid: int) -> None:
        self._q("UPDATE runs SET pid=?, heartbeat=? WHERE id=?", (pid, time.time(), run_id))

    def heartbeat(self, run_id: str) -> None:
        self._q("UPDATE runs SET heartbeat=? WHERE id=?", (time.time(), run_id))

    def record_pid(self, run_id: str, pid: int) -> None:
        """The launcher's note of the worker's pid (the worker's own ``attach_worker`` wins if first)."""
        self._q("UPDATE runs SET pid=COALESCE(pid, ?) WHERE id=?", (pid, run_id))

    @staticmethod
    def _queued(db, device: str) -> list[str]:
        """Ids of the runs queued on ``device``, oldest first."""
        return [r[0] for r in db.execute("SELECT id FROM runs WHERE status='queued' AND device=? ORDER BY n", (device,))]

    def try_start(self, run_id: str) -> bool:
        """Claim a device slot when the queue policy (``executor.POLICY``: today FIFO per device,
        ``device_limit`` at once) lets ``run_id`` start. Queued → running atomically."""
        self.reap()

        def claim(db) -> bool:
            row = db.execute("SELECT device, status FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None or row["status"] != "queued":
                return False
            device = row["device"]
            running = db.execute(
                "SELECT COUNT(*) FROM runs WHERE status='running' AND device=?", (device,)
            ).fetchone()[0]
            if not executor.POLICY.may_start(run_id, device, self._queued(db, device), running):
                return False
            db.execute(
                "UPDATE runs SET status='running', reason='starting: loading libraries, data and model', started=?, heartbeat=? "
                "WHERE id=?",
                (time.time(), time.time(), run_id),
            )
            return True

        return self._tx(claim)

    def set_queue_reason(self, run_id: str) -> None:
        info = self.get(run_id)
        if info.status == "queued":
            reason = f"waiting for a free {info.device} slot (position {info.queue_position} in the queue)"
            if reason != info.reason:
                self._q("UPDATE runs SET reason=? WHERE id=? AND status='queued'", (reason, run_id))

    def set_info(self, run_id: str, info: dict) -> None:
        self._q("UPDATE runs SET info=?, reason=NULL WHERE id=?", (_dumps(info), run_id))

    def finish(self, run_id: str, status: str, reason: str | None = None, summary: dict | None = None) -> None:
        """Record the final status (only if the run is still active: a reaper may have been first)."""
        assert status in STATUSES and status not in ACTIVE, status
        if summary is not None:
            (self.run_dir(run_id) / "summary.json").write_text(_dumps(summary))
        self._q(
            "UPDATE runs SET status=?, reason=?, finished=?, summary=COALESCE(?, summary) "
            "WHERE id=? AND status IN ('queued','running')",
            (status, reason, time.time(), None if summary is None else _dumps(summary), run_id),
        )

    # --- metrics and snapshots ------------------------------------------------------------------
    def append_metric(self, run_id: str, kind: str, data: dict) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO metrics (run_id, kind, data) VALUES (?,?,?)", (run_id, kind, _dumps(data))
            )
            return cur.lastrowid

    def metrics(self, run_id: str, kind: str = "epoch", after_seq: int = 0) -> list[dict]:
        """Metric rows of ``kind`` ("epoch", "step" or "phase") with seq > ``after_seq``, oldest first.
        Each row carries its ``seq``: pass the last one back to read only what is new."""
        rows = self._q(
            "SELECT seq, data FROM metrics WHERE run_id=? AND kind=? AND seq>? ORDER BY seq",
            (run_id, kind, after_seq),
        )
        return [{**json.loads(r["data"]), "seq": r["seq"]} for r in rows]

    def save_snapshot(self, run_id: str, epoch: int, maps: dict) -> Path:
        """Feature maps {layer: uint8 [k,h,w]} → snapshots/epoch_NNN.npz (no pickle; written atomically)."""
        folder = self.run_dir(run_id) / "snapshots"
        folder.mkdir(exist_ok=True)
        layers = list(maps)
        arrays = {f"m{i}": np.asarray(maps[k], dtype=np.uint8) for i, k in enumerate(layers)}
        path = folder / f"epoch_{int(epoch):03d}.npz"
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, layers=np.array(layers, dtype=str), **arrays)
        os.replace(tmp, path)
        return path

    def snapshot_epochs(self, run_id: str) -> list[int]:
        folder = self.run_dir(run_id) / "snapshots"
        return sorted(int(p.stem.split("_")[1]) for p in folder.glob("epoch_[0-9]*.npz") if ".tmp" not in p.name)

    def snapshots(self, run_id: str, epochs: list[int] | None = None) -> dict[int, dict[str, np.ndarray]]:
        """{epoch: {layer: uint8 [k,h,w]}} (epoch 0 = before training)."""
        out = {}
        for epoch in self.snapshot_epochs(run_id) if epochs is None else epochs:
            path = self.run_dir(run_id) / "snapshots" / f"epoch_{int(epoch):03d}.npz"
            with np.load(path, allow_pickle=False) as z:
                out[epoch] = {str(name): z[f"m{i}"] for i, name in enumerate(z["layers"])}
        return out

    def model_dir(self, run_id: str) -> Path | None:
        """The run folder if it holds a saved model (``training.load_model(path)``), else None."""
        d = self.run_dir(run_id)
        return d if (d / "model.safetensors").exists() else None


# --- the callback the worker hands to training.fit ---------------------------------------------
class StoreCallback:
    """Writes every training event into the store; turns a stop request into ``trainer.should_stop``."""

    def __init__(self, store: RunStore, run_id: str, step_every_s: float = STEP_EVERY_S):
        self.store, self.run_id, self.step_every_s = store, run_id, step_every_s
        self._last_step_t = 0.0
        self._losses: list[float] = []
        self.t0 = time.time()
        self.summary: dict | None = None  # the trainer's summary, once after_fit has run

    def on(self, event: str, trainer, **data) -> None:
        handler = getattr(self, "_" + event, None)
        if handler is not None:
            handler(trainer, **data)
        if event != "after_batch" and self.store.stop_requested(self.run_id) and not trainer.should_stop:
            trainer.should_stop = "stopped by request"  # the trainer acts on it at its next check

    def _before_fit(self, trainer, info=None, **_):
        self.store.set_info(self.run_id, info or {})

    def _before_phase(self, trainer, **data):
        self.store.append_metric(self.run_id, "phase", {**data, "t": time.time() - self.t0})

    def _after_batch(self, trainer, step=None, epoch=None, batch=None, loss=None, lr=None, images=None, **_):
        if loss is not None:
            self._losses.append(float(loss))
        stop = self.store.stop_requested(self.run_id) and not getattr(trainer, "should_stop", None)
        now = time.time()
        if stop or now - self._last_step_t >= self.step_every_s:  # throttled; the row that sees a stop is not
            mean = sum(self._losses) / len(self._losses) if self._losses else None
            self.store.append_metric(self.run_id, "step", {
                "step": step, "epoch": epoch, "batch": batch, "loss": mean, "lr": lr,
                "images": images, "batches": len(self._losses), "t": now - self.t0, "stop": stop,
            })
            self._last_step_t, self._losses = now, []
        if stop:
            trainer.should_stop = "stopped by request"

    def _after_epoch(self, trainer, metrics=None, **_):
        self.store.append_metric(self.run_id, "epoch", {**(metrics or {}), "t": time.time() - self.t0})

    def _snapshot(self, trainer, epoch=0, maps=None, **_):
        if maps:
            self.store.save_snapshot(self.run_id, epoch, maps)

    def _after_fit(self, trainer, summary=None, **_):
        """Save the model (not for a diverged or failed run: its weights are useless)."""
        self.summary = summary
        if (summary or {}).get("status") in ("completed", "stopped") and getattr(trainer, "model", None) is not None:
            from .training import save_model

            try:
                save_model(trainer.model, trainer.cfg, trainer.class_names, self.store.run_dir(self.run_id))
            except Exception:  # the metrics are still worth keeping; the log has the cause
                traceback.print_exc()

