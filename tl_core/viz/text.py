"""Pure functions for the text pictures: data -> plotly figures, in the colours and fonts of
``tl_core.viz.figures`` (blue = frozen, orange = trainable everywhere).

- ``text_hierarchy(hier)``: a text model's hierarchy for pictures: "Embeddings", "Transformer layer i",
  "Head (mean pool + linear)", shapes as tokens × features (the attention-mask channel the blocks
  carry between them left out). ``text_block_rows`` gives the rows with short names Emb, L1.., Head.
- ``text_hierarchy_figure`` / ``text_lr_figure``: ``visuals.hierarchy_figure`` / ``visuals.lr_figure``
  with those names.
- ``attention_figure``: attention heatmaps of one sentence, one panel per layer (early → late),
  labelled with its tokens.
- ``text_counts_figure``: texts per class (training / validation).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tl_core.viz import figures as visuals

STAGES = ("early", "middle", "late")


def _leaves(nodes: list[dict]):
    for n in nodes:
        if n.get("children"):
            yield from _leaves(n["children"])
        else:
            yield n


def text_hierarchy(hier) -> dict:
    """``hier`` (a text model's ``surgery.Hierarchy`` or its ``to_dict()``) relabelled for people:
    the stem is the embeddings (the word vectors of a model without blocks), blocks are Transformer
    layers, and each output shape is tokens ×
    features (without the mask channel that travels with the hidden states)."""
    d = copy.deepcopy(hier if isinstance(hier, Mapping) else hier.to_dict())
    words = not any(leaf["kind"] == "block" for leaf in _leaves(d["tree"]))  # GloVe: embeddings, then the head
    for leaf in _leaves(d["tree"]):
        shape = list(leaf.get("out_shape") or [])
        if leaf["kind"] in ("stem", "block") and len(shape) == 2:
            leaf["out_shape"] = [shape[0], shape[1] - 1]
        if leaf["kind"] == "stem":
            leaf["label"] = "Word vectors (embedding table)" if words else "Embeddings (tokens + positions)"
        elif leaf["kind"] == "block":
            leaf["label"] = f"Transformer layer {leaf['label'].split()[-1]}"
        elif leaf["kind"] == "head":
            leaf["label"] = "Head (mean pool + linear)"
    return d


def _short(row: Mapping) -> str:
    return {"stem": "Emb", "head": "Head"}.get(row["kind"], f"L{row['label'].split()[-1]}")


def text_block_rows(hier, plan: Mapping[str, Mapping] | None = None) -> list[dict]:
    """``visuals.block_rows`` of :func:`text_hierarchy`, short names Emb, L1..L6, Head."""
    return [{**r, "short": _short(r)} for r in visuals.block_rows(text_hierarchy(hier), plan)]


def text_hierarchy_figure(hier, plan: Mapping[str, Mapping] | None = None, selected: str | None = None,
                          height: int = 430) -> go.Figure:
    """The hierarchy picture of a text model: embeddings → Transformer layers → head, bar height =
    parameters, coloured frozen / trainable, tokens × features under each block."""
    fig = visuals.hierarchy_figure(text_hierarchy(hier), plan, selected, height)
    rows = text_block_rows(hier, plan)
    fig.update_xaxes(ticktext=[f"{r['short']}<br><span style='font-size:11px;color:#555'>"
                               f"{visuals.fmt_shape(r['out_shape'])}</span>" for r in rows])
    return fig


def text_lr_figure(hier, plan: Mapping[str, Mapping], lr: float, height: int = 340) -> go.Figure:
    """``visuals.lr_figure`` with the text block names (Emb, L1.., Head) on the x axis."""
    fig = visuals.lr_figure(text_hierarchy(hier), plan, lr, height)
    rename = {r["short"]: t["short"] for r, t in zip(visuals.block_rows(text_hierarchy(hier), plan),
                                                     text_block_rows(hier, plan))}
    for trace in fig.data:
        trace.x = [rename.get(x, x) for x in trace.x]
    return fig


def _stage(i: int, n: int) -> str:
    return STAGES[min(2, round(2 * i / max(1, n - 1)))] if n > 1 else "layer"


def attention_figure(maps: Mapping[str, np.ndarray], tokens: Sequence[str],
                     labels: Mapping[str, str] | None = None, height: int = 720) -> go.Figure:
    """Attention of one sentence in each layer of ``maps`` ({layer: [heads, T, T]}, e.g. the uint8
    snapshots of a text run), one panel per layer left to right (early → late), averaged over the
    heads. Row = the token that looks (query), column = the token it looks at (key); both axes carry
    the sentence's ``tokens`` (indices when their number does not match)."""
    layers = [k for k, v in maps.items() if v is not None and np.asarray(v).ndim == 3]
    if not layers:
        fig = go.Figure()
        fig.add_annotation(text="no attention maps yet", showarrow=False, font=dict(size=18))
        return visuals.layout(fig, None, height=200)
    titles = [f"{_stage(i, len(layers))}: {(labels or {}).get(k, k)}" for i, k in enumerate(layers)]
    fig = make_subplots(rows=1, cols=len(layers), subplot_titles=titles, horizontal_spacing=0.09)
    for c, layer in enumerate(layers, start=1):
        att = np.asarray(maps[layer], dtype=float).mean(axis=0)
        n = att.shape[0]
        ticks = list(tokens) if len(tokens) == n else [str(i) for i in range(n)]
        size = 14 if n <= 16 else 12 if n <= 32 else 9
        fig.add_heatmap(z=att, colorscale="Viridis", showscale=False, zmin=0, row=1, col=c,
                        customdata=[[[ticks[r], ticks[k]] for k in range(n)] for r in range(n)],
                        hovertemplate="<b>%{customdata[0]}</b> looks at <b>%{customdata[1]}</b>: "
                                      "%{z:.0f}<extra></extra>")
        axis = dict(tickmode="array", tickvals=list(range(n)), ticktext=ticks, tickfont=dict(size=size),
                    showgrid=False, zeroline=False)
        fig.update_xaxes(**axis, tickangle=-60, row=1, col=c)
        fig.update_yaxes(**axis, autorange="reversed", scaleanchor=f"x{c if c > 1 else ''}", row=1, col=c)
    fig.update_annotations(font_size=16)
    visuals.layout(fig, None, height=height, showlegend=False)
    fig.update_layout(margin=dict(l=10, r=10, t=50, b=10))
    return fig


def text_counts_figure(counts: Mapping[str, int], val_counts: Mapping[str, int] | None = None,
                       height: int = 320) -> go.Figure:
    """Texts per class (stacked training / validation when ``val_counts`` is given)."""
    fig = visuals.class_counts_figure(counts, val_counts, height)
    fig.update_yaxes(title="texts")
    fig.update_layout(title_text="Texts per class")
    for trace in fig.data:
        if trace.name == "images":
            trace.name = "texts"
    return fig
