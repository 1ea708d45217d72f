"""Launch -> first metric: the latency a student sees, shared by the benchmarks."""
from __future__ import annotations

import time


def first_metric(cfg, runs_dir: str, wait_epoch: bool = True, timeout: float = 300) -> dict:
    """Seconds from ``launcher.launch(cfg)`` until the store holds the run's first per-step loss row
    (``step_s``) and, with ``wait_epoch``, its first epoch row (``epoch_s``); the run is then stopped."""
    from tl_core.runs import executor, launcher
    from tl_core.runs.store import RunStore

    t0 = time.perf_counter()
    run_id = launcher.launch(cfg, runs_dir)
    store, out = RunStore(runs_dir), {}
    try:
        while ("epoch_s" if wait_epoch else "step_s") not in out and time.perf_counter() - t0 < timeout:
            if "step_s" not in out and store.metrics(run_id, "step"):
                out["step_s"] = time.perf_counter() - t0
            if store.metrics(run_id, "epoch"):
                out["epoch_s"] = time.perf_counter() - t0
            time.sleep(0.02)
        store.request_stop(run_id)
        while store.get(run_id).active and time.perf_counter() - t0 < timeout + 60:
            executor.reap(store)  # a worker that died: its run ends as failed
            time.sleep(0.1)
    finally:
        store.close()
    return out
