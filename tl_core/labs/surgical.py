"""Surgical fine-tuning (Lee et al., ICLR 2023): a source model meets a shifted target; tune ONE block group
at a time (everything else frozen, the source head kept) and see which one adapts best, per kind of shift."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from tl_core.labs.stats import paired
from tl_core.labs.analysis import (LabResult, add_band, base_label, best, by_seed, empty, finish_text, legend_below,
                                   mean_of, pct, pts, put_mean, seeds_note)
from tl_core.labs.config import COMMON_FIELDS, LabInfo, LabSettings, check_run_count
from tl_core.labs.plan import SOURCE, LabRun, depth_groups, from_source, source_run

INFO = LabInfo(
    "surgical", "Surgical fine-tuning (Lee 2023)",
    "The target is shifted: which single block should you fine-tune?",
    "Lee et al. (ICLR 2023), \"Surgical Fine-Tuning Improves Adaptation to Distribution Shifts\": tuning one "
    "block can match or beat tuning all of them, and the best block depends on the shift: an **early** block for "
    "an input shift (noise, blur: low-level features change), the **last** layer for a label shift (the features "
    "still fit, the mapping to labels changed).",
    COMMON_FIELDS + ("shifts", "source_per_class", "source_epochs"),
    "MobileNetV2 at 64 px; source: 50 clean images per class, 3 epochs; target: 10 per class, 5 epochs; "
    "4 body units + head + full per shift, 2 shifts: 13 runs × 3 seeds",
)
BODY_UNITS = 4  # the block groups below the head, merged into this many contiguous units (the paper's ResNet: 4+1)
PAPER_NOTE = ("**Why a miniature may differ from the paper:** the paper adapts ResNet-26/50 trained on CIFAR or "
              "ImageNet to CIFAR-C, ImageNet-C or Living-17 with a tuned learning rate per block; here a MobileNetV2 "
              "tuned a few epochs on 28-px silhouettes meets 100 target images at one learning rate, and a "
              "validation set of a few hundred images separates blocks that differ by a few points only roughly.")


def defaults(c: LabSettings, gpu: bool) -> None:
    c.backbone, c.image_size, c.val_fraction, c.lr, c.batch_size = "mobilenetv2", 64, 0.05, 3e-3, 25
    c.per_class, c.epochs, c.source_per_class, c.source_epochs = (30, 10, 200, 6) if gpu else (10, 5, 50, 3)
    if gpu:
        c.image_size = 128
    c.shifts = ["noise", "labels"]


def check(cfg: LabSettings) -> None:
    from tl_core import data

    if not cfg.shifts:
        raise ValueError("shifts: pick at least one shift (noise, blur, invert, labels)")
    for s in cfg.shifts:
        if not s:
            raise ValueError("shifts: an empty shift is the source task itself; pick noise, blur, invert or labels")
        data.check_shift(s, "shifts")
    if len(set(cfg.shifts)) != len(cfg.shifts):
        raise ValueError(f"shifts must be distinct, not {', '.join(cfg.shifts)}")
    check_run_count(cfg, 1 + len(cfg.shifts) * (BODY_UNITS + 2), f"{len(cfg.shifts)} shift(s) × {BODY_UNITS + 2} runs + source")


def units(backbone: str, image_size: int) -> list[tuple[str, list[str]]]:
    """(label, block names) of the units tuned one at a time: the block groups below the head merged into
    ``BODY_UNITS`` contiguous units, then the head."""
    from tl_core.models.arch import block_names

    groups = depth_groups(backbone, image_size)
    head = block_names(backbone, image_size)[-1]

    def name(g: list[str]) -> str:
        return g[0] if len(g) == 1 else g[0].rsplit(".", 1)[0]

    out = []
    for part in np.array_split(np.arange(len(groups)), min(BODY_UNITS, len(groups))):
        gs = [groups[i] for i in part]
        label = name(gs[0]) if len(gs) == 1 else f"{name(gs[0])} … {name(gs[-1])}"
        out.append((label, [b for g in gs for b in g]))
    return out + [("head", [head])]


def plan(cfg: LabSettings, wdir: Path) -> list[LabRun]:
    """Stage 0: the source model (its validation also on the first input shift: the untuned reference).
    Stage 1, per shift: one run per unit (only that unit trains, BatchNorm of the frozen ones fixed), and full."""
    from tl_core import data
    from tl_core.models.arch import block_names

    inputs = [s for s in cfg.shifts if s in data.INPUT_SHIFTS]
    src, build = source_run(cfg, wdir, ood_shift=inputs[0] if inputs else "")
    names = block_names(cfg.backbone, cfg.image_size)
    out, parts = [src], units(cfg.backbone, cfg.image_size)
    for s in cfg.shifts:
        for i, (label, blocks) in enumerate(parts):
            only = {n: {"frozen": n not in blocks, "lr_mult": 1.0, "bn_mode": "frozen"} for n in names}
            out.append(LabRun(f"{s}:{i}", f"{s} · tune {label}", from_source(
                cfg, build, f"{s} · tune {label}", shift=s, strategy="partial", plan=only), stage=1, build=build))
        out.append(LabRun(f"{s}:full", f"{s} · tune all", from_source(cfg, build, f"{s} · tune all", shift=s,
                                                                        strategy="full"), stage=1, build=build))
    return out


# ----------------------------------------------------------------------------- analysis (pure)

Points = dict[str, dict[int | str, dict[int, float]]]  # shift → unit index or "full" → seed → best accuracy


def _points(groups: dict[int, dict[str, dict]]) -> tuple[Points, dict[int, str]]:
    """Best accuracies by shift, unit and seed; and each unit index's label (read from the run labels)."""
    out: Points = {}
    names: dict[int, str] = {}
    for s, g in groups.items():
        for key, r in g.items():
            if key == SOURCE:
                continue
            shift, unit = key.split(":", 1)
            u = "full" if unit == "full" else int(unit)
            if u != "full":
                names[u] = base_label(r["label"]).split(" · tune ", 1)[-1]
            out.setdefault(shift, {}).setdefault(u, {})[s] = best(r)
    return out, dict(sorted(names.items()))


