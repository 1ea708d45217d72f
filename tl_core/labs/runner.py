"""Running a lab: its folder and state on disk, the background lab process, reading its results back.

``launch_lab(cfg)`` registers every run of the lab in the ``RunStore`` up front (queued, FIFO, named
"lab race · scratch"...: Compare shows them like any run) and starts ONE background process,
``python -m tl_core.labs run LAB_ID --runs-dir D``, that trains them one after another through the
worker's own ``worker.run`` (device slot, ``StoreCallback``, final status). Runs that depend on earlier
ones (Yosinski: the transfer runs need the A and B base nets) get their weights file built right before
they start. ``stop_lab`` stops the current run and cancels the rest. ``run_lab(cfg)`` does the same in
the calling process (tests, benchmarks).

A lab's folder is ``RUNS_DIR/labs/LAB_ID/``: ``lab.json`` (config, run ids, status), ``lab.log``
(the process's output), ``weights/`` (built weights files), ``STOP`` (a stop request).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from tl_core.paths import default_runs_dir
from tl_core.runs import policy
from tl_core.runs.store import HEARTBEAT_S, RunStore
from tl_core.labs.analysis import LabResult
from tl_core.labs.plan import build_weights
from tl_core.labs.registry import LabConfig, analyse, load_config_file, module, plan_runs

LAB_STATE = "lab.json"
LAB_LOG = "lab.log"
STOP_FILE = "STOP"
ACTIVE = ("queued", "running")  # a lab's statuses while it waits or runs (as a run's)

# ----------------------------------------------------------------------------- lab state on disk


def labs_dir(runs_dir=None) -> Path:
    return Path(runs_dir or default_runs_dir()).resolve() / "labs"


def lab_dir(lab_id: str, runs_dir=None) -> Path:
    if not lab_id or "/" in lab_id or "\\" in lab_id or lab_id.startswith("."):
        raise KeyError(f"invalid lab id {lab_id!r}")
    return labs_dir(runs_dir) / lab_id


def _write_state(folder: Path, state: dict) -> None:
    tmp = folder / (LAB_STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, folder / LAB_STATE)


def _lab_pid(folder: Path, state: dict) -> int | None:
    """The lab process: from the state, or from ``lab.pid`` (written by launch_lab before it started)."""
    pid = state.get("pid")
    if pid is None and (folder / "lab.pid").exists():
        try:
            pid = int((folder / "lab.pid").read_text())
        except ValueError:
            pid = None
    return pid


def read_state(lab_id: str, runs_dir=None) -> dict:
    """The lab's state; a lab whose process died while it was active is marked failed."""
    folder = lab_dir(lab_id, runs_dir)
    state = json.loads((folder / LAB_STATE).read_text())
    pid = _lab_pid(folder, state)
    if state.get("status") in ACTIVE and pid:
        alive, _ = policy.pid_alive(pid)
        if not alive and state.get("status") in ACTIVE:  # re-read: it may have just finished
            state = json.loads((folder / LAB_STATE).read_text())
            if state.get("status") in ACTIVE:
                state.update(status="failed", reason=policy.DIED, finished=time.time())
                _write_state(folder, state)
    return state


def list_labs(runs_dir=None, lab: str | None = None, owner: str | None = None) -> list[dict]:
    """Lab states, newest first (optionally only one lab kind, and only the labs of ``owner``: a
    student's name in classroom mode; None lists everyone's)."""
    folder = labs_dir(runs_dir)
    out = []
    if folder.is_dir():
        for d in folder.iterdir():
            if (d / LAB_STATE).exists():
                try:
                    s = read_state(d.name, runs_dir)
                except (OSError, ValueError):
                    continue
                if (lab is None or s.get("lab") == lab) and (owner is None or s.get("owner") == owner):
                    out.append(s)
    return sorted(out, key=lambda s: s.get("created", 0), reverse=True)


def _open_store(store, runs_dir):
    """(store, whether this call opened it and must close it)."""
    return (store, False) if store is not None else (RunStore(runs_dir), True)


def create_lab(cfg: LabConfig, runs_dir=None, store=None, owner: str | None = None) -> dict:
    """Register the lab and all its runs (queued) in the store; returns the lab state. ``owner`` (a
    student's name in classroom mode, else None) owns the lab and every one of its runs."""
    cfg.validate()
    lab_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    folder = lab_dir(lab_id, runs_dir)
    planned = plan_runs(cfg, folder)
    folder.mkdir(parents=True)
    store, own = _open_store(store, runs_dir)
    try:
        runs = [{**r.to_dict(), "run_id": store.create(r.cfg, owner=owner)} for r in planned]
    finally:
        if own:
            store.close()
    meta_fn = getattr(module(cfg.lab), "meta", None)
    meta = meta_fn(cfg) if meta_fn is not None else {}
    state = {"id": lab_id, "lab": cfg.lab, "owner": owner, "config": cfg.to_dict(), "runs": runs, "status": "queued",
             "meta": meta,
             "reason": "waiting for the lab process to start", "created": time.time(), "started": None,
             "finished": None, "pid": None, "runs_dir": str(Path(runs_dir or default_runs_dir()).resolve())}
    _write_state(folder, state)
    return state


