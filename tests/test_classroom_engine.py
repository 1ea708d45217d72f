"""The classroom engine: owners and stop rights, the fair queue, warm workers, the foreground CLI and a
store that survives damage. Real stores, real worker processes, real tiny runs (digits8, 32 px)."""
import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
from test_runs import LONG, ROOT, _cli, cfg, finished, store, wait_until  # noqa: F401  (store: a fixture)

from tl_core.runs import executor, launcher, policy
from tl_core.runs import store as runs
from tl_core.runs.store import RunStore


def queue_order(store, device="cpu"):
    """The queued runs of ``device`` in the order they will start (by their reported positions)."""
    queued = [r for r in store.list_runs() if r.status == "queued" and r.device == device]
    return [r.id for r in sorted(queued, key=lambda r: r.queue_position)]


# --- the fair queue --------------------------------------------------------------------------------
def test_round_robin_puts_every_owners_kth_run_before_anyones_next(monkeypatch):
    monkeypatch.setenv("TL_MAX_CPU_RUNS", "1")
    rr = policy.RoundRobinQueue()
    queued = [("a1", "ann"), ("a2", "ann"), ("a3", "ann"), ("b1", "bob"), ("n1", None), ("b2", "bob"), ("n2", None)]
    assert rr.order(queued) == ["a1", "b1", "n1", "a2", "b2", "n2", "a3"]
    assert rr.position("b1", queued) == 2 and rr.position("a3", queued) == 7 and rr.position("x", queued) is None
    assert rr.order(["x", "y", "z"]) == ["x", "y", "z"]  # no owners: one owner, FIFO
    assert rr.may_start("b1", "cpu", queued, running=0) is False  # one CPU slot: a1 first
    assert rr.may_start("a1", "cpu", queued, running=0) and not rr.may_start("a1", "cpu", queued, running=1)
    assert isinstance(policy.POLICY, policy.RoundRobinQueue)


def test_a_lab_of_many_runs_does_not_hold_the_class_back(store, monkeypatch):
    monkeypatch.setenv("TL_MAX_CPU_RUNS", "1")
    lab = [store.create({"device": "cpu"}, owner="ann") for _ in range(5)]
    bob = store.create({"device": "cpu"}, owner="bob")
    cy = store.create({"device": "cpu"}, owner="cy")
    assert queue_order(store) == [lab[0], bob, cy, *lab[1:]]
    assert store.get(bob).queue_position == 2 and "position 2" in store.get(bob).reason
    for run_id in lab + [bob, cy]:
        store.attach_worker(run_id, os.getpid())
    assert not store.try_start(bob) and store.try_start(lab[0])  # the policy's order decides the slot
    store.finish(lab[0], "completed")
    assert queue_order(store) == [lab[1], bob, cy, *lab[2:]]  # ann's next run is again one of the first
    assert store.try_start(lab[1])


# --- owners and stop rights --------------------------------------------------------------------------
def test_a_student_cannot_stop_another_students_run_the_teacher_can(store):
    ann, bob = store.create({"device": "cpu"}, owner="ann"), store.create({"device": "cpu"}, owner="bob")
    assert store.get(ann).owner == "ann"
    with pytest.raises(PermissionError, match="this run belongs to ann; only they or the teacher can stop it"):
        store.request_stop(ann, by="bob")
    with pytest.raises(PermissionError):
        store.request_stop(ann)  # nobody in particular
    assert store.get(ann).status == "queued"
    assert store.request_stop(ann, by="ann") == "stopped"
    assert store.request_stop(bob, by="ann", teacher=True) == "stopped"
    assert [r.id for r in store.list_runs(owner="bob")] == [bob]
    assert {r.id for r in store.list_runs()} == {ann, bob}


