"""What changed? Linear CKA, block by block, between the pretrained and the fine-tuned network on the
validation images, for feature extraction, partial and full fine-tuning (Neyshabur et al. 2020: the
lower layers stay nearly unchanged, the change grows toward the output).

The measurement needs the networks, so it is not part of the pure analysis: ``after_run`` measures a
finished run once (``measure``) and saves it as ``cka.json`` in the run's folder; ``analyse`` reads
those files back (``with_cka``) and measures, once, a run whose file is missing (a lab run by a
process that did not call the hook). ``analyse_what_changed`` is pure: records that carry ``"cka"``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from tl_core.labs.stats import paired, spread, tol_rule
from tl_core.labs.analysis import (INTERVAL, LabResult, base_label, best, by_seed, empty, finish_text, mean_of, pct,
                                   put_mean)
from tl_core.labs.config import COMMON_FIELDS, LabInfo, LabSettings
from tl_core.labs.plan import LabRun, run_config

INFO = LabInfo(
    "what_changed", "What changed?",
    "Which blocks does fine-tuning actually change?",
    "Measured by linear CKA between the pretrained and the fine-tuned network on the validation images "
    "(1 = the block's representation is unchanged): the **lower blocks stay near 1** and the change "
    "**grows toward the output** (Neyshabur et al. 2020). Feature extraction with frozen BatchNorm "
    "leaves every frozen block exactly as pretrained (CKA 1).",
    COMMON_FIELDS + ("freeze_blocks",),
    "25 images per class at 64 px, 6 epochs, CKA on 200 validation images; 3 runs × 3 seeds",
    tag="what-changed",
)

STRATEGIES = ("feature_extraction", "partial", "full")
FINE_TUNED = ("partial", "full")  # the strategies whose claim is "the change grows toward the output"
CKA_FILE = "cka.json"  # in the run's folder
CKA_IMAGES = 200  # validation images the CKA is measured on (a seeded subsample when there are more)
UNCHANGED = 1e-4  # a frozen block counts as unchanged when its CKA is within this of 1
CKA_TOL = 0.02  # single seed: a first-third minus last-third difference beyond this decides


def defaults(c: LabSettings, gpu: bool) -> None:
    c.per_class, c.image_size, c.epochs = (60, 128, 8) if gpu else (25, 64, 6)
    c.strategies = list(STRATEGIES)


def plan(cfg: LabSettings, wdir: Path) -> list[LabRun]:
    """One seed: feature extraction, partial and full fine-tuning (BatchNorm of frozen blocks frozen)."""
    from tl_core.models.strategies import STRATEGIES as ALL

    return [LabRun(s, ALL[s].label, run_config(cfg, ALL[s].label, strategy=s, bn_mode="frozen",
                                               freeze_blocks=cfg.freeze_blocks if s == "partial" else None))
            for s in STRATEGIES]


# ----------------------------------------------------------------------------- measuring (needs the networks)


def measure(model_dir, max_images: int = CKA_IMAGES) -> dict:
    """Linear CKA per block between a saved run's network (``model_dir``) and the network it started
    from (rebuilt from its config and seed: the pretrained backbone and the same initial head), on up to
    ``max_images`` of the run's own validation images (its split, its evaluation transform).

    Returns {"cka": {block: value} in forward order, "labels": {block: short label}, "body": the blocks
    without the head, "frozen": the blocks frozen in the run's first phase, "images": how many}."""
    import torch

    from tl_core.models import arch as models
    from tl_core.models import probes
    from tl_core.models import strategies
    from tl_core.models import surgery
    from tl_core.training import checkpoint, trainer as training
    from tl_core.viz import figures as visuals

    tuned, cfg, class_names = checkpoint.load_model(model_dir)
    prep = training.prepare(cfg, models.data_config_for(cfg.backbone, tuned))
    val = prep["val_idx"]
    if len(val) > max_images:
        pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:max_images]
        val = val[pick.sort().values]
    images = prep["eval_tf"](prep["ds"].images[val])
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)  # as training.Trainer.setup: the same seed gives the same initial head
        start, _ = models.build_arch(cfg.backbone, len(class_names), cfg.effective_weights, cfg.weights_file,
                                     cfg.allow_download)
    hier = surgery.hierarchy(start, cfg.sample_size)
    frozen = strategies.schedule(cfg, hier)[0].plan.frozen
    cka = probes.block_cka(start, tuned, hier, images)
    return {"cka": cka, "labels": {r["name"]: r["short"] for r in visuals.block_rows(hier)},
            "body": [n.name for n in hier.blocks if n.kind != "head"], "frozen": list(frozen),
            "images": len(val)}


