"""Normalisation mismatch: feature extraction with the backbone's own input mean/std and with a wrong one."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from .analysis import (TOL, LabResult, _accs, _accuracy_axes, _best, _empty, _finish_text, _pct, _wall_s,
                       usable_by_key)
from .config import COMMON_FIELDS, LabConfig, LabInfo
from .plan import LabRun, run_config

INFO = LabInfo(
    "normalization", "Normalisation mismatch",
    "What if the images are normalised with the wrong mean and standard deviation?",
    "A pretrained backbone expects its inputs scaled exactly as in pretraining (EfficientNet-Lite0: mean "
    "= std = 0.5). The wrong statistics shift every input, the frozen features degrade and accuracy "
    "**drops**: the classic \"works in the app, fails in my code\" bug.",
    COMMON_FIELDS,
    "25 images per class at 64 px, 4 epochs, feature extraction (cached), 2 runs",
    tag="normalisation",
)


def defaults(c: LabConfig, gpu: bool) -> None:
    c.backbone = "efficientnet_lite0"
    c.per_class, c.image_size, c.epochs = (30, 128, 8) if gpu else (25, 64, 4)
    c.strategies = ["feature_extraction"]


def _label(norm: str) -> str:
    return "own mean/std" if norm == "backbone" else "wrong mean/std"


def plan(cfg: LabConfig, wdir: Path) -> list[LabRun]:
    return [LabRun(f"norm:{norm}", _label(norm), run_config(
        cfg, _label(norm), strategy="feature_extraction", normalization=norm)) for norm in ("backbone", "wrong")]


def normalization_views(cfg: LabConfig, index: int = 0) -> dict:
    """The same sample as the network gets it with its own and with the wrong normalisation:
    {mode: {"tensor": [3,S,S], "picture": HxWx3 uint8, "mean", "std", "stats": (mean, std) used}}."""
    from .. import backbones, data

    ds = data.load_dataset(cfg.data)
    dc = backbones.data_config(cfg.backbone)
    out = {}
    for mode in ("backbone", "wrong"):
        x, pic = data.network_view(ds, index, dc, cfg.image_size, mode)
        out[mode] = {"tensor": x, "picture": pic, "mean": float(x.mean()), "std": float(x.std()),
                     "stats": data.normalization_stats(dc, mode)}
    return out


# ----------------------------------------------------------------------------- analysis (pure)


def analyse_normalization(cfg: LabConfig, recs: list[dict]) -> LabResult:
    from .. import visuals

    use, missing = usable_by_key(recs)
    if not use:
        return _empty("No finished runs yet.")
    fig = go.Figure()
    rows = []
    colours = {"norm:backbone": visuals.VAL, "norm:wrong": "#D62728"}
    for key, r in use.items():
        acc = _accs(r)
        fig.add_scatter(x=list(range(1, len(acc) + 1)), y=acc, mode="lines+markers", name=r["label"],
                        line=dict(color=colours.get(key), width=3), marker=dict(size=9))
        rows.append({"normalisation": r["label"], "best acc": _best(r), "final acc": acc[-1],
                     "time (s)": _wall_s(r), "run": r["run_id"]})
    _accuracy_axes(fig)
    visuals._layout(fig, f"Normalisation: {cfg.backbone}'s own mean/std vs a wrong one", height=420)
    checks, headline = [], ""
    own, wrong = use.get("norm:backbone"), use.get("norm:wrong")
    if own and wrong:
        gap = _best(own) - _best(wrong)
        checks.append({"claim": "the wrong mean/std lowers accuracy",
                       "measured": f"own {_pct(_best(own))} vs wrong {_pct(_best(wrong))} (gap {gap * 100:.1f} pts)",
                       "agrees": gap > TOL})
        headline = f"Accuracy gap from normalisation alone: **{gap * 100:.1f} points**."
    text, agrees = _finish_text(headline, checks, missing)
    return LabResult(pd.DataFrame(rows), fig, text, agrees, checks)


def analyse(cfg: LabConfig, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_normalization(cfg, recs)
