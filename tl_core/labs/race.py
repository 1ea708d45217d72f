"""Strategy race: the same data and seed for several strategies; transfer should give a higher start,
slope and asymptote than training from scratch."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from .analysis import (TOL, LabResult, _accs, _accuracy_axes, _empty, _finish_text, _legend_below, _pct, _pts,
                       _wall_s, usable_and_missing)
from .config import COMMON_FIELDS, LabConfig, LabInfo, check_two_strategies
from .plan import LabRun, run_config

INFO = LabInfo(
    "race", "Strategy race",
    "Six strategies, same data, same seed: which learns best from a small target set?",
    "Transfer beats training from scratch in three ways: a **higher start** (better after the first "
    "epoch), a **higher slope** (fewer epochs to reach a target accuracy) and a **higher asymptote** "
    "(better best accuracy). The effects show with a small target set (20–30 images per class).",
    COMMON_FIELDS + ("strategies", "target_acc"),
    "25 images per class at 64 px, 6 epochs, validation on 10% of the data",
)


def defaults(c: LabConfig, gpu: bool) -> None:
    c.per_class, c.image_size, c.epochs = (30, 128, 12) if gpu else (25, 64, 6)


def check(cfg: LabConfig) -> None:
    if "scratch" not in cfg.strategies:
        raise ValueError("the race needs the 'scratch' strategy: every benefit is measured relative to it")
    check_two_strategies(cfg)


def plan(cfg: LabConfig, wdir: Path) -> list[LabRun]:
    from ..strategies import STRATEGIES

    out = []
    for s in cfg.strategies:
        if s == "two_phase" and cfg.epochs < 2:
            raise ValueError("two_phase needs at least 2 epochs (1 for the head, then fine-tuning)")
        out.append(LabRun(s, STRATEGIES[s].label, run_config(cfg, STRATEGIES[s].label, strategy=s)))
    return out


# ----------------------------------------------------------------------------- analysis (pure)


def epochs_to_reach(accs: list[float], target: float) -> int | None:
    """First epoch (1-based) whose validation accuracy reaches ``target``; None if never."""
    for i, a in enumerate(accs, 1):
        if a >= target - 1e-9:
            return i
    return None


def _verdict(diff: float, tol: float) -> str:
    return "higher" if diff > tol else "lower" if diff < -tol else "similar"


def race_benefits(curves: dict[str, list[float]], baseline: str = "scratch", target: float | None = None,
                  tol: float = TOL) -> dict:
    """The three benefits of each curve relative to ``baseline`` (validation accuracy per epoch):
    start (accuracy after epoch 1), slope (epochs to reach ``target``; default: the best accuracy the
    baseline reached) and asymptote (best accuracy). Each: value, baseline value, diff, verdict
    (higher | similar | lower)."""
    if baseline not in curves or not curves[baseline]:
        raise ValueError(f"the {baseline!r} curve is needed")
    base = curves[baseline]
    target = max(base) if target is None else target
    b_ep = epochs_to_reach(base, target)
    out = {"target": target, "baseline_epochs": b_ep, "strategies": {}}
    for key, acc in curves.items():
        if not acc:
            continue
        ep = epochs_to_reach(acc, target)
        start, best = acc[0] - base[0], max(acc) - max(base)
        # fewer epochs to the target = higher slope; "never" counts as one more than the run had
        e_a = ep if ep is not None else len(acc) + 1
        e_b = b_ep if b_ep is not None else len(base) + 1
        out["strategies"][key] = {
            "start": acc[0], "start_diff": start, "start_verdict": _verdict(start, tol),
            "epochs_to_target": ep, "slope_verdict": "higher" if e_a < e_b else "lower" if e_a > e_b else "similar",
            "best": max(acc), "best_diff": best, "best_verdict": _verdict(best, tol),
        }
    return out


def _table(use: list[dict], b: dict) -> pd.DataFrame:
    from ..strategies import STRATEGIES

    rows = []
    for r in use:
        s, m = b["strategies"][r["key"]], r["summary"]
        rows.append({
            "strategy": STRATEGIES[r["key"]].label if r["key"] in STRATEGIES else r["label"], "key": r["key"],
            "start (epoch 1)": s["start"], "start vs scratch (pts)": round(s["start_diff"] * 100, 1),
            "epochs to target": s["epochs_to_target"], "best acc": s["best"],
            "best vs scratch (pts)": round(s["best_diff"] * 100, 1),
            "final acc": _accs(r)[-1], "time (s)": _wall_s(r),
            "trainable params": m.get("trainable_params"), "total params": m.get("total_params"),
            "run": r["run_id"],
        })
    return pd.DataFrame(rows)


def _figure(cfg: LabConfig, use: list[dict], curves: dict[str, list[float]], b: dict) -> go.Figure:
    from .. import visuals

    fig = go.Figure()
    for i, r in enumerate(use):
        acc = curves[r["key"]]
        scratch = r["key"] == "scratch"
        colour = visuals.NEUTRAL if scratch else visuals.RUN_COLOURS[i % len(visuals.RUN_COLOURS)]
        fig.add_scatter(x=list(range(1, len(acc) + 1)), y=acc, mode="lines+markers", name=r["label"],
                        line=dict(color=colour, width=4 if scratch else 3, dash="dash" if scratch else "solid"),
                        marker=dict(size=9))
    fig.add_hline(y=b["target"], line=dict(color=visuals.NEUTRAL, dash="dot", width=1.5),
                  annotation_text=f"target {b['target']:.0%} (scratch's best)" if cfg.target_acc is None
                  else f"target {b['target']:.0%}", annotation_position="bottom right")
    _accuracy_axes(fig)
    visuals._layout(fig, f"Strategy race: {cfg.backbone} on {cfg.data}, {cfg.per_class or 'all'} images/class, "
                         f"{cfg.image_size} px", height=520)
    return _legend_below(fig)


def _checks(b: dict) -> list[dict]:
    transfer = {k: v for k, v in b["strategies"].items() if k != "scratch"}
    if not transfer:
        return []
    checks = []
    for key, name, what in (("start", "higher start", "accuracy after epoch 1"),
                            ("slope", "higher slope", f"epochs to reach {b['target']:.0%}"),
                            ("best", "higher asymptote", "best accuracy")):
        higher = [k for k, v in transfer.items() if v[f"{key}_verdict"] == "higher"]
        if key == "start":
            detail = ", ".join(f"{k} {_pts(v['start_diff'])}" for k, v in transfer.items())
        elif key == "slope":
            detail = ", ".join(f"{k} {v['epochs_to_target'] or 'never'}" for k, v in transfer.items()) + \
                f" vs scratch {b['baseline_epochs'] or 'never'}"
        else:
            detail = ", ".join(f"{k} {_pts(v['best_diff'])}" for k, v in transfer.items())
        checks.append({"claim": f"transfer gives a {name} ({what})",
                       "measured": f"{len(higher)} of {len(transfer)} transfer strategies higher ({detail})",
                       "agrees": len(higher) * 2 > len(transfer)})
    return checks


def analyse_race(cfg: LabConfig, recs: list[dict]) -> LabResult:
    use, missing = usable_and_missing(recs)
    curves = {r["key"]: _accs(r) for r in use}
    if "scratch" not in curves:
        return _empty("The race needs a finished 'scratch' run: every benefit is relative to it.")
    b = race_benefits(curves, "scratch", cfg.target_acc)
    checks = _checks(b)
    best_key = max(curves, key=lambda k: max(curves[k]))
    sc = curves["scratch"]
    headline = (f"Scratch reached {_pct(sc[0])} after epoch 1 and {_pct(max(sc))} at best; the best strategy was "
                f"**{best_key}** with {_pct(max(curves[best_key]))} ({_pts(max(curves[best_key]) - max(sc))} vs "
                f"scratch).")
    text, agrees = _finish_text(headline, checks, missing)
    return LabResult(_table(use, b), _figure(cfg, use, curves, b), text, agrees, checks, {"benefits": b})


def analyse(cfg: LabConfig, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_race(cfg, recs)
