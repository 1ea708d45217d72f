"""Run store and worker processes: real workers, real tiny runs (digits8, 32 px, MobileNetV2)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tl_core.runs import executor, launcher, policy
from tl_core.runs.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(backbone="mobilenetv2", data="digits8", per_class=6, image_size=32, batch_size=8,
            strategy="feature_extraction", epochs=1, device="cpu")
# long enough to be stopped or killed mid-run (each batch trains the whole network)
LONG = dict(TINY, strategy="full", per_class=20, epochs=30, batch_size=4)


def wait_until(fn, timeout=300, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


def cfg(**kw):
    from tl_core.training.config import TrainConfig

    return TrainConfig(**{**TINY, **kw})


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_WORKER_IDLE_S", "60")  # a warm worker left behind by a failed test exits soon
    s = RunStore(tmp_path / "runs")
    yield s
    for run in s.list_runs():  # cancel what waits, so that nothing restarts the warm pool
        if run.status == "queued":
            s.request_stop(run.id, teacher=True)
    executor.stop_pool(s)
    for run in s.list_runs():  # never leave a worker behind
        if run.active and run.pid and run.pid != os.getpid():
            try:
                os.kill(run.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    s.close()


def finished(store, run_id):
    """The run once it has ended, reaped as a page does (a run whose worker died ends as failed)."""
    def ended():
        executor.reap(store)
        run = store.get(run_id)
        return None if run.active else run

    return wait_until(ended)


# --- the store alone (no training) ----------------------------------------------------------------
def test_metrics_are_incremental_for_a_second_reader(store):
    run_id = store.create({"backbone": "mobilenetv2", "device": "cpu"})
    reader = RunStore(store.runs_dir)
    first = [store.append_metric(run_id, "step", {"step": i, "loss": 1.0 / (i + 1)}) for i in range(3)]
    rows = reader.metrics(run_id, "step")
    assert [r["step"] for r in rows] == [0, 1, 2] and [r["seq"] for r in rows] == first
    store.append_metric(run_id, "step", {"step": 3, "loss": float("nan")})
    store.append_metric(run_id, "epoch", {"epoch": 1, "val_acc": 0.5})
    new = reader.metrics(run_id, "step", after_seq=rows[-1]["seq"])
    assert [r["step"] for r in new] == [3] and new[0]["loss"] is None  # NaN stored as null (valid JSON)
    assert reader.metrics(run_id, "epoch")[0]["val_acc"] == 0.5
    assert reader.metrics(run_id, "step", after_seq=new[-1]["seq"]) == []


def test_snapshots_round_trip_without_pickle(store):
    run_id = store.create({"device": "cpu"})
    maps = {"blocks.1.0": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
            "conv_stem/odd name": np.full((1, 4, 4), 7, np.uint8)}
    path = store.save_snapshot(run_id, 0, maps)
    with np.load(path, allow_pickle=False) as z:
        assert z["layers"].dtype.kind == "U"
    store.save_snapshot(run_id, 2, maps)
    got = RunStore(store.runs_dir).snapshots(run_id)
    assert sorted(got) == [0, 2]
    for layer, arr in maps.items():
        np.testing.assert_array_equal(got[2][layer], arr)


def test_queue_is_fifo_per_device_with_a_limit(store, monkeypatch):
    ids = [store.create({"device": "cpu"}) for _ in range(3)]
    gpu = store.create({"device": "cuda"})
    for run_id in ids + [gpu]:
        store.attach_worker(run_id, os.getpid())
    assert [store.get(i).queue_position for i in ids] == [1, 2, 3]
    assert not store.try_start(ids[1])  # not its turn
    assert store.try_start(ids[0]) and store.get(ids[0]).status == "running"
    assert not store.try_start(ids[1])  # the one CPU slot is taken
    assert store.try_start(gpu)  # another device has its own slot
    assert [store.get(i).queue_position for i in ids[1:]] == [1, 2]
    monkeypatch.setenv("TL_MAX_CPU_RUNS", "2")
    assert store.try_start(ids[1]) and not store.try_start(ids[2])
    store.finish(ids[0], "completed")
    assert store.try_start(ids[2])


def test_stopping_a_queued_run_cancels_it(store):
    run_id = store.create({"device": "cpu"})
    assert store.request_stop(run_id) == "stopped"
    run = store.get(run_id)
    assert "cancelled" in run.reason and run.queue_position is None
    assert not store.try_start(run_id)


def test_claim_ignores_device_slots_and_set_reason_holds_only_while_the_status_does(store):
    """For an executor whose runs train elsewhere (Ray): queued → running past this machine's slots, once."""
    busy, remote, cancelled = (store.create({"device": "cpu"}) for _ in range(3))
    for run_id in (busy, remote, cancelled):
        store.attach_worker(run_id, os.getpid())
    assert store.try_start(busy) and not store.try_start(remote)  # the one local CPU slot is taken
    assert store.claim(remote, "sent to the cluster")
    run = store.get(remote)
    assert run.status == "running" and run.reason == "sent to the cluster" and run.started and run.heartbeat
    assert not store.claim(remote, "again")  # no longer queued
    store.request_stop(cancelled)
    assert not store.claim(cancelled, "too late") and store.get(cancelled).status == "stopped"
    assert store.set_reason(remote, "training on node 2") and store.get(remote).reason == "training on node 2"
    assert not store.set_reason(remote, "x", status="queued") and store.get(remote).reason == "training on node 2"
    store.finish(remote, "completed")
    assert not store.set_reason(remote, "late") and store.get(remote).reason is None


