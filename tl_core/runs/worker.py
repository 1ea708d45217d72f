"""Worker processes: where runs train.

- ``python -m tl_core.runs.worker --serve --device cpu --runs-dir DIR``: a **warm worker** of the pool
  (``executor.LocalExecutor``, the default). It starts once, imports torch and timm, keeps the weights
  it has read (``weight_files.keep_weights``) and the decoded data sets (``tl_core.data``'s own cache) in
  memory, and loops: claim the next queued run of its device (``RunStore.claim_next``: atomic, in
  the queue policy's fair order), train it in-process, repeat. It looks at the queue every
  ``executor.WORKER_POLL_S`` and exits after ``$TL_WORKER_IDLE_S`` idle (900 s), after
  ``executor.ORPHAN_IDLE_S`` idle once the process that started it has ended (a CLI command, a test
  session; a page server lives on), or when its runs folder goes away. A run that raises ends as failed and the worker goes on; memory is freed between runs.
  Each run's output goes to ``DIR/RUN_ID/worker.log``, the worker's own to ``DIR/workers/DEVICE.log``.
- ``python -m tl_core.runs.worker RUN_ID --runs-dir DIR``: one run in its own process
  (``executor.ProcessExecutor``, ``TL_EXECUTOR=process``). It waits for a device slot
  (``RunStore.try_start``) and trains.

Both train with ``training.fit(cfg, [StoreCallback])`` and record the final status with a readable reason.
"""
from __future__ import annotations

import _imp
import argparse
import contextlib
import gc
import importlib
import os
import signal
import sys
import threading
import time
import traceback

from tl_core.runs.callback import StoreCallback
from tl_core.runs.executor import (ORPHAN_IDLE_S, WARM_STEPS, WORKER_POLL_S, clear_stage, reap, set_stage,
                                   worker_idle_s)
from tl_core.runs.policy import device_limit, env_int
from tl_core.runs.store import HEARTBEAT_S, RunStore
from tl_core.runs.turns import TurnCallback, Turns

QUEUE_POLL_S = 0.2
THREAD_CHECK_S = 1.0  # how often a CPU run looks at how many runs share the cores

INTERLEAVE_CPU = 32  # runs a CPU warm worker holds at once, taking turns ($TL_INTERLEAVE) ...
HOLD_RAM_FRACTION = 0.4  # ... while the worker takes less than this share of the machine's RAM

DIVERGED_ADVICE = (
    "Try a learning rate about 10x smaller, a lower backbone LR multiplier, or fewer unfrozen blocks."
)
OOM_ADVICE = "Out of memory: try a smaller batch size or image size, or freeze more blocks."


class Terminated(BaseException):
    """Raised in the main thread when the worker receives SIGTERM/SIGINT/SIGHUP."""


_TERMINATED: list[str] = []  # the signal's name, once one came


def _on_signal(signum, frame):
    _TERMINATED.append(signal.Signals(signum).name)
    raise Terminated(_TERMINATED[-1])


class Heartbeat(threading.Thread):
    """Beats for one run (``run_id``) or, with ``pid``, for a warm worker and the run it trains now."""

    def __init__(self, store: RunStore, run_id: str | None = None, pid: int | None = None, device: str = "cpu"):
        super().__init__(name="heartbeat", daemon=True)
        self.store, self.run_id, self.pid, self.device, self.done = store, run_id, pid, device, threading.Event()

    def beat(self) -> None:
        if self.pid is None:
            self.store.heartbeat(self.run_id)
        elif not self.store.worker_beat(self.pid, self.run_id):  # a rebuilt store lost our row
            self.store.register_worker(self.pid, self.device)

    def run(self):
        while not self.done.wait(HEARTBEAT_S):
            try:
                self.beat()
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


