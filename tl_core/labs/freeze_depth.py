"""Freeze-depth sweep: freeze (or copy) the first n pretrained block groups and fine-tune the rest; early
features are general, late ones specific."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from tl_core.labs.stats import TOL, paired
from tl_core.labs.analysis import (LabResult, add_band, best, by_seed, empty, finish_text, legend_below, mean_of, n_of,
                                   pct, pts, put_mean, seeds_note)
from tl_core.labs.config import COMMON_FIELDS, LabInfo, LabSettings
from tl_core.labs.plan import LabRun, blocks_in, depth_groups, depths, run_config

INFO = LabInfo(
    "freeze_depth", "Freeze-depth sweep",
    "How many of the pretrained network's block groups can stay frozen before accuracy suffers?",
    "Frozen curve: keeping the first n groups frozen costs little while their features are **general** "
    "(early layers: edges, textures) and falls off once the frozen part reaches the **specific** late "
    "layers. Copy curve: copying more pretrained groups (and fine-tuning them) helps more than "
    "re-initialising them.",
    COMMON_FIELDS + ("depths",),
    "25 images per class at 64 px, 4 epochs, 6 depths (11 runs) × 3 seeds",
    tag="freeze-depth",
)


def defaults(c: LabSettings, gpu: bool) -> None:
    c.per_class, c.image_size, c.epochs, c.lr = (30, 128, 8, 1e-3) if gpu else (25, 64, 4, 1e-3)
    c.depths = None if gpu else [0, 1, 3, 5, 7, 9]


def meta(cfg: LabSettings) -> dict:
    """Saved in the lab's state at creation: the analysis needs the number of block groups."""
    return {"n_groups": len(depth_groups(cfg.backbone, cfg.image_size))}


def plan(cfg: LabSettings, wdir: Path) -> list[LabRun]:
    groups = depth_groups(cfg.backbone, cfg.image_size)
    N = len(groups)
    out = []
    for n in depths(cfg, N, 0):
        k = blocks_in(groups, n)
        out.append(LabRun(f"frozen:{n}", f"frozen n={n}", run_config(
            cfg, f"first {n} groups frozen", strategy="partial", freeze_blocks=k)))
    for n in depths(cfg, N, 0):
        if n == N:
            continue  # copying every group and fine-tuning all = "frozen:0" (full fine-tuning)
        if n == 0:
            out.append(LabRun("copy:0", "copy n=0", run_config(cfg, "copy 0 groups (scratch)", strategy="scratch")))
            continue
        path = wdir / f"pretrained_first{n}.safetensors"
        out.append(LabRun(f"copy:{n}", f"copy n={n}", run_config(
            cfg, f"copy first {n} groups, rest re-initialised", strategy="full", weights="pretrained",
            weights_file=str(path)), build={"kind": "pretrained_prefix", "n": n, "path": str(path)}))
    return out


# ----------------------------------------------------------------------------- analysis (pure)


def _figure(cfg: LabSettings, frozen: dict[int, list], copy: dict[int, list], n_groups: int, seeds: int) -> go.Figure:
    """``frozen`` / ``copy``: {n: [best accuracy of each seed]}; the mean line and the min–max band."""
    from tl_core.viz import figures as visuals

    fig = go.Figure()
    for pts, name, colour, symbol in ((frozen, "first n frozen, rest fine-tuned", visuals.FROZEN, "circle"),
                                      (copy, "first n copied + fine-tuned, rest re-initialised", visuals.TRAINABLE,
                                       "diamond")):
        if pts:
            xs = sorted(pts)
            add_band(fig, xs, _by_seed_lists(pts, xs), name, colour, line=dict(width=3),
                     marker=dict(size=10, symbol=symbol))
    fig.update_xaxes(title=f"n = pretrained block groups (of {n_groups})", dtick=1)
    fig.update_yaxes(title="best validation accuracy", range=[0, 1.02], tickformat=".0%")
    visuals.layout(fig, f"Freeze depth: {cfg.backbone} on {cfg.data}{seeds_note(seeds)}", height=480)
    return legend_below(fig)


def _by_seed_lists(pts: dict[int, dict[int, float]], xs: list[int]) -> list[list[float | None]]:
    """{n: {seed: acc}} → one list per seed, aligned with ``xs`` (None where that seed lacks n)."""
    seeds = sorted({s for v in pts.values() for s in v})
    return [[pts[n].get(s) for n in xs] for s in seeds]


def _diffs(pts: dict[int, dict[int, float]], a: int, b: int) -> list[float]:
    """Per seed that has both depths: acc(a) − acc(b)."""
    return [pts[a][s] - pts[b][s] for s in pts[a] if s in pts[b]]