def test_a_dead_or_silent_worker_is_marked_failed(store):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead, silent = store.create({"device": "cpu"}), store.create({"device": "cpu"})
    store.attach_worker(dead, gone.pid)
    store.attach_worker(silent, os.getpid())
    store._q("UPDATE runs SET status='running', heartbeat=? WHERE id=?", (time.time() - 120, silent))
    assert store.get(dead).status == "queued"  # a read does not reap
    assert sorted(store.reap()) == sorted([dead, silent])
    assert store.get(dead).status == "failed" and "unexpectedly" in store.get(dead).reason
    assert store.get(silent).status == "failed" and "heartbeat" in store.get(silent).reason
    assert RunStore(store.runs_dir).get(dead).status == "failed"  # persisted


def test_queue_policy_liveness_and_executor_behind_the_store(store):
    """The store keeps rows; tl_core.runs.policy decides queue order, slots and when a worker is dead."""
    assert callable(launcher.launch) and policy.device_limit("cuda:0") == 1  # each from its own module
    fifo = policy.FifoQueue()
    assert fifo.position("b", ["a", "b"]) == 2 and fifo.position("gone", ["a"]) is None
    assert fifo.may_start("a", "cpu", ["a", "b"], running=0)
    assert not fifo.may_start("b", "cpu", ["a", "b"], running=0) and not fifo.may_start("a", "cpu", ["a"], running=1)
    now = time.time()
    assert policy.why_dead(None, None, created=now, now=now) is None  # its worker may still be starting
    assert "never started" in policy.why_dead(None, None, created=now - 1000, now=now)
    assert policy.why_dead(os.getpid(), now, created=now, now=now) is None
    assert "heartbeat" in policy.why_dead(os.getpid(), now - 100, created=now, now=now)
    run_id = store.create({"device": "cpu"})
    store.attach_worker(run_id, os.getpid())
    worker: executor.Executor = executor.ProcessExecutor(store)
    assert worker.stop(run_id) == "stopped" and "cancelled" in store.get(run_id).reason


