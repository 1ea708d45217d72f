"""The run store: one SQLite file and one folder per run, shared by every process that reads or
writes runs.

A run flows one way: page/CLI → ``launcher.launch(cfg, owner=...)`` → a worker (``tl_core.runs.executor``: by default
a warm ``python -m tl_core.runs.worker --serve`` process that claims queued runs) → ``RunStore`` → any
number of readers (pages, other tabs, the CLI).

The store is one SQLite file in WAL mode (``runs.sqlite``: run rows, metric rows and the warm
workers) plus one folder per run for artefacts (``run.json``: the run's row, rewritten when it is
created and when it ends; ``metrics.jsonl``: its epoch and phase rows; ``worker.log``,
``snapshots/epoch_NNN.npz``, ``model.safetensors``, ``model.json``, ``summary.json``, ``predictions.npz``).
Nothing is ever pickled. Every SQL statement lives here; what the rows mean for execution (device slots, queue
order, when a worker counts as dead) is decided in ``tl_core.runs.policy``.

Runs carry an ``owner`` (a student's name in classroom mode, None otherwise): only the owner or the
teacher may stop an owned run (``request_stop``).

Liveness: a worker updates its heartbeat every ``HEARTBEAT_S``. ``reap`` marks an active run whose
worker is gone, or whose heartbeat is older than ``policy.STALE_S``, failed, so a run never stays
"running" forever; reads never write (``executor.reap`` also restarts a warm pool that died while
runs wait for it: warm workers, pages and the CLI call it as they refresh).

A damaged ``runs.sqlite`` (``sqlite3.DatabaseError`` when it is opened or read) is moved aside and a
fresh store is rebuilt from the run folders (``tl_core.runs.repair``); ``RunStore.recovered`` then
says so in one line.
"""
from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tl_core.devices import device_key
from tl_core.paths import default_runs_dir
from tl_core.runs import policy
from tl_core.runs import repair as store_repair
from tl_core.runs.store_json import dumps, loads, write_atomic

