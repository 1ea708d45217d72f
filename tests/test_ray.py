"""The Ray executor on a real two-node Ray cluster on this machine (``ray start --head`` + a second
``ray start --address=...``, one CPU each): runs land on both nodes and stream into the host's store,
a remote run stops long before its end, and a node whose raylet is killed fails its run while the
head node's run completes. The failure paths: inputs that cannot be shipped, a run that fails on its
node, a worker process that is killed, and the host closed while it holds runs; the pure helpers need no
cluster. Each node has its own folder (``TL_NODE_DIR``): nothing is shared with the host's run store but
what travels through Ray. One browser test (Playwright, test_browser's ``server``) launches the Train
page's run under ``TL_EXECUTOR=ray``, follows it live and stops it. With ``CI`` set (``.ci/run``), a missing
Ray fails instead of skipping."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CI"):  # CI runs the Ray tests: a missing Ray fails here (`make install-ray`)
    import ray
else:
    ray = pytest.importorskip("ray", reason="Ray is not installed: `make install-ray` (requirements-ray.txt)")

import test_runs  # noqa: E402  (its helpers: a tiny config, waiting for a condition or a run's end)
from test_browser import _enter, _open, _rerun, _settle, _wait_for_points, server  # noqa: E402,F401
from test_runs import finished, wait_until  # noqa: E402
from tl_core.runs import ray_host as ray_executor  # noqa: E402
from tl_core.runs.store import RunStore  # noqa: E402

pytestmark = pytest.mark.slow  # starts a Ray cluster: not in `make test-fast`
RAY = str(Path(sys.executable).with_name("ray"))
TINY = dict(backbone="mobilenetv2", data="digits8", per_class=6, image_size=32, batch_size=8,
            strategy="feature_extraction", epochs=2, device="cpu")
# a few seconds of training: the whole network trains on every batch
MEDIUM = dict(TINY, strategy="full", per_class=20, epochs=2, batch_size=4)
LONG = dict(MEDIUM, epochs=30)  # still running when it is stopped


def cfg(**kw):
    return test_runs.cfg(**{**TINY, **kw})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raylet_pid(node_id: str) -> int:
    """The pid of the raylet of ``node_id`` (its command line names the node)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"/raylet") and f"--node_id={node_id}".encode() in cmd:
            return int(pid)
    raise AssertionError(f"no raylet process for node {node_id}")


