"""The built-in data sets' decode cache (docs/datasets.md, "Caching and timings"): ``load_dataset(key)``
the first time (decode + write the ``.npz``, from an empty ``TL_CACHE_DIR``: cold), then in a new process
(read the ``.npz``: warm disk cache), then again in that process (the in-memory cache). Each process
times ``load_dataset`` alone; importing ``tl_core.data`` (torch) is timed apart.

    python benchmarks/bench_data_cache.py                 # the four built-in image sets
    python benchmarks/bench_data_cache.py animal_shapes   # some of them

Every pass starts from an empty cache folder (cold); each state is measured in turn. Prints a Markdown table
and writes ``benchmarks/results/data_cache.json`` (``benchmarks/_results.py``: date, commit, machine).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _results

ROOT = Path(__file__).resolve().parent.parent
TIMED = """import json, sys, time
t = time.perf_counter(); from tl_core import data; t1 = time.perf_counter()
data.load_dataset(sys.argv[1]); t2 = time.perf_counter()
data.load_dataset(sys.argv[1]); t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t, "load_s": t2 - t1, "again_s": t3 - t2}))
"""


def timed(key: str, cache_dir: str) -> dict:
    out = subprocess.run([sys.executable, "-c", TIMED, key], env={**os.environ, "TL_CACHE_DIR": cache_dir},
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main(argv=None) -> int:
    from tl_core.data.builtin import BUILTIN

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("keys", nargs="*", default=list(BUILTIN), help="built-in sets (default: all)")
    args = ap.parse_args(argv)
    rows = []
    for key in args.keys:
        with tempfile.TemporaryDirectory() as cache:
            cold, warm = timed(key, cache), timed(key, cache)
        rows.append({"dataset": key, "cold_s": cold["load_s"], "disk_cache_s": warm["load_s"],
                     "same_process_s": warm["again_s"], "import_s": warm["import_s"]})
    print("| dataset | first time (decode + write cache) | new process (disk cache) | same process again |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dataset']} | {r['cold_s']:.3f} s | {r['disk_cache_s']:.3f} s | "
              f"{r['same_process_s'] * 1e6:.0f} µs |")
    figures = {f"{r['dataset']}.{k}": r[k] for r in rows
               for k in ("cold_s", "disk_cache_s", "same_process_s", "import_s")}
    _results.write("data_cache", figures, caches="cold", params={"datasets": args.keys},
                   notes="cold_s: decode + write the .npz from an empty TL_CACHE_DIR; disk_cache_s: a new process "
                         "reading it; same_process_s: the in-memory cache")
    return 0


if __name__ == "__main__":
    sys.exit(main())