def _unit_check(shift: str, by_unit: dict, predicted: list[int], claim: str) -> dict | None:
    """``predicted`` units beat the other single units: per seed, best of ``predicted`` minus best of the rest."""
    singles = [u for u in by_unit if u != "full"]
    rest = [u for u in singles if u not in predicted]
    if not rest or not any(u in by_unit for u in predicted):
        return None
    seeds = sorted(set.intersection(*(set(by_unit[u]) for u in singles)))
    if not seeds:
        return None
    diffs = [max(by_unit[u][s] for u in predicted if u in by_unit) - max(by_unit[u][s] for u in rest) for s in seeds]
    p = paired(diffs)
    means = {u: mean_of(list(by_unit[u].values())) for u in singles}
    top = max(means, key=lambda u: means[u])
    return {"claim": f"{shift}: {claim}", "measured": f"best single unit {top + 1} ({pct(means[top])}); predicted units "
            f"minus the best other, per seed: {p.describe(pts)}", "agrees": p.agrees, "best_unit": top}


def _checks(points: Points, n_units: int) -> list[dict]:
    from tl_core import data

    checks = []
    for shift, by_unit in points.items():
        if shift in data.INPUT_SHIFTS:
            c = _unit_check(shift, by_unit, list(range(max(1, (n_units - 1) // 2))),
                            "the best single unit is an early one (first half of the body)")
        else:
            c = _unit_check(shift, by_unit, [n_units - 2, n_units - 1], "the best single unit is the head or the "
                            "last body unit")
        if c:
            checks.append(c)
    return checks


def _figure(points: Points, names: dict[int, str], source_ood: dict[str, float], seeds: int) -> go.Figure:
    from tl_core.viz import figures as visuals

    fig = go.Figure()
    xs = [f"{u + 1}: {n}" for u, n in names.items()] + ["all (full)"]
    order = list(names) + ["full"]
    all_seeds = sorted({s for by in points.values() for per in by.values() for s in per})
    for i, (shift, by_unit) in enumerate(points.items()):
        ys = [[by_unit.get(u, {}).get(s) for u in order] for s in all_seeds]
        add_band(fig, xs, ys, f"shift: {shift}", visuals.RUN_COLOURS[i % len(visuals.RUN_COLOURS)],
                 line=dict(width=3), marker=dict(size=10))
    for shift, acc in source_ood.items():
        fig.add_hline(y=acc, line=dict(color=visuals.NEUTRAL, dash="dot", width=1.5),
                      annotation_text=f"source, untuned, on {shift}: {pct(acc)}")
    fig.update_xaxes(title="the one unit fine-tuned (the others frozen) · or all of them")
    fig.update_yaxes(title="best validation accuracy on the shifted target", tickformat=".0%", range=[0, 1.02])
    visuals.layout(fig, "Surgical fine-tuning: accuracy by tuned unit, one line per shift" + seeds_note(seeds),
                   height=500)
    return legend_below(fig)


def analyse(cfg: LabSettings, recs: list[dict], state: dict | None = None) -> LabResult:
    groups, missing = by_seed(recs)
    points, names = _points(groups)
    if not points:
        return empty("No finished target runs yet." if groups else "No finished runs yet.")
    multi = len(groups) > 1
    src = [g[SOURCE] for g in groups.values() if SOURCE in g]
    source_ood = {}
    if src and src[0]["config"].get("ood_shift"):
        source_ood[src[0]["config"]["ood_shift"]] = mean_of([r["epochs"][-1].get("val_acc_ood", 0.0) for r in src])
    rows = []
    for u, label in [*names.items(), ("full", "all (full fine-tuning)")]:
        row = {"tuned unit": label if u == "full" else f"{u + 1}: {label}"}
        for shift, by_unit in points.items():
            put_mean(row, f"{shift} acc", list(by_unit.get(u, {}).values()), multi)
        rows.append(row)
    checks = _checks(points, len(names))
    clean = mean_of([best(r) for r in src])
    headline = f"Source model on clean validation images: {pct(clean)}" + "".join(
        f"; untuned on {k}: {pct(v)}" for k, v in source_ood.items()) + "."
    for shift, by_unit in points.items():
        singles = {u: mean_of(list(v.values())) for u, v in by_unit.items() if u != "full"}
        if singles:
            top = max(singles, key=lambda u: singles[u])
            full = mean_of(list(by_unit.get("full", {}).values()))
            headline += (f" **{shift}**: best single unit {top + 1} ({names.get(top, top)}) {pct(singles[top])}, "
                         f"full fine-tuning {pct(full)}.")
    text, agrees = finish_text(headline, checks, missing, len(groups))
    text += ("\n\nThe source head is kept in every run: a label shift permutes the classes, so their number "
             "stays and the last layer can learn the new mapping. " + PAPER_NOTE)
    return LabResult(pd.DataFrame(rows), _figure(points, names, source_ood, len(groups)), text, agrees, checks,
                     {"seeds": list(groups), "units": names})
