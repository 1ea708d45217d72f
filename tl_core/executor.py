"""How queued runs get executed: the queue policy, worker liveness, and the executor interface.

``tl_core.runs.RunStore`` keeps the rows; this module decides what they mean for execution:

- the **queue policy**: which device a run uses (its concurrency key), how many runs may train at
  once on a device (``device_limit``) and in which order queued runs start (``FifoQueue``);
- **liveness**: when an active run's worker counts as dead (``why_dead``: the store's reaper asks it);
- the **executor interface** (``Executor``: ``submit(run_id)``, ``stop(run_id)``) and today's only
  implementation, ``ProcessExecutor``: one new ``python -m tl_core.worker RUN_ID`` process per run,
  in its own session, that waits for its device slot (``RunStore.try_start``) and trains.

``launch(cfg)`` = validate + ``RunStore.create`` + ``ProcessExecutor.submit``.
This module never imports ``tl_core.runs`` at import time (``runs`` imports it).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Protocol, Sequence

STALE_S = 30.0
NEVER_STARTED_S = 120.0  # a queued run whose worker never registered
DIED = "worker process ended unexpectedly (killed, or out of memory)"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


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


def device_limit(device: str) -> int:
    """How many runs may train at once on ``device``: 1 per GPU, ``$TL_MAX_CPU_RUNS`` (default 1) on CPU."""
    if device == "cpu":
        try:
            return max(1, int(os.environ.get("TL_MAX_CPU_RUNS", "1")))
        except ValueError:
            return 1
    return 1


class FifoQueue:
    """Today's queue policy: per device, queued runs start oldest first, ``device_limit(device)`` at once."""

    def slots(self, device: str) -> int:
        return device_limit(device)

    def order(self, queued: Sequence[str]) -> list[str]:
        """The ids queued on one device (oldest first) in the order they will start."""
        return list(queued)

    def position(self, run_id: str, queued: Sequence[str]) -> int | None:
        """1 = next to start; None when ``run_id`` is no longer queued."""
        order = self.order(queued)
        return order.index(run_id) + 1 if run_id in order else None

    def may_start(self, run_id: str, device: str, queued: Sequence[str], running: int) -> bool:
        """Whether ``run_id`` may take a slot now, with ``running`` runs already training on ``device``."""
        order = self.order(queued)
        return running < self.slots(device) and bool(order) and order[0] == run_id


POLICY = FifoQueue()


# --- liveness ------------------------------------------------------------------------------------
def pid_alive(pid: int | None) -> tuple[bool, str | None]:
    """(alive, how it ended if known). Reaps the process if it is our own child (no zombies)."""
    if not pid:
        return False, None
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return False, f"signal {os.WTERMSIG(status)}"
            return False, f"exit code {os.WEXITSTATUS(status)}"
    except ChildProcessError:
        pass  # not our child: fall through to a plain existence check
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        return True, None
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
    """Gives queued runs a worker. The worker claims its device slot itself (``RunStore.try_start``),
    so an executor needs no scheduling of its own."""

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
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )


class ProcessExecutor:
    """One new worker process per run (``python -m tl_core.worker RUN_ID``, log in ``worker.log``)."""

    def __init__(self, store):
        self.store = store  # a tl_core.runs.RunStore

    def submit(self, run_id: str) -> None:
        proc = spawn("tl_core.worker", [run_id, "--runs-dir", str(self.store.runs_dir)], self.store.log_path(run_id))
        self.store.record_pid(run_id, proc.pid)

    def stop(self, run_id: str) -> str:
        return self.store.request_stop(run_id)


def check_config(cfg) -> None:
    """Validate ``cfg`` and that its pretrained weights can be had (WeightsError otherwise): fail
    here, with one clear line, not in a run."""
    if hasattr(cfg, "validate"):
        cfg.validate()
        from . import backbones

        if cfg.effective_weights == "pretrained" and cfg.backbone in backbones.catalogue():
            backbones.check_weights(cfg.backbone, cfg.weights_file, cfg.allow_download)


def launch(cfg, runs_dir: str | os.PathLike | None = None) -> str:
    """Validate ``cfg`` (and that its pretrained weights can be had: WeightsError otherwise), create a
    queued run and start its worker process in a new session (it survives the page, the tab and the
    launching process). Returns the run id at once."""
    from .runs import RunStore

    check_config(cfg)
    store = RunStore(runs_dir)
    try:
        run_id = store.create(cfg)
        ProcessExecutor(store).submit(run_id)
        return run_id
    finally:
        store.close()