def _checks(frozen: dict[int, dict[int, float]], copy: dict[int, dict[int, float]]) -> tuple[list[dict], int | None]:
    """The checks (paired over seeds), and the deepest freeze within TOL of the best frozen depth (on the
    mean curve; None: fewer than 2 depths). ``frozen`` / ``copy``: {n: {seed: best accuracy}}."""
    checks = []
    general_upto = None
    mean = {n: mean_of(list(v.values())) for n, v in frozen.items()}
    if len(frozen) >= 2:
        top = max(mean.values())
        ok = [n for n in sorted(mean) if mean[n] >= top - TOL]
        general_upto = max(ok)
        nmax = max(frozen)
        best = max((n for n in mean if n != nmax), key=lambda n: mean[n])  # the best shallower freeze
        diffs = _diffs(frozen, best, nmax)
        if diffs:
            p = paired(diffs, lambda d: d > TOL)
            checks.append({"claim": "freezing the deepest groups costs accuracy (late features are task-specific)",
                           "measured": f"n={nmax} frozen: {pct(mean[nmax])}, {_fall(p)} below the best frozen "
                                       f"depth ({pct(top)} at n={max(ok, key=lambda n: mean[n])})",
                           "agrees": p.agrees})
    lo, hi = min(copy, default=0), max(copy, default=0)
    if len(copy) >= 2 and _diffs(copy, hi, lo):
        p = paired(_diffs(copy, hi, lo), lambda d: d > TOL)
        cm = {n: mean_of(list(copy[n].values())) for n in (lo, hi)}
        checks.append({"claim": "copying more pretrained groups helps (vs re-initialising them)",
                       "measured": f"copy n={lo}: {pct(cm[lo])} → n={hi}: {pct(cm[hi])} ({p.describe(pts)})",
                       "agrees": p.agrees})
    return checks, general_upto


def _fall(p) -> str:
    """How far the deepest freeze lies below the best shallower one: "14.4 pts" (single seed: the fall
    from the best depth, never negative) or "+14.4 pts [95%: ...]"."""
    return f"{max(p.mean, 0) * 100:.1f} pts" if p.single else p.describe(pts)


def _table(frozen: dict, copy: dict, seeds: int) -> pd.DataFrame:
    rows = []
    for n in sorted(set(frozen) | set(copy)):
        row = {"n (groups)": n}
        put_mean(row, "frozen first n (best acc)", list(frozen.get(n, {}).values()), seeds > 1)
        put_mean(row, "copied first n, rest re-init (best acc)", list(copy.get(n, {}).values()), seeds > 1)
        rows.append(row)
    return pd.DataFrame(rows)


def analyse_freeze_depth(cfg: LabSettings, recs: list[dict], n_groups: int | None = None) -> LabResult:
    groups, missing = by_seed(recs)
    frozen: dict[int, dict[int, float]] = {}
    copy: dict[int, dict[int, float]] = {}
    for seed, g in groups.items():
        for key, r in g.items():
            kind = frozen if key.startswith("frozen:") else copy if key.startswith("copy:") else None
            if kind is not None:
                kind.setdefault(n_of(key), {})[seed] = best(r)
    if n_groups is None:
        n_groups = len(depth_groups(cfg.backbone, cfg.image_size))
    if 0 in frozen:  # copying every group and fine-tuning all of them is full fine-tuning
        copy.setdefault(n_groups, dict(frozen[0]))
    if not frozen and not copy:
        return empty("No finished runs yet.")
    fig = _figure(cfg, frozen, copy, n_groups, len(groups))
    checks, general_upto = _checks(frozen, copy)
    headline = ""
    if general_upto is not None:
        headline = (f"The deepest freeze within {TOL * 100:.0f} pts of the best is **n = {general_upto}** block "
                    f"groups: up to there the pretrained features are general enough for {cfg.data}.")
        if len(groups) > 1:
            headline += f" (On the mean of {len(groups)} seeds.)"
    text, agrees = finish_text(headline, checks, missing, len(groups))
    return LabResult(_table(frozen, copy, len(groups)), fig, text, agrees, checks,
                     {"general_upto": general_upto, "seeds": list(groups)})


def analyse(cfg: LabSettings, recs: list[dict], state: dict | None = None) -> LabResult:
    """Uses the number of block groups saved in the lab's state (``meta``) when there is one."""
    return analyse_freeze_depth(cfg, recs, n_groups=(state or {}).get("meta", {}).get("n_groups") or None)