def test_single_user_mode_is_unchanged(store):
    """No owner anywhere: anyone stops any run, every run is listed, the queue is first come first served."""
    ids = [store.create({"device": "cpu"}) for _ in range(3)]
    assert all(store.get(i).owner is None for i in ids)
    assert queue_order(store) == ids and [store.get(i).queue_position for i in ids] == [1, 2, 3]
    assert [r.id for r in store.list_runs()] == ids[::-1]
    assert store.request_stop(ids[0]) == "stopped"
    assert store.request_stop(ids[1], by="someone") == "stopped"


def test_an_older_store_gets_the_owner_column(tmp_path):
    old = tmp_path / "runs"
    old.mkdir()
    db = sqlite3.connect(old / runs.DB_NAME)
    db.executescript(
        "CREATE TABLE runs (n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, name TEXT NOT NULL, "
        "status TEXT NOT NULL, reason TEXT, config TEXT NOT NULL, device TEXT NOT NULL, created REAL NOT NULL, "
        "started REAL, finished REAL, pid INTEGER, heartbeat REAL, stop_requested INTEGER NOT NULL DEFAULT 0, "
        "info TEXT, summary TEXT);"
        "INSERT INTO runs (id, name, status, config, device, created, finished) "
        "VALUES ('20240101-000000-abcdef', 'old run', 'completed', '{}', 'cpu', 1, 2);")
    db.commit()
    db.close()
    store = RunStore(old)
    (run,) = store.list_runs()
    assert run.name == "old run" and run.owner is None and run.status == "completed"
    new = store.create({"device": "cpu"}, owner="ann")
    assert [r.id for r in RunStore(old).list_runs(owner="ann")] == [new]


# --- executors ---------------------------------------------------------------------------------------
def test_the_executor_is_chosen_by_tl_executor_and_ray_is_imported_only_for_ray(tmp_path, monkeypatch):
    monkeypatch.delenv("TL_EXECUTOR", raising=False)
    assert isinstance(launcher.get_executor(tmp_path / "runs"), executor.LocalExecutor)
    monkeypatch.setenv("TL_EXECUTOR", "process")
    assert isinstance(launcher.get_executor(tmp_path / "runs"), executor.ProcessExecutor)
    monkeypatch.setenv("TL_EXECUTOR", "bogus")
    with pytest.raises(ValueError, match="TL_EXECUTOR='bogus' is not an executor"):
        launcher.get_executor(tmp_path / "runs")
    code = ("import sys; from tl_core.runs import launcher; launcher.get_executor(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'tl_core.runs.ray'))))")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "TL_EXECUTOR": "local"}, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stderr


@pytest.mark.slow
def test_one_process_per_run_is_still_there(store, monkeypatch):
    monkeypatch.setenv("TL_EXECUTOR", "process")
    run_id = launcher.launch(cfg(), store.runs_dir, owner="ann")
    run = finished(store, run_id)
    assert run.status == "completed", run.reason
    assert run.executor == "process" and store.workers() == []
    assert f"[worker] run {run_id}" in store.log_path(run_id).read_text()


# --- warm workers ------------------------------------------------------------------------------------
def pool_pids(store):
    return [w["pid"] for w in executor.live_workers(store, "cpu")]


@pytest.mark.slow
def test_a_warm_worker_holds_the_queued_runs_they_take_turns_and_a_failing_one_is_survived(store, monkeypatch):
    monkeypatch.setenv("TL_MAX_CPU_RUNS", "1")
    long = launcher.launch(cfg(name="long", **LONG), store.runs_dir, owner="ann")
    ex = executor.LocalExecutor(store)
    broken = store.create({**cfg().to_dict(), "data": "no_such_dataset"}, owner="bob")  # passes no validation
    ex.submit(broken)
    short = launcher.launch(cfg(name="short"), store.runs_dir, owner="cy")
    (worker,) = pool_pids(store)
    run = finished(store, short)
    assert run.status == "completed", run.reason
    assert run.pid == worker and run.executor == "pool" and run.owner == "cy"
    held = store.get(long)  # one worker, one slot: the long run is held, taking turns with the short one
    assert held.status == "running" and held.pid == worker and held.started < run.started
    failed = store.get(broken)
    assert failed.status == "failed" and "no_such_dataset" in failed.reason and failed.pid == worker
    assert store.request_stop(long, by="ann") == "running" and finished(store, long).status == "stopped"
    assert pool_pids(store) == [worker] and policy.pid_alive(worker)[0]  # still there, waiting for more
    (row,) = store.workers("cpu")
    assert row["runs"] == 3
    assert "claimed by warm worker" in store.log_path(short).read_text()