class ThreadShare:
    """CPU runs share the cores: each of the runs training on the CPU now gets cores // their number
    torch threads, looked at again every ``THREAD_CHECK_S`` (between batches). A run alone takes
    every core; two warm workers' runs take one core each instead of fighting over both. Within a warm
    worker, the ``turns.busy()`` runs that compute at once split its share again."""

    def __init__(self, store: RunStore, device: str = "cpu", turns: Turns | None = None):
        self.store, self.device, self.turns, self.due, self.threads = store, device, turns, 0.0, None

    def share(self) -> int:
        from tl_core.devices import cores

        others = min(max(1, self.store.running_count(self.device)), device_limit(self.device))
        return max(1, cores() // others // (self.turns.busy() if self.turns else 1))

    def on(self, event: str, trainer, **_) -> None:
        now = time.monotonic()
        if event not in ("before_fit", "before_epoch", "after_batch") or now < self.due:
            return
        self.due = now + THREAD_CHECK_S
        threads = self.share()
        if threads != self.threads:
            from tl_core.devices import use_threads

            use_threads(self.device, threads)
            self.threads = threads


def _thread_share(store: RunStore, cfg, device: str, turns: Turns | None = None) -> ThreadShare | None:
    """A ``ThreadShare`` for a CPU run whose config leaves the thread count open (it sets the first count)."""
    if device != "cpu" or cfg.num_threads is not None:
        return None
    share = ThreadShare(store, device, turns)
    cfg.num_threads = share.share()
    return share


def outcome(exc: BaseException) -> tuple[str, str]:
    """(status, reason) for an exception that ended the training: ``trainer.outcome``'s (its first line, with
    ``ending``'s advice), or what to do when the memory ran out; a terminated worker says so."""
    from tl_core.training import trainer as training

    name, text = type(exc).__name__, str(exc)
    if isinstance(exc, Terminated):
        return "failed", f"worker process was terminated ({exc})"
    if name == "OutOfMemoryError" or "out of memory" in text.lower() or "can't allocate memory" in text:
        return "failed", f"{OOM_ADVICE} ({name}: {text.splitlines()[0] if text else ''})"
    if isinstance(exc, MemoryError):
        return "failed", OOM_ADVICE
    status, reason, error = training.outcome(exc)
    first = (reason.splitlines() or [""])[0] + ("no message" if error is not None and not text else "")
    return ending({"status": status, "reason": first})


def ending(summary: dict) -> tuple[str, str | None]:
    """(status, reason) of a run that ``fit`` ended normally."""
    status = summary.get("status") or "completed"
    reason = summary.get("reason") or ("stopped by request" if status == "stopped" else None)
    if status == "diverged" and "learning rate" not in (reason or ""):
        reason = f"{reason or 'Training diverged: the loss became NaN or infinite'}. {DIVERGED_ADVICE}"
    return status, reason


def _say(line: str) -> None:
    print(line, flush=True)


def run(store: RunStore, run_id: str, say=_say) -> str:
    """Wait for a device slot, train ``run_id`` to the end and record its final status; returns that status."""
    info = store.get(run_id)
    say(f"[worker] run {run_id} ({info.name}) on {info.device}, pid {os.getpid()}")
    if not wait_for_slot(store, run_id):
        say(f"[worker] not started: {store.get(run_id).status}")
        return store.get(run_id).status
    return train(store, run_id, say)


def train(store: RunStore, run_id: str, say=_say, callbacks=(), turns: Turns | None = None) -> str:
    """Train ``run_id`` (already running: this process holds its slot) and record its final status. In a warm
    worker, ``turns`` are the turns it takes with the other runs held."""
    from tl_core.training import trainer as training  # torch + timm: seconds in a new process; the run already shows as running meanwhile
    from tl_core.training.config import TrainConfig

    info = store.get(run_id)
    status, reason, summary = "failed", None, None
    callback = StoreCallback(store, run_id)
    try:
        cfg = TrainConfig.from_dict(info.config)
        share = _thread_share(store, cfg, info.device, turns)
        if store.stop_requested(run_id):  # asked to stop while the libraries were loading
            status, reason = "stopped", "stopped by request before training started"
            return status
        say(f"[worker] run {run_id} started; torch threads: {cfg.num_threads or 'default'}"
            + (" (shared with the other runs on the CPU)" if share else ""))
        summary = training.fit(cfg, [callback, *([share] if share else []), *callbacks], store.runs_dir)
        status, reason = ending(summary)
    except BaseException as exc:  # record every ending, including SIGTERM
        say(traceback.format_exc().rstrip())
        status, reason = outcome(exc)
        summary = callback.summary  # after_fit still ran inside fit
    finally:
        store.finish(run_id, status, reason, summary)
        say(f"[worker] {status}: {reason or ''}")
    return status


# --- the warm worker -----------------------------------------------------------------------------
def _prewarm(done=lambda steps: None) -> None:
    """Import torch, timm and the trainer, and load what the Train page's default run needs (its data set,
    decoded, and its backbone's weights), so that the first run of the day starts like every later one.
    ``done(n)``: n of ``executor.WARM_STEPS`` are loaded."""
    from tl_core import data
    from tl_core.models import backbones
    from tl_core.training import trainer  # noqa: F401  (what a run imports first)
    from tl_core.training.config import TrainConfig

    done(1)
    default = TrainConfig()
    try:
        data.load_dataset(default.data, default.data_root)
        done(2)
        status = backbones.weight_status(default.backbone)
        if status.source:
            backbones.read_state_dict(status.source)
    except Exception:  # only a head start: the run itself will say what is wrong
        traceback.print_exc()


def _off_main_thread(fn) -> threading.Thread:
    """Start ``fn`` in a thread of its own. A warm worker's main thread never runs torch: torch's OpenMP
    keeps a team of threads for every thread that computed, for as long as that thread lives, and a
    team left in the main thread slowed each run thread after it (measured: 212 against 330 images/s)."""
    thread = threading.Thread(target=fn, name=getattr(fn, "__name__", "prewarm"), daemon=True)
    thread.start()
    return thread


class Yielding:
    """Background loading that never delays a run: while ``busy`` is set (the worker holds runs), the
    thread that runs ``call`` waits at its next Python function call, and goes on once the worker is idle
    again; or sooner, if a run waits for a module it is importing (``_import_waited_for``), and at the
    latest after ``max_wait_s`` (a lock it holds can never keep a run waiting for good)."""

    def __init__(self, max_wait_s: float = 30.0):
        self.busy, self.idle, self.max_wait_s = threading.Event(), threading.Event(), max_wait_s
        self.idle.set()
        self.waits = 0  # how often it gave way to a run (for tests and logs)

    def set_busy(self, busy: bool) -> None:
        if busy:
            self.idle.clear()
            self.busy.set()
        else:
            self.busy.clear()
            self.idle.set()

    def _trace(self, frame, event, arg):
        if self.busy.is_set() and not _in_import_machinery(frame):
            self.waits += 1
            me, deadline = threading.get_ident(), time.monotonic() + self.max_wait_s
            while not self.idle.wait(0.05) and time.monotonic() < deadline and not _import_waited_for(me):
                pass
        return None  # no line events: only calls are looked at

    def call(self, fn, *args):
        sys.settrace(self._trace)  # this thread only
        try:
            return fn(*args)
        finally:
            sys.settrace(None)


def _in_import_machinery(frame) -> bool:
    """Whether ``frame`` is the import system's own code, or the global import lock is held: waiting there
    could hold a lock that no thread can see (only module bodies, where module locks are held, may wait)."""
    return frame.f_code.co_filename.startswith("<frozen importlib") or _imp.lock_held()


def _import_waited_for(thread_id: int) -> bool:
    """Whether another thread waits for a module lock that thread ``thread_id`` holds (it is mid-import of that
    module): Python's own record of who waits for which module lock (``importlib._bootstrap``), as its deadlock
    detection reads it. An interpreter that keeps it otherwise: True (never wait inside an import)."""
    blocking = getattr(importlib._bootstrap, "_blocking_on", None)
    if not isinstance(blocking, dict):
        return True
    for locks in list(blocking.values()):
        for lock in locks if isinstance(locks, list) else [locks]:
            if getattr(lock, "owner", None) == thread_id:
                return True
    return False


def _prewarm_text(gate: Yielding | None = None) -> bool:
    """Load what the default text run needs (``trainer.prewarm``: transformers, the tokenizer, the
    weights, the texts): about 3 s, done once the worker is first idle (``TL_PREWARM_TEXT=0``: never),
    giving way to any run that arrives meanwhile (``gate``). True (tried) either way."""
    try:
        from tl_core.training import trainer

        took = (gate or Yielding()).call(trainer.prewarm)
        _say(f"[pool] text model loaded: {took}" + (f" (gave way to runs {gate.waits} times)" if gate and gate.waits
                                                    else ""))
    except Exception:  # only a head start (transformers may be absent): a text run says what is wrong
        traceback.print_exc()
    return True


def free_memory() -> None:
    """Between runs: what the last one held goes (the process stays warm)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def interleave(device: str) -> int:
    """How many runs a warm worker of ``device`` holds at once, taking turns (``turns``): ``$TL_INTERLEAVE``,
    else ``INTERLEAVE_CPU`` on the CPU and 1 on a GPU (whose memory is the scarce part)."""
    return max(1, env_int("TL_INTERLEAVE") or (INTERLEAVE_CPU if device == "cpu" else 1))


def lanes(device: str) -> int:
    """How many of its runs a warm worker computes at once (``Turns.lanes``): ``$TL_LANES``, else one per
    core this worker's share of the CPU gives it, each run on one core; 1 on a GPU."""
    from tl_core.devices import cores

    return max(1, env_int("TL_LANES") or (cores() // device_limit(device) if device == "cpu" else 1))


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _may_hold(turns: Turns, cap: int, ram_budget: float) -> bool:
    """Whether to take another run now: fewer than ``cap`` held, every run held past its first batch (its
    model and optimiser exist: what it needs is known) and this process under ``ram_budget`` bytes."""
    held = len(turns)
    return held == 0 or (held < cap and not turns.newcomers() and _rss_bytes() < ram_budget)


def _train_held(store: RunStore, run_id: str, turns: Turns) -> None:
    """One claimed run, in its own thread, training in its turns; its lines go to its own log. Nothing it
    raises ends the worker."""
    log = store.log_path(run_id)

    def say(line: str) -> None:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    try:
        turns.take(run_id)
        say(f"[worker] run {run_id} claimed by warm worker {os.getpid()} ({len(turns)} held)")
        train(store, run_id, say, [TurnCallback(turns, run_id)], turns)
    except Exception as exc:  # outside the fit: the run fails, the worker goes on
        say(traceback.format_exc().rstrip())
        store.finish(run_id, "failed", f"worker error: {type(exc).__name__}: {exc}")
    finally:
        turns.leave(run_id)
        if not len(turns):
            free_memory()


def serve(runs_dir=None, device: str = "cpu", idle_s: float | None = None, poll_s: float = WORKER_POLL_S) -> str:
    """The warm worker's loop (see the module docstring). Returns why it ended."""
    store = RunStore(runs_dir)
    pid, parent, idle_s = os.getpid(), os.getppid(), worker_idle_s() if idle_s is None else idle_s
    store.register_worker(pid, device)
    beat = Heartbeat(store, pid=pid, device=device)
    beat.start()
    reason, turns, threads = "exited", Turns(lanes(device)), {}
    try:
        _say(f"[pool] warm worker {pid} for {device} on {store.runs_dir}: loading libraries")
        os.environ.setdefault("TL_RUNS_DIR", str(store.runs_dir))  # what lives "under the runs folder" (backbones)
        from tl_core.models import weight_files

        weight_files.keep_weights()
        set_stage(store.runs_dir, pid, 0)
        _off_main_thread(lambda: _prewarm(lambda n: set_stage(store.runs_dir, pid, n))).join()
        set_stage(store.runs_dir, pid, len(WARM_STEPS))
        _say(f"[pool] warm worker {pid} ready")
        last = reaped = time.monotonic()
        text_ready, preload = False, Yielding()
        from tl_core.training.estimate import ram_bytes

        cap, ram_budget = interleave(device), HOLD_RAM_FRACTION * ram_bytes()
        while not _TERMINATED:
            threads = {r: t for r, t in threads.items() if t.is_alive()}
            run_id = store.claim_next(device, pid, len(threads)) if _may_hold(turns, cap, ram_budget) else None
            if run_id is None:
                if threads:  # training: look for newcomers
                    beat.run_id, last = next(iter(threads)), time.monotonic()
                    time.sleep(poll_s)
                    continue
                beat.run_id = None
                preload.set_busy(False)
                if not text_ready:  # idle: load the text model too, giving way to any run that comes meanwhile
                    text_ready = os.environ.get("TL_PREWARM_TEXT", "1") == "0" or bool(
                        _off_main_thread(lambda: _prewarm_text(preload)))
                if time.monotonic() - reaped > HEARTBEAT_S:  # a slot held by a dead worker frees up
                    reap(store)
                    reaped = time.monotonic()
                idle = time.monotonic() - last
                if idle > idle_s or (idle > ORPHAN_IDLE_S and os.getppid() != parent):
                    reason = f"exited: idle for {idle:.0f} s" + ("" if os.getppid() == parent else
                                                                   " after the process that started it ended")
                    break
                if not store.db_path.exists():
                    reason = "exited: its runs folder was removed"
                    break
                time.sleep(poll_s)
                continue
            beat.run_id = run_id
            preload.set_busy(True)  # before the run's thread starts: the preload waits from its next call
            turns.join(run_id)
            threads[run_id] = threading.Thread(target=_train_held, args=(store, run_id, turns), daemon=True,
                                               name=f"run-{run_id}")
            threads[run_id].start()
        else:
            reason = f"exited: {_TERMINATED[0]}"
    except Terminated as exc:
        reason = f"exited: {exc}"
    finally:
        for run_id in turns.held():  # their threads die with the process
            store.finish(run_id, "failed", f"worker process was terminated ({reason.removeprefix('exited: ')})")
        beat.done.set()
        with contextlib.suppress(Exception):
            store.end_worker(pid, reason)
            clear_stage(store.runs_dir, pid)
        _say(f"[pool] warm worker {pid} {reason}")
    return reason


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tl_core.runs.worker")
    p.add_argument("run_id", nargs="?", help="train this one run (without --serve)")
    p.add_argument("--serve", action="store_true", help="be a warm worker: take queued runs until idle")
    p.add_argument("--device", default="cpu", help="with --serve: the device whose queue it serves")
    p.add_argument("--runs-dir", default=None)
    args = p.parse_args(argv)
    if bool(args.serve) == bool(args.run_id):
        p.error("give either RUN_ID or --serve")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    if args.serve:
        serve(args.runs_dir, args.device)
        return 0
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
