"""Strategy race: the same data, split and seeds for several strategies; transfer should give a higher start,
slope and asymptote than training from scratch."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from tl_core.labs.stats import TOL, paired, tol_rule
from tl_core.labs.analysis import (LabResult, accs, accuracy_axes, add_band, base_label, by_seed, empty, finish_text,
                                   legend_below, mean_curve, mean_of, pct, pts, put_mean, seeds_note, wall_s)
from tl_core.labs.config import COMMON_FIELDS, LabInfo, LabSettings, check_two_strategies
from tl_core.labs.plan import LabRun, run_config

INFO = LabInfo(
    "race", "Strategy race",
    "Six strategies, same data, same seeds: which learns best from a small target set?",
    "Transfer beats training from scratch in three ways: a **higher start** (better after the first "
    "epoch), a **higher slope** (fewer epochs to reach a target accuracy) and a **higher asymptote** "
    "(better best accuracy). The effects show with a small target set (20–30 images per class).",
    COMMON_FIELDS + ("strategies", "target_acc"),
    "25 images per class at 64 px, 6 epochs, validation on 10% of the data; 6 runs × 3 seeds",
)


def defaults(c: LabSettings, gpu: bool) -> None:
    c.per_class, c.image_size, c.epochs = (30, 128, 12) if gpu else (25, 64, 6)


def check(cfg: LabSettings) -> None:
    if "scratch" not in cfg.strategies:
        raise ValueError("the race needs the 'scratch' strategy: every benefit is measured relative to it")
    check_two_strategies(cfg)


def plan(cfg: LabSettings, wdir: Path) -> list[LabRun]:
    from tl_core.models.strategies import STRATEGIES

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
    (higher | similar | lower); ``slope_diff``: epochs saved (> 0: faster)."""
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
            "epochs_to_target": ep, "slope_diff": e_b - e_a,
            "slope_verdict": "higher" if e_a < e_b else "lower" if e_a > e_b else "similar",
            "best": max(acc), "best_diff": best, "best_verdict": _verdict(best, tol),
        }
    return out


def _label(k: str, recs: list[dict]) -> str:
    from tl_core.models.strategies import STRATEGIES

    return STRATEGIES[k].label if k in STRATEGIES else base_label(recs[0]["label"])


def _table(groups: dict[int, dict], bens: dict[int, dict], keys: list[str]) -> pd.DataFrame:
    """One row per strategy: means over the seeds (with several: their intervals, and the seeds)."""
    multi = len(groups) > 1
    rows = []
    for k in keys:
        recs = [g[k] for g in groups.values() if k in g]
        ben = [bens[s]["strategies"][k] for s, g in groups.items() if k in g]
        row = {"strategy": _label(k, recs), "key": k}
        put_mean(row, "start (epoch 1)", [b["start"] for b in ben], False)
        put_mean(row, "start vs scratch (pts)", [b["start_diff"] * 100 for b in ben], multi, scale=1, unit=" pts",
                 signed=True)
        row["start vs scratch (pts)"] = round(row["start vs scratch (pts)"], 1)
        row["epochs to target"] = mean_of([b["epochs_to_target"] for b in ben if b["epochs_to_target"]])
        put_mean(row, "best acc", [b["best"] for b in ben], multi)
        put_mean(row, "best vs scratch (pts)", [b["best_diff"] * 100 for b in ben], multi, scale=1, unit=" pts",
                 signed=True)
        row["best vs scratch (pts)"] = round(row["best vs scratch (pts)"], 1)
        m = recs[0]["summary"]
        row.update({"final acc": mean_of([accs(r)[-1] for r in recs]), "time (s)": round(mean_of(
            [wall_s(r) for r in recs]), 1), "trainable params": m.get("trainable_params"),
            "total params": m.get("total_params"), "run": ", ".join(r["run_id"] for r in recs)})
        if multi:
            row["seeds"] = len(recs)
        rows.append(row)
    return pd.DataFrame(rows)


