"""How queued runs get executed: the queue policy, worker liveness, the executors and the warm pool.

``tl_core.runs.store.RunStore`` keeps the rows; this module decides what they mean for execution:

- the **queue policy**: which device a run uses (its concurrency key), how many runs may train at
  once on a device (``device_limit``) and in which order queued runs start (``POLICY``: the
  ``RoundRobinQueue``, fair across owners; ``FifoQueue`` is the plain order of creation);
- **liveness**: when an active run's worker counts as dead (``why_dead``: the store's reaper asks it);
- the **executor interface** (``Executor``: ``submit(run_id)``, ``stop(run_id)``) and its
  implementations, chosen by ``$TL_EXECUTOR`` in ``get_executor``:

  - ``local`` (default): ``LocalExecutor``, the **warm pool**. ``python -m tl_core.runs.worker --serve``
    processes (one per device; ``$TL_WORKERS`` on CPU) start once, keep torch, timm, models and
    data in memory and claim queued runs from the store (``RunStore.claim_next``). ``submit`` marks
    the run for the pool and starts the pool when no live worker serves the run's device; the
    store's reaper restarts a pool that died while runs wait for it (``ensure_pool``).
  - ``process``: ``ProcessExecutor``, one new ``python -m tl_core.runs.worker RUN_ID`` process per run.
  - ``ray``: ``tl_core.runs.ray_host.RayExecutor`` (imported only then).

``launch(cfg, owner=...)`` = validate + ``RunStore.create`` + ``get_executor().submit``.
This module never imports ``tl_core.runs.store`` at import time (``runs`` imports it).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Protocol, Sequence

STALE_S = 30.0
NEVER_STARTED_S = 120.0  # a queued run whose worker never registered
DIED = "worker process ended unexpectedly (killed, or out of memory)"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds tl_core/


# --- the queue policy ----------------------------------------------------------------------------
def resolve_device(device: str | None) -> str:
    """The device a run will use, as a concurrency key: ``cpu``, ``cuda:N`` or ``mps``."""
    device = (device or "auto").strip().lower()
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return "cuda:0"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    return "cuda:0" if device == "cuda" else device


# Measured on 2 cores (benchmarks/bench_classroom.py --workers 1 2): for a class that runs the default
# configuration, one worker with both cores wins (the second identical run reuses the first one's features
# instead of computing them at the same time: 4 runs in 16 s against 30 s). Two workers of one thread win
# when runs differ or other jobs load the machine (4 runs of 4 seeds: 60 s against 110 s): TL_WORKERS=2.
# Each warm worker takes ~1.2-1.8 GB with the default run. Runs share the cores (worker.ThreadShare).
DEFAULT_CPU_WORKERS = 1


def _env_int(*names: str) -> int | None:
    for name in names:
        try:
            value = int(os.environ.get(name, ""))
        except ValueError:
            continue
        return max(1, value)
    return None


def device_limit(device: str) -> int:
    """How many runs may train at once on ``device`` (and how many warm workers serve it): 1 per GPU;
    on CPU ``$TL_MAX_CPU_RUNS``, else ``$TL_WORKERS``, else ``DEFAULT_CPU_WORKERS`` (at most one per core)."""
    if device == "cpu":
        return _env_int("TL_MAX_CPU_RUNS", "TL_WORKERS") or min(DEFAULT_CPU_WORKERS, _cores())
    return 1


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _entries(queued: Sequence) -> list[tuple[str, str | None]]:
    """Queued runs as (id, owner) pairs, oldest first; a plain id has no owner."""
    return [(q, None) if isinstance(q, str) else (q[0], q[1]) for q in queued]


class FifoQueue:
    """Per device, queued runs start oldest first, ``device_limit(device)`` at once.

    ``queued`` is what is queued on one device, oldest first: run ids, or (run id, owner) pairs."""

    def slots(self, device: str) -> int:
        return device_limit(device)

    def order(self, queued: Sequence) -> list[str]:
        """The ids queued on one device in the order they will start."""
        return [run_id for run_id, _ in _entries(queued)]

    def position(self, run_id: str, queued: Sequence) -> int | None:
        """1 = next to start; None when ``run_id`` is no longer queued."""
        order = self.order(queued)
        return order.index(run_id) + 1 if run_id in order else None

    def may_start(self, run_id: str, device: str, queued: Sequence, running: int) -> bool:
        """Whether ``run_id`` may take a slot now, with ``running`` runs already training on ``device``:
        it is among the first (free slots) of the order."""
        free = self.slots(device) - running
        return free > 0 and run_id in self.order(queued)[:free]


class RoundRobinQueue(FifoQueue):
    """Fair across owners: every owner's k-th queued run starts before anyone's (k+1)-th, ties by
    creation. Runs without an owner (single-user mode) count as one owner, so alone they are FIFO.
    One student's lab of 22 runs thus holds each other student back by at most one run."""

    def order(self, queued: Sequence) -> list[str]:
        nth: Counter = Counter()
        ranked = []
        for created, (run_id, owner) in enumerate(_entries(queued)):
            ranked.append((nth[owner], created, run_id))
            nth[owner] += 1
        return [run_id for _, _, run_id in sorted(ranked)]


