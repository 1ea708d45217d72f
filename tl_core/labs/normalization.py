"""Normalisation mismatch: feature extraction with the backbone's own input mean/std and with a wrong one."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from tl_core.labs.stats import TOL
from tl_core.labs.analysis import (LabResult, accs, accuracy_axes, add_band, base_label, best, by_seed, empty,
                                   finish_text, mean_of, paired_best, pct, put_mean, runs_by_key, seeds_note, wall_s)
from tl_core.labs.config import COMMON_FIELDS, LabInfo, LabSettings
from tl_core.labs.plan import LabRun, run_config

INFO = LabInfo(
    "normalization", "Normalisation mismatch",
    "What if the images are normalised with the wrong mean and standard deviation?",
    "A pretrained backbone expects its inputs scaled exactly as in pretraining (EfficientNet-Lite0: mean "
    "= std = 0.5). The wrong statistics shift every input, the frozen features degrade and accuracy "
    "**drops**: the classic \"works in the app, fails in my code\" bug.",
    COMMON_FIELDS,
    "25 images per class at 64 px, 4 epochs, feature extraction (cached), 2 runs × 3 seeds",
    tag="normalisation",
)


def defaults(c: LabSettings, gpu: bool) -> None:
    c.backbone = "efficientnet_lite0"
    c.per_class, c.image_size, c.epochs = (30, 128, 8) if gpu else (25, 64, 4)
    c.strategies = ["feature_extraction"]


def _label(norm: str) -> str:
    return "own mean/std" if norm == "backbone" else "wrong mean/std"


def plan(cfg: LabSettings, wdir: Path) -> list[LabRun]:
    return [LabRun(f"norm:{norm}", _label(norm), run_config(
        cfg, _label(norm), strategy="feature_extraction", normalization=norm)) for norm in ("backbone", "wrong")]


def normalization_views(cfg: LabSettings, index: int = 0) -> dict:
    """The same sample as the network gets it with its own and with the wrong normalisation:
    {mode: {"tensor": [3,S,S], "picture": HxWx3 uint8, "mean", "std", "stats": (mean, std) used}}."""
    from tl_core.models import backbones
    from tl_core import data

    ds = data.load_dataset(cfg.data)
    dc = backbones.data_config(cfg.backbone)
    out = {}
    for mode in ("backbone", "wrong"):
        x, pic = data.network_view(ds, index, dc, cfg.image_size, mode)
        out[mode] = {"tensor": x, "picture": pic, "mean": float(x.mean()), "std": float(x.std()),
                     "stats": data.normalization_stats(dc, mode)}
    return out


# ----------------------------------------------------------------------------- a second example (pure)

# SqueezeNet 1.1's top-1 on the 20 labelled ImageNet photos shipped with foolbox, with its own (Caffe) mean/std
# and with torchvision's ImageNet mean/std: measured once, re-measured by tests/test_offline_backbones.py.
SQUEEZENET_TOP1 = {"backbone": 14, "imagenet": 0}
PHOTOS = 20


def squeezenet_case() -> tuple[pd.DataFrame, str]:
    """The second, more vivid example: (table, markdown) of SqueezeNet 1.1 on foolbox's ImageNet photos with its
    own preprocessing and with torchvision's. Its Caffe weights expect 0..255 pixels minus a mean, so ImageNet
    statistics shrink every input about 60-fold and it recognises nothing."""
    from tl_core import data
    from tl_core.models import backbones

    dc = backbones.data_config("squeezenet1_1")
    rows = []
    for mode, label in (("backbone", "its own (Caffe: 0-255 minus the mean)"), ("imagenet", "torchvision's ImageNet")):
        mean, std = data.normalization_stats(dc, mode)
        rows.append({"mean/std": label, "mean": ", ".join(f"{m:.3f}" for m in mean),
                     "std": ", ".join(f"{v:.4f}" for v in std),
                     "top-1": f"{SQUEEZENET_TOP1[mode]}/{PHOTOS}"})
    table = pd.DataFrame(rows)
    scale = data.normalization_stats(dc, "imagenet")[1][0] / dc["std"][0]
    md = (f"**A second example: SqueezeNet 1.1** (bundled; ImageNet weights from a Caffe model). On the {PHOTOS} "
          "labelled ImageNet photos that ship with foolbox it names the right class for "
          f"**{SQUEEZENET_TOP1['backbone']}/{PHOTOS}** with its own preprocessing and **{SQUEEZENET_TOP1['imagenet']}/"
          f"{PHOTOS}** with torchvision's mean/std, which make every input about {scale:.0f} times too small.\n\n"
          + "\n".join(f"- {r['mean/std']} mean/std (mean {r['mean']}; std {r['std']}): {r['top-1']}" for r in rows))
    return table, md


# ----------------------------------------------------------------------------- analysis (pure)


def analyse_normalization(cfg: LabSettings, recs: list[dict]) -> LabResult:
    from tl_core.viz import figures as visuals

    groups, missing = by_seed(recs)
    if not groups:
        return empty("No finished runs yet.")
    runs = runs_by_key(groups)
    multi = len(groups) > 1
    fig = go.Figure()
    rows = []
    colours = {"norm:backbone": visuals.VAL, "norm:wrong": "#D62728"}
    for key, rs in runs.items():
        curves = [accs(r) for r in rs]
        add_band(fig, list(range(1, max(map(len, curves)) + 1)), curves, base_label(rs[0]["label"]), colours.get(key),
                 line=dict(width=3), marker=dict(size=9))
        row = {"normalisation": base_label(rs[0]["label"])}
        put_mean(row, "best acc", [best(r) for r in rs], multi)
        row.update({"final acc": mean_of([a[-1] for a in curves]),
                    "time (s)": round(mean_of([wall_s(r) for r in rs]), 1), "run": ", ".join(r["run_id"] for r in rs)})
        rows.append(row)
    accuracy_axes(fig)
    visuals.layout(fig, f"Normalisation: {cfg.backbone}'s own mean/std vs a wrong one{seeds_note(len(groups))}",
                    height=420)
    checks, headline = [], ""
    cmp = paired_best(groups, "norm:backbone", "norm:wrong", lambda d: d > TOL)
    if cmp:
        p, own, wrong = cmp
        gap = p.describe(lambda d: f"{d * 100:.1f}") + " pts"
        checks.append({"claim": "the wrong mean/std lowers accuracy",
                       "measured": f"own {pct(own)} vs wrong {pct(wrong)} (gap {gap})", "agrees": p.agrees})
        headline = f"Accuracy gap from normalisation alone: **{p.mean * 100:.1f} points**" + (
            "." if p.single else f" (mean of {p.n} seeds; 95% interval {p.lo * 100:.1f} to {p.hi * 100:.1f}).")
    text, agrees = finish_text(headline, checks, missing, len(groups))
    table, example = squeezenet_case()
    return LabResult(pd.DataFrame(rows), fig, f"{text}\n\n{example}", agrees, checks,
                     {"seeds": list(groups), "squeezenet": table})


def analyse(cfg: LabSettings, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_normalization(cfg, recs)
