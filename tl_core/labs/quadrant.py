"""Data size × similarity: strategies on little or lots of data from a near or a far domain, against the
textbook quadrant's recommendation."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .analysis import TOL, LabResult, _best, _empty, _finish_text, _pct, usable_and_missing
from .config import COMMON_FIELDS, LabConfig, LabInfo, check_two_strategies
from .plan import LabRun, run_config

INFO = LabInfo(
    "quadrant", "Data size × similarity",
    "Which strategy wins with little or lots of data, on a near or a far target domain?",
    "The textbook quadrant: little data + similar domain → **feature extraction**; lots of data → "
    "**fine-tune more** (partial or full); little data + different domain → hard: keep only the early, "
    "generic layers (**partial**).",
    COMMON_FIELDS + ("strategies", "sizes", "domains"),
    "sizes 5, 25, 100 per class at 48 px, 3 epochs, 2 domains × 3 strategies (18 runs)",
)


def defaults(c: LabConfig, gpu: bool) -> None:
    c.strategies = ["feature_extraction", "partial", "full"]
    c.image_size, c.epochs = (96, 6) if gpu else (48, 3)
    c.sizes = [5, 20, 100, None] if gpu else [5, 25, 100]
    c.per_class = None


def check(cfg: LabConfig) -> None:
    from .. import data

    check_two_strategies(cfg)
    for d in cfg.domains:
        if d not in data.BUILTIN:
            raise ValueError(f"quadrant domains must be built-in data sets ({', '.join(data.BUILTIN)}), not {d!r}")
    if not cfg.sizes:
        raise ValueError("quadrant needs at least one size")


def plan(cfg: LabConfig, wdir: Path) -> list[LabRun]:
    from ..strategies import STRATEGIES

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


def _grid(cfg: LabConfig, cells: dict, similarity: dict[str, str], sizes: list[str]) -> tuple[list, list, dict]:
    """Table rows, checks, and the heatmaps' values and texts (one row per domain, one column per size)."""
    rows, checks = [], []
    grid: dict[str, list] = {"z": [], "best": [], "book": []}
    for dom in cfg.domains:
        zr, tr, br = [], [], []
        for size in sizes:
            acc = cells.get((dom, size), {})
            rec = textbook_choice(None if size == "all" else int(size), similarity[dom])
            if acc:
                best = max(acc, key=acc.get)
                ok = any(acc.get(s, -1) >= acc[best] - TOL for s in rec)
                rows.append({"domain": dom, "similarity": similarity[dom], "images/class": size,
                             **{s: acc.get(s) for s in cfg.strategies}, "measured best": best,
                             "textbook": " or ".join(sorted(rec)), "agrees": ok})
                checks.append({"claim": f"{dom} ({similarity[dom]}), {size}/class → {' or '.join(sorted(rec))}",
                               "measured": f"best {best} {_pct(acc[best])}"
                                           + "".join(f", {s} {_pct(acc[s])}" for s in acc if s != best),
                               "agrees": ok})
                zr.append(acc[best])
                tr.append(f"{best.replace('_', '<br>')}<br>{acc[best]:.0%} {'✔' if ok else '✖'}")
            else:
                zr.append(None)
                tr.append("")
            br.append("<br>or ".join(s.replace("_", "<br>") for s in sorted(rec)))
        grid["z"].append(zr)
        grid["best"].append(tr)
        grid["book"].append(br)
    return rows, checks, grid


def _figure(cfg: LabConfig, grid: dict, similarity: dict[str, str], sizes: list[str]) -> go.Figure:
    from .. import visuals

    ylabels = [f"{d} ({similarity[d]})" for d in cfg.domains]
    xlabels = [f"{s}/class" for s in sizes]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("measured: best strategy (best val acc)",
                                                        "textbook recommendation"), horizontal_spacing=0.12)
    fig.add_heatmap(z=grid["z"], x=xlabels, y=ylabels, text=grid["best"], texttemplate="%{text}",
                    colorscale="Greens", zmin=0, zmax=1, showscale=False, textfont=dict(size=17), row=1, col=1)
    fig.add_heatmap(z=[[1 for _ in sizes] for _ in cfg.domains], x=xlabels, y=ylabels, text=grid["book"],
                    texttemplate="%{text}", colorscale=[[0, visuals.FROZEN_LIGHT], [1, visuals.FROZEN_LIGHT]],
                    showscale=False, textfont=dict(size=17), row=1, col=2)
    fig.update_yaxes(showticklabels=False, row=1, col=2)
    visuals._layout(fig, "Data size × domain similarity (✔ = the textbook's choice is within 2 pts of the best)",
                    height=440)
    return fig


def analyse_quadrant(cfg: LabConfig, recs: list[dict], similarity: dict[str, str] | None = None) -> LabResult:
    from .. import data

    similarity = similarity or {d: data.BUILTIN[d].similarity if d in data.BUILTIN else "far" for d in cfg.domains}
    use, missing = usable_and_missing(recs)
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for r in use:
        _, dom, size, strat = r["key"].split(":")
        cells.setdefault((dom, size), {})[strat] = _best(r)
    if not cells:
        return _empty("No finished runs yet.")
    sizes = ["all" if s is None else str(s) for s in cfg.sizes]
    rows, checks, grid = _grid(cfg, cells, similarity, sizes)
    fig = _figure(cfg, grid, similarity, sizes)
    agree_n = sum(bool(c["agrees"]) for c in checks)
    headline = f"The measured best strategy matches the textbook in {agree_n} of {len(checks)} cells."
    text, agrees = _finish_text(headline, checks, missing)
    return LabResult(pd.DataFrame(rows), fig, text, agrees, checks, {"cells": cells})


def analyse(cfg: LabConfig, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_quadrant(cfg, recs)
