"""Classroom load: N simulated students press Launch within a few seconds; how long until each sees a
first metric, until all have finished, and how much memory the workers take.

Each student is a thread that calls ``launcher.launch(cfg, runs_dir, owner=name)`` (the Train page's own
code path), arriving uniformly over ``--arrival`` seconds (10 by default). Two workloads: ``default``
(everyone the Train page's default run: MobileNetV2, animal shapes, 100 per class, 96 px, feature
extraction, 3 epochs) and ``mixed`` (one third each feature extraction, partial, two-phase). Before the
students arrive the executor is warmed with one tiny run (the server has been up for a while), and
``single`` measures one student on that idle server. ``--browser N`` also measures the Streamlit
server's CPU while N sessions follow live runs on the Train page (protocol-level sessions from
``_st_sessions``, or headless Chromium tabs with ``--client chromium``).

    .venv/bin/python benchmarks/bench_classroom.py                       # 10 and 30 students, both workloads
    .venv/bin/python benchmarks/bench_classroom.py --students 10 --workload default
    RAY_ADDRESS=127.0.0.1:6390 .venv/bin/python benchmarks/bench_classroom.py --executor ray   # a running cluster
    .venv/bin/python benchmarks/bench_classroom.py --workers 1 2 --students 4 --arrival 0 --seeds distinct
    .venv/bin/python benchmarks/bench_classroom.py --quick               # 3 students, default workload
    .venv/bin/python benchmarks/bench_classroom.py --cold-server --students 30 --passes 3   # a fresh server
    .venv/bin/python benchmarks/bench_classroom.py --preload 2 15        # a run launched 2 s / 15 s after the last

``--cold-server``: a fresh ``streamlit run app.py`` per pass, no warm-up run; the clock starts at its first
healthy answer, when the students start arriving. ``--preload GAP``: the default run launched GAP s after the
previous one ended, while the idle warm worker preloads the text model (it gives way to the run).

``--workers 1 2`` repeats every scenario with ``TL_WORKERS`` warm workers on the CPU (each with
cores / workers torch threads). Prints one table, and ``--json PATH`` writes every measurement.

Every scenario starts in a fresh runs folder, so its feature cache is cold (the workers are warm, as above);
``--warm`` also runs the default student's run once, untimed, so the class finds its features cached. Each
scenario's figures go to ``benchmarks/results/classroom_<scenario>.json`` (``benchmarks/_results.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from tl_core.runs import executor, launcher, policy  # noqa: E402
from tl_core.runs import store as runs  # noqa: E402
from tl_core.training.config import TrainConfig  # noqa: E402

import _results  # noqa: E402

MIXED = ({"strategy": "feature_extraction"}, {"strategy": "partial"}, {"strategy": "two_phase"})
WARMUP = dict(backbone="mobilenetv2", data="digits8", per_class=6, image_size=32, epochs=1, name="warm-up")
POLL_S = 0.1


def student_config(i: int, workload: str, seeds: str, **kw) -> TrainConfig:
    extra = MIXED[i % 3] if workload == "mixed" else {}
    return TrainConfig(name=f"student {i + 1}", seed=i if seeds == "distinct" else 0, **extra, **kw)


class MemorySampler(threading.Thread):
    """Peak resident memory of this process, its descendants and the store's warm workers."""

    def __init__(self, store):
        super().__init__(daemon=True)
        self.store, self.peak_mb, self.done = store, 0.0, threading.Event()

    def sample(self) -> float:
        me = psutil.Process()
        procs = {me, *me.children(recursive=True), *ray_workers()}
        for w in self.store.workers():
            try:
                procs.add(psutil.Process(w["pid"]))
            except psutil.Error:
                pass
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def run(self):
        while not self.done.wait(0.25):
            self.peak_mb = max(self.peak_mb, self.sample())


def ray_workers() -> list:
    """Ray's node worker processes on this machine (``ray::...``; children of the raylets, not of us)."""
    if os.environ.get("TL_EXECUTOR") != "ray":
        return []
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if (p.info["cmdline"] or [""])[0].startswith("ray::"):
            out.append(p)
    return out


