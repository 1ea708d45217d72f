"""Pure functions for the pictures of the representation probes (``tl_core.models.probes``): data -> plotly
figures, in the colours of ``tl_core.viz.figures``.

- ``cka_bars``: linear CKA per block (1 = unchanged), one bar group per run;
- ``projection_scatter``: 2-D projections of features, one panel each, coloured by class (``CLASS_COLOURS``);
- ``grad_cam_overlay``: Grad-CAM heatmaps over the image, one panel per layer.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tl_core.viz.figures import FROZEN, NEUTRAL, RUN_COLOURS, TRAINABLE, layout

# Class colours for scatter plots: no ice blue and no orange, so a class never reads as frozen/trainable.
CLASS_COLOURS = RUN_COLOURS + ["#A6D854", "#7F0000", "#FF9DA7", "#6B6B00", "#AF7AA1", "#C7A000", "#3D0066"]


def cka_bars(cka: Mapping[str, float] | Mapping[str, Mapping[str, float]], labels: Mapping[str, str] | None = None,
             frozen: Iterable[str] = (), title: str | None = "Similarity to the pretrained network, block by block",
             height: int = 360) -> go.Figure:
    """Linear CKA per block (``probes.block_cka``), one bar per block in the given order: 1 = the block's
    representation is unchanged. ``cka`` is {block: value} (bars coloured frozen / trainable by ``frozen``)
    or {model label: {block: value}} for several models side by side (e.g. feature extraction / partial /
    full fine-tuning). ``labels`` maps block names to short tick labels (``block_rows``' "short")."""
    series = dict(cka) if cka and all(isinstance(v, Mapping) for v in cka.values()) else {"": cka}
    blocks = list(dict.fromkeys(b for vals in series.values() for b in vals))
    frozen, ticks = set(frozen), [(labels or {}).get(b, b) for b in blocks]
    fig = go.Figure()
    for i, (name, vals) in enumerate(series.items()):
        colour = [FROZEN if b in frozen else TRAINABLE for b in blocks] if name == "" else RUN_COLOURS[i % len(RUN_COLOURS)]
        fig.add_bar(x=ticks, y=[vals.get(b) for b in blocks], name=name or "CKA", marker_color=colour,
                    customdata=blocks, hovertemplate=f"<b>%{{customdata}}</b><br>CKA %{{y:.3f}}<extra>{name}</extra>")
    fig.add_hline(y=1, line=dict(color=NEUTRAL, dash="dot", width=1.5))
    fig.update_yaxes(title="linear CKA (1 = unchanged)", range=[0, 1.05])
    fig.update_xaxes(title="block (input → output)", type="category", tickfont=dict(size=12))
    return layout(fig, title, height=height, barmode="group", showlegend=len(series) > 1)


def projection_scatter(points: np.ndarray | Mapping[str, np.ndarray], labels: Sequence[int],
                       class_names: Sequence[str], title: str | None = None,
                       axis_titles: tuple[str, str] = ("PC 1", "PC 2"), height: int = 420) -> go.Figure:
    """Penultimate features projected to 2-D (``probes.project_2d``), one colour per class. ``points``
    is [N, 2], or {panel title: [N, 2]} for panels side by side (pretrained vs random, before vs after):
    the same images in every panel, one legend entry per class (clicking it toggles every panel)."""
    panels = dict(points) if isinstance(points, Mapping) else {"": points}
    labels = np.asarray(labels)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t in panels if t] or None,
                        horizontal_spacing=0.06)
    for col, pts in enumerate(panels.values(), start=1):
        pts = np.asarray(pts, dtype=float)
        if pts.shape != (len(labels), 2):
            raise ValueError(f"points must be [{len(labels)}, 2] (one row per label), got {list(pts.shape)}")
        for c, name in enumerate(class_names):
            sel = np.flatnonzero(labels == c)
            fig.add_scatter(x=pts[sel, 0], y=pts[sel, 1], mode="markers", name=name, legendgroup=name,
                            showlegend=col == 1, customdata=sel, row=1, col=col,
                            marker=dict(color=CLASS_COLOURS[c % len(CLASS_COLOURS)], size=8, opacity=0.8,
                                        symbol=["circle", "diamond", "square", "x"][c // len(CLASS_COLOURS) % 4]),
                            hovertemplate=f"<b>{name}</b><br>image %{{customdata}}<extra></extra>")
        fig.update_xaxes(title=axis_titles[0], zeroline=False, showticklabels=False, row=1, col=col)
        fig.update_yaxes(title=axis_titles[1] if col == 1 else None, zeroline=False, showticklabels=False,
                         row=1, col=col)
    layout(fig, title, height=height)
    fig.update_layout(legend=dict(orientation="v", y=1, yanchor="top", x=1.02, xanchor="left", font=dict(size=13),
                                  tracegroupgap=0),
                      margin=dict(l=10, r=10, t=70 if title else 40, b=10))
    return fig


def grad_cam_overlay(image: np.ndarray, cam: np.ndarray | Mapping[str, np.ndarray], alpha: float = 0.5,
                     title: str | None = None, height: int = 340) -> go.Figure:
    """An image (HxWx3 uint8, e.g. ``data.network_view``'s picture) with a Grad-CAM heat map
    (``probes.grad_cam``, [h, w] in [0, 1]) over it. ``cam`` may be {panel title: map} to show
    several models side by side on the same image (pretrained / fine-tuned). A map of another size
    than the image is stretched over it."""
    img = np.asarray(image)
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
    panels = dict(cam) if isinstance(cam, Mapping) else {"": cam}
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t in panels if t] or None,
                        horizontal_spacing=0.03)
    h, w = img.shape[:2]
    for col, m in enumerate(panels.values(), start=1):
        m = np.asarray(m, dtype=float)
        fig.add_image(z=img, hoverinfo="skip", row=1, col=col)
        dy, dx = h / m.shape[0], w / m.shape[1]
        fig.add_heatmap(z=m, x0=dx / 2 - 0.5, dx=dx, y0=dy / 2 - 0.5, dy=dy, zmin=0, zmax=1, opacity=alpha,
                        colorscale="Jet", showscale=col == len(panels), name="Grad-CAM", row=1, col=col,
                        colorbar=dict(title="attention", thickness=12, len=0.9, tickvals=[0, 0.5, 1]),
                        hovertemplate="Grad-CAM %{z:.2f}<extra></extra>")
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5])
    fig.update_yaxes(visible=False, range=[h - 0.5, -0.5])
    return layout(fig, title, height=height, showlegend=False)
