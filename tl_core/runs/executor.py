"""How queued runs get executed: the executor interface, its implementations and the warm pool.

``tl_core.runs.store.RunStore`` keeps the rows, ``tl_core.runs.policy`` says what they mean (queue
order, device slots, liveness); this module gives queued runs a worker:

- the **executor interface** (``Executor``: ``submit(run_id)``, ``stop(run_id)``) and its local
  implementations (``tl_core.runs.launcher.get_executor`` picks one by ``$TL_EXECUTOR``):

  - ``LocalExecutor``, the **warm pool** (the default). ``python -m tl_core.runs.worker --serve``
    processes (one per device; ``$TL_WORKERS`` on CPU) start once, keep torch, timm, models and
    data in memory and claim queued runs from the store (``RunStore.claim_next``). ``submit`` marks
    the run for the pool and starts the pool when no live worker serves the run's device;
  - ``ProcessExecutor``: one new ``python -m tl_core.runs.worker RUN_ID`` process per run;

- ``reap(store)``: the store's reaper (dead runs end as failed), and a new pool for a device whose
  queued runs wait for one that died. Whoever shows or serves runs calls it as it refreshes;
- ``LocalExecutor.warm()``: the app server's start (app.py's ``st.App`` lifespan) starts the pool of the default
  device before any run; ``warming(store, device)`` says how far its new workers have loaded (``WARM_STEPS``).
"""
from __future__ import annotations

import json
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Protocol

from tl_core.runs.policy import NEVER_STARTED_S, POOL, device_limit, pid_alive, spawn, why_dead


# --- executors -----------------------------------------------------------------------------------
class Executor(Protocol):
    """Gives queued runs a worker. Built as ``Executor(store)`` with a ``tl_core.runs.store.RunStore`` (kept
    as ``.store``). Workers claim their device slot through the store (``RunStore.try_start`` or
    ``RunStore.claim_next``), so an executor needs no scheduling of its own."""

    store: object

    def submit(self, run_id: str) -> None:
        """Start (or hand to a worker) the queued run ``run_id``; returns at once."""

    def stop(self, run_id: str) -> str:
        """Stop a run: a queued run is cancelled at once, a running one stops within a batch.
        Returns the run's status after the request."""


class ProcessExecutor:
    """One new worker process per run (``python -m tl_core.runs.worker RUN_ID``, log in ``worker.log``)."""

    def __init__(self, store):
        self.store = store  # a tl_core.runs.store.RunStore

    def submit(self, run_id: str) -> None:
        self.store.assign(run_id, "process")
        proc = spawn("tl_core.runs.worker", [run_id, "--runs-dir", str(self.store.runs_dir)], self.store.log_path(run_id))
        self.store.record_pid(run_id, proc.pid)

    def stop(self, run_id: str, **rights) -> str:
        return self.store.request_stop(run_id, **rights)


# --- the warm pool -------------------------------------------------------------------------------
WORKER_POLL_S = 0.1  # how often an idle warm worker looks at the queue
WORKER_IDLE_S = 900.0  # an idle warm worker exits after this long ($TL_WORKER_IDLE_S)
ORPHAN_IDLE_S = 30.0  # ... or after this long once the process that started it has ended (a CLI, a test)
RESPAWN_S = 10.0  # a worker that ended this soon after its start, having run nothing, is not restarted before this


def worker_idle_s() -> float:
    try:
        return max(1.0, float(os.environ.get("TL_WORKER_IDLE_S", WORKER_IDLE_S)))
    except ValueError:
        return WORKER_IDLE_S


def pool_log(runs_dir: str | os.PathLike, device: str) -> Path:
    """The warm workers' own log for ``device`` (each run's output goes to its ``worker.log``)."""
    folder = Path(runs_dir) / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{device.replace(':', '-')}.log"


WARM_STEPS = ("libraries", "data", "backbone")  # what a new warm worker loads before it takes a run


def _stage_path(runs_dir: str | os.PathLike, pid: int) -> Path:
    return Path(runs_dir) / "workers" / f"{pid}.stage.json"


def set_stage(runs_dir: str | os.PathLike, pid: int, done: int) -> None:
    """A warm worker says how far it has loaded: ``done`` of the ``WARM_STEPS`` (all of them: ready). Atomic."""
    path = _stage_path(runs_dir, pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"done": done}), encoding="utf-8")
    tmp.replace(path)


def clear_stage(runs_dir: str | os.PathLike, pid: int) -> None:
    _stage_path(runs_dir, pid).unlink(missing_ok=True)


