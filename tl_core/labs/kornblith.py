"""Do better ImageNet models transfer better? (Kornblith, Shlens & Le, CVPR 2019: r = 0.99 between ImageNet
top-1 and linear-probe accuracy over 16 networks and 12 data sets.) A linear probe (feature extraction) of
each bundled ImageNet network on a near and a far target, against the network's published top-1.

Each seed draws its own split (``LabRun(paired=False)``: split seed = training seed), so the spread over the
seeds reflects the data, not only the head's initialisation. Within a seed every network sees the same
validation images, so the rank correlation's interval resamples the seeds and, within each, its images
for every network at once (``stats.bootstrap_rank_correlation``). That needs which validation images each
run got right: ``analyse`` reads them from the runs' stored predictions (``with_correct``);
``analyse_kornblith`` is pure: records that carry ``"correct"`` and ``"val_idx"``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tl_core import limits
from tl_core.labs.stats import bootstrap_rank_correlation, rank_correlation, spread
from tl_core.labs.analysis import (INTERVAL, LabResult, accs, by_seed, empty, finish_text, legend_below, mean_of,
                                   pct, wall_s)
from tl_core.labs.config import LabInfo, LabSettings, check_run_count
from tl_core.labs.plan import LabRun, run_config

# published ImageNet top-1 (%) of the bundled weights' networks (torchvision's figure for SqueezeNet 1.1)
IMAGENET_TOP1 = {"squeezenet1_1": 58.2, "mobilenetv2": 71.9, "efficientnet_lite0": 75.1,
                 "efficientnet_lite1": 76.7, "efficientnet_lite2": 77.6}

INFO = LabInfo(
    "kornblith", "Better ImageNet, better transfer?",
    "Do networks that are better on ImageNet also transfer better?",
    "Kornblith, Shlens & Le (CVPR 2019): a linear probe's accuracy on a new data set **rises with the "
    "network's ImageNet top-1** (rank correlation > 0; r = 0.99 over 16 networks and 12 data sets of natural "
    "photographs), here on a near and on a far target (digits: beyond the paper's data sets). On a CPU the "
    "better network is not always the one worth its time: the table shows each network's size and seconds per run.",
    ("networks", "domains", "per_class", "image_size", "epochs", "batch_size", "lr", "val_fraction", "seed",
     "seeds", "only_seed", "device"),
    "50 images per class at 64 px, 12 epochs of a linear probe on cached features, validation on 10% of the "
    "data; 5 networks × 2 targets × 3 seeds, each seed with its own split",
    paired=False,
)


def defaults(c: LabSettings, gpu: bool) -> None:
    from tl_core.models import backbones

    c.networks = [k for k in IMAGENET_TOP1 if k in backbones.catalogue()]
    c.domains = ["animal_shapes", "mnist"]
    c.per_class, c.image_size, c.epochs, c.val_fraction = (200, 128, 20, 0.2) if gpu else (50, 64, 12, 0.1)


def _label(network: str) -> str:
    from tl_core.models import backbones

    return backbones.get_spec(network).label


def check(cfg: LabSettings) -> None:
    from tl_core import data

    unknown = [n for n in cfg.networks if n not in IMAGENET_TOP1]
    if unknown:
        raise ValueError(f"kornblith compares networks with a published ImageNet top-1 ({', '.join(IMAGENET_TOP1)}),"
                         f" not {limits.shown(unknown[0])}")
    if len(set(cfg.networks)) < 2 or len(set(cfg.networks)) != len(cfg.networks):
        raise ValueError("kornblith needs at least two different networks (each once) to rank")
    bad = [d for d in cfg.domains if d not in data.BUILTIN] or ([] if cfg.domains else ["none"])
    if bad:
        raise ValueError(f"kornblith's targets (domains) must be built-in image data sets ({', '.join(data.BUILTIN)})"
                         f", not {limits.shown(bad[0])}")
    for run in plan(cfg, Path(".")):  # each network on each target: known, present and within the limits
        run.cfg.validate()


def plan(cfg: LabSettings, wdir: Path) -> list[LabRun]:
    """One seed: a linear probe of every network on every target, each seed on its own split."""
    n_net, n_dom = len(cfg.networks), len(cfg.domains)
    check_run_count(cfg, n_net * n_dom, f"{n_net} network(s) × {n_dom} target(s)")
    return [LabRun(f"k:{dom}:{net}", f"{dom} · {_label(net)}",
                   run_config(cfg, f"{dom} · {_label(net)}", backbone=net, data=dom, strategy="feature_extraction"),
                   paired=INFO.paired)
            for dom in cfg.domains for net in cfg.networks]


# ----------------------------------------------------------------------------- per-image correctness


def with_correct(recs: list[dict], state: dict | None) -> list[dict]:
    """The records with ``"val_idx"`` and ``"correct"`` (0/1 per validation image, in ``val_idx`` order) from
    the run's stored predictions of its last validation (``RunStore.predictions``); records that carry
    them, or whose run stored none, stay as they are."""
    from tl_core.runs.store import RunStore

    if not state or not state.get("runs_dir") or all("correct" in r for r in recs):
        return recs
    store = RunStore(state["runs_dir"])
    try:
        out = []
        for r in recs:
            pred = store.predictions(r["run_id"]) if "correct" not in r else None
            if pred is None:
                out.append(r)
                continue
            order = np.argsort(pred["val_idx"], kind="stable")
            out.append({**r, "val_idx": pred["val_idx"][order].tolist(),
                        "correct": (pred["pred"] == pred["label"])[order].astype(int).tolist()})
        return out
    finally:
        store.close()


# ----------------------------------------------------------------------------- analysis (pure)


def _final(rec: dict) -> float | None:
    a = accs(rec)
    return a[-1] if a else None


def _correlation(nets: list[str], runs: dict[int, dict[str, dict]]):
    """The bootstrap rank correlation over the seeds where every network has its per-image correctness on
    the same validation images (None: no such seed)."""
    mats = []
    for g in runs.values():
        rs = [g.get(n) for n in nets]
        if all(r is not None and r.get("correct") for r in rs) and len({tuple(r["val_idx"]) for r in rs}) == 1:
            mats.append(np.array([r["correct"] for r in rs], dtype=float))
    return bootstrap_rank_correlation([IMAGENET_TOP1[n] for n in nets], mats) if mats else None


def _target(dom: str, groups: dict[int, dict[str, dict]], sim: str) -> tuple[list, dict, dict]:
    """(table rows, check, figure data) of one target."""
    runs = {s: {k.split(":")[2]: r for k, r in g.items() if k.startswith(f"k:{dom}:")} for s, g in groups.items()}
    nets = sorted({n for g in runs.values() for n in g}, key=lambda n: IMAGENET_TOP1.get(n, 0))
    corr = _correlation(nets, runs) if len(nets) > 1 else None
    rows, data = [], {"label": [], "top1": [], "acc": [], "lo": [], "hi": [], "time": [], "params": []}
    for i, n in enumerate(nets):
        rs = [g[n] for g in runs.values() if n in g]
        finals = [_final(r) for r in rs]
        s = spread(finals) if corr is None else None
        lo, hi = (corr.acc_lo[i], corr.acc_hi[i]) if corr else (s.lo, s.hi) if s and s.n > 1 else (None, None)
        params = rs[0]["summary"].get("total_params")
        row = {"target": f"{dom} ({sim})", "network": _label_of(rs[0]), "ImageNet top-1 (%)": IMAGENET_TOP1.get(n),
               "params (M)": round(params / 1e6, 2) if params else None, "transfer acc": mean_of(finals)}
        if lo is not None:
            row["transfer acc" + INTERVAL] = f"{lo * 100:.1f}–{hi * 100:.1f}%"
        row.update({"time per run (s)": round(mean_of([wall_s(r) for r in rs]), 1), "seeds": len(rs),
                    "run": ", ".join(r["run_id"] for r in rs)})
        rows.append(row)
        for k, v in (("label", row["network"]), ("top1", IMAGENET_TOP1.get(n)), ("acc", row["transfer acc"]),
                     ("lo", lo), ("hi", hi), ("time", row["time per run (s)"]), ("params", params)):
            data[k].append(v)
    claim = f"{dom} ({sim}): the better the ImageNet top-1, the better the transfer (rank correlation > 0)"
    if corr is not None:
        where = "lies above 0" if corr.lo > 0 else "lies below 0" if corr.hi < 0 else "contains 0"
        check = {"claim": claim, "agrees": corr.agrees,
                 "measured": f"Spearman ρ = {corr.rho:+.2f} [95%: {corr.lo:+.2f}, {corr.hi:+.2f}] over {len(nets)} "
                             f"networks, {corr.seeds} seed(s) × {round(np.mean(corr.images))} validation images",
                 "basis": f"bootstrap over the seeds and their validation images: the 95% interval {where}"}
        data["rho"] = (corr.rho, corr.lo, corr.hi)
    else:
        rho = rank_correlation([IMAGENET_TOP1[n] for n in nets], data["acc"]) if len(nets) > 1 else None
        check = {"claim": claim, "agrees": None, "basis": "no interval: the runs' per-image results are missing",
                 "measured": "fewer than two networks finished" if rho is None else f"Spearman ρ = {rho:+.2f}"}
        data["rho"] = None if rho is None else (rho, None, None)
    return rows, check, data


def _label_of(rec: dict) -> str:
    return rec["label"].split(" · ")[1] if " · " in rec["label"] else rec["label"]


def _short(label: str) -> str:
    return label.replace("EfficientNet-", "")


def _figure(per_target: dict[str, dict], seeds: int) -> go.Figure:
    """Left: each target's transfer accuracy per network, the networks in the order of their ImageNet top-1
    (what a rank correlation compares); right: seconds per run, the networks' sizes under their names."""
    from tl_core.viz import figures as visuals

    nets: dict[str, tuple] = {}  # label → (top-1, params), in top-1 order
    for d in per_target.values():
        for label, top1, params in zip(d["label"], d["top1"], d["params"]):
            nets.setdefault(label, (top1, params))
    nets = dict(sorted(nets.items(), key=lambda kv: kv[1][0] or 0))
    pos = {label: i for i, label in enumerate(nets)}
    fig = make_subplots(rows=1, cols=2, column_widths=[0.56, 0.44], horizontal_spacing=0.08, subplot_titles=(
        "transfer accuracy (linear probe, final epoch)", "seconds per run (this machine)"))
    for i, (dom, d) in enumerate(per_target.items()):
        colour = visuals.RUN_COLOURS[i % len(visuals.RUN_COLOURS)]
        shift = (i - (len(per_target) - 1) / 2) * 0.12  # side by side: the error bars do not hide each other
        rho = d["rho"]
        name = dom + ("" if rho is None else f": ρ {rho[0]:+.2f}" + ("" if rho[1] is None else
                                                                      f" [95%: {rho[1]:+.2f}, {rho[2]:+.2f}]"))
        err = None if None in d["lo"] else dict(type="data", symmetric=False, thickness=1.5, width=5,
                                                 array=[h - a for a, h in zip(d["acc"], d["hi"])],
                                                 arrayminus=[a - lo for a, lo in zip(d["acc"], d["lo"])])
        fig.add_scatter(x=[pos[n] + shift for n in d["label"]], y=d["acc"], error_y=err, mode="lines+markers",
                        name=name, legendgroup=dom, line=dict(color=colour), marker=dict(size=11),
                        hovertext=d["label"], row=1, col=1)
        fig.add_bar(x=[pos[n] for n in d["label"]], y=d["time"], name=dom, legendgroup=dom, showlegend=False,
                    marker_color=colour, offsetgroup=dom, hovertext=d["label"], row=1, col=2)
    fig.update_xaxes(tickvals=list(pos.values()), ticktext=[f"{_short(n)}<br>{t:.1f}%" for n, (t, _) in nets.items()],
                     title="network, published ImageNet top-1", row=1, col=1)
    fig.update_xaxes(tickvals=list(pos.values()), tickangle=0, tickfont=dict(size=13), row=1, col=2,
                     title="network, parameters",
                     ticktext=[_short(n).replace(" ", "<br>") + (f"<br>{p / 1e6:.1f}M" if p else "")
                               for n, (_, p) in nets.items()])
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    fig.update_yaxes(ticksuffix=" s", row=1, col=2)
    note = "" if seeds <= 1 else f" · {seeds} seeds (own splits), error bars: 95% interval"
    visuals.layout(fig, f"Better ImageNet, better transfer?{note}", height=500, barmode="group")
    return legend_below(fig)