# --- real workers ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_runs_queue_and_complete_with_metrics_snapshots_and_model(store, monkeypatch):
    """Limit 1: the second run waits as queued (position 1) while the first trains; a second
    reader follows the first run incrementally; both complete with everything stored."""
    from tl_core.training.checkpoint import load_model

    monkeypatch.setenv("TL_MAX_CPU_RUNS", "1")
    first = launcher.launch(cfg(epochs=2, name="first"), store.runs_dir)
    second = launcher.launch(cfg(), store.runs_dir)
    reader, seen, after = RunStore(store.runs_dir), [], 0
    queued_while_running = False
    while store.get(first).active:
        rows = reader.metrics(first, "step", after_seq=after)
        seen += rows
        after = rows[-1]["seq"] if rows else after
        a, b = store.get(first), store.get(second)
        if a.status == "running" and b.status == "queued":
            queued_while_running |= b.queue_position == 1
        time.sleep(0.1)
    seen += reader.metrics(first, "step", after_seq=after)
    assert queued_while_running
    run = store.get(first)
    assert run.status == "completed", run.reason
    assert [r["seq"] for r in seen] == [r["seq"] for r in store.metrics(first, "step")]  # nothing missed or repeated
    epochs = store.metrics(first, "epoch")
    assert [m["epoch"] for m in epochs] == [1, 2] and 0 <= epochs[-1]["val_acc"] <= 1
    assert run.summary["status"] == "completed" and run.summary["confusion"]
    snaps = store.snapshots(first)
    assert 0 in snaps and all(a.dtype == np.uint8 and a.ndim == 3 for a in snaps[0].values())
    model, saved_cfg, class_names = load_model(store.model_dir(first))
    assert saved_cfg.name == "first" and len(class_names) == 10
    assert finished(store, second).status == "completed"
    assert store.get(second).started >= run.finished - 1


@pytest.mark.slow
def test_stop_ends_a_run_within_a_batch_and_keeps_its_metrics(store):
    run_id = launcher.launch(cfg(**LONG), store.runs_dir)
    wait_until(lambda: store.metrics(run_id, "step"))
    assert store.request_stop(run_id) == "running"
    run = finished(store, run_id)
    assert run.status == "stopped", run.reason
    steps = store.metrics(run_id, "step")
    seen_at = [i for i, r in enumerate(steps) if r["stop"]]
    assert seen_at, "the worker never saw the stop request"
    assert steps[-1]["step"] <= steps[seen_at[0]]["step"] + 1  # at most the batch in flight
    assert len(store.metrics(run_id, "epoch")) < LONG["epochs"]
    assert store.model_dir(run_id) is not None  # a stopped run keeps its model too


@pytest.mark.slow
def test_a_killed_worker_ends_as_failed_with_a_reason(store):
    run_id = launcher.launch(cfg(**LONG), store.runs_dir)
    wait_until(lambda: store.metrics(run_id, "step"))
    os.kill(store.get(run_id).pid, signal.SIGKILL)
    run = finished(store, run_id)
    assert run.status == "failed" and "unexpectedly" in run.reason
    assert store.metrics(run_id, "step")  # what was recorded stays


@pytest.mark.slow
def test_a_nan_loss_ends_as_diverged_with_advice(store):
    run_id = launcher.launch(cfg(lr=1e38, optimizer="sgd", epochs=2), store.runs_dir)
    run = finished(store, run_id)
    assert run.status == "diverged", run.reason
    assert "learning rate" in run.reason
    assert store.model_dir(run_id) is None


