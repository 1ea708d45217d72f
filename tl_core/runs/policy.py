"""What the run store's rows mean for execution (the store and the executors build on it): how many runs
may train at once on a device (``device_limit``), in which order queued runs start (``POLICY``: the
``RoundRobinQueue``, fair across owners; ``FifoQueue``: the order of creation) and when an active run's
worker counts as dead (``why_dead``, knowing how the processes ``spawn`` started ended)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

from tl_core.devices import cores

STALE_S = 30.0
NEVER_STARTED_S = 120.0  # a queued run whose worker never registered
DIED = "worker process ended unexpectedly (killed, or out of memory)"
POOL = "pool"  # the ``executor`` mark of runs that wait for a warm worker
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds tl_core/


# --- the queue policy ----------------------------------------------------------------------------
# Measured on 2 cores (benchmarks/bench_classroom.py --workers 1 2): for a class that runs the default
# configuration, one worker with both cores wins (the second identical run reuses the first one's features
# instead of computing them at the same time: 4 runs in 16 s against 30 s). Two workers of one thread win
# when runs differ or other jobs load the machine (4 runs of 4 seeds: 60 s against 110 s): TL_WORKERS=2.
# Each warm worker takes ~1.2-1.8 GB with the default run. Runs share the cores (worker.ThreadShare).
DEFAULT_CPU_WORKERS = 1


def env_int(*names: str) -> int | None:
    """The first of the environment variables ``names`` that holds an integer (at least 1), else None."""
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
        return env_int("TL_MAX_CPU_RUNS", "TL_WORKERS") or min(DEFAULT_CPU_WORKERS, cores())
    return 1


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
