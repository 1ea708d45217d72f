"""BatchNorm pitfall: the same partial fine-tune with the frozen blocks' BatchNorm statistics frozen or in
train mode (where they drift although no weight is trained)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tl_core.labs.stats import TOL
from tl_core.labs.analysis import (LabResult, accs, add_band, base_label, best, by_seed, empty, finish_text,
                                   legend_below, mean_of, paired_best, pct, pts, put_mean, runs_by_key, seeds_note,
                                   wall_s)
from tl_core.labs.config import COMMON_FIELDS, LabInfo, LabSettings
from tl_core.labs.plan import LabRun, run_config

INFO = LabInfo(
    "bn", "BatchNorm pitfall",
    "A block is \"frozen\": do its BatchNorm layers know that?",
    "With BatchNorm statistics **frozen** the frozen blocks stay exactly as pretrained (statistics drift "
    "0). With BatchNorm in **train** mode their running statistics drift towards the new data although "
    "no weight is trained (plain PyTorch's silent default), and the frozen features change under the "
    "head's feet: usually a lower or less stable accuracy.",
    COMMON_FIELDS + ("freeze_blocks",),
    "25 images per class at 64 px, 4 epochs, 2 runs × 3 seeds",
)


def defaults(c: LabSettings, gpu: bool) -> None:
    c.per_class, c.image_size, c.epochs, c.lr = (30, 128, 8, 1e-3) if gpu else (25, 64, 4, 1e-3)
    c.strategies = ["partial"]


def plan(cfg: LabSettings, wdir: Path) -> list[LabRun]:
    return [LabRun(f"bn:{mode}", f"BN {mode}", run_config(
        cfg, f"BatchNorm {mode}", strategy="partial", freeze_blocks=cfg.freeze_blocks, bn_mode=mode))
        for mode in ("frozen", "train")]


# ----------------------------------------------------------------------------- analysis (pure)


def _frozen_blocks(rec: dict) -> list[str]:
    phases = rec["summary"].get("phases") or []
    last = rec["epochs"][-1] if rec.get("epochs") else {}
    blocks = list((last.get("drift") or {}).keys()) or list((last.get("bn_stat_drift") or {}).keys())
    trainable = set(phases[0]["trainable"]) if phases else set()
    return [b for b in blocks if b not in trainable] if phases else []


def frozen_bn_drift(rec: dict) -> list[float]:
    """Per epoch: the largest BatchNorm statistics drift among the run's frozen blocks."""
    frozen = set(_frozen_blocks(rec))
    out = []
    for m in rec.get("epochs", []):
        d = m.get("bn_stat_drift") or {}
        vals = [float(v) for k, v in d.items() if k in frozen and v is not None]
        out.append(max(vals) if vals else 0.0)
    return out


def _figure_and_rows(cfg: LabSettings, runs: dict[str, list[dict]]) -> tuple[go.Figure, list[dict]]:
    """``runs``: {key: [its record of each seed]}: mean curves with their bands, and one table row per mode."""
    from tl_core.viz import figures as visuals

    fig = make_subplots(rows=1, cols=2, subplot_titles=("validation accuracy", "BN statistics drift in frozen blocks"))
    rows = []
    colours = {"bn:frozen": visuals.FROZEN, "bn:train": visuals.TRAINABLE}
    seeds = max(len(v) for v in runs.values())
    multi = seeds > 1
    for key, recs in runs.items():
        curves, drifts = [accs(r) for r in recs], [frozen_bn_drift(r) for r in recs]
        label = base_label(recs[0]["label"])
        xs = list(range(1, max(map(len, curves)) + 1))
        add_band(fig, xs, curves, label, colours.get(key), row=1, col=1, legendgroup=key, line=dict(width=3))
        add_band(fig, xs, drifts, label + " drift", colours.get(key), row=1, col=2, legendgroup=key,
                 showlegend=False, line=dict(width=3, dash="dot"))
        row = {"BatchNorm in frozen blocks": key.split(":")[1]}
        put_mean(row, "best acc", [best(r) for r in recs], multi)
        row.update({"final acc": mean_of([a[-1] for a in curves]),
                    "max frozen-block BN drift": max((max(d) for d in drifts if d), default=0.0),
                    "frozen blocks": len(_frozen_blocks(recs[0])), "time (s)": round(mean_of(
                        [wall_s(r) for r in recs]), 1), "run": ", ".join(r["run_id"] for r in recs)})
        if multi:
            row["seeds"] = len(recs)
        rows.append(row)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=1)
    fig.update_yaxes(title="‖μ,σ² − start‖ / ‖start‖", row=1, col=2)
    fig.update_xaxes(title="epoch", dtick=1)
    visuals.layout(fig, f"BatchNorm in frozen blocks: {cfg.backbone}, partial fine-tuning"
                         f"{seeds_note(seeds)}", height=460)
    return legend_below(fig), rows