def measure_folder(folder: Path) -> dict | None:
    """The CKA of the run in ``folder``: read from its ``cka.json``, else measured and saved there;
    None when the folder holds no saved model."""
    path = Path(folder) / CKA_FILE
    if path.exists():
        try:
            return json.loads(path.read_text())
        except ValueError:  # a torn or foreign file: measure again
            pass
    if not (Path(folder) / "model.safetensors").exists():
        return None
    out = measure(folder)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)
    return out


def after_run(run: dict, state: dict, store) -> None:
    """The lab process's step after each run: measure its CKA right away (saved as ``cka.json``)."""
    if store.get(run["run_id"]).status in ("completed", "stopped"):
        if measure_folder(store.run_dir(run["run_id"])) is not None:
            print(f"[lab] measured the CKA of {run['label']}", flush=True)


def with_cka(recs: list[dict], state: dict | None) -> list[dict]:
    """The records with ``"cka"`` (from ``measure_folder``) where it can be had: records that carry it
    keep theirs; the others are looked up in their run folder, once the lab is no longer running
    (while it runs, its own process measures each run: ``after_run``)."""
    from tl_core.runs.store import ACTIVE, RunStore

    need = [r for r in recs if "cka" not in r and r.get("status") in ("completed", "stopped")]
    if not need or not state or not state.get("runs_dir"):
        return recs
    store = RunStore(state["runs_dir"])
    found: dict[str, dict] = {}
    try:
        for r in need:
            folder = store.run_dir(r["run_id"])
            if (folder / CKA_FILE).exists() or state.get("status") not in ACTIVE:
                try:
                    found[r["run_id"]] = {"cka": measure_folder(folder)}
                except Exception as exc:  # the page shows the reason instead of failing
                    found[r["run_id"]] = {"cka_error": f"{type(exc).__name__}: {exc}"}
    finally:
        store.close()
    return [{**r, **found[r["run_id"]]} if r["run_id"] in found else r for r in recs]


# ----------------------------------------------------------------------------- analysis (pure)


