"""Which layer to probe: a linear probe on the pooled output of every block group of an ImageNet backbone,
for a target near ImageNet and one far from it (CS231n; Evci et al., ICML 2022, Head2Toe)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from tl_core.labs.analysis import (LabResult, add_band, best, by_seed, empty, finish_text, legend_below,
                                   mean_of, n_of, pct, pts, put_mean, seeds_note)
from tl_core.labs.config import COMMON_FIELDS, LabInfo, LabSettings, check_run_count
from tl_core.labs.plan import LabRun, depth_groups, depths, run_config
from tl_core.labs.stats import paired

INFO = LabInfo(
    "layer_probe", "Which layer to probe",
    "Which block group's features does a linear classifier read best, for a target near ImageNet and for one "
    "far from it?",
    "CS231n: with a small target that differs from the source, \"train the classifier from activations somewhere "
    "earlier in the network\"; Head2Toe (Evci et al., ICML 2022) finds that for targets far from ImageNet the "
    "useful features sit in the intermediate layers. So for the **far** target the best probe sits **earlier**, "
    "or the drop from the best layer to the last one is **larger**, than for the near target.",
    COMMON_FIELDS + ("depths", "domains"),
    "50 images per class at 64 px (5% for validation), 2 targets × 9 probe depths (18 runs) × 3 seeds: the frozen "
    "part runs once per image and depth (the other seeds reuse its features), then 8 epochs of a linear head",
    tag="layer-probe",
)


def defaults(c: LabSettings, gpu: bool) -> None:
    c.per_class, c.image_size, c.epochs, c.lr = (100, 128, 15, 1e-2) if gpu else (50, 64, 8, 1e-2)
    c.val_fraction = 0.05  # the seeds share the features, so their accuracies differ by the head only
    c.domains = ["animal_shapes", "mnist"]
    c.depths = None


def check(cfg: LabSettings) -> None:
    from tl_core import data

    if not cfg.domains:
        raise ValueError("layer_probe needs at least one target domain")
    for d in cfg.domains:
        if d not in data.BUILTIN:
            raise ValueError(f"layer_probe domains must be built-in data sets ({', '.join(data.BUILTIN)}), not {d!r}")
    if len(set(cfg.domains)) != len(cfg.domains):
        raise ValueError(f"layer_probe domains must differ, not {cfg.domains}")


def _groups(cfg: LabSettings) -> list[dict]:
    """Each block group below the head: its label ("Stage 3") and the width of its pooled output."""
    from tl_core.models import surgery
    from tl_core.models.arch import build_arch

    model, _ = build_arch(cfg.backbone, 2, "random")
    tree = surgery.hierarchy(model, cfg.image_size).tree[:-1]
    return [{"label": n.label.split(" (")[0], "width": (n.out_shape or [None])[0]} for n in tree]


def meta(cfg: LabSettings) -> dict:
    """Saved in the lab's state: the block groups' labels and widths, for the figure and the table."""
    return {"groups": _groups(cfg)}


def plan(cfg: LabSettings, wdir: Path) -> list[LabRun]:
    n_groups = len(depth_groups(cfg.backbone, cfg.image_size))
    ns = depths(cfg, n_groups, 1)
    check_run_count(cfg, len(cfg.domains) * len(ns), f"{len(cfg.domains)} domain(s) × {len(ns)} depth(s)")
    return [LabRun(f"p:{dom}:{n}", f"{dom} probe n={n}", run_config(
        cfg, f"{dom} · linear probe after {n} group{'s' if n > 1 else ''}", data=dom,
        strategy="feature_extraction", probe_depth=n)) for dom in cfg.domains for n in ns]


# ----------------------------------------------------------------------------- analysis (pure)

Curves = dict[str, dict[int, dict[int, float]]]  # domain → depth n → seed → best accuracy


def _curves(groups: dict[int, dict[str, dict]]) -> Curves:
    out: Curves = {}
    for seed, g in groups.items():
        for key, r in g.items():
            if key.startswith("p:") and best(r) is not None:
                out.setdefault(key.split(":")[1], {}).setdefault(n_of(key), {})[seed] = best(r)
    return out


def per_seed(curve: dict[int, dict[int, float]]) -> dict[int, tuple[int, float]]:
    """For each seed that ran every depth of ``curve``: (its best depth, best accuracy − the last depth's).
    A tie goes to the earlier depth."""
    ns = sorted(curve)
    seeds = set.intersection(*(set(curve[n]) for n in ns)) if ns else set()
    out = {}
    for s in sorted(seeds):
        accs = [curve[n][s] for n in ns]
        top = max(accs)
        out[s] = (ns[accs.index(top)], top - accs[-1])
    return out


def _check(near: str, far: str, curves: Curves) -> dict | None:
    """The prediction, paired over the seeds that ran both targets at every depth: the far target's best depth
    is earlier (near's best depth − far's > 0), or its best-to-last drop is larger (far's − near's > 0).
    Agrees when either part agrees; disagrees when both disagree."""
    a, b = per_seed(curves[near]), per_seed(curves[far])
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    earlier = paired([a[s][0] - b[s][0] for s in seeds], lambda d: True if d > 0 else None if d == 0 else False)
    larger = paired([b[s][1] - a[s][1] for s in seeds])
    parts = [earlier.agrees, larger.agrees]
    agrees = True if True in parts else False if parts == [False, False] else None
    fmt = lambda d: f"{d:+.1f} groups"  # noqa: E731
    return {"claim": f"for the far target ({far}) the best probe sits earlier, or the drop from the best layer to "
                     f"the last is larger, than for the near one ({near})",
            "measured": f"best depth {near} n={mean_of([a[s][0] for s in seeds]):.1f}, {far} "
                        f"n={mean_of([b[s][0] for s in seeds]):.1f} (near − far {earlier.describe(fmt)}); drop "
                        f"best→last {near} {mean_of([a[s][1] for s in seeds]) * 100:.1f} pts, {far} "
                        f"{mean_of([b[s][1] for s in seeds]) * 100:.1f} pts (far − near {larger.describe(pts)})",
            "agrees": agrees, "earlier": earlier.verdict, "larger": larger.verdict}


def _label(n: int, groups: list[dict] | None) -> str:
    g = groups[n - 1] if groups and n <= len(groups) else None
    return f"{n} · {g['label']}" if g else str(n)


def _figure(cfg: LabSettings, curves: Curves, groups: list[dict] | None, seeds: int) -> go.Figure:
    from tl_core.viz import figures as visuals

    fig = go.Figure()
    colours = [visuals.TRAINABLE, visuals.FROZEN, "#B8860B", "#6A5ACD"]
    ns = sorted({n for c in curves.values() for n in c})
    for i, (dom, curve) in enumerate(curves.items()):
        xs = sorted(curve)
        ss = sorted({s for v in curve.values() for s in v})
        add_band(fig, xs, [[curve[n].get(s) for n in xs] for s in ss], dom, colours[i % len(colours)],
                 line=dict(width=3), marker=dict(size=9))
        means = {n: mean_of(list(curve[n].values())) for n in xs}
        top = max(means, key=means.get)
        fig.add_scatter(x=[top], y=[means[top]], mode="markers", marker=dict(symbol="star", size=18,
                        color=colours[i % len(colours)]), name=f"{dom}: best probe", legendgroup=dom)
    fig.update_xaxes(title="probe after n block groups (n · group, its features' width)", tickmode="array",
                     tickangle=0, tickvals=ns, ticktext=[_label(n, groups).replace(" · ", " · <br>") + (
                         f"<br>({groups[n - 1]['width']})" if groups and n <= len(groups) and
                         groups[n - 1].get("width") else "") for n in ns])
    fig.update_yaxes(title="best validation accuracy", range=[0, 1.02], tickformat=".0%")
    visuals.layout(fig, f"Linear probe at every depth of {cfg.backbone}{seeds_note(seeds)}", height=500)
    legend_below(fig)
    fig.update_layout(legend=dict(y=-0.3), margin=dict(b=40))  # below the three-line ticks and the axis title
    return fig


def _table(curves: Curves, groups: list[dict] | None, seeds: int) -> pd.DataFrame:
    rows = []
    for n in sorted({n for c in curves.values() for n in c}):
        row = {"n (groups)": n, "group": _label(n, groups).split(" · ")[-1]}
        if groups and n <= len(groups):
            row["features"] = groups[n - 1].get("width")
        for dom, curve in curves.items():
            put_mean(row, f"{dom} (best acc)", list(curve.get(n, {}).values()), seeds > 1)
        rows.append(row)
    return pd.DataFrame(rows)


MINIATURE = ("Why this miniature may differ from the papers: the images are 64-pixel silhouettes and digits, not "
             "224-pixel photos, so the late groups see 2×2 maps; the probe reads each group's output through a "
             "global average, which throws away where the strokes are (Head2Toe pools to several sizes and "
             "selects among all layers' features at once); and a few dozen images per class and a few epochs "
             "leave the probes' accuracies a few points apart at most.")


def analyse_layer_probe(cfg: LabSettings, recs: list[dict], groups_meta: list[dict] | None = None) -> LabResult:
    from tl_core import data

    groups, missing = by_seed(recs)
    curves = _curves(groups)
    if not curves:
        return empty("No finished runs yet.")
    curves = {d: curves[d] for d in [*cfg.domains, *sorted(curves)] if d in curves}  # the config's order first
    sim = {d: data.BUILTIN[d].similarity if d in data.BUILTIN else "far" for d in curves}
    near = next((d for d in curves if sim[d] != "far"), None)
    far = next((d for d in curves if sim[d] == "far"), None)
    checks = [c for c in [_check(near, far, curves) if near and far else None] if c]
    lines = []
    for dom, curve in curves.items():
        means = {n: mean_of(list(v.values())) for n, v in curve.items()}
        top, last = max(means, key=means.get), max(means)
        lines.append(f"- **{dom}** ({sim[dom]}): best probe after **{_label(top, groups_meta)}** ({pct(means[top])}); "
                     f"the last probed depth ({_label(last, groups_meta)}) reaches {pct(means[last])}.")
    headline = "On the mean of the seeds:" if len(groups) > 1 else "Measured:"
    text, agrees = finish_text("\n".join([headline, *lines]), checks, missing, len(groups))
    if agrees is not True:
        text += "\n\n" + MINIATURE
    extra = {"seeds": list(groups), "near": near, "far": far,
             "best_depth": {d: mean_of([v[0] for v in per_seed(c).values()]) for d, c in curves.items()},
             "drop": {d: mean_of([v[1] for v in per_seed(c).values()]) for d, c in curves.items()}}
    return LabResult(_table(curves, groups_meta, len(groups)), _figure(cfg, curves, groups_meta, len(groups)), text,
                     agrees, checks, extra)


def analyse(cfg: LabSettings, recs: list[dict], state: dict | None = None) -> LabResult:
    """Uses the block groups' labels saved in the lab's state (``meta``) when there are some."""
    return analyse_layer_probe(cfg, recs, (state or {}).get("meta", {}).get("groups"))