def analyse_kornblith(cfg: LabSettings, recs: list[dict], similarity: dict[str, str] | None = None) -> LabResult:
    """Pure: records (with ``"correct"`` and ``"val_idx"`` where measured) → table, figure, verdict per target."""
    from tl_core import data

    groups, missing = by_seed(recs)
    if not groups:
        return empty("No finished runs yet.")
    doms = [d for d in cfg.domains if any(k.startswith(f"k:{d}:") for g in groups.values() for k in g)]
    similarity = similarity or {d: data.BUILTIN[d].similarity if d in data.BUILTIN else "far" for d in doms}
    rows, checks, per_target = [], [], {}
    for dom in doms:
        r, c, d = _target(dom, groups, similarity[dom])
        rows += r
        checks.append(c)
        per_target[dom] = d
    table = pd.DataFrame(rows)
    text, agrees = finish_text(_headline(table), checks, missing, len(groups), paired=INFO.paired)
    extra = {"seeds": list(groups), "rho": {dom: d["rho"] for dom, d in per_target.items()}}
    return LabResult(table, _figure(per_target, len(groups)), text, agrees, checks, extra)


def _headline(table: pd.DataFrame) -> str:
    """Per target: the best network, and the fastest one's rank (the cheapest is not always the worst)."""
    parts = []
    for target, t in table.groupby("target", sort=False):
        ranked = t.sort_values("transfer acc", ascending=False).reset_index(drop=True)
        fast = int(t["time per run (s)"].to_numpy().argmin())
        fastest = t.iloc[fast]
        place = int(ranked.index[ranked["network"] == fastest["network"]][0]) + 1
        parts.append(f"{target}: best {ranked.iloc[0]['network']} {pct(ranked.iloc[0]['transfer acc'])}; the "
                     f"fastest, {fastest['network']} ({fastest['time per run (s)']} s per run), ranks {place} of "
                     f"{len(t)} ({pct(fastest['transfer acc'])})")
    return "Linear probe (frozen ImageNet features, final epoch). " + "; ".join(parts) + "."


def analyse(cfg: LabSettings, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_kornblith(cfg, with_correct(recs, state))
