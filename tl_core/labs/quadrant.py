"""Data size × similarity: strategies on little or lots of data from a near or a far domain, against the
textbook quadrant's recommendation."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tl_core.labs.stats import TOL, paired
from tl_core.labs.analysis import INTERVAL, LabResult, best, by_seed, empty, finish_text, mean_of, pct, pts, put_mean
from tl_core.labs.config import COMMON_FIELDS, LabInfo, LabSettings, check_run_count, check_two_strategies
from tl_core.labs.plan import LabRun, run_config

INFO = LabInfo(
    "quadrant", "Data size × similarity",
    "Which strategy wins with little or lots of data, on a near or a far target domain?",
    "The textbook quadrant: little data + similar domain → **feature extraction**; lots of data → "
    "**fine-tune more** (partial or full); little data + different domain → hard: keep only the early, "
    "generic layers (**partial**).",
    COMMON_FIELDS + ("strategies", "sizes", "domains"),
    "sizes 5, 25, 100 per class at 48 px, 3 epochs, 2 domains × 3 strategies (18 runs) × 3 seeds",
)


def defaults(c: LabSettings, gpu: bool) -> None:
    c.strategies = ["feature_extraction", "partial", "full"]
    c.image_size, c.epochs = (96, 6) if gpu else (48, 3)
    c.sizes = [5, 20, 100, None] if gpu else [5, 25, 100]
    c.per_class = None


def check(cfg: LabSettings) -> None:
    from tl_core import data

    check_two_strategies(cfg)
    for d in cfg.domains:
        if d not in data.BUILTIN:
            raise ValueError(f"quadrant domains must be built-in data sets ({', '.join(data.BUILTIN)}), not {d!r}")
    if not cfg.sizes:
        raise ValueError("quadrant needs at least one size")


def plan(cfg: LabSettings, wdir: Path) -> list[LabRun]:
    from tl_core.models.strategies import STRATEGIES

    n_dom, n_size, n_strat = len(cfg.domains), len(cfg.sizes), len(cfg.strategies)
    check_run_count(cfg, n_dom * n_size * n_strat,
                    f"{n_dom} domain(s) × {n_size} size(s) × {n_strat} strateg{'y' if n_strat == 1 else 'ies'}")
    out = []
    for dom in cfg.domains:
        for size in cfg.sizes:
            for s in cfg.strategies:
                sz = "all" if size is None else size
                out.append(LabRun(f"q:{dom}:{sz}:{s}", f"{dom} {sz}/class {s}", run_config(
                    cfg, f"{dom} · {sz}/class · {STRATEGIES[s].label}", data=dom, per_class=size, strategy=s)))
    return out


# ----------------------------------------------------------------------------- analysis (pure)


def textbook_choice(size: int | None, similarity: str, small: int = 20) -> set[str]:
    """The textbook quadrant's recommended strategies for a cell."""
    little = size is not None and size <= small
    near = similarity in ("near", "medium")
    if little and near:
        return {"feature_extraction"}
    if little:
        return {"partial"}
    return {"partial", "full"} if near else {"full"}


Cells = dict[tuple[str, str], dict[str, dict[int, float]]]  # (domain, size) → strategy → seed → best acc


def _cell_check(dom: str, size: str, sim: str, acc: dict[str, dict[int, float]], rec: set[str],
                strategies: list[str]) -> tuple[dict, dict, str, float]:
    """(table row, check, best strategy by the mean, its mean) of one cell. The paired difference per seed:
    the best textbook strategy minus the best other one (> 0: the textbook's choice wins)."""
    mean = {s: mean_of(list(v.values())) for s, v in acc.items()}
    best = max(mean, key=mean.get)
    others = [s for s in acc if s not in rec]
    seeds = sorted(set.intersection(*(set(v) for v in acc.values())))
    diffs = [max(acc[s][k] for s in rec if s in acc) - max(acc[s][k] for s in others) for k in seeds] \
        if others and any(s in acc for s in rec) else []
    if diffs:
        p = paired(diffs, lambda d: d >= -TOL)  # one seed: the textbook's choice within TOL of the best
        ok, detail = p.agrees, "" if p.single else f"; textbook's best minus the others' best {p.describe(pts)}"
    else:  # every strategy is the textbook's (or none ran): nothing to beat
        ok, detail = any(s in acc for s in rec), ""
    row = {"domain": dom, "similarity": sim, "images/class": size}
    for s in strategies:
        put_mean(row, s, list(acc.get(s, {}).values()), len(seeds) > 1)
    row.update({"measured best": best, "textbook": " or ".join(sorted(rec)), "agrees": ok})
    check = {"claim": f"{dom} ({sim}), {size}/class → {' or '.join(sorted(rec))}",
             "measured": f"best {best} {pct(mean[best])}" + "".join(f", {s} {pct(mean[s])}" for s in acc
                                                                     if s != best) + detail,
             "agrees": ok}
    return row, check, best, mean[best]