def ray_start(args: list[str], env: dict) -> int:
    """``ray start ARGS`` in a new session; returns its process group, which the node's daemons
    and workers keep (the teardown ends them by it: never another cluster of this machine)."""
    proc = subprocess.Popen([RAY, "start", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, f"ray start {' '.join(args)} failed:\n{out[-3000:]}"
    return proc.pid


def end_groups(groups: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 3
        while time.time() < deadline and any(alive(g) for g in groups):
            time.sleep(0.1)


def alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine, each with one CPU, a custom resource naming it and its own
    TL_NODE_DIR. Ray's sockets live under a short temporary folder (a socket path has ~107 bytes).
    Token authentication is off (RAY_AUTH_MODE=disabled: else a ~/.ray/auth_token left by anyone
    turns it on for the head only): the cluster listens on 127.0.0.1."""
    base = Path(tempfile.mkdtemp(prefix="tlray-"))
    port, groups = free_port(), []
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TL_RUNS_DIR", "TL_BACKBONES_DIR")}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=200000000",
              "--disable-usage-stats"]
    nodes = {"head": base / "node-head", "node2": base / "node-2"}
    t0 = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        try:
            groups.append(ray_start(["--head", f"--port={port}", f"--temp-dir={base / 'ray'}",
                                     "--include-dashboard=false", '--resources={"head": 1}', *common],
                                    {**env, "TL_NODE_DIR": str(nodes["head"])}))
            groups.append(ray_start([f"--address=127.0.0.1:{port}", '--resources={"node2": 1}', *common],
                                    {**env, "TL_NODE_DIR": str(nodes["node2"])}))
            ray_executor.connect(f"127.0.0.1:{port}")
            wait_until(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, timeout=60)
            ids = {name: next(n["NodeID"] for n in ray.nodes() if n["Alive"] and name in n["Resources"])
                   for name in nodes}
            print(f"\n[ray] two-node cluster up in {time.monotonic() - t0:.1f} s")
            yield {"ids": ids, "dirs": nodes, "address": f"127.0.0.1:{port}"}
        finally:
            ray_executor.shutdown()
            end_groups(groups)
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def host(cluster, tmp_path):
    """The app's side: a run store in this test's folder and a RayExecutor over it."""
    store = RunStore(tmp_path / "runs")
    ex = ray_executor.RayExecutor(store.runs_dir)
    yield store, ex
    ex.close()
    store.close()


def user_folder(root: Path) -> Path:
    """A user data set in the host's data root: two classes of digits8 images as PNG files."""
    from PIL import Image

    from tl_core import data

    ds = data.load_dataset("digits8")
    for label, name in ((3, "three"), (7, "seven")):
        (root / "digits" / name).mkdir(parents=True)
        for i, k in enumerate(np.flatnonzero(ds.labels.numpy() == label)[:8]):
            Image.fromarray(ds.images[k, 0].numpy()).save(root / "digits" / name / f"{i}.png")
    return root / "digits"


def weights_file(path: Path) -> Path:
    """A MobileNetV2 weights file that only this host has (random weights, safetensors)."""
    from safetensors.torch import save_file

    from tl_core.models import backbones

    model, _ = backbones.create_model("mobilenetv2", weights="random")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_what_a_run_asks_of_the_cluster_and_the_reasons_of_lost_runs():
    """The pure helpers: no cluster needed."""
    cpus, gpus = {"CPU": 4.0}, {"CPU": 8.0, "GPU": 2.0}
    resources = ray_executor.run_resources
    assert resources({"device": "cpu"}, gpus, 2) == {"num_cpus": 2, "num_gpus": 0}
    assert resources({"device": " CUDA:1 "}, cpus, 2) == {"num_cpus": 1, "num_gpus": 1}  # a GPU and a CPU to feed it
    assert resources({"device": "auto"}, gpus, 3) == {"num_cpus": 1, "num_gpus": 1}  # auto takes the cluster's GPU
    assert resources({"device": "auto"}, cpus, 3) == resources({}, cpus, 3) == {"num_cpus": 3, "num_gpus": 0}
    fits = ray_executor.fits
    assert fits({"num_cpus": 2, "num_gpus": 0}, {"CPU": 2.0}) and not fits({"num_cpus": 2, "num_gpus": 0}, {"CPU": 1.5})
    assert fits({"num_cpus": 1, "num_gpus": 0}, {"CPU": 1.0, "GPU": 0.0})  # a CPU run needs no GPU
    assert not fits({"num_cpus": 1, "num_gpus": 1}, {"CPU": 4.0})  # no GPU in the cluster
    assert not fits({"num_cpus": 1, "num_gpus": 1}, {"CPU": 0.5, "GPU": 1.0})  # a GPU, but no CPU to feed it
    assert fits({"num_cpus": 1, "num_gpus": 1}, {"CPU": 1.0, "GPU": 1.0})
    errors = ray.exceptions
    for exc, why in [(errors.NodeDiedError("node 1a2b is dead\nlong stack"), "the cluster node running it went down"),
                     (errors.OutOfMemoryError("task killed: memory"), "Ray stopped it: its node ran out of memory"),
                     (errors.WorkerCrashedError(), "its Ray worker process died"),
                     (errors.ActorDiedError(), "its Ray worker process died"),
                     (errors.TaskCancelledError(), "it was cancelled on the cluster"),
                     (errors.RayError("anything else"), "the Ray cluster lost it")]:
        reason = ray_executor.ray_failure(exc)
        assert reason.startswith(why) and f"({type(exc).__name__}: " in reason and "\n" not in reason, reason
    assert ray_executor.ray_failure(errors.NodeDiedError("x" * 5000)).count("x") == 300  # Ray's first line, cut
    coloured = ray_executor.ray_failure(errors.RayError("\x1b[36mray::train_remote()\x1b[39m (pid=7) failed"))
    assert coloured.endswith("(RayError: ray::train_remote() (pid=7) failed)"), coloured  # no terminal colours


def test_runs_land_on_both_nodes_and_stream_into_the_hosts_store(cluster, host, tmp_path):
    from tl_core.training.checkpoint import load_model

    store, ex = host
    user_folder(tmp_path / "data")
    plain = store.create(cfg())
    shipped = store.create(cfg(data="digits", data_root=str(tmp_path / "data"),
                               weights_file=str(weights_file(tmp_path / "mine.safetensors"))))
    t0 = time.monotonic()
    for run_id in (plain, shipped):
        ex.submit(run_id)
    wait_until(lambda: store.metrics(plain, "step") or store.metrics(shipped, "step"))
    print(f"\n[ray] first metric in the host's store {time.monotonic() - t0:.1f} s after submit (cold workers)")
    for run_id in (plain, shipped):
        run = finished(store, run_id)
        assert run.status == "completed", run.reason
        assert len(store.metrics(run_id, "epoch")) == TINY["epochs"]
        assert store.metrics(run_id, "step") and store.metrics(run_id, "phase")
        assert sorted(store.snapshots(run_id)) == [0, 1, 2]
        assert run.summary["final_val_acc"] is not None and run.info["num_train"] > 0
        model, saved_cfg, classes = load_model(store.model_dir(run_id))
        assert classes == run.summary["class_names"] and saved_cfg.data == run.config["data"]
        preds = store.predictions(run_id)  # the Inspect page's confusion cells: every validation image, as counted
        assert len(preds["val_idx"]) == run.info["num_val"]
        assert np.bincount(preds["label"] * len(classes) + preds["pred"], minlength=len(classes) ** 2).reshape(
            len(classes), -1).tolist() == run.summary["confusion"]
    where = {store.get(r).info["node"]["node_id"] for r in (plain, shipped)}
    assert where == set(cluster["ids"].values())  # one CPU per node: one run on each
    info = store.get(shipped).info
    assert info["weights"] == "user" and info["classes"] == ["seven", "three"]
    # the user's folder and weights went as bytes into the shipped run's node folder, and nowhere else
    node = next(name for name, i in cluster["ids"].items() if i == info["node"]["node_id"])
    other = next(name for name in cluster["ids"] if name != node)
    arrived = sorted(p.name for p in (cluster["dirs"][node] / "inputs").glob("*/*"))
    assert arrived == sorted(["digits.zip", "mine.safetensors"])
    assert not (cluster["dirs"][other] / "inputs").exists()
    # each node keeps its own feature cache; the host's run folder holds none
    assert all(list((d / "runs" / "feature_cache").glob("*.safetensors")) for d in cluster["dirs"].values())
    assert not (store.runs_dir / "feature_cache").exists()


def test_a_remote_run_launched_with_TL_EXECUTOR_ray_stops_long_before_its_end(host, monkeypatch):
    from tl_core.runs import launcher

    store, ex = host
    monkeypatch.setenv("TL_EXECUTOR", "ray")
    run_id = launcher.launch(cfg(**LONG), store.runs_dir)  # what the Train page calls
    assert store.get(run_id).executor == "ray"
    wait_until(lambda: len(store.metrics(run_id, "step")) >= 2)
    assert launcher.get_executor(store.runs_dir).stop(run_id) == "running"
    run = finished(store, run_id)
    assert run.status == "stopped" and run.reason == "stopped by request", run.reason
    steps, epochs = store.metrics(run_id, "step"), store.metrics(run_id, "epoch")
    total = run.info["steps_per_epoch"] * LONG["epochs"]
    assert steps[-1]["step"] < total / 2 and len(epochs) < LONG["epochs"] / 2  # well before its last batch
    assert run.summary["status"] == "stopped" and run.summary["epochs_done"] == len(epochs)
    assert store.model_dir(run_id) is not None  # a stopped run keeps its model, as locally
    # once the store says stopped, nothing more is written for it: the host drains and writes on for another run
    other = store.create(cfg())
    ex.submit(other)
    assert finished(store, other).status == "completed"
    assert store.metrics(run_id, "step") == steps and store.metrics(run_id, "epoch") == epochs


@pytest.fixture
def ray_server(cluster, monkeypatch, request):
    """``streamlit run app.py`` (test_browser's ``server``) with ``TL_EXECUTOR=ray`` and the cluster's address."""
    monkeypatch.setenv("TL_EXECUTOR", "ray")
    monkeypatch.setenv("RAY_ADDRESS", cluster["address"])
    return request.getfixturevalue("server")


@pytest.mark.browser
def test_a_run_launched_from_the_train_page_trains_on_ray_is_followed_live_and_stops(cluster, ray_server):
    """The Done-when of the Ray issue, in a real browser: Launch on the Train page (the default run, more
    epochs) under TL_EXECUTOR=ray, the live curve gains points, the run's row names its Ray node, Stop
    ends it as stopped, and the host's store says the same."""
    from playwright.sync_api import expect, sync_playwright

    url, tmp = ray_server
    t0 = time.monotonic()
    with sync_playwright() as p:
        browser, page, errors = _open(p, f"{url}/train")
        _enter(page, "spinbutton", "Epochs", "20")  # still training when Stop is pressed
        with _rerun(page):
            page.get_by_role("button", name="Launch training").click()
            page.wait_for_url(re.compile("run="), timeout=60_000)
        run_id = page.url.split("run=")[1].split("&")[0]
        curves = page.locator("[data-testid='stPlotlyChart']").first
        first = _wait_for_points(curves)
        t_first = time.monotonic() - t0
        _wait_for_points(curves, lambda n: n > first, timeout=60)  # live: it gains points
        page.reload()  # the runs table is drawn with the page (the live part refreshes by itself)
        _settle(page)
        page.get_by_text(re.compile(r"All runs \(1\)")).click()
        store = RunStore(tmp / "runs")
        node = store.get(run_id).info["node"]
        assert node["node_id"] in cluster["ids"].values()
        expect(page.locator("[data-testid='stDataFrame']")).to_contain_text(
            f"training on Ray node {node['node_ip']} ({node['node_id'][:8]})", timeout=10_000)
        page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop", exact=True).click()
        t_stop = time.monotonic()
        expect(page.get_by_text("Stopped: stopped by request")).to_be_visible(timeout=60_000)
        t_stopped = time.monotonic() - t_stop
        assert not page.locator("[data-testid='stException']").count(), "an exception box is on the page"
        assert not errors, errors
        browser.close()
    run = store.get(run_id)
    assert run.status == "stopped" and run.reason == "stopped by request" and run.executor == "ray"
    steps = store.metrics(run_id, "step")
    assert steps and steps[-1]["step"] < run.info["steps_per_epoch"] * 20
    assert store.model_dir(run_id) is not None  # the node's model came back to the host's run folder
    print(f"\n[ray] browser: first live point {t_first:.1f} s after opening Train; page says stopped "
          f"{t_stopped:.1f} s after Stop; {time.monotonic() - t0:.1f} s in all")


def test_the_host_queues_what_the_cluster_cannot_take_and_a_queued_run_can_be_cancelled(host):
    store, ex = host
    # the two that take the cluster are long: a short one could end before the other starts, freeing its CPU
    first, second = (store.create(cfg(**LONG)) for _ in range(2))
    third = store.create(cfg(**MEDIUM))
    for run_id in (first, second, third):
        ex.submit(run_id)
    wait_until(lambda: store.metrics(first, "step") and store.metrics(second, "step"))
    assert store.get(third).status == "queued"  # two nodes of one CPU, two runs: the third waits on the host
    assert ex.stop(third) == "stopped"
    for run_id in (first, second):
        assert store.get(run_id).status == "running"
        ex.stop(run_id)
        assert finished(store, run_id).status == "stopped"
    assert store.get(third).status == "stopped" and not store.metrics(third, "step")  # freed CPUs: still not run


def test_inputs_that_cannot_be_shipped_fail_the_run_on_the_host(host, tmp_path):
    store, ex = host
    gone = weights_file(tmp_path / "gone.safetensors")
    run_id = store.create(cfg(weights_file=str(gone)))
    gone.unlink()  # deleted between the launch and the dispatch
    ex.submit(run_id)
    run = finished(store, run_id)
    assert run.status == "failed" and run.reason.startswith("its inputs could not be sent to the cluster: ")
    assert f"weights {gone}: " in run.reason and "No such file" in run.reason, run.reason  # which input, and why
    assert not store.metrics(run_id, "step") and "node" not in (run.info or {})  # it never reached a node


def test_a_run_that_fails_on_its_node_ends_failed_with_the_nodes_reason(host, tmp_path):
    store, ex = host
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"these are not weights")  # shipped as it is; only the node finds out
    run_id = store.create(cfg(weights_file=str(broken)))
    ex.submit(run_id)
    run = finished(store, run_id)
    assert run.status == "failed" and "broken.safetensors" in run.reason, run.reason
    assert not run.reason.startswith(("the cluster node", "Ray stopped it", "its Ray worker", "it was cancelled",
                                      "the Ray cluster lost"))  # the node's own reason: the task returned
    assert "started on Ray node" in store.log_path(run_id).read_text()
    assert not store.metrics(run_id, "step")


def test_a_killed_worker_process_fails_its_run_with_rays_reason(host):
    store, ex = host
    run_id = store.create(cfg(**LONG))
    ex.submit(run_id)
    wait_until(lambda: store.metrics(run_id, "step") and "node" in (store.get(run_id).info or {}))
    pid = store.get(run_id).info["node"]["pid"]
    os.kill(pid, signal.SIGKILL)
    run = finished(store, run_id)
    assert run.status == "failed" and run.reason.startswith("its Ray worker process died"), run.reason
    assert store.metrics(run_id, "step")  # what was recorded stays


def test_closing_the_host_fails_the_runs_it_holds_and_stops_their_workers(host):
    store, ex = host
    runs = [store.create(cfg(**LONG)) for _ in range(3)]  # two nodes of one CPU: two run, one waits
    for run_id in runs:
        ex.submit(run_id)
    wait_until(lambda: sum(bool(store.metrics(r, "step")) for r in runs) == 2)
    pids = [store.get(r).info["node"]["pid"] for r in runs if store.metrics(r, "step")]
    ex.close()
    for run_id in runs:
        run = store.get(run_id)
        assert run.status == "failed" and run.reason == "the app's host stopped following it", run.reason
    for pid in pids:  # their tasks were cancelled: the workers do not train on
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=60)
    rows = {r: len(store.metrics(r, "step")) for r in runs}
    again = ray_executor.RayExecutor(store.runs_dir)  # a new host for this store starts clean
    done = store.create(cfg())
    again.submit(done)
    assert finished(store, done).status == "completed"
    assert {r: len(store.metrics(r, "step")) for r in runs} == rows  # nothing came late
    again.close()


def test_a_dead_node_fails_its_run_and_the_head_nodes_run_completes(cluster, host):
    store, ex = host
    runs = [store.create(cfg(**MEDIUM)) for _ in range(2)]
    for run_id in runs:
        ex.submit(run_id)

    def placed():
        infos = [store.get(r).info for r in runs]
        return all(i and "node" in i for i in infos) and all(store.metrics(r, "step") for r in runs) and infos
    node_of = {r: i["node"]["node_id"] for r, i in zip(runs, wait_until(placed))}
    victim = next(r for r in runs if node_of[r] == cluster["ids"]["node2"])
    survivor = next(r for r in runs if r != victim)
    t0 = time.monotonic()
    os.kill(raylet_pid(cluster["ids"]["node2"]), signal.SIGKILL)
    dead = finished(store, victim)
    print(f"\n[ray] a dead node's run failed {time.monotonic() - t0:.1f} s after its raylet was killed")
    assert dead.status == "failed" and "node" in dead.reason and "NodeDiedError" in dead.reason, dead.reason
    worker = store.get(victim).info["node"]["pid"]
    wait_until(lambda: not Path(f"/proc/{worker}").exists(), timeout=60)  # its worker does not train on
    alive = finished(store, survivor)
    assert alive.status == "completed", alive.reason
    assert len(store.metrics(survivor, "epoch")) == MEDIUM["epochs"]
    assert json.loads((store.run_dir(survivor) / "summary.json").read_text())["status"] == "completed"