def _drift_check(claim: str, recs: list[dict], ok) -> dict:
    """A claim about every seed's frozen-block drift (a property of each run, not a noisy difference)."""
    drift = [max(frozen_bn_drift(r) or [0.0]) for r in recs]
    measured = f"max drift {max(drift):.4f}" if len(drift) == 1 else \
        f"max drift per seed {', '.join(f'{d:.4f}' for d in drift)}"
    return {"claim": claim, "measured": measured, "agrees": all(ok(d) for d in drift),
            **({"basis": f"every one of {len(drift)} seeds"} if len(drift) > 1 else {})}


def _checks(groups: dict[int, dict[str, dict]]) -> list[dict]:
    checks = []
    f = [g["bn:frozen"] for g in groups.values() if "bn:frozen" in g]
    t = [g["bn:train"] for g in groups.values() if "bn:train" in g]
    if f:
        checks.append(_drift_check("BN frozen: the frozen blocks' statistics do not move", f, lambda d: d < 1e-6))
    if t:
        checks.append(_drift_check("BN train: the \"frozen\" blocks' statistics drift anyway", t, lambda d: d > 1e-4))
    cmp = paired_best(groups, "bn:frozen", "bn:train")  # > 0: train costs accuracy
    if cmp:
        p, bf, bt = cmp
        checks.append({"claim": "BN train costs accuracy (the frozen features shift under the head)",
                       "measured": f"best acc train {pct(bt)} vs frozen {pct(bf)} ({p.describe(pts, sign=-1)})",
                       "agrees": p.agrees})
    return checks


def analyse_bn(cfg: LabSettings, recs: list[dict]) -> LabResult:
    groups, missing = by_seed(recs)
    if not groups:
        return empty("No finished runs yet.")
    runs = runs_by_key(groups)
    fig, rows = _figure_and_rows(cfg, runs)
    f, t = runs.get("bn:frozen"), runs.get("bn:train")
    checks = _checks(groups)
    headline = ""
    if f and t:
        headline = (f"Same partial fine-tune, {len(_frozen_blocks(f[0]))} frozen blocks: BN frozen reached "
                    f"{pct(mean_of([best(r) for r in f]))}, BN train {pct(mean_of([best(r) for r in t]))}"
                    + (f" (means of {len(groups)} seeds)." if len(groups) > 1 else "."))
    text, agrees = finish_text(headline, checks, missing, len(groups))
    if f and t and checks[-1]["agrees"] is None:
        text += (f"\n\nThe accuracy difference is within {TOL * 100:.0f} pts: on this data the drift did not "
                 "change the result measurably, but the frozen blocks did change." if len(groups) == 1 else
                 "\n\nThe 95% interval of the accuracy difference contains 0: over these seeds the drift did not "
                 "change the result measurably, but the frozen blocks did change.")
    return LabResult(pd.DataFrame(rows), fig, text, agrees, checks, {"seeds": list(groups)})


def analyse(cfg: LabSettings, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_bn(cfg, recs)
