"""AdaBN (Li et al. 2016): re-estimate BatchNorm's running statistics on unlabelled target images, with no
gradient step, and the source model adapts to an input shift. The flip side of the BatchNorm pitfall lab."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from tl_core.labs.stats import TOL, paired
from tl_core.labs.analysis import (LabResult, best, by_seed, empty, finish_text, legend_below, mean_of, pct, pts,
                                   put_mean, seeds_note)
from tl_core.labs.config import COMMON_FIELDS, LabInfo, LabSettings
from tl_core.labs.plan import SOURCE, LabRun, from_source, source_run

INFO = LabInfo(
    "adabn", "AdaBN: BatchNorm statistics adapt",
    "A source model meets noisy images. Can it adapt without a single label or gradient step?",
    "Li et al. (2016), \"Revisiting Batch Normalization for Practical Domain Adaptation\" (AdaBN): replacing "
    "BatchNorm's running statistics with the target's **raises** the accuracy on an input-shifted target, with no "
    "gradient step and no label, and competes with fine-tuning on labelled target images.",
    COMMON_FIELDS + ("shifts", "source_per_class", "source_epochs"),
    "MobileNetV2 at 64 px; source: 30 clean images per class, 2 epochs; head fine-tune: 10 per class, 30 epochs "
    "on cached features (about a second); 2 runs × 3 seeds, well under a minute",
)
ADABN_FILE = "adabn.json"  # in the source run's folder (after_run)
ADAPT_IMAGES = 500  # unlabelled target images the statistics are re-estimated on (at most)


def defaults(c: LabSettings, gpu: bool) -> None:
    c.backbone, c.image_size, c.val_fraction, c.lr, c.batch_size = "mobilenetv2", 64, 0.05, 3e-3, 25
    # the head trains on cached features (a second for 30 epochs): long enough to converge, a fair rival
    c.per_class, c.epochs, c.source_per_class, c.source_epochs = (30, 30, 200, 6) if gpu else (10, 30, 30, 2)
    if gpu:
        c.image_size = 128
    c.shifts = ["noise"]


def check(cfg: LabSettings) -> None:
    from tl_core import data

    if not cfg.shifts:
        raise ValueError("shifts: pick an input shift (noise, blur or invert)")
    data.check_shift(cfg.shifts[0], "shifts (AdaBN takes the first)", inputs_only=True)
    if not cfg.shifts[0]:
        raise ValueError("shifts: pick an input shift (noise, blur or invert)")


def plan(cfg: LabSettings, wdir: Path) -> list[LabRun]:
    """Stage 0: the source model, validated each epoch on the shifted images too (after it: AdaBN, measured by
    ``after_run``). Stage 1: its head fine-tuned on labelled shifted target images."""
    shift = cfg.shifts[0]
    src, build = source_run(cfg, wdir, ood_shift=shift)
    src.after = "adabn"
    head = LabRun("head", f"{shift} · fine-tune the head", from_source(
        cfg, build, f"{shift} · fine-tune the head", shift=shift, strategy="feature_extraction"), stage=1, build=build)
    return [src, head]


# ----------------------------------------------------------------------------- AdaBN itself


def bn_layers(model) -> list:
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def accuracy(model, images, labels, transform, batch_size: int = 128) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for b in range(0, len(labels), batch_size):
            correct += (model(transform(images[b:b + batch_size])).argmax(1) == labels[b:b + batch_size]).sum().item()
    return correct / len(labels)


def adapt_bn(model, images, transform, batch_size: int = 64) -> None:
    """AdaBN: every BatchNorm's running mean and variance replaced by the cumulative average over ``images``
    (unlabelled, uint8), through forward passes in train mode without gradients. No weight changes."""
    import torch

    layers = bn_layers(model)
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
    model.train()
    with torch.no_grad():
        for b in range(0, len(images), batch_size):
            model(transform(images[b:b + batch_size]))
    for m, mom in zip(layers, saved):
        m.momentum = mom
    model.eval()


def measure(model, cfg_dict: dict, shift: str) -> dict:
    """Accuracy on the shifted validation images before and after AdaBN on (at most ``ADAPT_IMAGES``) shifted
    training images; how far the statistics moved and the largest weight change (0: no gradient step)."""
    import torch

    from tl_core.training.config import TrainConfig
    from tl_core.training.trainer import prepare

    cfg = TrainConfig.from_dict({**cfg_dict, "shift": shift, "ood_shift": ""})
    d = prepare(cfg)
    ds, tf = d["ds"], d["eval_tf"]
    val, train = d["val_idx"], d["train_idx"][:ADAPT_IMAGES]
    weights = {k: p.detach().clone() for k, p in model.named_parameters()}
    stats = [torch.cat([m.running_mean, m.running_var]).clone() for m in bn_layers(model)]
    before = accuracy(model, ds.images[val], ds.labels[val], tf)
    adapt_bn(model, ds.images[train], tf)
    after = accuracy(model, ds.images[val], ds.labels[val], tf)
    moved = [((torch.cat([m.running_mean, m.running_var]) - s).norm() / s.norm().clamp_min(1e-12)).item()
             for m, s in zip(bn_layers(model), stats)]
    delta = max((p.detach() - weights[k]).abs().max().item() for k, p in model.named_parameters())
    return {"shift": shift, "before": before, "after": after, "adapt_images": len(train), "val_images": len(val),
            "bn_layers": len(moved), "bn_stat_change": max(moved), "max_weight_change": delta}


def after_run(run: dict, state: dict, store) -> None:
    """After the source run: AdaBN measured on a copy of its network, saved as ``adabn.json`` in its folder."""
    from tl_core.labs.plan import completed_model_dir
    from tl_core.training.checkpoint import load_model

    if run.get("after") != "adabn":
        return
    _, model_dir = completed_model_dir(run, store)
    if model_dir is None:
        return
    model = load_model(model_dir)[0]
    out = measure(model, run["config"], run["config"]["ood_shift"])
    (Path(model_dir) / ADABN_FILE).write_text(json.dumps(out))
    print(f"[lab] AdaBN: {out['before']:.1%} → {out['after']:.1%}", flush=True)


def with_adabn(recs: list[dict], state: dict | None) -> list[dict]:
    """The records, the source runs with ``"adabn"`` read from their folder (where ``after_run`` saved it)."""
    if not state or not state.get("runs_dir"):
        return recs
    from tl_core.runs.store import RunStore

    store = RunStore(state["runs_dir"])
    try:
        out = []
        for r in recs:
            path = store.model_dir(r["run_id"]) / ADABN_FILE
            out.append({**r, "adabn": json.loads(path.read_text())} if "adabn" not in r and path.exists() else r)
        return out
    finally:
        store.close()


# ----------------------------------------------------------------------------- analysis (pure)


def analyse_adabn(cfg: LabSettings, recs: list[dict]) -> LabResult:
    groups, missing = by_seed(recs)
    seeds = {s: g for s, g in groups.items() if SOURCE in g and "adabn" in g[SOURCE]}
    if not seeds:
        return empty("No AdaBN measurement yet (it follows the source run)." if groups else "No finished runs yet.")
    shift = cfg.shifts[0]
    m = {s: g[SOURCE]["adabn"] for s, g in seeds.items()}
    heads = {s: best(g["head"]) for s, g in seeds.items() if "head" in g}
    clean = {s: best(g[SOURCE]) for s, g in seeds.items()}
    multi = len(seeds) > 1
    bars = {"source on clean images": clean, f"source on {shift}": {s: v["before"] for s, v in m.items()},
            f"AdaBN on {shift} (no labels)": {s: v["after"] for s, v in m.items()},
            f"head fine-tuned on {shift} (labels)": heads}
    rows = [put_mean({"model": k}, "accuracy", list(v.values()), multi) for k, v in bars.items() if v]
    fig = go.Figure()
    from tl_core.viz import figures as visuals

    for i, (k, v) in enumerate(bars.items()):
        if v:
            vals = list(v.values())
            fig.add_bar(x=[k], y=[mean_of(vals)], name=k, marker_color=visuals.RUN_COLOURS[i % len(visuals.RUN_COLOURS)],
                        error_y=dict(type="data", symmetric=False, array=[max(vals) - mean_of(vals)],
                                     arrayminus=[mean_of(vals) - min(vals)]) if multi else None)
    fig.update_yaxes(title="validation accuracy", tickformat=".0%", range=[0, 1.02])
    visuals.layout(fig, f"AdaBN on a {shift} shift: {cfg.backbone}" + seeds_note(len(seeds)).replace("band", "bars"),
                   height=460)
    p = paired([m[s]["after"] - m[s]["before"] for s in m])
    checks = [{"claim": f"AdaBN raises the accuracy on {shift} images (no label, no gradient step)",
               "measured": f"{pct(mean_of([v['before'] for v in m.values()]))} → "
                           f"{pct(mean_of([v['after'] for v in m.values()]))} ({p.describe(pts)})", "agrees": p.agrees},
              {"claim": "AdaBN changes the BatchNorm statistics and no weight",
               "measured": f"largest statistics change {max(v['bn_stat_change'] for v in m.values()):.3f}, largest "
                           f"weight change {max(v['max_weight_change'] for v in m.values()):.1e}",
               "agrees": all(v["bn_stat_change"] > 1e-4 and v["max_weight_change"] == 0 for v in m.values()),
               **({"basis": f"every one of {len(m)} seeds"} if multi else {})}]
    both = [s for s in m if heads.get(s) is not None]
    if both:
        q = paired([m[s]["after"] - heads[s] + TOL for s in both], lambda d: d >= 0)
        checks.append({"claim": f"AdaBN competes with fine-tuning the head (within {TOL * 100:.0f} pts or above)",
                       "measured": f"AdaBN {pct(mean_of([m[s]['after'] for s in both]))} vs head "
                                   f"{pct(mean_of([heads[s] for s in both]))} "
                                   f"({q.describe(lambda d: pts(d - TOL))})", "agrees": q.agrees})
    text, agrees = finish_text(f"AdaBN re-estimated the statistics of {m[next(iter(m))]['bn_layers']} BatchNorm "
                               f"layers on {m[next(iter(m))]['adapt_images']} unlabelled {shift} images.",
                               checks, missing, len(seeds))
    text += ("\n\n**Why a miniature may differ from the paper:** AdaBN was shown on Office-31 and Caltech-Bing "
             "with an Inception network and thousands of target images; here 28-px silhouettes with a synthetic "
             f"{shift} shift, a few hundred images for the statistics, and a head fine-tuned on {cfg.per_class} "
             "labelled images per class. The BatchNorm pitfall lab shows the other side: statistics that drift when "
             "you did not mean them to.")
    return LabResult(pd.DataFrame(rows), legend_below(fig), text, agrees, checks, {"seeds": list(seeds)})


def analyse(cfg: LabSettings, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_adabn(cfg, with_adabn(recs, state))