def _figure(cfg: LabSettings, groups: dict[int, dict], keys: list[str], target: float) -> go.Figure:
    from tl_core.viz import figures as visuals

    fig = go.Figure()
    for i, k in enumerate(keys):
        recs = [g[k] for g in groups.values() if k in g]
        ys = [accs(r) for r in recs]
        scratch = k == "scratch"
        colour = visuals.NEUTRAL if scratch else visuals.RUN_COLOURS[i % len(visuals.RUN_COLOURS)]
        add_band(fig, list(range(1, max(map(len, ys)) + 1)), ys, base_label(recs[0]["label"]), colour,
                 line=dict(width=4 if scratch else 3, dash="dash" if scratch else "solid"), marker=dict(size=9))
    mean_note = ", mean over seeds" if len(groups) > 1 else ""
    fig.add_hline(y=target, line=dict(color=visuals.NEUTRAL, dash="dot", width=1.5),
                  annotation_text=f"target {target:.0%} (scratch's best{mean_note})" if cfg.target_acc is None
                  else f"target {target:.0%}", annotation_position="bottom right")
    accuracy_axes(fig)
    visuals.layout(fig, f"Strategy race: {cfg.backbone} on {cfg.data}, {cfg.per_class or 'all'} images/class, "
                         f"{cfg.image_size} px{seeds_note(len(groups))}", height=520)
    return legend_below(fig)


def _fewer_epochs(d: float) -> bool | None:
    """The single-seed rule of the slope: any epoch saved (or lost) counts, no tolerance."""
    return True if d > 0 else False if d < 0 else None


_CLAIMS = (("start", "higher start", "accuracy after epoch 1", "start_diff", tol_rule()),
           ("slope", "higher slope", None, "slope_diff", _fewer_epochs),
           ("best", "higher asymptote", "best accuracy", "best_diff", tol_rule()))


def _detail(key: str, k: str, p, bens: dict[int, dict]) -> str:
    if key != "slope":
        return f"{k} {p.describe(pts)}"
    if p.single:
        return f"{k} {next(iter(bens.values()))['strategies'][k]['epochs_to_target'] or 'never'}"
    return f"{k} {p.describe(lambda d: f'{d:+.1f}')} epochs sooner"


def _checks(bens: dict[int, dict], keys: list[str]) -> list[dict]:
    """Per claim: each transfer strategy's paired difference to scratch over the seeds; the claim holds
    when most strategies agree (several seeds: it fails when most disagree, else it is inconclusive)."""
    transfer = [k for k in keys if k != "scratch"]
    if not transfer:
        return []
    first = next(iter(bens.values()))
    multi = len(bens) > 1
    checks = []
    for key, name, what, field, rule in _CLAIMS:
        per = {k: paired([b["strategies"][k][field] for b in bens.values() if k in b["strategies"]], rule)
               for k in transfer}
        agree = sum(p.agrees is True for p in per.values())
        disagree = sum(p.agrees is False for p in per.values())
        detail = ", ".join(_detail(key, k, p, bens) for k, p in per.items())
        if key == "slope":
            what = f"epochs to reach {first['target']:.0%}" if not multi else "epochs to reach the target"
            if not multi:
                detail += f" vs scratch {first['baseline_epochs'] or 'never'}"
        ok = agree * 2 > len(per) if not multi else True if agree * 2 > len(per) else \
            False if disagree * 2 > len(per) else None
        checks.append({"claim": f"transfer gives a {name} ({what})",
                       "measured": f"{agree} of {len(per)} transfer strategies higher ({detail})", "agrees": ok})
    return checks


def analyse_race(cfg: LabSettings, recs: list[dict]) -> LabResult:
    groups, missing = by_seed(recs)
    groups = {s: g for s, g in groups.items() if "scratch" in g}
    if not groups:
        return empty("The race needs a finished 'scratch' run: every benefit is relative to it.")
    bens = {s: race_benefits({k: accs(r) for k, r in g.items()}, "scratch", cfg.target_acc)
            for s, g in groups.items()}
    keys = list(dict.fromkeys(k for g in groups.values() for k in g))
    checks = _checks(bens, keys)
    curves = {k: mean_curve([accs(g[k]) for g in groups.values() if k in g]) for k in keys}
    best_key = max(curves, key=lambda k: max(curves[k]))
    sc = curves["scratch"]
    headline = (f"Scratch reached {pct(sc[0])} after epoch 1 and {pct(max(sc))} at best; the best strategy was "
                f"**{best_key}** with {pct(max(curves[best_key]))} ({pts(max(curves[best_key]) - max(sc))} vs "
                f"scratch).")
    if len(groups) > 1:
        headline += f" (Means of {len(groups)} seeds.)"
    text, agrees = finish_text(headline, checks, missing, len(groups))
    target = mean_of([b["target"] for b in bens.values()])
    return LabResult(_table(groups, bens, keys), _figure(cfg, groups, keys, target), text, agrees, checks,
                     {"benefits": next(iter(bens.values())), "benefits_by_seed": bens, "seeds": list(groups)})


def analyse(cfg: LabSettings, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_race(cfg, recs)