def wait_finished(store, run_ids, timeout: float = 3600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        executor.reap(store)  # a worker that died: its run ends as failed
        if all(not store.get(r).active for r in run_ids):
            return
        time.sleep(0.5)
    raise TimeoutError(f"runs still active after {timeout} s")


def warm_up(runs_dir: Path) -> float:
    """One tiny run through the executor (with Ray: one per CPU of the cluster, so every node's worker is
    up), as on a server that has been running."""
    t0 = time.perf_counter()
    n = 1
    if os.environ.get("TL_EXECUTOR") == "ray":
        import ray

        from tl_core.runs import ray_host as ray_executor

        ray_executor.connect(None)  # $RAY_ADDRESS
        n = max(1, int(ray.cluster_resources().get("CPU", 1)) // ray_executor.cpus_per_run(None))
    ids = [launcher.launch(TrainConfig(**WARMUP), runs_dir, owner="teacher") for _ in range(n)]
    wait_finished(runs.RunStore(runs_dir), ids)
    log = executor.pool_log(runs_dir, "cpu")  # an idle warm worker then loads the text model (about 3 s)
    deadline = time.time() + 60
    while (os.environ.get("TL_EXECUTOR") == "local" and os.environ.get("TL_PREWARM_TEXT") != "0"
           and time.time() < deadline and "text model loaded" not in (log.read_text() if log.exists() else "")):
        time.sleep(0.2)
    return time.perf_counter() - t0


def students(n: int, workload: str, arrival: float, runs_dir: Path, seeds: str, start: float | None = None) -> dict:
    """N students arriving uniformly over ``arrival`` s (from ``start``, a ``time.perf_counter`` moment; default:
    now). Per student: seconds from Launch to the first metric row and to the end; overall: until all have
    finished (from the first arrival), peak memory."""
    store = runs.RunStore(runs_dir)
    sampler = MemorySampler(store)
    sampler.start()
    launched: dict[int, tuple[str, float]] = {}
    errors: list[str] = []
    start = time.perf_counter() + 0.2 if start is None else start

    def student(i: int) -> None:
        time.sleep(max(0.0, start + (i * arrival / max(n - 1, 1)) - time.perf_counter()))
        t = time.perf_counter()
        try:
            launched[i] = (launcher.launch(student_config(i, workload, seeds), runs_dir, owner=f"student{i + 1}"), t)
        except Exception as exc:  # noqa: BLE001  (a refused launch is a result too)
            errors.append(f"student {i + 1}: {exc}")

    threads = [threading.Thread(target=student, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    first, done = {}, {}
    while any(t.is_alive() for t in threads) or len(done) < len(launched):
        now = time.perf_counter()
        executor.reap(store)  # one reap and one read per poll
        active = {r.id: r.active for r in store.list_runs()}
        for i, (run_id, t) in list(launched.items()):
            if i not in first and store.metrics(run_id, "step"):
                first[i] = now - t
            if i not in done and not active.get(run_id, True):
                done[i] = now - t
                first.setdefault(i, float("nan"))
        time.sleep(POLL_S)
    sampler.done.set()
    statuses = [store.get(r).status for r, _ in launched.values()]
    firsts = [v for v in first.values() if v == v]
    end = max((launched[i][1] + done[i] for i in done), default=start)
    return {
        "students": n, "workload": workload, "arrival_s": arrival,
        "first_metric_median_s": statistics.median(firsts) if firsts else None,
        "first_metric_worst_s": max(firsts) if firsts else None,
        "all_finished_s": end - min((t for _, t in launched.values()), default=start),
        "peak_memory_mb": max(sampler.peak_mb, sampler.sample()),
        "completed": statuses.count("completed"), "not_completed": len(statuses) - statuses.count("completed"),
        "refused": errors,
        "per_student": [{"student": i + 1, "first_metric_s": first.get(i), "finished_s": done.get(i)}
                        for i in sorted(launched)],
    }


def server_cpu(n: int, runs_dir: Path, seconds: float = 30.0, client: str = "sessions") -> dict:
    """Mean and peak CPU (% of one core) of ``streamlit run app.py`` while ``n`` sessions follow live runs
    on the Train page (each its own student's run: partial fine-tuning for 20 epochs, so that every run is
    still training while the server is sampled). ``client``: ``sessions`` (``_st_sessions``: the messages a
    browser sends, without a browser; 30 headless Chromium tabs do not load on 2 cores) or ``chromium``.
    Sampling starts once every session has shown its curve. The clients and the training share this
    machine with the server, so they run at nice 10 and the server at 0: the server gets the CPU it asks
    for, and its figure is its own demand."""
    server, url, log = start_server(runs_dir)
    try:
        healthy(url, server)
        os.nice(10)  # from here on, this process and what it starts (the clients) yield to the server
        for w in runs.RunStore(runs_dir).workers():
            psutil.Process(w["pid"]).nice(10)
        ids = [launcher.launch(student_config(i, "default", "same", strategy="partial", epochs=20), runs_dir,
                           owner=f"student{i + 1}") for i in range(n)]
        paths = [f"train?run={run_id}&student=student{i + 1}" for i, run_id in enumerate(ids)]
        follow = _follow_in_chromium if client == "chromium" else _follow_in_sessions
        out = follow(url, paths, psutil.Process(server.pid), seconds)
        store = runs.RunStore(runs_dir)
        out["live_runs_at_end"] = sum(store.get(r).active for r in ids)
        for run_id in ids:
            store.request_stop(run_id, teacher=True)
        return {"sessions": n, "client": client, **out}
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def _sample_cpu(proc, seconds: float) -> dict:
    proc.cpu_percent()
    samples = []
    for _ in range(int(seconds)):
        time.sleep(1.0)
        samples.append(proc.cpu_percent())
    return {"server_cpu_mean_pct": statistics.mean(samples), "server_cpu_peak_pct": max(samples)}


def _wait_for(showing, ready_s: float = 180.0) -> float:
    """Seconds until ``showing()`` (every session shows its curve), at most ``ready_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < ready_s and not showing():
        time.sleep(1.0)
    return time.monotonic() - t0


def _follow_in_sessions(url: str, paths: list[str], proc, seconds: float) -> dict:
    from _st_sessions import Sessions

    with Sessions(url, paths) as sessions:
        ready = _wait_for(lambda: all(s["plotly_with_points"] for s in sessions.stats()))
        before = sum(s["script_runs"] for s in sessions.stats())
        cpu = _sample_cpu(proc, seconds)
        stats = sessions.stats()
    runs_per_s = (sum(s["script_runs"] for s in stats) - before) / seconds / len(paths)
    return {**cpu, "sessions_showing_a_curve": sum(s["plotly_with_points"] for s in stats),
            "all_showing_after_s": ready, "script_runs_per_session_per_s": runs_per_s,
            "errors": sum(len(s["errors"]) + s["exceptions"] for s in stats)}


def _follow_in_chromium(url: str, paths: list[str], proc, seconds: float) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        pages = []
        for path in paths:  # open every session; don't wait for each page to finish loading
            pages.append(browser.new_context().new_page())
            pages[-1].goto(f"{url}/{path}", wait_until="commit", timeout=120_000)
        ready = _wait_for(lambda: all(_plotted(page) for page in pages))
        cpu = _sample_cpu(proc, seconds)
        following = sum(_plotted(page) for page in pages)
        browser.close()
    return {**cpu, "sessions_showing_a_curve": following, "all_showing_after_s": ready}


def _plotted(page) -> bool:
    """Whether the page shows a plotly chart with points (it followed its run)."""
    try:
        return bool(page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].some("
                                  "g => (g.data || []).some(t => t.x && t.x.length))", ))
    except Exception:
        return False


def start_server(runs_dir: Path, env: dict | None = None):
    """A fresh ``streamlit run app.py`` on a free port over ``runs_dir``; returns (process, url, log file)."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs_dir.mkdir(parents=True, exist_ok=True)
    log = open(runs_dir / "streamlit.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env={**os.environ, "TL_RUNS_DIR": str(runs_dir), "TL_OFFLINE": "1", **(env or {})},
        stdout=log, stderr=subprocess.STDOUT)
    return server, f"http://127.0.0.1:{port}", log


def healthy(url: str, server, timeout: float = 120.0) -> float:
    """Poll ``url``'s health check until it first answers ok; returns that moment (``time.perf_counter``)."""
    import urllib.request

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return time.perf_counter()
        except OSError:
            pass
        if server.poll() is not None:
            raise RuntimeError(f"the server ended (exit code {server.returncode})")
        time.sleep(0.05)
    raise TimeoutError(f"the server did not answer its health check in {timeout:.0f} s")


def cold_server(n: int, arrival: float, seeds: str) -> dict:
    """A freshly started app server (``streamlit run app.py``, a fresh runs folder: cold caches, no warm-up run):
    the clock starts when it first answers its health check, and ``n`` default students arrive over ``arrival``
    s from that moment. Their Launch is the Train page's code path (``launcher.launch``) over the server's runs
    folder, so they find whatever the server's start has warmed (its warm pool) and nothing else."""
    with tempfile.TemporaryDirectory(prefix="tl_bench_cold_") as tmp:
        runs_dir = Path(tmp) / "runs"
        os.environ["TL_RUNS_DIR"] = str(runs_dir)
        server, url, log = start_server(runs_dir)
        try:
            t0 = healthy(url, server)
            out = students(n, "default", arrival, runs_dir, seeds, start=t0)
            worker_log = executor.pool_log(runs_dir, "cpu").read_text()
        finally:
            server.terminate()
            server.wait(10)
            log.close()
            shut_down(runs_dir)
    out["pool_ready"] = "ready" in worker_log
    return out


def after_idle(gap: float) -> dict:
    """Preloading yields: a fresh warm pool trains the default run; ``gap`` s after it ended (the idle worker then
    loads the text model in the background, about 3 s) one student launches the default run again. Seconds
    from Launch to its first metric row, and how often the preload gave way to the run."""
    from _latency import first_metric

    with tempfile.TemporaryDirectory(prefix="tl_bench_idle_") as tmp:
        runs_dir = Path(tmp) / "runs"
        os.environ["TL_RUNS_DIR"] = str(runs_dir)
        try:
            store = runs.RunStore(runs_dir)
            run_id = launcher.launch(student_config(1, "default", "same"), runs_dir, owner="teacher")
            while store.get(run_id).active:
                time.sleep(0.02)
            ended = time.perf_counter()
            time.sleep(max(0.0, ended + gap - time.perf_counter()))
            out = first_metric(student_config(0, "default", "same"), str(runs_dir), wait_epoch=False)
            log = executor.pool_log(runs_dir, "cpu")
            deadline = time.time() + 60
            while "text model loaded" not in log.read_text() and time.time() < deadline:
                time.sleep(0.2)
            text = log.read_text()
        finally:
            shut_down(runs_dir)
    gave_way = [line for line in text.splitlines() if "text model loaded" in line]
    return {"gap_s": gap, "first_metric_s": out.get("step_s"), "text_preload": gave_way[-1] if gave_way else None}


def shut_down(runs_dir: Path) -> None:
    store = runs.RunStore(runs_dir)
    for r in store.list_runs():
        if r.status == "queued":
            store.request_stop(r.id, teacher=True)
    executor.stop_pool(store)
    if os.environ.get("TL_EXECUTOR") == "ray":  # the host's thread that follows this runs folder's runs
        launcher.get_executor(runs_dir).close()


def scenario(name: str, fn, args, workers: int) -> dict:
    """``fn(runs_dir)`` in a fresh runs folder (cold feature cache) with warm workers; always cleans up."""
    os.environ["TL_WORKERS"] = str(workers)
    with tempfile.TemporaryDirectory(prefix="tl_bench_class_") as tmp:
        runs_dir = Path(tmp) / "runs"
        os.environ["TL_RUNS_DIR"] = str(runs_dir)  # the feature cache lives there too: cold for every scenario
        try:
            warm = warm_up(runs_dir)
            if getattr(args, "warm", False):  # the class's default features already in the cache
                wait_finished(runs.RunStore(runs_dir), [launcher.launch(student_config(0, "default", "same"),
                                                                        runs_dir, owner="teacher")])
            out = fn(runs_dir)
        finally:
            shut_down(runs_dir)
    print(f"  {name}: done (warm-up {warm:.1f} s)", file=sys.stderr, flush=True)
    return {"scenario": name, "executor": args.executor, "workers": workers, **out}


def table(results: list[dict]) -> str:
    head = ("| scenario | executor | workers | students | first metric median s | worst s | all finished s | "
            "peak memory MB | completed |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")

    def f(v):
        return "-" if v is None else f"{v:.1f}"

    rows = [f"| {r['scenario']} | {r['executor']} | {r['workers']} | {r.get('students', '-')} | "
            f"{f(r.get('first_metric_median_s'))} | {f(r.get('first_metric_worst_s'))} | "
            f"{f(r.get('all_finished_s'))} | {f(r.get('peak_memory_mb'))} | "
            f"{r.get('completed', '-')}/{r.get('students', '-')} |" for r in results if "students" in r]
    cpu = [f"- Streamlit server CPU with {r['sessions']} sessions ({r['client']}) following live runs "
           f"({r['sessions_showing_a_curve']} showed a curve, {r['live_runs_at_end']} runs live at the end): mean "
           f"{r['server_cpu_mean_pct']:.0f}% of one core, peak {r['server_cpu_peak_pct']:.0f}%"
           for r in results if "sessions" in r]
    return "\n".join([head, *rows, *cpu])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--students", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--workload", choices=("default", "mixed", "both"), default="both")
    ap.add_argument("--arrival", type=float, default=10.0, help="students arrive uniformly over this many seconds")
    ap.add_argument("--executor", choices=("local", "ray", "process"), default="local")
    ap.add_argument("--workers", type=int, nargs="+", default=[policy.DEFAULT_CPU_WORKERS],
                    help="warm CPU workers (TL_WORKERS); several values: one pass each")
    ap.add_argument("--seeds", choices=("same", "distinct"), default="same",
                    help="same: every student the default seed (a class); distinct: one seed each")
    ap.add_argument("--browser", type=int, default=0, metavar="N", help="also measure the server with N sessions")
    ap.add_argument("--client", choices=("sessions", "chromium"), default="sessions",
                    help="--browser sessions: protocol-level (_st_sessions) or headless Chromium tabs")
    ap.add_argument("--no-single", action="store_true", help="skip the one-student-on-an-idle-server pass")
    ap.add_argument("--browser-only", action="store_true", help="only the --browser pass")
    ap.add_argument("--quick", action="store_true", help="3 students, default workload, 3 s arrival")
    ap.add_argument("--json", type=Path, default=None, help="write every measurement to this file")
    ap.add_argument("--cold-server", action="store_true",
                    help="only: a fresh `streamlit run app.py`; the students (--students, default workload) arrive "
                         "over --arrival s from its first healthy answer, with no warm-up run")
    ap.add_argument("--passes", type=int, default=1, help="--cold-server: this many passes, each a fresh server")
    ap.add_argument("--preload", type=float, nargs="+", default=None, metavar="GAP",
                    help="only: a default run launched GAP s after the previous run ended (the idle warm worker "
                         "preloads the text model meanwhile); seconds to its first metric")
    _results.add_warm_flag(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.students, args.workload, args.arrival = [3], "default", 3.0
    os.environ["TL_EXECUTOR"] = args.executor
    os.environ.setdefault("TL_OFFLINE", "1")
    if args.cold_server:
        return cold_server_passes(args)
    if args.preload:
        return preload_gaps(args)
    workloads = ("default", "mixed") if args.workload == "both" else (args.workload,)
    results = []
    print(f"classroom benchmark: {psutil.cpu_count()} cores, executor {args.executor}, load average "
          f"{os.getloadavg()[0]:.1f} at the start", file=sys.stderr)
    for workers in args.workers:
        if not (args.no_single or args.browser_only):
            results.append(scenario("single", lambda d: students(1, "default", 0.0, d, "same"), args, workers))
        for workload in () if args.browser_only else workloads:
            for n in args.students:
                results.append(scenario(workload, lambda d, n=n, w=workload: students(n, w, args.arrival, d, args.seeds),
                                        args, workers))
        if args.browser:
            results.append(scenario("browser", lambda d: server_cpu(args.browser, d, client=args.client), args, workers))
    print(table(results))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    for r in results:
        write_result(r, args)
    return 0


def cold_server_passes(args) -> int:
    for n in args.students:
        passes = []
        for k in range(args.passes):
            passes.append(cold_server(n, args.arrival, args.seeds))
            r = passes[-1]
            print(f"cold server, {n} students over {args.arrival:g} s, pass {k + 1}: first metric median "
                  f"{r['first_metric_median_s']:.1f} s, worst {r['first_metric_worst_s']:.1f} s; all finished "
                  f"{r['all_finished_s']:.1f} s; {r['completed']}/{n} completed; peak memory {r['peak_memory_mb']:.0f} MB",
                  flush=True)
        _results.write(
            f"classroom_cold_server_{n}" + (f"_arrival{args.arrival:g}" if args.arrival != 10.0 else ""),
            {"worst_first_metric_s": max(r["first_metric_worst_s"] for r in passes),
             "median_first_metric_s": statistics.median(r["first_metric_median_s"] for r in passes),
             "all_finished_s": max(r["all_finished_s"] for r in passes),
             "passes_worst_first_metric_s": [r["first_metric_worst_s"] for r in passes],
             "passes_median_first_metric_s": [r["first_metric_median_s"] for r in passes],
             "passes_all_finished_s": [r["all_finished_s"] for r in passes],
             "completed": min(r["completed"] for r in passes),
             "peak_memory_mb": max(r["peak_memory_mb"] for r in passes)},
            caches="cold", params={"students": n, "arrival_s": args.arrival, "passes": args.passes, "seeds": args.seeds},
            notes="a fresh `streamlit run app.py` per pass (fresh runs folder, no warm-up run); the clock starts at its "
                  "first /_stcore/health answer, when the students start arriving; worst and all-finished are the "
                  "worst over the passes, the median the median of the passes' medians")
    return 0


def preload_gaps(args) -> int:
    results = [after_idle(gap) for gap in args.preload]
    for r in results:
        print(f"default run launched {r['gap_s']:g} s after the previous one ended: first metric after "
              f"{r['first_metric_s']:.2f} s ({r['text_preload']})", flush=True)
    _results.write("classroom_after_idle", {f"first_metric_{r['gap_s']:g}s_after_s": r["first_metric_s"]
                                            for r in results},
                   caches="warm", params={"gaps_s": args.preload},
                   notes="a fresh warm pool trains the default run; GAP s after it ended (its idle worker preloads "
                         "the text model meanwhile, giving way to runs) the default run is launched again: warm "
                         "worker and feature cache, as for a class")
    return 0


def write_result(r: dict, args) -> None:
    """One scenario's figures to benchmarks/results/classroom_<scenario>.json, e.g. classroom_default_30,
    classroom_single, classroom_browser_30 (a non-default executor, worker count, arrival or seeds is named)."""
    n = r.get("students", r.get("sessions"))
    parts = ["classroom", "quick" if args.quick else "", args.executor if args.executor != "local" else "",
             r["scenario"], "" if r["scenario"] == "single" else str(n),
             r.get("client", "") if r.get("client", "sessions") != "sessions" else "",
             f"workers{r['workers']}" if r["workers"] != policy.DEFAULT_CPU_WORKERS else "",
             f"arrival{args.arrival:g}" if args.arrival != 10.0 and not args.quick and "students" in r else "",
             "distinct" if args.seeds == "distinct" and "students" in r else ""]
    figures = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    _results.write("_".join(p for p in parts if p), figures, caches=_results.caches(args),
                   params={k: v for k, v in r.items() if k not in figures and k != "per_student"},
                   notes="fresh runs folder per scenario (cold feature cache) with warm workers (one tiny run "
                         "first)" + ("; the default run once more before the class (warm features)" if args.warm else ""))


if __name__ == "__main__":
    sys.exit(main())
