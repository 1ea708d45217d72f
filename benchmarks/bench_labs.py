"""Run the labs in their DEFAULT configuration (3 paired seeds each), on this machine.

Prints each lab's result table (means over the seeds with 95% bootstrap intervals), "what we measured"
and timing; writes the charts as PNG (docs/img/lab_<lab>.png: plotly → standalone HTML → headless
Chromium screenshot) and docs/labs.md with the measured numbers, a summary table first.

    .venv/bin/python benchmarks/bench_labs.py [--labs race yosinski ...] [--seeds K] [--runs-dir DIR]

Runs and the lab-saved backbones go to a temporary folder unless --runs-dir is given. Caches start cold (that
folder's feature cache, and an empty decoded-data cache in it); ``--warm`` runs each lab once, untimed, first.
Each lab's wall time, CPU time and verdict also go to ``benchmarks/results/lab_<lab>.json``
(``benchmarks/_results.py``).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TL_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHROMIUM = "/usr/bin/chromium"

import _results  # noqa: E402


def screenshot(fig, out_png: Path, width: int = 1200, height: int = 650) -> bool:
    """plotly figure → standalone HTML (plotly.js inlined) → PNG via headless Chromium."""
    out_png.parent.mkdir(parents=True, exist_ok=True)
    exe = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not exe:
        print(f"chromium not found: {out_png} not written (apt-get install -y --no-install-recommends chromium "
              "fonts-dejavu-core)")
        return False
    fig.update_layout(width=width - 20, height=height - 20)
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "chart.html"
        fig.write_html(str(html), include_plotlyjs=True, full_html=True, config={"displayModeBar": False})
        profile = Path(tmp) / "profile"
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--hide-scrollbars", "--virtual-time-budget=5000", f"--screenshot={out_png}",
               f"--window-size={width},{height}", html.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    ok = out_png.exists() and out_png.stat().st_size > 1000
    print(f"wrote {out_png}" if ok else f"screenshot failed: {proc.stderr[-500:]}")
    return ok


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    dev = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return f"{cores} CPU cores ({cpu}), {dev}, torch {torch.__version__}, Python {platform.python_version()}"


def load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def md_table(df, cols=None, percent=()) -> str:
    df = df[cols] if cols else df
    lines = ["| " + " | ".join(str(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    for _, row in df.iterrows():
        cells = []
        for c in df.columns:
            v = row[c]
            if isinstance(v, float):
                cells.append("–" if v != v else f"{v:.1%}" if c in percent else f"{v:g}")
            elif v is None:
                cells.append("–")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--labs", nargs="+", default=None, help="default: every lab")
    p.add_argument("--seeds", type=int, default=None, help="default: the lab's default (3)")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--no-docs", action="store_true", help="print only; do not write docs/labs.md and the PNGs")
    _results.add_warm_flag(p)
    args = p.parse_args()
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="bench_labs_"))
    os.environ["TL_RUNS_DIR"] = str(runs_dir)
    if not args.warm:  # decoded data sets too: from an empty cache
        os.environ["TL_CACHE_DIR"] = str(runs_dir / "data_cache")
    os.environ.setdefault("TL_BACKBONES_DIR", str(runs_dir / "backbones"))

    from tl_core import labs

    info = machine()
    print(f"machine: {info}; load average before: {load()}; runs in {runs_dir}")
    sections, loads, cpu = [], {}, {}
    for lab in args.labs or list(labs.LABS):
        cfg = labs.default_config(lab)
        if args.seeds is not None:
            cfg.seeds = args.seeds
        n_runs = len(labs.plan_runs(cfg, runs_dir / "plan-preview"))
        print(f"\n=== {labs.LABS[lab].title}: {n_runs} runs ({cfg.seeds} seeds), default config: "
              f"{cfg.to_query_string()}", flush=True)
        if args.warm:  # an untimed first pass fills the feature and data caches
            labs.run_lab(cfg, runs_dir)
        t0, c0 = time.time(), time.process_time()
        res = labs.run_lab(cfg, runs_dir)
        wall, cpu[lab] = time.time() - t0, time.process_time() - c0
        print(res.table.drop(columns=[c for c in ("run",) if c in res.table]).to_string(index=False))
        print(res.text)
        loads[lab] = load()
        print(f"--- {lab}: {wall:.0f} s wall, {cpu[lab]:.0f} s CPU for {n_runs} runs (load average now "
              f"{loads[lab]})", flush=True)
        verdicts = [c["agrees"] for c in res.checks]
        _results.write(f"lab_{lab}", {"wall_s": wall, "cpu_s": cpu[lab], "runs": n_runs, "seeds": len(res.seeds),
                                      "claims_agree": verdicts.count(True), "claims_inconclusive": verdicts.count(None),
                                      "claims_disagree": verdicts.count(False), "verdict": str(res.verdict())},
                       caches=_results.caches(args), params={"config": cfg.to_query_string()}, notes=res.text)
        png = ROOT / "docs" / "img" / f"lab_{lab}.png"
        if not args.no_docs:
            screenshot(res.figure, png)
        sections.append((lab, cfg, res, wall, n_runs, png))

    if args.no_docs:
        return 0
    write_docs(labs, sections, info, loads, cpu)
    return 0


HEADER = ["# Labs: measured results", "",
          "Measured by `benchmarks/bench_labs.py`. Each lab ran in its **default** configuration (the one the Labs "
          "page starts with), all runs of a lab one after another in one process. Every lab runs **several seeds** "
          "(the default: 3): the "
          "same data split for all of them, a different initialisation and batch order for each, so the runs of a "
          "seed are paired. Tables show the **mean over the seeds** and, beside it, the 95% bootstrap interval of "
          "that mean; charts show the mean with a band from the lowest to the highest seed. Numbers are "
          "measurements, not constants: rerun the script to reproduce them on your machine.", ""]


def _summary(labs, sections, old: str = "") -> list[str]:
    """One line per lab: seeds, runs, time and how its claims came out (labs not re-run keep their line
    from ``old``, the previous docs/labs.md)."""
    rows = {lab: line for lab in labs.LABS for line in old.splitlines()
            if line.startswith("| [") and f"](#{lab})" in line}
    for lab, cfg, res, wall, n_runs, _ in sections:
        v = [c["agrees"] for c in res.checks]
        rows[lab] = (f"| [{labs.LABS[lab].title}](#{lab}) | {len(res.seeds)} | {n_runs} | {wall / 60:.1f} min | "
                     f"{v.count(True)} / {v.count(None)} / {v.count(False)} | {res.verdict()} |")
    head = ["| lab | seeds | runs | time | claims: agree / inconclusive / disagree | verdict |", "|---|---|---|---|---|---|"]
    return ["## Summary", "", labs.VERDICT_RULE, "", *head, *(rows[k] for k in labs.LABS if k in rows), ""]


def _section(labs, lab, cfg, res, wall, n_runs, png, info, load, cpu) -> str:
    li = labs.LABS[lab]
    sec = [f"<!-- lab:{lab} -->", f'<a id="{lab}"></a>', "", f"## {li.title}", "", f"**Question.** {li.question}", "",
           f"**Theory predicts.** {li.prediction}", "",
           f"Configuration: `{cfg.to_query_string()}` ({li.timing}).", "",
           f"**Seeds: {len(res.seeds)}** (training seeds {', '.join(map(str, res.seeds))}; "
           + (f"split seed {cfg.seed})." if all(r.paired for r in labs.plan_runs(cfg, Path(tempfile.gettempdir())))
              else "each seed its own split: split seed = training seed)."),
           "",
           f"**Time: {wall / 60:.1f} min** ({wall:.0f} s wall for {n_runs} runs, including data loading and "
           f"model building), measured {time.strftime('%Y-%m-%d %H:%M')} on {info} "
           f"(1-min / 5-min / 15-min load average at the end: {load}). The lab used "
           f"{cpu:.0f} s of CPU time: on an idle 2-core machine that is about "
           f"{cpu / 2 / 60:.1f}–{cpu / 1.6 / 60:.1f} min of wall time.", ""]
    if png.exists():
        sec += [f"![{li.title}](img/{png.name})", ""]
    cols = [c for c in res.table.columns if c not in ("run", "key", "total params")]
    sec += [md_table(res.table, cols, res.percent_columns()), "", "**What we measured.**", "", res.text, "",
            f"<!-- /lab:{lab} -->"]
    return "\n".join(sec)


def write_docs(labs, sections, info, loads, cpu) -> None:
    doc = ROOT / "docs" / "labs.md"
    old = doc.read_text() if doc.exists() else ""
    blocks = {}
    for lab in labs.LABS:  # keep the sections of labs not re-run this time
        a, b = f"<!-- lab:{lab} -->", f"<!-- /lab:{lab} -->"
        if a in old and b in old:
            blocks[lab] = old[old.index(a):old.index(b) + len(b)]
    for lab, cfg, res, wall, n_runs, png in sections:
        blocks[lab] = _section(labs, lab, cfg, res, wall, n_runs, png, info, loads[lab], cpu[lab])
    body = [blocks[k] for k in labs.LABS if k in blocks]
    doc.write_text("\n".join(HEADER + _summary(labs, sections, old)) + "\n" + "\n\n".join(body) + "\n")
    print(f"\nwrote {doc}")


if __name__ == "__main__":
    sys.exit(main())