def thirds(m: dict) -> tuple[float, float]:
    """(mean CKA of the first third of the body blocks, of the last third) of one measurement."""
    body = [b for b in (m.get("body") or list(m["cka"])[:-1]) if b in m["cka"]]
    k = max(1, len(body) // 3)
    return mean_of([m["cka"][b] for b in body[:k]]), mean_of([m["cka"][b] for b in body[-k:]])


def lowest_frozen(m: dict) -> float | None:
    """The lowest CKA among the measurement's frozen blocks (None: no frozen block)."""
    vals = [m["cka"][b] for b in m.get("frozen", []) if b in m["cka"]]
    return min(vals) if vals else None


def _fmt(v: float) -> str:
    return f"{v:+.3f}"


def _checks(groups: dict[int, dict[str, dict]]) -> list[dict]:
    checks = []
    fe = [g["feature_extraction"]["cka"] for g in groups.values() if "feature_extraction" in g]
    lows = [lowest_frozen(m) for m in fe]
    if fe and all(v is not None for v in lows):
        checks.append({"claim": "Feature extraction (BatchNorm frozen): every frozen block unchanged, CKA ≈ 1",
                       "measured": "lowest CKA of a frozen block " + ", ".join(f"{v:.6f}" for v in lows)
                       + (" (per seed)" if len(lows) > 1 else ""),
                       "agrees": all(v >= 1 - UNCHANGED for v in lows),
                       **({"basis": f"every one of {len(lows)} seeds"} if len(lows) > 1 else {})})
    for s in FINE_TUNED:
        ms = [g[s]["cka"] for g in groups.values() if s in g]
        if not ms:
            continue
        first, last = zip(*(thirds(m) for m in ms))
        p = paired([f - la for f, la in zip(first, last)], tol_rule(CKA_TOL))
        label = base_label(next(g[s] for g in groups.values() if s in g)["label"])
        checks.append({"claim": f"{label}: the last third of the blocks changed more than the first third",
                       "measured": f"CKA first third {mean_of(first):.3f}, last third {mean_of(last):.3f} "
                                   f"(difference {p.describe(_fmt)})", "agrees": p.agrees})
    return checks


def _row(recs: list[dict], multi: bool) -> dict:
    ms = [r["cka"] for r in recs]
    first, last = zip(*(thirds(m) for m in ms))
    row = {"strategy": base_label(recs[0]["label"])}
    for name, vals in (("CKA first third", first), ("CKA last third", last)):
        row[name] = round(mean_of(vals), 4)
        if multi:
            s = spread(vals)
            row[name + INTERVAL] = f"{s.lo:.3f}–{s.hi:.3f}"
    lows = [v for v in (lowest_frozen(m) for m in ms) if v is not None]
    row.update({"lowest CKA of a frozen block": round(min(lows), 6) if lows else None,
                "frozen blocks": len(ms[0].get("frozen", [])), "images": ms[0].get("images")})
    put_mean(row, "best acc", [best(r) for r in recs], multi)
    row["run"] = ", ".join(r["run_id"] for r in recs)
    return row


def cka_figure(cfg: LabSettings, runs: dict[str, list[dict]]) -> go.Figure:
    """Grouped bars, one per block per strategy: the mean CKA over the seeds, error bars min–max."""
    from tl_core.viz import probes as probe_figures

    means, spans = {}, {}
    for recs in runs.values():
        label = base_label(recs[0]["label"])
        blocks = list(recs[0]["cka"]["cka"])
        vals = {b: [r["cka"]["cka"][b] for r in recs if b in r["cka"]["cka"]] for b in blocks}
        means[label] = {b: mean_of(v) for b, v in vals.items()}
        spans[label] = [(min(v), max(v)) for v in vals.values()]
    seeds = max(len(v) for v in runs.values())
    labels = next(iter(runs.values()))[0]["cka"].get("labels")
    fig = probe_figures.cka_bars(means, labels, title=f"What changed: pretrained vs fine-tuned, {cfg.backbone}"
                           + (f" · mean of {seeds} seeds, error bars: min–max" if seeds > 1 else ""), height=420)
    if seeds > 1:
        for trace in fig.data:
            ys, sp = trace.y, spans[trace.name]
            trace.error_y = dict(type="data", symmetric=False, thickness=1.2, width=2,
                                 array=[hi - y for y, (_, hi) in zip(ys, sp)],
                                 arrayminus=[y - lo for y, (lo, _) in zip(ys, sp)])
    return fig


def analyse_what_changed(cfg: LabSettings, recs: list[dict]) -> LabResult:
    """Pure: records carrying ``"cka"`` (a ``measure`` result) → table, grouped bars and the verdict."""
    groups, missing = by_seed(recs)
    unmeasured = [r["label"] + (f" ({r['cka_error']})" if r.get("cka_error") else "")
                  for g in groups.values() for r in g.values() if not r.get("cka")]
    groups = {s: {k: r for k, r in g.items() if r.get("cka")} for s, g in groups.items()}
    groups = {s: g for s, g in groups.items() if g}
    if not groups:
        return empty("No finished runs with a CKA measurement yet.")
    runs: dict[str, list[dict]] = {}
    for g in groups.values():
        for key in sorted(g, key=lambda k: STRATEGIES.index(k) if k in STRATEGIES else len(STRATEGIES)):
            runs.setdefault(key, []).append(g[key])
    multi = len(groups) > 1
    checks = _checks(groups)
    images = next(iter(runs.values()))[0]["cka"].get("images")
    headline = (f"Linear CKA between the pretrained and the fine-tuned {cfg.backbone} on {images} validation "
                "images, block by block (1 = unchanged); mean of the first and the last third of the blocks: "
                + "; ".join(f"{base_label(rs[0]['label'])} {mean_of([thirds(r['cka'])[0] for r in rs]):.3f} → "
                            f"{mean_of([thirds(r['cka'])[1] for r in rs]):.3f} (best acc "
                            f"{pct(mean_of([best(r) for r in rs]))})" for rs in runs.values()) + ".")
    text, agrees = finish_text(headline, checks, missing, len(groups))
    if unmeasured:
        text += "\n\nNo CKA measurement yet (it needs the run's saved network): " + "; ".join(unmeasured) + "."
    table = pd.DataFrame([_row(rs, multi) for rs in runs.values()])
    return LabResult(table, cka_figure(cfg, runs), text, agrees, checks, {"seeds": list(groups)})


def analyse(cfg: LabSettings, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_what_changed(cfg, with_cka(recs, state))
