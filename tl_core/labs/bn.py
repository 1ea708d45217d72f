"""BatchNorm pitfall: the same partial fine-tune with the frozen blocks' BatchNorm statistics frozen or in
train mode (where they drift although no weight is trained)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .analysis import (TOL, LabResult, _accs, _best, _empty, _finish_text, _legend_below, _pct, _pts, _wall_s,
                       usable_by_key)
from .config import COMMON_FIELDS, LabConfig, LabInfo
from .plan import LabRun, run_config

INFO = LabInfo(
    "bn", "BatchNorm pitfall",
    "A block is \"frozen\": do its BatchNorm layers know that?",
    "With BatchNorm statistics **frozen** the frozen blocks stay exactly as pretrained (statistics drift "
    "0). With BatchNorm in **train** mode their running statistics drift towards the new data although "
    "no weight is trained (plain PyTorch's silent default), and the frozen features change under the "
    "head's feet: usually a lower or less stable accuracy.",
    COMMON_FIELDS + ("freeze_blocks",),
    "25 images per class at 64 px, 4 epochs, 2 runs",
)


def defaults(c: LabConfig, gpu: bool) -> None:
    c.per_class, c.image_size, c.epochs, c.lr = (30, 128, 8, 1e-3) if gpu else (25, 64, 4, 1e-3)
    c.strategies = ["partial"]


def plan(cfg: LabConfig, wdir: Path) -> list[LabRun]:
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


def _figure_and_rows(cfg: LabConfig, use: dict[str, dict]) -> tuple[go.Figure, list[dict]]:
    from .. import visuals

    fig = make_subplots(rows=1, cols=2, subplot_titles=("validation accuracy", "BN statistics drift in frozen blocks"))
    rows = []
    colours = {"bn:frozen": visuals.FROZEN, "bn:train": visuals.TRAINABLE}
    for key, r in use.items():
        acc, drift = _accs(r), frozen_bn_drift(r)
        xs = list(range(1, len(acc) + 1))
        fig.add_scatter(x=xs, y=acc, mode="lines+markers", name=r["label"], legendgroup=key,
                        line=dict(color=colours.get(key), width=3), row=1, col=1)
        fig.add_scatter(x=xs, y=drift, mode="lines+markers", name=r["label"] + " drift", legendgroup=key,
                        showlegend=False, line=dict(color=colours.get(key), width=3, dash="dot"), row=1, col=2)
        rows.append({"BatchNorm in frozen blocks": key.split(":")[1], "best acc": _best(r), "final acc": acc[-1],
                     "max frozen-block BN drift": max(drift) if drift else 0.0,
                     "frozen blocks": len(_frozen_blocks(r)), "time (s)": _wall_s(r), "run": r["run_id"]})
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=1)
    fig.update_yaxes(title="‖μ,σ² − start‖ / ‖start‖", row=1, col=2)
    fig.update_xaxes(title="epoch", dtick=1)
    visuals._layout(fig, f"BatchNorm in frozen blocks: {cfg.backbone}, partial fine-tuning", height=460)
    return _legend_below(fig), rows


def _checks(f: dict | None, t: dict | None) -> list[dict]:
    checks = []
    if f:
        d = max(frozen_bn_drift(f) or [0.0])
        checks.append({"claim": "BN frozen: the frozen blocks' statistics do not move",
                       "measured": f"max drift {d:.4f}", "agrees": d < 1e-6})
    if t:
        d = max(frozen_bn_drift(t) or [0.0])
        checks.append({"claim": "BN train: the \"frozen\" blocks' statistics drift anyway",
                       "measured": f"max drift {d:.4f}", "agrees": d > 1e-4})
    if f and t:
        diff = _best(t) - _best(f)
        checks.append({"claim": "BN train costs accuracy (the frozen features shift under the head)",
                       "measured": f"best acc train {_pct(_best(t))} vs frozen {_pct(_best(f))} ({_pts(diff)})",
                       "agrees": diff < -TOL if abs(diff) > TOL else None})
    return checks


def analyse_bn(cfg: LabConfig, recs: list[dict]) -> LabResult:
    use, missing = usable_by_key(recs)
    if not use:
        return _empty("No finished runs yet.")
    fig, rows = _figure_and_rows(cfg, use)
    f, t = use.get("bn:frozen"), use.get("bn:train")
    checks = _checks(f, t)
    headline = ""
    if f and t:
        headline = (f"Same partial fine-tune, {len(_frozen_blocks(f))} frozen blocks: BN frozen reached "
                    f"{_pct(_best(f))}, BN train {_pct(_best(t))}.")
    text, agrees = _finish_text(headline, checks, missing)
    if f and t and checks[-1]["agrees"] is None:
        text += (f"\n\nThe accuracy difference is within {TOL * 100:.0f} pts: on this data the drift did not "
                 "change the result measurably, but the frozen blocks did change.")
    return LabResult(pd.DataFrame(rows), fig, text, agrees, checks)


def analyse(cfg: LabConfig, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_bn(cfg, recs)