def test_cpu_runs_share_the_cores(store, monkeypatch):
    from tl_core.devices import cores
    from tl_core.runs.worker import ThreadShare

    monkeypatch.setenv("TL_MAX_CPU_RUNS", "2")
    share = ThreadShare(store, "cpu")
    a, b = store.create({"device": "cpu"}), store.create({"device": "cpu"})
    for run_id in (a, b):
        store.attach_worker(run_id, os.getpid())
    assert store.try_start(a) and share.share() == cores()  # alone: every core
    assert store.try_start(b) and share.share() == max(1, cores() // 2)  # two: half each


@pytest.mark.slow
def test_the_pool_grows_with_the_queue_and_trains_runs_side_by_side(store, monkeypatch):
    monkeypatch.setenv("TL_WORKERS", "2")
    long = launcher.launch(cfg(**LONG), store.runs_dir, owner="ann")
    assert len(store.workers("cpu")) == 1  # one run: one worker
    short = launcher.launch(cfg(), store.runs_dir, owner="bob")
    assert len(store.workers("cpu")) == 2
    done = finished(store, short)
    assert done.status == "completed", done.reason
    assert store.get(long).status == "running" and store.get(long).started < done.started  # side by side
    assert done.pid != store.get(long).pid
    assert store.request_stop(long, by="ann") == "running" and finished(store, long).status == "stopped"


@pytest.mark.slow
def test_a_killed_warm_worker_is_replaced_on_the_next_submit_and_its_run_fails(store, monkeypatch):
    monkeypatch.setenv("TL_WORKERS", "1")
    doomed = launcher.launch(cfg(**LONG), store.runs_dir)
    wait_until(lambda: store.metrics(doomed, "step"))
    (worker,) = pool_pids(store)
    assert store.get(doomed).pid == worker
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: not policy.pid_alive(worker)[0])
    after = launcher.launch(cfg(), store.runs_dir)  # the next submit notices and starts a new worker
    run = store.get(doomed)
    assert run.status == "failed" and "unexpectedly" in run.reason and "signal 9" in run.reason
    assert store.metrics(doomed, "step")  # what was recorded stays
    new = finished(store, after)
    assert new.status == "completed", new.reason
    assert new.pid != worker and pool_pids(store) == [new.pid]


# --- the CLI -------------------------------------------------------------------------------------------
TINY_ARGS = ("--backbone", "mobilenetv2", "--data", "digits8", "--per-class", "6", "--image-size", "32",
             "--device", "cpu")