# --- CLI --------------------------------------------------------------------------------------------
def _cli(*args, runs_dir):
    env = {**os.environ, "TL_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tl_core", *args, "--runs-dir", str(runs_dir)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_cli_train_json_summary_is_the_last_line(store):
    p = _cli("train", "--backbone", "mobilenetv2", "--data", "digits8", "--strategy", "feature_extraction",
             "--per-class", "6", "--image-size", "32", "--epochs", "1", "--augment", "flip", "--device", "cpu",
             "--json", runs_dir=store.runs_dir)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["run_id"] == store.list_runs()[0].id
    for key in ("best_val_acc", "final_val_acc", "wall_s", "images_per_s", "trainable_params",
                "total_params", "device"):
        assert summary[key] is not None, key
    assert store.get(summary["run_id"]).config["augment"] == {"flip": True}
    listed = json.loads(_cli("runs", "--json", runs_dir=store.runs_dir).stdout)
    assert [r["id"] for r in listed] == [summary["run_id"]]


@pytest.mark.parametrize("bad", [
    ["--backbone", "nope"], ["--strategy", "nope"], ["--epochs", "0"], ["--freeze-blocks", "999"],
    ["--lr", "-1"], ["--augment", "spin"],
])
def test_cli_bad_arguments_exit_with_one_line_and_no_run(bad, tmp_path, capsys):
    from tl_core import cli

    assert cli.main(["train", "--runs-dir", str(tmp_path / "runs"), *bad]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err
    assert RunStore(tmp_path / "runs").list_runs() == []


def test_cli_missing_pretrained_weights_is_one_line_and_no_run(tmp_path, capsys):
    from tl_core import cli

    args = ["train", "--backbone", "resnet18", "--data", "digits8", "--runs-dir", str(tmp_path / "runs")]
    for extra in ([], ["--allow-download"]):  # offline: allowing a download does not help
        assert cli.main([*args, *extra]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "No pretrained weights for ResNet-18" in err and "--allow-download" in err
    assert RunStore(tmp_path / "runs").list_runs() == []
    assert cli.main([*args, "--weights", "random", "--epochs", "1", "--per-class", "6", "--image-size", "32"]) == 0


def test_cli_bad_arguments_in_a_real_process(tmp_path):
    p = _cli("train", "--epochs", "0", runs_dir=tmp_path / "runs")
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and p.stdout == ""


def test_cli_stop_and_runs_on_a_queued_run(store, capsys):
    from tl_core import cli

    run_id = store.create({"device": "cpu", "backbone": "mobilenetv2"})
    store.attach_worker(run_id, os.getpid())
    assert cli.main(["stop", run_id, "--runs-dir", str(store.runs_dir)]) == 0
    assert "stopped" in capsys.readouterr().out
    assert cli.main(["runs", "--runs-dir", str(store.runs_dir)]) == 0
    assert run_id in capsys.readouterr().out
    assert cli.main(["stop", "no-such-run", "--runs-dir", str(store.runs_dir)]) != 0


def test_active_count_counts_queued_and_training_runs_on_every_device(tmp_path):
    from tl_core.training.config import TrainConfig
    from tl_core.runs.store import RunStore

    store = RunStore(tmp_path / "runs")
    ids = [store.create(TrainConfig(name=f"r{i}", device=dev), device=dev)
           for i, dev in enumerate(("cpu", "cpu", "cuda", "cpu"))]
    assert store.active_count() == 4
    store.finish(ids[0], "completed")
    store.request_stop(ids[1])  # a queued run stops at once
    assert store.get(ids[1]).status == "stopped" and store.active_count() == 2
    assert store.try_start(ids[3]) and store.active_count() == 2  # training counts too
    store.finish(ids[2], "failed", "no GPU")
    assert store.active_count() == 1


@pytest.mark.slow
def test_an_idle_warm_worker_exits_after_its_idle_time(store, monkeypatch):
    monkeypatch.setenv("TL_WORKER_IDLE_S", "1")  # executor.worker_idle_s(): the smallest idle time
    pid = executor.start_worker(store, "cpu")

    def ended():
        alive, how = policy.pid_alive(pid)
        return None if alive else how or "ended"

    assert wait_until(ended, timeout=120) == "exit code 0"  # it ended by itself, with no run ever queued
    log = executor.pool_log(store.runs_dir, "cpu").read_text()
    said = re.search(rf"warm worker {pid} (exited: idle for (\d+) s)", log)
    assert said and int(said[2]) >= 1, "the worker's log gives another reason"  # idle, as long as it was allowed
    assert not store.workers("cpu")  # its row says it ended, and why
    assert store._q("SELECT reason FROM workers WHERE pid=?", (pid,))[0][0] == said[1]
