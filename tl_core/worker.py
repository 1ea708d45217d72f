"""``python -m tl_core.worker RUN_ID --runs-dir DIR``: one training run in its own process.

Started by ``executor.ProcessExecutor`` (``runs.launch``). It waits for a device slot (queued → running,
as ``executor.POLICY`` allows: FIFO per device), trains with
``training.fit(cfg, [StoreCallback])`` and records the final status with a readable reason.
Its stdout/stderr go to ``DIR/RUN_ID/worker.log``.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback

from .executor import device_limit
from .runs import HEARTBEAT_S, RunStore, StoreCallback

QUEUE_POLL_S = 0.5

DIVERGED_ADVICE = (
    "Try a learning rate about 10x smaller, a lower backbone LR multiplier, or fewer unfrozen blocks."
)
OOM_ADVICE = "Out of memory: try a smaller batch size or image size, or freeze more blocks."


class Terminated(BaseException):
    """Raised in the main thread when the worker receives SIGTERM/SIGINT/SIGHUP."""


def _on_signal(signum, frame):
    raise Terminated(signal.Signals(signum).name)


class Heartbeat(threading.Thread):
    def __init__(self, store: RunStore, run_id: str):
        super().__init__(name="heartbeat", daemon=True)
        self.store, self.run_id, self.done = store, run_id, threading.Event()

    def run(self):
        while not self.done.wait(HEARTBEAT_S):
            try:
                self.store.heartbeat(self.run_id)
            except Exception:  # a busy database: try again next beat
                traceback.print_exc()


def wait_for_slot(store: RunStore, run_id: str) -> bool:
    """Block until this run holds a device slot. False if it was cancelled (or failed) meanwhile."""
    while not store.try_start(run_id):
        if store.get(run_id).status != "queued":
            return False
        store.set_queue_reason(run_id)
        time.sleep(QUEUE_POLL_S)
    return True


def _share_cores(cfg, device: str) -> int | None:
    """CPU runs split the cores: each of the ``device_limit`` concurrent runs gets cores // limit
    threads (the trainer applies ``cfg.num_threads``)."""
    if device != "cpu":
        return None
    if cfg.num_threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        cfg.num_threads = max(1, cores // device_limit("cpu"))
    return cfg.num_threads


def _outcome(exc: BaseException) -> tuple[str, str]:
    """(status, reason) for an exception that ended the training."""
    from . import training

    name = type(exc).__name__
    if isinstance(exc, training.Diverged):
        return "diverged", f"Training diverged: {exc or 'the loss became NaN or infinite'}. {DIVERGED_ADVICE}"
    if isinstance(exc, training.CancelFit):
        return "stopped", str(exc) or "stopped"
    if isinstance(exc, Terminated):
        return "failed", f"worker process was terminated ({exc})"
    text = str(exc)
    if name == "OutOfMemoryError" or "out of memory" in text.lower() or "can't allocate memory" in text:
        return "failed", f"{OOM_ADVICE} ({name}: {text.splitlines()[0] if text else ''})"
    if isinstance(exc, MemoryError):
        return "failed", OOM_ADVICE
    return "failed", f"{name}: {text.splitlines()[0] if text else 'no message'}"


def run(store: RunStore, run_id: str) -> str:
    """Train ``run_id`` to the end and record its final status; returns that status."""
    info = store.get(run_id)
    print(f"[worker] run {run_id} ({info.name}) on {info.device}, pid {os.getpid()}", flush=True)
    if not wait_for_slot(store, run_id):
        print(f"[worker] not started: {store.get(run_id).status}", flush=True)
        return store.get(run_id).status
    from . import training  # torch + timm: seconds; the run already shows as running meanwhile
    status, reason, summary = "failed", None, None
    callback = StoreCallback(store, run_id)
    try:
        cfg = training.TrainConfig.from_dict(info.config)
        threads = _share_cores(cfg, info.device)
        if store.stop_requested(run_id):  # asked to stop while the libraries were loading
            status, reason = "stopped", "stopped by request before training started"
            return status
        print(f"[worker] started; torch threads: {threads or 'default'}", flush=True)
        summary = training.fit(cfg, [callback])
        status = summary.get("status") or "completed"
        reason = summary.get("reason") or ("stopped by request" if status == "stopped" else None)
        if status == "diverged" and "learning rate" not in (reason or ""):
            reason = f"{reason or 'Training diverged: the loss became NaN or infinite'}. {DIVERGED_ADVICE}"
    except BaseException as exc:  # record every ending, including SIGTERM
        traceback.print_exc()
        status, reason = _outcome(exc)
        summary = callback.summary  # after_fit still ran inside fit
    finally:
        store.finish(run_id, status, reason, summary)
        print(f"[worker] {status}: {reason or ''}", flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tl_core.worker")
    p.add_argument("run_id")
    p.add_argument("--runs-dir", default=None)
    args = p.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    store = RunStore(args.runs_dir)
    store.attach_worker(args.run_id, os.getpid())
    beat = Heartbeat(store, args.run_id)
    beat.start()
    try:
        status = run(store, args.run_id)
    except BaseException as exc:  # outside training: while queued, or training failed to import
        traceback.print_exc()
        why = f"terminated ({exc})" if isinstance(exc, Terminated) else f"{type(exc).__name__}: {exc}"
        store.finish(args.run_id, "failed", f"worker process {why}")
        status = "failed"
    finally:
        beat.done.set()
    return 0 if status in ("completed", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main())