@pytest.mark.slow
def test_cli_train_runs_in_its_own_process_and_ctrl_c_stops_it(store):
    """The foreground run is in the store (no warm worker involved); Ctrl-C ends it as stopped."""
    p = _cli("train", *TINY_ARGS, "--epochs", "1", "--json", runs_dir=store.runs_dir)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    run = store.get(summary["run_id"])
    assert run.status == summary["status"] == "completed" and run.owner is None and run.executor is None
    assert store.metrics(run.id, "epoch") and store.model_dir(run.id) is not None
    assert store.workers() == []  # no warm worker was started
    env = {**os.environ, "TL_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tl_core", "train", *TINY_ARGS, "--strategy", "full",
                             "--per-class", "20", "--epochs", "30", "--batch-size", "4", "--json",
                             "--runs-dir", str(store.runs_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        run_id = wait_until(lambda: [r.id for r in store.list_runs() if r.id != run.id and
                                     store.metrics(r.id, "step")])[0]
        assert store.get(run_id).pid == proc.pid
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "stopped"
    stopped = store.get(run_id)
    assert stopped.status == "stopped" and len(store.metrics(run_id, "epoch")) < 30


@pytest.mark.slow
def test_cli_train_background_queues_for_the_warm_workers(store):
    p = _cli("train", *TINY_ARGS, "--epochs", "1", "--background", runs_dir=store.runs_dir)
    assert p.returncode == 0, p.stderr
    run_id = p.stdout.strip()
    assert store.get(run_id).executor == "pool"
    run = finished(store, run_id)
    assert run.status == "completed", run.reason
    assert run.pid in [w["pid"] for w in store.workers()]


# --- a damaged store ----------------------------------------------------------------------------------
def damage(runs_dir):
    """Truncate runs.sqlite to half its size (after folding the write-ahead log into it)."""
    path = runs_dir / runs.DB_NAME
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def test_a_damaged_store_is_moved_aside_and_rebuilt_from_the_run_folders(tmp_path):
    runs_dir = tmp_path / "runs"
    store = RunStore(runs_dir)
    done = store.create({"device": "cpu", "name": "done"}, owner="ann")
    store.attach_worker(done, os.getpid())
    assert store.try_start(done)
    store.append_metric(done, "phase", {"phase": 1, "name": "head"})
    for epoch in (1, 2):
        store.append_metric(done, "epoch", {"epoch": epoch, "val_acc": 0.5 * epoch})
        store.append_metric(done, "step", {"step": epoch})
    store.finish(done, "completed", summary={"status": "completed", "best_val_acc": 1.0})
    waiting = store.create({"device": "cpu", "name": "waiting"})
    for _ in range(200):  # enough rows that half the file is missing real data
        store.append_metric(waiting, "step", {"step": 1, "pad": "x" * 200})
    store.close()
    damage(runs_dir)
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(runs_dir / runs.DB_NAME).execute("SELECT * FROM runs").fetchall()

    store = RunStore(runs_dir)
    assert store.recovered and "damaged" in store.recovered and "2 run(s) recovered" in store.recovered
    assert len(store.recovered.splitlines()) == 1
    (aside,) = [p for p in runs_dir.glob("runs.sqlite.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    assert aside.name in store.recovered
    run = store.get(done)
    assert (run.status, run.name, run.owner, run.summary["best_val_acc"]) == ("completed", "done", "ann", 1.0)
    assert [m["val_acc"] for m in store.metrics(done, "epoch")] == [0.5, 1.0] and store.metrics(done, "phase")
    assert store.get(waiting).status == "failed" and "damaged" in store.get(waiting).reason
    assert RunStore(runs_dir).recovered is None  # repaired once


def test_a_store_damaged_under_an_open_reader_is_rebuilt_at_its_next_read(tmp_path):
    runs_dir = tmp_path / "runs"
    store = RunStore(runs_dir)
    run_id = store.create({"device": "cpu"})
    for step in range(300):
        store.append_metric(run_id, "step", {"step": step, "pad": "x" * 200})
    store.finish(run_id, "completed")
    reader = RunStore(runs_dir)  # a page's long-lived store
    damage(runs_dir)
    assert reader.metrics(run_id, "step") == []  # the step rows were only in the database
    assert reader.get(run_id).status == "completed"
    assert reader.recovered and "1 run(s) recovered" in reader.recovered
    assert store.get(run_id).status == "completed"  # another open store follows the rebuilt file


@pytest.mark.slow
def test_the_cli_works_on_a_damaged_store_in_a_real_process(store):
    earlier = store.create({"device": "cpu", "backbone": "mobilenetv2", "name": "earlier"})
    store.finish(earlier, "completed", summary={"status": "completed", "best_val_acc": 0.75})
    damage(store.runs_dir)
    p = _cli("runs", runs_dir=store.runs_dir)
    assert p.returncode == 0 and earlier in p.stdout and "0.75" in p.stdout
    assert "damaged" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    damage(store.runs_dir)
    p = _cli("train", *TINY_ARGS, "--epochs", "1", "--background", runs_dir=store.runs_dir)
    assert p.returncode == 0, p.stderr
    assert "damaged" in p.stderr
    fresh = RunStore(store.runs_dir)
    assert fresh.get(earlier).status == "completed"
    assert finished(fresh, p.stdout.strip()).status == "completed"
    executor.stop_pool(fresh)


def test_the_app_works_on_a_damaged_store_and_says_so_in_one_line(app_env, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("TL_RUNS_DIR", str(runs_dir))
    store = RunStore(runs_dir)
    run_id = store.create({"device": "cpu", "name": "before the damage"})
    for step in range(300):
        store.append_metric(run_id, "step", {"step": step, "pad": "x" * 200})
    store.finish(run_id, "completed")
    store.close()
    damage(runs_dir)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    (warning,) = [w.value for w in at.warning if "damaged" in w.value]
    assert "1 run(s) recovered" in warning.replace("\\", "") and "\n" not in warning
    at.switch_page("pages/train.py").run()
    assert not at.exception


# --- warm from the start; background preloading yields ---------------------------------------------------
@pytest.mark.slow
def test_the_server_start_warms_the_pool_and_the_home_page_shows_it_meanwhile(app_env, store, monkeypatch):
    """What app.py's st.App lifespan does at the server's start (``_server.warm``, no run, no browser): a warm
    worker starts and loads libraries, data and backbone; meanwhile the Home page (never blocked) shows a
    progress bar; once the worker is ready the bar is gone."""
    from streamlit.testing.v1 import AppTest

    from pages import _server

    monkeypatch.setenv("TL_RUNS_DIR", str(store.runs_dir))
    _server.warm()
    assert len(executor.live_workers(store, "cpu")) == 1 and not store.list_runs()
    done, now = executor.warming(store, "cpu")
    assert done < len(executor.WARM_STEPS) and now in executor.WARM_STEPS
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert "warming up" in at.get("progress")[0].proto.text
    wait_until(lambda: executor.warming(store, "cpu") is None, timeout=120)
    at.run()
    assert not at.get("progress") and not at.exception
    assert executor.LocalExecutor(store).warm() == []  # one lives and is ready: nothing more starts


def test_a_background_preload_waits_while_the_worker_holds_a_run():
    from tl_core.runs import worker

    gate, steps = worker.Yielding(), []

    def preload():  # stands for the text model's loading: many Python calls
        for i in range(100):
            steps.append(i)

    gate.set_busy(True)  # the worker holds a run
    thread = __import__("threading").Thread(target=gate.call, args=(preload,), daemon=True)
    thread.start()
    wait_until(lambda: gate.waits >= 1, timeout=30)
    assert steps == []  # it waits at its first call, for as long as the run is held
    gate.set_busy(False)  # idle again: it goes on
    thread.join(30)
    assert steps == list(range(100)) and not thread.is_alive()


def test_a_paused_preload_never_holds_up_a_run_that_imports_the_same_module(tmp_path, monkeypatch):
    """Paused mid-import, the preload holds that module's import lock: a run thread importing the same module
    makes it go on at once (no deadlock, no waiting for the run to end)."""
    import threading

    from tl_core.runs import worker

    (tmp_path / "tl_slow_module.py").write_text("def f():\n    return 1\n\nVALUE = [f() for _ in range(3)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    gate = worker.Yielding(max_wait_s=600)  # only the import check can let it go on within the test
    gate.set_busy(True)
    preload = threading.Thread(target=gate.call, args=(__import__, "tl_slow_module"), daemon=True)
    preload.start()
    wait_until(lambda: gate.waits >= 1, timeout=30)  # paused inside the module's body
    run = threading.Thread(target=__import__, args=("tl_slow_module",), daemon=True)
    run.start()
    run.join(60)
    preload.join(60)
    assert not run.is_alive() and not preload.is_alive()
    assert sys.modules["tl_slow_module"].VALUE == [1, 1, 1]
    gate.set_busy(False)
    del sys.modules["tl_slow_module"]