def warming(store, device: str) -> tuple[int, str] | None:
    """While the warm pool of ``device`` is still loading and none of its live workers is ready:
    (steps done, the step it loads now), of ``WARM_STEPS``. None when one is ready, or none lives."""
    done = []
    for w in live_workers(store, device):
        try:
            done.append(json.loads(_stage_path(store.runs_dir, w["pid"]).read_text(encoding="utf-8"))["done"])
        except (OSError, ValueError, KeyError):
            done.append(0)  # started, has not said anything yet
    if not done or max(done) >= len(WARM_STEPS):
        return None
    return max(done), WARM_STEPS[max(done)]


def live_workers(store, device: str, now: float | None = None) -> list:
    """The registered warm workers of ``device`` whose process lives and beats (read only)."""
    now = time.time() if now is None else now
    return [w for w in store.workers(device) if why_dead(w["pid"], w["heartbeat"], w["started"], now) is None]


def ensure_pool(store, device: str) -> list[int]:
    """Start warm workers until enough live ones serve ``device``: one per pool run queued or training
    there, at most ``device_limit(device)``, at least one. Returns the new pids. Dead or silent workers
    are written off (a silent one is killed first). Atomic across processes: two launchers never both
    start the missing worker. A worker that ended right after its start without running anything is
    not restarted for ``RESPAWN_S`` (no crash loop)."""
    wanted = max(1, min(device_limit(device), store.pool_demand(device)))
    if len(live_workers(store, device)) >= wanted:  # the common case: read only, no write lock
        return []

    def fill() -> list[int]:
        now, live = time.time(), 0
        for w in store.workers(device):
            reason = why_dead(w["pid"], w["heartbeat"], w["started"], now)
            if reason is None:
                live += 1
                continue
            if pid_alive(w["pid"])[0]:
                _kill(w["pid"], signal.SIGKILL)
            store.end_worker(w["pid"], reason)
            clear_stage(store.runs_dir, w["pid"])
        if store.failed_starts(device, since=now - RESPAWN_S):
            return []
        return [start_worker(store, device) for _ in range(wanted - live)]

    return store.exclusive(fill)


def start_worker(store, device: str) -> int:
    proc = spawn("tl_core.runs.worker", ["--serve", "--device", device, "--runs-dir", str(store.runs_dir)],
                 pool_log(store.runs_dir, device))
    store.register_worker(proc.pid, device)
    return proc.pid


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_pool(store, timeout: float = 30.0) -> list[int]:
    """Stop every warm worker of this store (SIGTERM: a run in progress ends as failed; SIGKILL after
    ``timeout``). Returns their pids. For tests, benchmarks and a server's shutdown."""
    pids = [w["pid"] for w in store.workers()]
    for pid in pids:
        _kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    for pid in pids:
        while pid_alive(pid)[0] and time.time() < deadline:
            time.sleep(0.05)
        if pid_alive(pid)[0]:
            _kill(pid, signal.SIGKILL)
        store.end_worker(pid, "stopped")
    return pids


class LocalExecutor:
    """The warm pool: ``submit`` marks the run for the pool's workers and makes sure they run."""

    def __init__(self, store):
        self.store = store  # a tl_core.runs.store.RunStore

    def submit(self, run_id: str) -> None:
        device = self.store.assign(run_id, POOL)
        reap(self.store)  # a worker that died: its run fails, and it is replaced (here, or below)
        ensure_pool(self.store, device)

    def stop(self, run_id: str, **rights) -> str:
        return self.store.request_stop(run_id, **rights)

    def warm(self, device: str = "auto") -> list[int]:
        """Start the pool of ``device`` (``auto``: the default runs' device) now, before any run, so that the
        first run finds its libraries, backbone and data loaded. Returns the new pids (none if one lives)."""
        from tl_core.devices import device_key

        return ensure_pool(self.store, device_key(device))


def reap(store) -> list[str]:
    """``store.reap()`` (active runs whose worker is gone end as failed), then the warm pool of each device
    whose queued runs wait for it: started if none lives; if none can start, the runs that waited longer
    than ``NEVER_STARTED_S`` fail. Returns the failed ids."""
    failed, now = store.reap(), time.time()
    for device in store.pool_waiting():
        try:
            ensure_pool(store, device)
        except OSError:
            traceback.print_exc()
        if not live_workers(store, device, now):
            reason = (f"no warm worker could start for {device} (see {pool_log(store.runs_dir, device)}); "
                      "launch it again, or set TL_EXECUTOR=process")
            failed += store.fail_unserved(device, reason, now - NEVER_STARTED_S)
    return failed