_MARK = {True: "✔", False: "✖", None: "?"}


def _grid(cfg: LabSettings, cells: Cells, similarity: dict[str, str], sizes: list[str]) -> tuple[list, list, dict]:
    """Table rows, checks, and the heatmaps' values and texts (one row per domain, one column per size)."""
    rows, checks = [], []
    grid: dict[str, list] = {"z": [], "best": [], "book": []}
    for dom in cfg.domains:
        zr, tr, br = [], [], []
        for size in sizes:
            acc = cells.get((dom, size), {})
            rec = textbook_choice(None if size == "all" else int(size), similarity[dom])
            if acc:
                row, check, best, value = _cell_check(dom, size, similarity[dom], acc, rec, cfg.strategies)
                rows.append(row)
                checks.append(check)
                zr.append(value)
                spread_txt = f"<br>{row[best + INTERVAL]}" if best + INTERVAL in row else ""
                tr.append(f"{best.replace('_', '<br>')}<br>{value:.0%} {_MARK[check['agrees']]}{spread_txt}")
            else:
                zr.append(None)
                tr.append("")
            br.append("<br>or ".join(s.replace("_", "<br>") for s in sorted(rec)))
        grid["z"].append(zr)
        grid["best"].append(tr)
        grid["book"].append(br)
    return rows, checks, grid


def _figure(cfg: LabSettings, grid: dict, similarity: dict[str, str], sizes: list[str], seeds: int) -> go.Figure:
    from tl_core.viz import figures as visuals

    ylabels = [f"{d} ({similarity[d]})" for d in cfg.domains]
    xlabels = [f"{s}/class" for s in sizes]
    measured = "measured: best strategy (best val acc" + (f", mean of {seeds} seeds, 95% interval)" if seeds > 1
                                                          else ")")
    fig = make_subplots(rows=1, cols=2, subplot_titles=(measured, "textbook recommendation"), horizontal_spacing=0.12)
    fig.add_heatmap(z=grid["z"], x=xlabels, y=ylabels, text=grid["best"], texttemplate="%{text}",
                    colorscale="Greens", zmin=0, zmax=1, showscale=False, textfont=dict(size=17), row=1, col=1)
    fig.add_heatmap(z=[[1 for _ in sizes] for _ in cfg.domains], x=xlabels, y=ylabels, text=grid["book"],
                    texttemplate="%{text}", colorscale=[[0, visuals.FROZEN_LIGHT], [1, visuals.FROZEN_LIGHT]],
                    showscale=False, textfont=dict(size=17), row=1, col=2)
    fig.update_yaxes(showticklabels=False, row=1, col=2)
    rule = "✔ = the textbook's choice is within 2 pts of the best" if seeds <= 1 else \
        "✔ / ✖ / ? = the textbook's choice wins / loses / undecided over the seeds"
    visuals.layout(fig, f"Data size × domain similarity ({rule})", height=440)
    return fig


def analyse_quadrant(cfg: LabSettings, recs: list[dict], similarity: dict[str, str] | None = None) -> LabResult:
    from tl_core import data

    similarity = similarity or {d: data.BUILTIN[d].similarity if d in data.BUILTIN else "far" for d in cfg.domains}
    groups, missing = by_seed(recs)
    cells: Cells = {}
    for seed, g in groups.items():
        for key, r in g.items():
            _, dom, size, strat = key.split(":")
            cells.setdefault((dom, size), {}).setdefault(strat, {})[seed] = best(r)
    if not cells:
        return empty("No finished runs yet.")
    sizes = ["all" if s is None else str(s) for s in cfg.sizes]
    rows, checks, grid = _grid(cfg, cells, similarity, sizes)
    fig = _figure(cfg, grid, similarity, sizes, len(groups))
    n = {v: sum(c["agrees"] is v for c in checks) for v in (True, False, None)}
    headline = f"The measured best strategy matches the textbook in {n[True]} of {len(checks)} cells."
    if len(groups) > 1:
        headline = (f"Over {len(groups)} paired seeds the textbook's choice wins in {n[True]} of {len(checks)} cells, "
                    f"loses in {n[False]} and is undecided in {n[None]}.")
    text, agrees = finish_text(headline, checks, missing, len(groups))
    means = {c: {s: mean_of(list(v.values())) for s, v in acc.items()} for c, acc in cells.items()}
    return LabResult(pd.DataFrame(rows), fig, text, agrees, checks, {"cells": means, "seeds": list(groups)})


def analyse(cfg: LabSettings, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_quadrant(cfg, recs)