POLICY = RoundRobinQueue()


# --- liveness ------------------------------------------------------------------------------------
_ENDED: dict[int, str] = {}  # how our own children ended, once reaped (any later caller still learns it)
_CHILDREN: dict[int, subprocess.Popen] = {}  # the processes ``spawn`` started


def pid_alive(pid: int | None) -> tuple[bool, str | None]:
    """(alive, how it ended if known). Reaps the process if it is our own child (no zombies)."""
    if not pid:
        return False, None
    child = _CHILDREN.get(pid)
    if child is not None:  # started here by ``spawn``: its Popen knows how it ended
        code = child.poll()
        if code is None:
            return True, None
        return False, f"signal {-code}" if code < 0 else f"exit code {code}"
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit code {os.WEXITSTATUS(status)}"
            _ENDED[pid] = how
            return False, how
    except ChildProcessError:
        pass  # not our child: fall through to a plain existence check
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, _ENDED.get(pid)
    except PermissionError:
        return True, None
    _ENDED.pop(pid, None)  # the number belongs to a new process now
    try:  # a zombie (exited, parent not waiting) counts as dead
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False, None
    except (OSError, IndexError):
        pass
    return True, None


def why_dead(pid: int | None, heartbeat: float | None, created: float, now: float) -> str | None:
    """Why an active run's worker counts as gone (the reason to record), or None while it lives:
    its process ended, its heartbeat is older than ``STALE_S``, or none registered in ``NEVER_STARTED_S``."""
    if pid is None:
        return "the worker process never started" if now - created > NEVER_STARTED_S else None
    alive, how = pid_alive(pid)
    if not alive:
        return DIED + (f" [{how}]" if how else "")
    if heartbeat is not None and now - heartbeat > STALE_S:
        return f"worker stopped responding (no heartbeat for {now - heartbeat:.0f} s)"
    return None


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


def spawn(module: str, args: Sequence[str], log_path: str | os.PathLike) -> subprocess.Popen:
    """``python -m MODULE ARGS`` in a new session (it survives the page, the tab and the caller),
    with tl_core importable and its output appended to ``log_path``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("MALLOC_ARENA_MAX", "2")  # a worker's run threads would each grow a malloc arena (mixed class: 4.0 → 2.6 GB)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )
    _CHILDREN[proc.pid] = proc  # kept, so that ``pid_alive`` still learns how it ended after it is reaped
    return proc


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
POOL = "pool"  # the ``executor`` mark of runs that wait for a warm worker
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
        self.store.reap()  # a worker that died: its run fails, and it is replaced (below, or by the reaper)
        ensure_pool(self.store, device)

    def stop(self, run_id: str, **rights) -> str:
        return self.store.request_stop(run_id, **rights)


EXECUTORS = ("local", "process", "ray")


def get_executor(runs_dir: str | os.PathLike | None = None) -> Executor:
    """The executor ``$TL_EXECUTOR`` names (``local``, the default: the warm pool; ``process``: one
    process per run; ``ray``: ``tl_core.runs.ray_host``), over the store in ``runs_dir``."""
    from tl_core.runs.store import RunStore

    kind = (os.environ.get("TL_EXECUTOR") or "local").strip().lower()
    if kind not in EXECUTORS:
        raise ValueError(f"TL_EXECUTOR={kind!r} is not an executor: set it to one of {', '.join(EXECUTORS)} "
                         "(or unset it for the warm local workers)")
    store = RunStore(runs_dir)
    if kind == "ray":
        from tl_core.runs.ray_host import RayExecutor

        return RayExecutor(store)
    return (LocalExecutor if kind == "local" else ProcessExecutor)(store)


def check_config(cfg) -> None:
    """Validate ``cfg`` and that its pretrained weights can be had (WeightsError otherwise): fail
    here, with one clear line, not in a run."""
    if hasattr(cfg, "validate"):
        cfg.validate()
        from tl_core.models import backbones

        if cfg.effective_weights == "pretrained" and cfg.backbone in backbones.catalogue():
            backbones.check_weights(cfg.backbone, cfg.weights_file, cfg.allow_download)


def launch(cfg, runs_dir: str | os.PathLike | None = None, owner: str | None = None) -> str:
    """Validate ``cfg`` (and that its pretrained weights can be had: WeightsError otherwise), create a
    queued run of ``owner`` (None: single-user mode) and hand it to ``get_executor()``: by default a
    warm worker picks it up within a fraction of a second. Returns the run id at once."""
    check_config(cfg)
    ex = get_executor(runs_dir)
    run_id = ex.store.create(cfg, owner=owner)
    ex.submit(run_id)
    return run_id
