"""Pure functions: data -> plotly figures (and the small numbers behind them).

No streamlit here: the app, notebooks and tests all call these. Colours are defined once:
frozen and trainable share ONE colour pair everywhere (ice blue / orange), so a student who
learns "blue = frozen" on the Backbone page reads every other chart the same way.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# ------------------------------------------------------------------ the one colour pair
FROZEN = "#5B8DEF"  # ice blue: weights do not change
TRAINABLE = "#F28C28"  # orange: weights learn
FROZEN_LIGHT = "#DCE6FB"
TRAINABLE_LIGHT = "#FCE3CC"
TRAIN = "#7A5195"  # training-set curves (purple)
VAL = "#1B9E77"  # validation curves (teal green)
NEUTRAL = "#8A8F98"
# Run colours for overlays: no blue and no orange, so they never read as frozen/trainable.
RUN_COLOURS = ["#1B9E77", "#7A5195", "#D62728", "#17BECF", "#8C564B", "#E377C2", "#BCBD22", "#4D4D4D"]
STATUS_COLOURS = {"queued": NEUTRAL, "running": TRAINABLE, "completed": VAL, "stopped": "#8C564B",
                  "failed": "#D62728", "diverged": "#D62728"}
FONT = dict(family="DejaVu Sans, Arial, sans-serif", size=16)  # readable at projector size


def layout(fig: go.Figure, title: str | None = None, height: int = 380, **kw) -> go.Figure:
    """``fig`` in the house style (title, height, font, margins, legend on top); ``kw`` go to update_layout."""
    fig.update_layout(
        title=dict(text=title, font=dict(size=20)) if title else None,
        height=height, font=FONT, template="plotly_white",
        margin=kw.pop("margin", None) or dict(l=10, r=10, t=60 if title else 20, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1), **kw,
    )
    return fig


def fmt_count(n: float) -> str:
    """3_504_872 -> '3.5M', 12_810 -> '12.8k', 896 -> '896'."""
    n = float(n)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def fmt_shape(shape: Sequence[int]) -> str:
    """[24, 12, 12] -> '24×12×12' (channels × height × width)."""
    return "×".join(str(s) for s in shape) if shape else "–"


# ------------------------------------------------------------------ hierarchy + freeze plan


def _nodes(hier) -> list[dict]:
    """Hierarchy (object or to_dict()) -> list of top-level node dicts."""
    if isinstance(hier, Mapping):
        return list(hier["tree"])
    return [n.to_dict() for n in hier.tree]


def block_rows(hier, plan: Mapping[str, Mapping] | None = None) -> list[dict]:
    """One row per toggleable block in forward order: name, label, short, group, kind, params,
    out_shape, has_bn, frozen, lr_mult, bn_mode. ``plan`` is ``FreezePlan.to_dict()``."""
    plan = plan or {}
    rows = []
    for gi, node in enumerate(_nodes(hier)):
        leaves = node["children"] or [node]
        for bi, leaf in enumerate(leaves):
            s = plan.get(leaf["name"], {})
            if node["kind"] == "stage":
                short = f"S{node['label'].split()[-1]}·{bi + 1}"
            elif leaf["kind"] == "block":
                short = f"B{leaf['label'].split()[-1]}"
            else:
                short = leaf["kind"].capitalize()
            rows.append({
                "name": leaf["name"], "label": leaf["label"], "short": short,
                "group": node["label"] if node["kind"] == "stage" else leaf["label"].split(" (")[0],
                "group_index": gi, "kind": leaf["kind"], "params": int(leaf["params"]),
                "out_shape": list(leaf.get("out_shape") or []), "has_bn": bool(leaf.get("has_bn")),
                "frozen": bool(s.get("frozen", False)), "lr_mult": float(s.get("lr_mult", 1.0)),
                "bn_mode": s.get("bn_mode", "frozen"),
            })
    return rows


def plan_counts(hier, plan: Mapping[str, Mapping]) -> dict:
    """Trainable / total parameters implied by a plan, without building a model."""
    rows = block_rows(hier, plan)
    total = sum(r["params"] for r in rows)
    trainable = sum(r["params"] for r in rows if not r["frozen"])
    return {"trainable": trainable, "total": total, "fraction": trainable / total if total else 0.0,
            "frozen_blocks": sum(r["frozen"] for r in rows), "blocks": len(rows)}


def hierarchy_figure(hier, plan: Mapping[str, Mapping] | None = None, selected: str | None = None,
                     height: int = 430) -> go.Figure:
    """The layer hierarchy as a picture: input → stem → stages (blocks) → neck → head, left to right.

    Each block is a bar whose height is its parameter count (log scale), coloured frozen /
    trainable; its output shape is printed under it; stages are shaded bands labelled on top.
    Clicking a bar selects the block (customdata holds the block name)."""
    rows = block_rows(hier, plan)
    x = list(range(len(rows)))
    fig = go.Figure()
    # Stage / group bands
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["group_index"], []).append(i)
    top = max((r["params"] for r in rows), default=10) * 12
    for k, (gi, idx) in enumerate(groups.items()):
        label = rows[idx[0]]["group"]
        fig.add_shape(type="rect", x0=idx[0] - 0.48, x1=idx[-1] + 0.48, y0=0, y1=1, yref="paper",
                      fillcolor="#F1F3F6" if k % 2 == 0 else "#FFFFFF", line_width=0, layer="below")
        if label.startswith("Stage "):
            short_label = label.replace("Stage ", "Stage\u00a0") if len(idx) > 1 else "S" + label.split(" ")[1]
        else:
            short_label = label.split(" ")[0]
        fig.add_annotation(x=(idx[0] + idx[-1]) / 2, y=1.0, yref="paper", yanchor="bottom", showarrow=False,
                           text=f"<b>{short_label}</b>", font=dict(size=14, color="#333"))
    for state, colour in (("frozen", FROZEN), ("trainable", TRAINABLE)):
        sel = [i for i, r in enumerate(rows) if r["frozen"] == (state == "frozen")]
        fig.add_bar(
            x=[x[i] for i in sel], y=[max(rows[i]["params"], 1) for i in sel], name=state,
            marker=dict(color=colour, line=dict(color=["#111" if rows[i]["name"] == selected else colour for i in sel],
                                                width=[4 if rows[i]["name"] == selected else 0 for i in sel])),
            text=[fmt_count(rows[i]["params"]) for i in sel], textposition="outside", cliponaxis=False,
            textfont=dict(size=13),
            customdata=[[rows[i]["name"], rows[i]["label"], fmt_shape(rows[i]["out_shape"]),
                         "yes" if rows[i]["has_bn"] else "no", rows[i]["lr_mult"]] for i in sel],
            hovertemplate="<b>%{customdata[1]}</b> (%{customdata[0]})<br>%{y:,} parameters<br>"
                          "output %{customdata[2]}<br>BatchNorm: %{customdata[3]}<br>LR × %{customdata[4]}"
                          f"<extra>{state}</extra>",
        )
    ticks = [f"{r['short']}<br><span style='font-size:11px;color:#555'>{fmt_shape(r['out_shape'])}</span>"
             for r in rows]
    fig.update_xaxes(tickmode="array", tickvals=x, ticktext=ticks, range=[-0.6, len(rows) - 0.4],
                     showgrid=False, tickfont=dict(size=12))
    fig.update_yaxes(type="log", title="parameters (log scale)", range=[math.log10(50), math.log10(top)],
                     showgrid=True, gridcolor="#E5E7EB", dtick=1)
    layout(fig, None, height=height, barmode="overlay", bargap=0.15, clickmode="event+select")
    fig.update_layout(margin=dict(l=10, r=10, t=70, b=10), legend=dict(y=1.12))
    return fig


def effective_lrs(plan: Mapping[str, Mapping], lr: float) -> dict[str, float]:
    """Learning rate each block actually gets: 0 when frozen, else lr × its multiplier."""
    return {n: 0.0 if s.get("frozen") else lr * float(s.get("lr_mult", 1.0)) for n, s in plan.items()}


def lr_figure(hier, plan: Mapping[str, Mapping], lr: float, height: int = 340) -> go.Figure:
    """Bar chart of the effective learning rate per block; frozen blocks get a ❄ marker at zero."""
    rows = block_rows(hier, plan)
    lrs = effective_lrs(plan, lr)
    ys = [lrs.get(r["name"], 0.0) for r in rows]
    xs = [r["short"] for r in rows]
    fig = go.Figure(go.Bar(
        x=xs, y=ys, marker_color=TRAINABLE, name="trainable",
        customdata=[[r["label"], r["lr_mult"]] for r in rows],
        hovertemplate="<b>%{customdata[0]}</b><br>LR %{y:.2e} (× %{customdata[1]})<extra></extra>",
    ))
    frozen = [i for i, r in enumerate(rows) if r["frozen"]]
    fig.add_scatter(x=[xs[i] for i in frozen], y=[0] * len(frozen), mode="text", text=["❄"] * len(frozen),
                    textfont=dict(size=18, color=FROZEN), name="frozen: LR 0", textposition="top center",
                    hovertext=[rows[i]["label"] + ": frozen" for i in frozen], hoverinfo="text")
    top = max(ys + [lr]) * 1.25
    fig.update_yaxes(title="learning rate", exponentformat="e", range=[0, top])
    fig.update_xaxes(tickfont=dict(size=12), type="category")
    return layout(fig, "Effective learning rate per block (❄ frozen: 0)", height=height, showlegend=False)


# ------------------------------------------------------------------ training curves


def phase_boundaries(rows: Sequence[Mapping], names: Mapping[int, str] | None = None) -> list[tuple[float, str]]:
    """(x, label) where the phase changes between consecutive epoch rows: x is the end of the
    previous epoch, i.e. the moment the new phase starts (x = epochs done, the axis of the curves).
    ``names`` maps a phase number to its name (from the run's phase records)."""
    out = []
    for prev, cur in zip(rows, rows[1:]):
        if cur.get("phase") is not None and cur.get("phase") != prev.get("phase"):
            label = (names or {}).get(cur["phase"]) or cur.get("phase_name") or f"phase {cur['phase']}"
            out.append((float(prev["epoch"]), label))
    return out


def phase_starts(phases: Sequence[Mapping], steps_per_epoch: int | None = None) -> list[tuple[float, str]]:
    """Boundaries from the phase plan itself (known before any epoch ends): x = epochs done before
    each phase after the first."""
    out, done = [], 0
    for i, p in enumerate(phases):
        if i:
            out.append((float(done), str(p.get("name", f"phase {i + 1}"))))
        done += int(p.get("epochs", 0))
    return out


def _downsample(xs: list, ys: list, limit: int = 2000) -> tuple[list, list]:
    if len(xs) <= limit:
        return xs, ys
    step = math.ceil(len(xs) / limit)
    return xs[::step], ys[::step]


EPOCH_CURVES = (("train_loss", TRAIN, "dot", "train", 1), ("val_loss", VAL, "solid", "validation", 1),
                ("train_acc", TRAIN, "dot", "train", 2), ("val_acc", VAL, "solid", "validation", 2))


def run_curves_figure(epochs: Sequence[Mapping], steps: Sequence[Mapping] = (),
                      boundaries: Sequence[tuple[float, str]] | None = None, total_epochs: int | None = None,
                      height: int = 380) -> go.Figure:
    """Loss (left) and accuracy (right) of one run: per-batch training loss (faint), per-epoch train
    and validation values, and dashed lines where a new phase (unfreezing) starts. ``update_run_curves``
    puts newer points into it."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"), horizontal_spacing=0.08)
    for col in (1, 2):  # keeps both axes drawn before the first point arrives
        fig.add_scatter(x=[], y=[], showlegend=False, hoverinfo="skip", row=1, col=col)
    fig.add_scatter(x=[], y=[], mode="lines", name="train loss (per batch)", line=dict(color=TRAIN, width=1),
                    opacity=0.35, row=1, col=1)
    for _, colour, dash, name, col in EPOCH_CURVES:
        fig.add_scatter(x=[], y=[], mode="lines+markers", name=name, legendgroup=name, showlegend=col == 1,
                        line=dict(color=colour, dash=dash, width=3), marker=dict(size=9), row=1, col=col)
    for xb, label in (boundaries if boundaries is not None else phase_boundaries(epochs)):
        for col in (1, 2):
            fig.add_vline(x=xb, line=dict(color=TRAINABLE, dash="dash", width=2), row=1, col=col)
        for xref in ("x", "x2"):
            fig.add_annotation(x=xb, y=0.97, xref=xref, yref="paper", text=f" {label} →", showarrow=False,
                               xanchor="left", yanchor="top", font=dict(color=TRAINABLE, size=13),
                               bgcolor="rgba(255,255,255,0.8)")
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    layout(fig, None, height=height)
    fig.update_layout(legend=dict(y=1.14), margin=dict(t=80))
    return update_run_curves(fig, epochs, steps, total_epochs)


def update_run_curves(fig: go.Figure, epochs: Sequence[Mapping], steps: Sequence[Mapping] = (),
                      total_epochs: int | None = None) -> go.Figure:
    """Put the points of ``epochs`` and ``steps`` into a figure made by ``run_curves_figure`` (in place;
    returns it). About 2 ms, where building the figure takes about 40: the Train page keeps one figure per
    run and updates it every second."""
    xs, ys = _downsample([s.get("x", s.get("epoch", 0)) for s in steps], [s["loss"] for s in steps])
    ep = [r["epoch"] for r in epochs]
    xmax = max(total_epochs or 0, max(ep, default=0), 1)
    with fig.batch_update():
        fig.data[2].update(x=xs, y=ys)
        for trace, (key, *_) in zip(fig.data[3:], EPOCH_CURVES):
            trace.update(x=ep, y=[r.get(key) for r in epochs])
        fig.update_xaxes(title="epochs done", range=[0, xmax + 0.2], dtick=1 if xmax <= 20 else None)
    return fig


def compare_curves_figure(runs: Mapping[str, Sequence[Mapping]], metric: str = "val_acc",
                          boundaries: Mapping[str, Sequence[tuple[float, str]]] | None = None,
                          height: int = 420) -> go.Figure:
    """Overlay one metric of several runs (label -> epoch rows). Accuracy on a 0-100% axis."""
    fig = go.Figure()
    for i, (label, rows) in enumerate(runs.items()):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        fig.add_scatter(x=[r["epoch"] for r in rows], y=[r.get(metric) for r in rows], mode="lines+markers",
                        name=label, line=dict(color=colour, width=3), marker=dict(size=9))
        for xb, plabel in (boundaries or {}).get(label, phase_boundaries(rows)):
            fig.add_vline(x=xb, line=dict(color=colour, dash="dash", width=1.5))
    pretty = {"val_acc": "validation accuracy", "train_acc": "training accuracy",
              "val_loss": "validation loss", "train_loss": "training loss"}.get(metric, metric)
    last = max((r["epoch"] for rows in runs.values() for r in rows), default=1)
    fig.update_xaxes(title="epochs done", dtick=1 if last <= 20 else None, range=[0, last + 0.2])
    if metric.endswith("acc"):
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    fig.update_yaxes(title=pretty)
    return layout(fig, pretty.capitalize(), height=height)


def transfer_gains(pretrained: Sequence[Mapping], scratch: Sequence[Mapping], metric: str = "val_acc",
                   tol: float = 0.01) -> dict:
    """The three ways transfer can help a learning curve (higher start, higher slope, higher
    asymptote), comparing a pretrained run with a scratch run epoch by epoch.

    start: the metric after the first epoch; slope: mean gain per epoch over the epochs both runs
    have; asymptote: the best value each run reached. Each entry: pretrained, scratch, diff and
    verdict ("higher" / "similar" / "lower", similar meaning within ``tol``)."""
    a = [float(r[metric]) for r in pretrained if r.get(metric) is not None]
    b = [float(r[metric]) for r in scratch if r.get(metric) is not None]
    if not a or not b:
        raise ValueError("both runs need at least one epoch with " + metric)
    n = min(len(a), len(b))

    def slope(v: list[float]) -> float:
        return (v[n - 1] - v[0]) / (n - 1) if n > 1 else 0.0

    out = {}
    for key, pa, pb in (("start", a[0], b[0]), ("slope", slope(a), slope(b)), ("asymptote", max(a), max(b))):
        diff = pa - pb
        t = tol / 2 if key == "slope" else tol
        out[key] = {"pretrained": pa, "scratch": pb, "diff": diff,
                    "verdict": "higher" if diff > t else "lower" if diff < -t else "similar"}
    out["epochs_compared"] = n
    return out


# ------------------------------------------------------------------ drift, feature maps, filters


def drift_figure(drift: Mapping[str, float], frozen: Iterable[str] = (), order: Sequence[str] | None = None,
                 labels: Mapping[str, str] | None = None, height: int = 320, title: str | None = None) -> go.Figure:
    """Per-block relative weight change ‖W−W₀‖/‖W₀‖ since the start: frozen blocks stay at zero."""
    frozen = set(frozen)
    names = list(order) if order else list(drift)
    ys = [float(drift.get(n, 0.0) or 0.0) for n in names]
    fig = go.Figure(go.Bar(
        x=[(labels or {}).get(n, n) for n in names], y=ys,
        marker_color=[FROZEN if n in frozen else TRAINABLE for n in names],
        customdata=names, hovertemplate="<b>%{customdata}</b><br>changed by %{y:.2%}<extra></extra>",
    ))
    fig.update_yaxes(title="‖W − W₀‖ / ‖W₀‖", tickformat=".1%", rangemode="tozero")
    fig.update_xaxes(tickfont=dict(size=12))
    return layout(fig, title, height=height, showlegend=False)


def montage(maps: np.ndarray, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """[k, h, w] (or [k, h, w, 3]) -> one tiled image with ``pad`` pixels of gap (NaN for 2-D)."""
    maps = np.asarray(maps)
    k, h, w = maps.shape[:3]
    cols = cols or k
    rows = math.ceil(k / cols)
    extra = maps.shape[3:]
    fill = np.nan if not extra else 255
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, *extra), fill,
                  dtype=float if not extra else np.uint8)
    for i in range(k):
        r, c = divmod(i, cols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = maps[i]
    return out


def feature_maps_figure(columns: Mapping[str, Mapping[str, np.ndarray]], max_maps: int = 6,
                        height: int | None = None) -> go.Figure:
    """Feature maps side by side. ``columns``: title -> {layer -> uint8 [k, h, w]}; each column is
    e.g. a model (pretrained / fine-tuned) or an epoch; each row is a layer (early → late)."""
    titles = list(columns)
    layers = list(dict.fromkeys(layer for maps in columns.values() for layer in maps))
    if not layers:
        fig = go.Figure()
        fig.add_annotation(text="no feature maps yet", showarrow=False, font=dict(size=18))
        return layout(fig, None, height=200)
    fig = make_subplots(rows=len(layers), cols=len(titles), vertical_spacing=0.08, horizontal_spacing=0.03,
                        column_titles=titles, row_titles=[_layer_title(i, len(layers), n) for i, n in enumerate(layers)])
    for c, title in enumerate(titles, start=1):
        for r, layer in enumerate(layers, start=1):
            maps = columns[title].get(layer)
            if maps is None:
                continue
            tile = montage(np.asarray(maps)[:max_maps], cols=min(max_maps, 3))
            fig.add_heatmap(z=tile, colorscale="Viridis", showscale=False, zmin=0, zmax=255, hoverinfo="skip",
                            row=r, col=c)
            idx = (r - 1) * len(titles) + c
            fig.update_yaxes(autorange="reversed", scaleanchor="x" if idx == 1 else f"x{idx}", row=r, col=c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_annotations(font_size=15)
    layout(fig, None, height=height or 230 * len(layers) + 40, showlegend=False)
    fig.update_layout(margin=dict(l=10, r=70, t=40, b=10))
    return fig


def _layer_title(i: int, n: int, name: str) -> str:
    stage = ["early", "middle", "late"][min(2, round(2 * i / max(1, n - 1)))] if n > 1 else "layer"
    return f"{stage}<br><span style='font-size:11px'>{name}</span>"


def filters_figure(weight: np.ndarray, max_filters: int = 32, height: int = 360) -> go.Figure:
    """First-layer convolution filters [out, in, kh, kw] as small RGB tiles (each scaled to 0-255)."""
    w = np.asarray(weight, dtype=float)[:max_filters]
    if w.ndim != 4:
        raise ValueError(f"expected a conv weight [out, in, kh, kw], got shape {w.shape}")
    if w.shape[1] != 3:
        w = np.repeat(w.mean(axis=1, keepdims=True), 3, axis=1)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    hi = w.max(axis=(1, 2, 3), keepdims=True)
    tiles = ((w - lo) / np.where(hi - lo > 0, hi - lo, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    big = np.kron(tiles, np.ones((1, 8, 8, 1), dtype=np.uint8)) if tiles.shape[1] < 16 else tiles
    img = montage(big, cols=min(8, len(big)), pad=3)
    fig = go.Figure(go.Image(z=img, hoverinfo="skip"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return layout(fig, None, height=height)


# ------------------------------------------------------------------ data and results


def class_counts_figure(counts: Mapping[str, int], val_counts: Mapping[str, int] | None = None,
                        height: int = 320) -> go.Figure:
    """Images per class (stacked train / validation when ``val_counts`` is given)."""
    names = list(counts)
    fig = go.Figure()
    if val_counts:
        fig.add_bar(x=names, y=[counts[n] for n in names], name="training", marker_color=TRAIN)
        fig.add_bar(x=names, y=[val_counts.get(n, 0) for n in names], name="validation", marker_color=VAL)
    else:
        fig.add_bar(x=names, y=[counts[n] for n in names], name="images", marker_color=NEUTRAL,
                    text=[counts[n] for n in names], textposition="outside", cliponaxis=False)
    fig.update_yaxes(title="images", rangemode="tozero")
    return layout(fig, "Images per class", height=height, barmode="stack", showlegend=bool(val_counts))


def sample_grid_figure(grid: Mapping[str, Sequence[np.ndarray]], tile: int = 64, height: int | None = None) -> go.Figure:
    """One row of sample images per class (``data.sample_grid`` output), class names on the left."""
    names = list(grid)
    per = max((len(v) for v in grid.values()), default=0)
    if not names or per == 0:
        return layout(go.Figure(), "no images", height=200)
    rows = []
    for n in names:
        imgs = [_resize_nearest(np.asarray(im), tile) for im in grid[n]]
        imgs += [np.full((tile, tile, 3), 255, np.uint8)] * (per - len(imgs))
        rows.append(np.stack(imgs))
    img = montage(np.concatenate(rows), cols=per, pad=4)
    fig = go.Figure(go.Image(z=img, hoverinfo="skip"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(tickmode="array", tickvals=[i * (tile + 4) + tile / 2 for i in range(len(names))],
                     ticktext=names, showgrid=False, tickfont=dict(size=15))
    return layout(fig, None, height=height or min(900, 30 + len(names) * 76), margin=dict(l=110, r=10, t=10, b=10))


def _resize_nearest(img: np.ndarray, side: int) -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    h, w = img.shape[:2]
    ys = (np.arange(side) * h / side).astype(int)
    xs = (np.arange(side) * w / side).astype(int)
    return img[ys][:, xs].astype(np.uint8)


def confusion_counts(label: Sequence[int], pred: Sequence[int], n: int) -> np.ndarray:
    """The [n, n] confusion matrix of per-item true ``label`` and predicted ``pred`` classes (rows = true)."""
    label, pred = np.asarray(label, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    return np.bincount(label * n + pred, minlength=n * n).reshape(n, n)


def confusion_cell(label: Sequence[int], pred: Sequence[int], conf: Sequence[float], true: int,
                   predicted: int) -> np.ndarray:
    """Positions of the items in the cell (``true``, ``predicted``) of the matrix that ``confusion_counts``
    makes of the same arrays (exactly as many as it counts), most confident first."""
    label, pred, conf = np.asarray(label), np.asarray(pred), np.asarray(conf, dtype=float)
    rows = np.flatnonzero((label == true) & (pred == predicted))
    return rows[np.argsort(-conf[rows], kind="stable")]


def confusion_figure(confusion: Sequence[Sequence[int]], class_names: Sequence[str], normalise: bool = True,
                     height: int | None = None, selected: tuple[int, int] | None = None) -> go.Figure:
    """Confusion matrix: rows = true class, columns = predicted; cells show counts (colour = row %).

    Each non-empty cell is clickable: a heatmap has no selectable points, so an invisible square marker
    sits on each cell's centre (customdata: [true, predicted]; ``st.plotly_chart(on_select=...)`` returns
    it). ``selected`` (true, predicted) outlines that cell."""
    cm = np.asarray(confusion, dtype=float)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalise else cm
    n = len(class_names)
    names = list(class_names)
    fig = go.Figure(go.Heatmap(
        z=share, x=names, y=names, colorscale="Greens", zmin=0, zmax=1 if normalise else None, showscale=False,
        text=cm.astype(int).tolist(), texttemplate="%{text}" if n <= 15 else None, textfont=dict(size=14),
        hoverinfo="skip",
    ))
    t, p = np.nonzero(cm)
    fig.add_trace(go.Scatter(
        x=[names[j] for j in p], y=[names[i] for i in t], mode="markers", showlegend=False,
        marker=dict(symbol="square", size=max(8, min(40, 400 // max(n, 1))), color="rgba(0,0,0,0)", opacity=0),
        selected=dict(marker=dict(opacity=0)), unselected=dict(marker=dict(opacity=0)),
        customdata=np.stack([t, p, cm[t, p].astype(int), share[t, p]], axis=1).tolist(),
        hovertemplate="true %{y} → predicted %{x}<br>%{customdata[2]} images (%{customdata[3]:.0%} of the class)"
                      "<br>click to see them<extra></extra>",
    ))
    if selected is not None:
        i, j = selected
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, line=dict(color="#111", width=3))
    fig.update_xaxes(title="predicted", side="bottom", tickangle=-40 if n > 6 else 0, type="category",
                     categoryorder="array", categoryarray=names)
    fig.update_yaxes(title="true class", autorange="reversed", type="category", categoryorder="array",
                     categoryarray=names)
    return layout(fig, "Confusion matrix", height=height or max(360, 60 + 42 * n), clickmode="event+select",
                  hovermode="closest")


def per_class_figure(per_class_acc: Sequence[float] | Mapping[str, float], class_names: Sequence[str] | None = None,
                     height: int = 320) -> go.Figure:
    if isinstance(per_class_acc, Mapping):
        class_names, vals = list(per_class_acc), list(per_class_acc.values())
    else:
        vals = list(per_class_acc)
    fig = go.Figure(go.Bar(x=list(class_names), y=vals, marker_color=VAL, text=[f"{v:.0%}" for v in vals],
                           textposition="outside", cliponaxis=False))
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%", title="accuracy")
    return layout(fig, "Accuracy per class", height=height, showlegend=False)


# ------------------------------------------------------------------ the class board


def board_figure(runs, pooled, group_title: str = "group", height: int = 440) -> go.Figure:
    """The class board: per group the pooled mean final validation accuracy (a bar) with its spread
    (± one standard deviation), and each run's own result as a point beside it, named on hover.

    ``runs`` and ``pooled`` are the two tables of ``classroom.board_table`` (DataFrames, or anything
    with the same columns as records): runs without a final accuracy are not drawn."""
    import html

    records = lambda t: t.to_dict("records") if hasattr(t, "to_dict") else list(t)  # noqa: E731
    groups = [g["group"] for g in records(pooled)]
    pos = {g: i for i, g in enumerate(groups)}
    fig = go.Figure()
    bars = records(pooled)
    std = [0.0 if b["std"] is None or math.isnan(b["std"]) else float(b["std"]) for b in bars]
    fig.add_bar(x=list(range(len(bars))), y=[b["mean"] for b in bars], name="pooled mean ± spread",
                marker=dict(color=VAL, opacity=0.45), width=0.7,
                error_y=dict(type="data", array=std, visible=True, thickness=2.5, width=12, color="#145C46"),
                text=[f"{b['mean']:.1%}" for b in bars], textposition="inside", insidetextanchor="start",
                hovertemplate="%{customdata}<extra></extra>",
                customdata=[html.escape(f"{b['group']}: mean {b['mean']:.1%} ± {s:.1%} over {int(b['n'])} run(s)")
                            for b, s in zip(bars, std)])
    points = [r for r in records(runs) if r["group"] in pos and r["final acc"] == r["final acc"]]
    within: dict[str, int] = {}
    xs = []
    for r in points:  # spread each group's points evenly across its bar, in table order
        k = within[r["group"]] = within.get(r["group"], -1) + 1
        n = sum(p["group"] == r["group"] for p in points)
        xs.append(pos[r["group"]] + (0.0 if n == 1 else -0.25 + 0.5 * k / (n - 1)))
    fig.add_scatter(x=xs, y=[r["final acc"] for r in points], mode="markers", name="each run",
                    marker=dict(size=13, color="#4D4D4D", line=dict(color="white", width=1.5)),
                    hovertemplate="%{customdata}<extra></extra>",
                    customdata=[html.escape(f"{r['student'] or 'no name'} · {r['run']}: {r['final acc']:.1%}")
                                for r in points])
    fig.update_xaxes(title=group_title, tickmode="array", tickvals=list(range(len(groups))),
                     ticktext=[html.escape(str(g)) for g in groups], range=[-0.6, max(len(groups), 1) - 0.4])
    fig.update_yaxes(title="final validation accuracy", range=[0, 1.05], tickformat=".0%")
    return layout(fig, None, height=height)
