"""Freeze-depth sweep: freeze (or copy) the first n pretrained block groups and fine-tune the rest; early
features are general, late ones specific."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from .analysis import TOL, LabResult, _best, _empty, _finish_text, _legend_below, _n_of, _pct, _pts, \
    usable_and_missing
from .config import COMMON_FIELDS, LabConfig, LabInfo
from .plan import LabRun, _blocks_in, _depths, depth_groups, run_config

INFO = LabInfo(
    "freeze_depth", "Freeze-depth sweep",
    "How many of the pretrained network's block groups can stay frozen before accuracy suffers?",
    "Frozen curve: keeping the first n groups frozen costs little while their features are **general** "
    "(early layers: edges, textures) and falls off once the frozen part reaches the **specific** late "
    "layers. Copy curve: copying more pretrained groups (and fine-tuning them) helps more than "
    "re-initialising them.",
    COMMON_FIELDS + ("depths",),
    "25 images per class at 64 px, 4 epochs, 6 depths (11 runs)",
    tag="freeze-depth",
)


def defaults(c: LabConfig, gpu: bool) -> None:
    c.per_class, c.image_size, c.epochs, c.lr = (30, 128, 8, 1e-3) if gpu else (25, 64, 4, 1e-3)
    c.depths = None if gpu else [0, 1, 3, 5, 7, 9]


def meta(cfg: LabConfig) -> dict:
    """Saved in the lab's state at creation: the analysis needs the number of block groups."""
    return {"n_groups": len(depth_groups(cfg.backbone, cfg.image_size))}


def plan(cfg: LabConfig, wdir: Path) -> list[LabRun]:
    groups = depth_groups(cfg.backbone, cfg.image_size)
    N = len(groups)
    out = []
    for n in _depths(cfg, N, 0):
        k = _blocks_in(groups, n)
        out.append(LabRun(f"frozen:{n}", f"frozen n={n}", run_config(
            cfg, f"first {n} groups frozen", strategy="partial", freeze_blocks=k)))
    for n in _depths(cfg, N, 0):
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


def _figure(cfg: LabConfig, frozen: dict[int, float], copy: dict[int, float], n_groups: int) -> go.Figure:
    from .. import visuals

    fig = go.Figure()
    if frozen:
        xs = sorted(frozen)
        fig.add_scatter(x=xs, y=[frozen[n] for n in xs], mode="lines+markers", name="first n frozen, rest fine-tuned",
                        line=dict(color=visuals.FROZEN, width=3), marker=dict(size=10))
    if copy:
        xs = sorted(copy)
        fig.add_scatter(x=xs, y=[copy[n] for n in xs], mode="lines+markers",
                        name="first n copied + fine-tuned, rest re-initialised",
                        line=dict(color=visuals.TRAINABLE, width=3), marker=dict(size=10, symbol="diamond"))
    fig.update_xaxes(title=f"n = pretrained block groups (of {n_groups})", dtick=1)
    fig.update_yaxes(title="best validation accuracy", range=[0, 1.02], tickformat=".0%")
    visuals._layout(fig, f"Freeze depth: {cfg.backbone} on {cfg.data}", height=480)
    return _legend_below(fig)


def _checks(frozen: dict[int, float], copy: dict[int, float]) -> tuple[list[dict], int | None]:
    """The checks, and the deepest freeze within TOL of the best frozen depth (None: fewer than 2 depths)."""
    checks = []
    general_upto = None
    if len(frozen) >= 2:
        top = max(frozen.values())
        ok = [n for n in sorted(frozen) if frozen[n] >= top - TOL]
        general_upto = max(ok)
        nmax = max(frozen)
        fall = top - frozen[nmax]
        checks.append({"claim": "freezing the deepest groups costs accuracy (late features are task-specific)",
                       "measured": f"n={nmax} frozen: {_pct(frozen[nmax])}, {fall * 100:.1f} pts below the best "
                                   f"frozen depth ({_pct(top)} at n={max(ok, key=lambda n: frozen[n])})",
                       "agrees": fall > TOL})
    if len(copy) >= 2:
        lo, hi = min(copy), max(copy)
        checks.append({"claim": "copying more pretrained groups helps (vs re-initialising them)",
                       "measured": f"copy n={lo}: {_pct(copy[lo])} → n={hi}: {_pct(copy[hi])} "
                                   f"({_pts(copy[hi] - copy[lo])})",
                       "agrees": copy[hi] - copy[lo] > TOL})
    return checks, general_upto


def analyse_freeze_depth(cfg: LabConfig, recs: list[dict], n_groups: int | None = None) -> LabResult:
    use, missing = usable_and_missing(recs)
    frozen = {_n_of(r["key"]): _best(r) for r in use if r["key"].startswith("frozen:")}
    copy = {_n_of(r["key"]): _best(r) for r in use if r["key"].startswith("copy:")}
    if n_groups is None:
        n_groups = len(depth_groups(cfg.backbone, cfg.image_size))
    if 0 in frozen:  # copying every group and fine-tuning all of them is full fine-tuning
        copy.setdefault(n_groups, frozen[0])
    if not frozen and not copy:
        return _empty("No finished runs yet.")
    ns = sorted(set(frozen) | set(copy))
    table = pd.DataFrame([{"n (groups)": n, "frozen first n (best acc)": frozen.get(n),
                           "copied first n, rest re-init (best acc)": copy.get(n)} for n in ns])
    fig = _figure(cfg, frozen, copy, n_groups)
    checks, general_upto = _checks(frozen, copy)
    headline = ""
    if general_upto is not None:
        headline = (f"The deepest freeze within {TOL * 100:.0f} pts of the best is **n = {general_upto}** block "
                    f"groups: up to there the pretrained features are general enough for {cfg.data}.")
    text, agrees = _finish_text(headline, checks, missing)
    return LabResult(table, fig, text, agrees, checks, {"general_upto": general_upto})


def analyse(cfg: LabConfig, recs: list[dict], state: dict | None = None) -> LabResult:
    """Uses the number of block groups saved in the lab's state (``meta``) when there is one."""
    return analyse_freeze_depth(cfg, recs, n_groups=(state or {}).get("meta", {}).get("n_groups") or None)