def launch_lab(cfg: LabConfig, runs_dir=None, owner: str | None = None) -> str:
    """Create the lab's runs (owned by ``owner``) and start ``python -m tl_core.labs run LAB_ID`` in its
    own session. Returns the lab id at once."""
    state = create_lab(cfg, runs_dir, owner=owner)
    folder = lab_dir(state["id"], runs_dir)
    package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds tl_core/
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    with open(folder / LAB_LOG, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tl_core.labs", "run", state["id"], "--runs-dir", state["runs_dir"]],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    (folder / "lab.pid").write_text(str(proc.pid))  # read_state notices a process that died early
    store = RunStore(runs_dir)
    try:  # the runs belong to this process from now on: the store's reaper watches it
        for r in state["runs"]:
            store.attach_worker(r["run_id"], proc.pid)
    finally:
        store.close()
    return state["id"]


def stop_lab(lab_id: str, runs_dir=None, by: str | None = None, teacher: bool = False) -> None:
    """Stop the current run of the lab and cancel the rest. A lab with an owner may be stopped only by
    that owner (``by``) or the ``teacher``, as ``RunStore.request_stop`` rules for a run: PermissionError
    otherwise, before anything is stopped."""
    folder = lab_dir(lab_id, runs_dir)
    state = read_state(lab_id, runs_dir)
    owner = state.get("owner")
    if owner is not None and by != owner and not teacher:
        raise PermissionError(f"this lab belongs to {owner}; only they or the teacher can stop it")
    (folder / STOP_FILE).touch()
    store = RunStore(runs_dir or state.get("runs_dir"))
    try:
        # queued ones first, so the lab process never starts another one
        for r in sorted(state["runs"], key=lambda r: store.get(r["run_id"]).status != "queued"):
            try:
                if store.get(r["run_id"]).status in ACTIVE:
                    store.request_stop(r["run_id"], by=by, teacher=teacher)
            except KeyError:
                pass
    finally:
        store.close()
    if state.get("status") == "queued" and not state.get("pid"):
        state.update(status="stopped", reason="stopped before it started", finished=time.time())
        _write_state(folder, state)


# ----------------------------------------------------------------------------- the lab process


class _Flag:
    terminated: str | None = None


def _on_signal(signum, frame):
    from tl_core.runs.worker import Terminated

    _Flag.terminated = signal.Signals(signum).name
    raise Terminated(_Flag.terminated)


def _start_heartbeat(state: dict, store) -> threading.Event:
    """Keep the lab's waiting runs alive for the store's reaper until the returned event is set."""
    done = threading.Event()

    def beat():
        while not done.wait(HEARTBEAT_S):
            for r in state["runs"]:
                try:
                    store.heartbeat(r["run_id"])
                except Exception:
                    traceback.print_exc()

    threading.Thread(target=beat, name="lab-heartbeat", daemon=True).start()
    return done


def _build_before(r: dict, state: dict, store) -> bool:
    """Build the run's starting weights; False (and the run failed) if that did not work."""
    try:
        build_weights(r, state, store)
    except Exception as exc:
        traceback.print_exc()
        store.finish(r["run_id"], "failed", f"could not build its starting weights: {exc}")
        return False
    return True


def _after_run(r: dict, state: dict, store) -> None:
    """The lab module's optional ``after_run(run, state, store)`` (what_changed: measure the run's CKA;
    yosinski: save a base net as a backbone)."""
    hook = getattr(module(state["lab"]), "after_run", None)
    if hook is not None:
        try:
            hook(r, state, store)
        except Exception:
            traceback.print_exc()


def _run_all(folder: Path, state: dict, store) -> None:
    """Every queued run of the lab, stage by stage, until the end, a stop request or a signal."""
    from tl_core.runs import worker

    for r in sorted(state["runs"], key=lambda r: r["stage"]):
        if (folder / STOP_FILE).exists() or _Flag.terminated:
            break
        if store.get(r["run_id"]).status != "queued":
            continue  # cancelled
        print(f"[lab] {r['label']} ({r['run_id']})", flush=True)
        if r.get("build") and not _build_before(r, state, store):
            continue
        worker.run(store, r["run_id"])
        if _Flag.terminated:
            break
        _after_run(r, state, store)


def _final_status(folder: Path, status: str, reason: str | None) -> tuple[str, str | None]:
    if _Flag.terminated:
        return "failed", f"lab process was terminated ({_Flag.terminated})"
    if (folder / STOP_FILE).exists() and status == "completed":
        return "stopped", "stopped by request"
    return status, reason


def _cancel_queued(state: dict, store) -> None:
    """Nothing of this lab stays queued."""
    for r in state["runs"]:
        try:
            if store.get(r["run_id"]).status == "queued":
                store.request_stop(r["run_id"], by=state.get("owner"))  # the lab process acts for its owner
        except Exception:
            traceback.print_exc()


def execute(lab_id: str, runs_dir=None, store=None) -> dict:
    """Run every run of the lab, one after another, in this process (``worker.run`` for each: device
    slot, StoreCallback, final status). Returns the final lab state."""
    from tl_core.runs import worker

    folder = lab_dir(lab_id, runs_dir)
    state = read_state(lab_id, runs_dir)
    store, own = _open_store(store, runs_dir or state.get("runs_dir"))
    pid = os.getpid()
    state.update(status="running", pid=pid, started=time.time(), reason=None)
    _write_state(folder, state)
    for r in state["runs"]:
        store.attach_worker(r["run_id"], pid)
    done = _start_heartbeat(state, store)
    status, reason = "completed", None
    try:
        _run_all(folder, state, store)
    except worker.Terminated:
        pass
    except BaseException as exc:
        traceback.print_exc()
        status, reason = "failed", f"{type(exc).__name__}: {exc}"
    finally:
        status, reason = _final_status(folder, status, reason)
        _cancel_queued(state, store)
        done.set()
        state.update(status=status, reason=reason, finished=time.time())
        _write_state(folder, state)
        if own:
            store.close()
        print(f"[lab] {status}{': ' + reason if reason else ''}", flush=True)
    return state


def run_lab(cfg: LabConfig, runs_dir=None) -> LabResult:
    """Create and execute a lab in this process; returns its analysis."""
    store = RunStore(runs_dir)
    try:
        state = create_lab(cfg, runs_dir, store)
        state = execute(state["id"], runs_dir, store)
        return analyse(cfg, records(state, store), state)
    finally:
        store.close()


# ----------------------------------------------------------------------------- reading results


def records(state: dict, store) -> list[dict]:
    """The lab's runs as plain records: key, label, run_id, seed, status, reason, config, epochs, summary."""
    out = []
    for r in state["runs"]:
        try:
            info = store.get(r["run_id"])
        except KeyError:
            continue
        seed = r.get("seed", (info.config or {}).get("seed"))
        out.append({"key": r["key"], "label": r["label"], "run_id": r["run_id"], "seed": seed, "status": info.status,
                    "reason": info.reason, "config": info.config, "summary": info.summary or {},
                    "epochs": [{k: v for k, v in m.items() if k != "seq"} for m in store.metrics(r["run_id"], "epoch")],
                    "started": info.started, "finished": info.finished})
    return out


def progress(state: dict, store) -> dict:
    """{done, total, fraction (epochs included), current (label), statuses {key: status}, elapsed}."""
    total = len(state["runs"])
    frac, done, current, statuses = 0.0, 0, None, {}
    for r in state["runs"]:
        info = store.get(r["run_id"])
        statuses[r["key"]] = info.status
        if info.status not in ACTIVE:
            done += 1
            frac += 1
        elif info.status == "running":
            current = r["label"]
            epochs = max(1, int(r["config"].get("epochs", 1)))
            frac += min(len(store.metrics(r["run_id"], "epoch")), epochs) / epochs * 0.999
    started = state.get("started")
    elapsed = ((state.get("finished") or time.time()) - started) if started else None
    return {"done": done, "total": total, "fraction": frac / total if total else 1.0, "current": current,
            "statuses": statuses, "elapsed": elapsed}


def result(lab_id: str, runs_dir=None, store=None) -> LabResult:
    state = read_state(lab_id, runs_dir)
    store, own = _open_store(store, runs_dir or state.get("runs_dir"))
    try:
        return analyse(LabConfig.from_dict(state["config"]), records(state, store), state)
    finally:
        if own:
            store.close()


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tl_core.labs")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute a created lab (what launch_lab starts)")
    r.add_argument("lab_id")
    r.add_argument("--runs-dir", default=None)
    loc = sub.add_parser("local", help="create and run a lab from a JSON config in this process, print results")
    loc.add_argument("config")
    loc.add_argument("--runs-dir", default=None)
    args = p.parse_args(argv)
    if args.cmd == "run":
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _on_signal)
        state = execute(args.lab_id, args.runs_dir)
        return 0 if state["status"] in ("completed", "stopped") else 1
    res = run_lab(load_config_file(args.config), args.runs_dir)
    print(res.table.to_string(index=False))
    print(res.text)
    return 0