STATUSES = ("queued", "running", "completed", "stopped", "failed", "diverged")
ACTIVE = ("queued", "running")
HEARTBEAT_S = 2.0
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
CREATE TABLE IF NOT EXISTS workers (             -- the warm pool (tl_core.runs.executor.ensure_pool)
    pid INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    started REAL NOT NULL,
    heartbeat REAL,
    run_id TEXT,                                 -- the run it trains now
    runs INTEGER NOT NULL DEFAULT 0,             -- how many runs it has claimed
    ended REAL,
    reason TEXT
);
"""
# columns added after the first release: ALTER TABLE adds them to an older store
_RUN_COLUMNS = {"owner": "TEXT", "executor": "TEXT"}  # executor: "pool" | "process" | NULL (a lab, the CLI)
RECORD = "run.json"  # the run's row, for rebuilding a damaged store
METRICS_LOG = "metrics.jsonl"  # its epoch and phase rows, for the same
PREDICTIONS = "predictions.npz"  # the last validation's prediction per image (the Inspect page's confusion cells)
_RECORD_KEYS = ("id", "name", "status", "reason", "config", "device", "created", "started", "finished", "owner",
                "executor")


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


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
    owner: str | None = None  # a student's name in classroom mode; None in single-user mode
    executor: str | None = None  # "pool" (a warm worker), "process", or None (a lab or the CLI runs it)

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
    any number of processes may open the same ``runs_dir``. ``recovered`` is a one-line message when
    opening found the database damaged and rebuilt it from the run folders (else None)."""

    def __init__(self, runs_dir: str | os.PathLike | None = None):
        self.runs_dir = Path(runs_dir or default_runs_dir()).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.runs_dir / DB_NAME
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self.recovered: str | None = None
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if not store_repair.is_damage(exc):
                raise
            self.recovered = store_repair.repair(self, exc)

    def _open(self) -> None:
        """Connect, check the file (``PRAGMA quick_check``: milliseconds), create or migrate the schema."""
        with self._lock:
            self._db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            try:
                self._db.execute("PRAGMA busy_timeout = 30000")
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
                check = self._db.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(f"database disk image is malformed ({check})")
                self._db.executescript(_SCHEMA)
                have = {r["name"] for r in self._db.execute("PRAGMA table_info(runs)")}
                for column, kind in _RUN_COLUMNS.items():
                    if column not in have:
                        self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
            except BaseException:
                self._db.close()
                raise
            self._inode = _inode(self.db_path)

    def _reopen_if_replaced(self) -> None:
        """Another process rebuilt a damaged store (the file was moved aside): follow it to the new file."""
        if _inode(self.db_path) != self._inode:
            with self._lock:
                self._db.close()
                self._open()

    # --- low level ------------------------------------------------------------------------------
    def _q(self, sql: str, params=()) -> list[sqlite3.Row]:
        return self._repairing(lambda: self._db.execute(sql, params).fetchall())

    def _repairing(self, fn):
        """``fn()``; if it finds the file damaged, rebuild the store (``store_repair``) and try once more."""
        with self._lock:
            try:
                return fn()
            except sqlite3.DatabaseError as exc:
                if not store_repair.is_damage(exc):
                    raise
                self.recovered = store_repair.repair(self, exc) or self.recovered
                return fn()

    def _tx(self, fn):
        """Run ``fn(db)`` in one write transaction (BEGIN IMMEDIATE: serialises writers)."""

        def once():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

        return self._repairing(once)

    def exclusive(self, fn):
        """``fn()`` while holding the store's write lock (store calls inside it join the transaction)."""
        return self._tx(lambda db: fn())

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
    def create(self, cfg, device: str | None = None, owner: str | None = None) -> str:
        """Register a queued run of ``owner`` (None: single-user mode) for ``cfg`` (a TrainConfig or its
        dict); returns the run id."""
        config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        name = config.get("name") or " · ".join(
            str(config.get(k)) for k in ("backbone", "strategy", "data") if config.get(k)
        )
        device = device or device_key(config.get("device"))
        self.run_dir(run_id).mkdir(parents=True)
        self._q(
            "INSERT INTO runs (id, name, status, reason, config, device, created, owner) VALUES (?,?,?,?,?,?,?,?)",
            (run_id, name, "queued", "waiting for a worker", dumps(config), device, time.time(), owner),
        )
        self._write_record(run_id)
        return run_id

    def _write_record(self, run_id: str) -> None:
        """``run.json``: the run's row (written atomically), so a damaged store can be rebuilt."""
        rows = self._q(f"SELECT {', '.join(_RECORD_KEYS)} FROM runs WHERE id=?", (run_id,))
        if rows:
            record = {k: rows[0][k] for k in _RECORD_KEYS}
            record["config"] = loads(record["config"])
            write_atomic(self.run_dir(run_id) / RECORD, dumps(record))

    def assign(self, run_id: str, executor_name: str) -> str:
        """Mark who executes a queued run (``"pool"``: any warm worker may claim it). Returns its device."""
        rows = self._q("UPDATE runs SET executor=? WHERE id=? RETURNING device", (executor_name, run_id))
        if not rows:
            raise KeyError(f"no run {run_id!r} in {self.runs_dir}")
        return rows[0]["device"]

    def get(self, run_id: str) -> RunInfo:
        self._reopen_if_replaced()
        rows = self._q("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise KeyError(f"no run {run_id!r} in {self.runs_dir}")
        return self._info(rows[0])

    def list_runs(self, owner: str | None = None) -> list[RunInfo]:
        """All runs (or only those of ``owner``), newest first."""
        self._reopen_if_replaced()
        rows = (self._q("SELECT * FROM runs ORDER BY n DESC") if owner is None
                else self._q("SELECT * FROM runs WHERE owner=? ORDER BY n DESC", (owner,)))
        queues: dict[str, list] = {}
        return [self._info(r, queues) for r in rows]

    def _info(self, row: sqlite3.Row, queues: dict | None = None) -> RunInfo:
        position, reason = None, row["reason"]
        if row["status"] == "queued":
            queues = {} if queues is None else queues
            if row["device"] not in queues:
                with self._lock:
                    queues[row["device"]] = self._queued(self._db, row["device"])
            position = policy.POLICY.position(row["id"], queues[row["device"]])
            if position is not None:
                reason = f"waiting for a free {row['device']} slot (position {position} in the queue)"
        return RunInfo(
            id=row["id"], name=row["name"], status=row["status"], reason=reason,
            config=loads(row["config"]), created=row["created"], started=row["started"],
            finished=row["finished"], device=row["device"], summary=loads(row["summary"]),
            queue_position=position, info=loads(row["info"]), pid=row["pid"],
            heartbeat=row["heartbeat"], stop_requested=bool(row["stop_requested"]),
            owner=row["owner"], executor=row["executor"],
        )

    def reap(self) -> list[str]:
        """Mark active runs whose worker is gone (``policy.why_dead``) as failed; returns their ids. Runs that
        wait for a warm worker are left to ``executor.reap`` (it starts the pool)."""
        self._reopen_if_replaced()
        now = time.time()
        failed = []
        for row in self._q("SELECT id, status, pid, heartbeat, created, executor FROM runs "
                           "WHERE status IN ('queued','running')"):
            if row["status"] == "queued" and row["executor"] == policy.POOL and row["pid"] is None:
                continue
            reason = policy.why_dead(row["pid"], row["heartbeat"], row["created"], now)
            if reason:
                failed += [r[0] for r in self._q(
                    "UPDATE runs SET status='failed', reason=?, finished=? WHERE id=? AND status=? AND pid IS ? "
                    "RETURNING id",
                    (reason, now, row["id"], row["status"], row["pid"]),
                )]
        for run_id in failed:
            self._write_record(run_id)
        return failed

    def pool_waiting(self) -> list[str]:
        """The devices whose queued runs wait for a warm worker, sorted."""
        return [r[0] for r in self._q("SELECT DISTINCT device FROM runs WHERE status='queued' AND executor=? "
                                      "AND pid IS NULL ORDER BY device", (policy.POOL,))]

    def fail_unserved(self, device: str, reason: str, before: float) -> list[str]:
        """Fail the runs queued for the warm workers of ``device`` since before ``before``; returns their ids."""
        failed = [r[0] for r in self._q(
            "UPDATE runs SET status='failed', reason=?, finished=? WHERE status='queued' AND executor=? AND device=? "
            "AND pid IS NULL AND created<? RETURNING id",
            (reason, time.time(), policy.POOL, device, before),
        )]
        for run_id in failed:
            self._write_record(run_id)
        return failed

    def request_stop(self, run_id: str, by: str | None = None, teacher: bool = False) -> str:
        """Stop a run: a queued run is cancelled at once, a running one stops within a batch.
        A run with an owner may be stopped only by that owner (``by``) or the ``teacher``
        (PermissionError otherwise); a run without one by anyone. Returns the run's status after the request."""
        info = self.get(run_id)
        if info.owner is not None and by != info.owner and not teacher:
            raise PermissionError(f"this run belongs to {info.owner}; only they or the teacher can stop it")
        if info.status == "queued":
            self._q(
                "UPDATE runs SET status='stopped', reason='cancelled before it started', finished=?, "
                "stop_requested=1 WHERE id=? AND status='queued'",
                (time.time(), run_id),
            )
            self._write_record(run_id)
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
    def _queued(db, device: str) -> list[tuple[str, str | None]]:
        """(id, owner) of the runs queued on ``device``, oldest first (``policy.POLICY`` orders them)."""
        return [(r[0], r[1]) for r in db.execute(
            "SELECT id, owner FROM runs WHERE status='queued' AND device=? ORDER BY n", (device,))]

    @staticmethod
    def _running(db, device: str) -> int:
        return db.execute("SELECT COUNT(*) FROM runs WHERE status='running' AND device=?", (device,)).fetchone()[0]

    def pool_demand(self, device: str) -> int:
        """Runs of the warm pool on ``device`` that are queued or training."""
        return self._q("SELECT COUNT(*) FROM runs WHERE executor=? AND device=? AND status IN ('queued','running')",
                       (policy.POOL, device))[0][0]

    def active_count(self) -> int:
        """Runs queued or training, on any device (how crowded the server is)."""
        return self._q("SELECT COUNT(*) FROM runs WHERE status IN ('queued','running')")[0][0]

    def running_count(self, device: str) -> int:
        """How many runs train on ``device`` now."""
        with self._lock:
            return self._repairing(lambda: self._running(self._db, device))

    def try_start(self, run_id: str) -> bool:
        """Claim a device slot when the queue policy (``policy.POLICY``: round robin across owners per
        device, ``device_limit`` at once) lets ``run_id`` start (after ``reap`` freed the slots of dead
        runs). Queued → running atomically."""
        self.reap()

        def claim(db) -> bool:
            row = db.execute("SELECT device, status FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None or row["status"] != "queued":
                return False
            device = row["device"]
            if not policy.POLICY.may_start(run_id, device, self._queued(db, device), self._running(db, device)):
                return False
            db.execute(
                "UPDATE runs SET status='running', reason='starting: loading libraries, data and model', started=?, heartbeat=? "
                "WHERE id=?",
                (time.time(), time.time(), run_id),
            )
            return True

        return self._tx(claim)

    def claim_next(self, device: str, pid: int, held: int = 0) -> str | None:
        """For warm worker ``pid``: atomically take the first queued pool run of ``device`` that the queue
        policy lets start now (queued → running, the run now belongs to ``pid``). None if there is none.
        A worker takes one device slot however many runs it ``held`` (they take turns: ``turns``); while it
        holds some, it takes more only when every slot is busy."""
        self._reopen_if_replaced()
        if not self._q("SELECT 1 FROM runs WHERE status='queued' AND device=? AND executor=? LIMIT 1",
                       (device, policy.POOL)):
            return None  # the idle poll: a read, no write lock

        def claim(db) -> str | None:
            rows = db.execute("SELECT id, owner, executor FROM runs WHERE status='queued' AND device=? ORDER BY n",
                              (device,)).fetchall()
            pool = {r["id"] for r in rows if r["executor"] == policy.POOL}
            others = db.execute("SELECT pid FROM runs WHERE status='running' AND device=? AND pid IS NOT ?",
                                (device, pid)).fetchall()
            busy, slots = len({r[0] or -i for i, r in enumerate(others)}), policy.POLICY.slots(device)
            free = int(busy + 1 >= slots) if held else slots - busy  # a worker with runs lets idle ones go first
            for run_id in policy.POLICY.order([(r["id"], r["owner"]) for r in rows])[:max(free, 0)]:
                if run_id in pool:
                    now = time.time()
                    db.execute("UPDATE runs SET status='running', reason='starting: loading data and model', "
                               "started=?, heartbeat=?, pid=? WHERE id=?", (now, now, pid, run_id))
                    db.execute("UPDATE workers SET run_id=?, runs=runs+1, heartbeat=? WHERE pid=?", (run_id, now, pid))
                    return run_id
            return None

        return self._tx(claim)

    def claim(self, run_id: str, reason: str) -> bool:
        """Queued → running whatever this machine's device slots (an executor whose runs train elsewhere,
        e.g. on a Ray cluster, has its own limits), with ``reason`` as the run's line. False if the run
        is no longer queued (cancelled meanwhile)."""
        now = time.time()
        return bool(self._q("UPDATE runs SET status='running', reason=?, started=?, heartbeat=? "
                            "WHERE id=? AND status='queued' RETURNING id", (reason, now, now, run_id)))

    def set_reason(self, run_id: str, reason: str | None, status: str = "running") -> bool:
        """The run's line (where or how it runs) while it still has ``status``; False if it has another."""
        return bool(self._q("UPDATE runs SET reason=? WHERE id=? AND status=? RETURNING id", (reason, run_id, status)))

    def set_queue_reason(self, run_id: str) -> None:
        info = self.get(run_id)
        if info.status == "queued" and info.reason:
            self._q("UPDATE runs SET reason=? WHERE id=? AND status='queued' AND reason IS NOT ?",
                    (info.reason, run_id, info.reason))

    def set_info(self, run_id: str, info: dict) -> None:
        self._q("UPDATE runs SET info=?, reason=NULL WHERE id=?", (dumps(info), run_id))

    def finish(self, run_id: str, status: str, reason: str | None = None, summary: dict | None = None) -> None:
        """Record the final status (only if the run is still active: a reaper may have been first)."""
        assert status in STATUSES and status not in ACTIVE, status
        if summary is not None:
            (self.run_dir(run_id) / "summary.json").write_text(dumps(summary))
        self._q(
            "UPDATE runs SET status=?, reason=?, finished=?, summary=COALESCE(?, summary) "
            "WHERE id=? AND status IN ('queued','running')",
            (status, reason, time.time(), None if summary is None else dumps(summary), run_id),
        )
        self._write_record(run_id)

    # --- the warm pool's workers ----------------------------------------------------------------
    def register_worker(self, pid: int, device: str) -> None:
        """A warm worker of ``device`` exists (its launcher and then the worker itself say so)."""
        now = time.time()
        self._q(
            "INSERT INTO workers (pid, device, started, heartbeat) VALUES (?,?,?,?) ON CONFLICT(pid) DO UPDATE SET "
            "device=excluded.device, heartbeat=excluded.heartbeat, "
            "started=CASE WHEN ended IS NULL THEN started ELSE excluded.started END, "
            "runs=CASE WHEN ended IS NULL THEN runs ELSE 0 END, ended=NULL, reason=NULL, run_id=NULL",
            (pid, device, now, now),
        )

    def worker_beat(self, pid: int, run_id: str | None = None) -> bool:
        """A warm worker's heartbeat, and that of the runs it holds. False if the worker has no row."""
        now = time.time()
        if run_id is not None:
            self._q("UPDATE runs SET heartbeat=? WHERE pid=? AND status='running'", (now, pid))
        return bool(self._q("UPDATE workers SET heartbeat=?, run_id=? WHERE pid=? AND ended IS NULL RETURNING pid",
                            (now, run_id, pid)))

    def workers(self, device: str | None = None) -> list[dict]:
        """The warm workers not known to have ended (of ``device``, or all)."""
        rows = (self._q("SELECT * FROM workers WHERE ended IS NULL ORDER BY started") if device is None else
                self._q("SELECT * FROM workers WHERE ended IS NULL AND device=? ORDER BY started", (device,)))
        return [dict(r) for r in rows]

    def end_worker(self, pid: int, reason: str) -> None:
        """Worker ``pid`` ended (``reason`` starts with "exited" when it ended by itself); old rows are dropped."""
        now = time.time()
        self._q("UPDATE workers SET ended=?, reason=?, run_id=NULL WHERE pid=? AND ended IS NULL", (now, reason, pid))
        self._q("DELETE FROM workers WHERE ended < ?", (now - 86400,))

    def failed_starts(self, device: str, since: float) -> int:
        """Workers of ``device`` started after ``since`` that ended without running anything, not by
        themselves (a worker that cannot start: do not start another at once)."""
        return self._q(
            "SELECT COUNT(*) FROM workers WHERE device=? AND started>? AND ended IS NOT NULL AND runs=0 "
            "AND reason NOT LIKE 'exited%' AND reason != 'stopped'", (device, since))[0][0]

    # --- metrics and snapshots ------------------------------------------------------------------
    def append_metric(self, run_id: str, kind: str, data: dict) -> int:
        """Add a metric row; epoch and phase rows also go to the run folder's ``metrics.jsonl``."""
        text = dumps(data)
        seq = self._q("INSERT INTO metrics (run_id, kind, data) VALUES (?,?,?) RETURNING seq", (run_id, kind, text))[0][0]
        if kind in ("epoch", "phase"):
            with open(self.run_dir(run_id) / METRICS_LOG, "a") as f:
                f.write(json.dumps({"kind": kind, "data": json.loads(text)}) + "\n")
        return seq

    def restore(self, record: dict, summary: dict | None, metrics: list[tuple[str, dict]]) -> None:
        """Insert a run rebuilt from its folder (``tl_core.runs.repair``), with its metric rows."""
        row = {k: record.get(k) for k in _RECORD_KEYS}
        row["config"] = dumps(row["config"] or {})
        row["summary"] = None if summary is None else dumps(summary)
        keys = list(row)
        self._q(f"INSERT OR IGNORE INTO runs ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                [row[k] for k in keys])
        for kind, data in metrics:
            self._q("INSERT INTO metrics (run_id, kind, data) VALUES (?,?,?)", (row["id"], kind, dumps(data)))

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

    def save_predictions(self, run_id: str, predictions: dict) -> Path:
        """The last validation's per-image predictions (``after_fit``'s ``predictions``: ``val_idx``, true
        ``label``, ``pred``, ``conf``) → predictions.npz, about 10 bytes an image (no pickle; written atomically)."""
        label, pred = np.asarray(predictions["label"]), np.asarray(predictions["pred"])
        cls = np.int16 if max(label.max(initial=0), pred.max(initial=0)) < 2**15 else np.int32
        arrays = {"val_idx": np.asarray(predictions["val_idx"], dtype=np.int32), "label": label.astype(cls),
                  "pred": pred.astype(cls), "conf": np.asarray(predictions["conf"], dtype=np.float16)}
        if len({len(a) for a in arrays.values()}) != 1:
            raise ValueError(f"predictions of unequal lengths: { {k: len(a) for k, a in arrays.items()} }")
        path = self.run_dir(run_id) / PREDICTIONS
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
        return path

    def predictions(self, run_id: str) -> dict[str, np.ndarray] | None:
        """{val_idx, label, pred, conf} per validation image (the images the summary's confusion matrix
        counts), or None for a run that saved none (before its first validation, or from an older version)."""
        path = self.run_dir(run_id) / PREDICTIONS
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ("val_idx", "label", "pred", "conf")}

    def model_dir(self, run_id: str) -> Path | None:
        """The run folder if it holds a saved model (``checkpoint.load_model(path)``), else None."""
        d = self.run_dir(run_id)
        return d if (d / "model.safetensors").exists() else None

