"""Figures of the representation probes (tl_core.viz.probes: cka_bars, projection_scatter, grad_cam_overlay),
fed with real numbers from tl_core.models.probes on tiny real models."""
import copy

import numpy as np
import plotly.graph_objects as go
import pytest
import timm
import torch

from tl_core.models import probes
from tl_core.models import surgery
from tl_core.viz import figures as visuals
from tl_core.viz import probes as probe_figures


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    return model, surgery.hierarchy(model, 64)


@pytest.fixture(scope="module")
def images():
    return torch.randn(24, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_cka_bars_one_bar_per_block_coloured_by_plan(resnet, images):
    model, hier = resnet
    tuned = copy.deepcopy(model)
    torch.nn.init.zeros_(tuned.fc.bias)
    torch.nn.init.normal_(tuned.fc.weight, generator=torch.Generator().manual_seed(1))
    cka = probes.block_cka(model, tuned, hier, images)
    short = {r["name"]: r["short"] for r in visuals.block_rows(hier)}
    fig = probe_figures.cka_bars(cka, labels=short, frozen=hier.block_names[:-1])
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Bar)
    bar = fig.data[0]
    assert list(bar.x) == [short[b] for b in hier.block_names] and list(bar.customdata) == hier.block_names
    assert list(bar.y) == [cka[b] for b in hier.block_names]
    assert list(bar.marker.color) == [visuals.FROZEN] * (len(hier.block_names) - 1) + [visuals.TRAINABLE]
    assert fig.layout.yaxis.title.text == "linear CKA (1 = unchanged)" and tuple(fig.layout.yaxis.range) == (0, 1.05)
    assert fig.layout.xaxis.title.text == "block (input → output)"
    assert fig.layout.showlegend is False


def test_cka_bars_several_models_side_by_side():
    runs = {"feature extraction": {"stem": 1.0, "layer1": 1.0, "fc": 0.4},
            "partial": {"stem": 1.0, "layer1": 0.9, "fc": 0.3},
            "full": {"stem": 0.97, "layer1": 0.8, "fc": 0.2}}
    fig = probe_figures.cka_bars(runs, title="What changed?")
    assert [t.name for t in fig.data] == list(runs)
    assert [list(t.y) for t in fig.data] == [list(v.values()) for v in runs.values()]
    assert all(list(t.x) == ["stem", "layer1", "fc"] for t in fig.data)
    assert [t.marker.color for t in fig.data] == visuals.RUN_COLOURS[:3]
    assert fig.layout.barmode == "group" and fig.layout.showlegend is True
    assert fig.layout.title.text == "What changed?"


def test_projection_scatter_one_trace_per_class():
    pts = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [3.0, 1.0], [0.5, 0.5]])
    labels = [0, 1, 1, 2, 0]
    fig = probe_figures.projection_scatter(pts, labels, ["cat", "dog", "cow"], title="Penultimate features")
    assert [t.name for t in fig.data] == ["cat", "dog", "cow"]
    assert list(fig.data[0].x) == [0.0, 0.5] and list(fig.data[0].y) == [1.0, 0.5]
    assert list(fig.data[1].customdata) == [1, 2]  # image indices for the hover
    assert [t.marker.color for t in fig.data] == probe_figures.CLASS_COLOURS[:3]
    assert fig.layout.xaxis.title.text == "PC 1" and fig.layout.yaxis.title.text == "PC 2"
    assert fig.layout.title.text == "Penultimate features"


def test_projection_scatter_panels_share_the_legend():
    rng = np.random.default_rng(0)
    k = len(probe_figures.CLASS_COLOURS) + 2  # more classes than colours: the symbol changes
    labels, names = np.repeat(np.arange(k), 2), [f"c{i}" for i in range(k)]
    panels = {"pretrained": rng.normal(size=(2 * k, 2)), "random init": rng.normal(size=(2 * k, 2))}
    fig = probe_figures.projection_scatter(panels, labels, names)
    assert len(fig.data) == 2 * k
    assert [t.showlegend for t in fig.data] == [True] * k + [False] * k
    assert {t.xaxis for t in fig.data[:k]} == {"x"} and {t.xaxis for t in fig.data[k:]} == {"x2"}
    assert [a.text for a in fig.layout.annotations] == list(panels)
    assert fig.data[k - 1].marker.symbol == "diamond" and fig.data[0].marker.symbol == "circle"
    assert fig.data[k - 1].marker.color == fig.data[1].marker.color
    assert not set(probe_figures.CLASS_COLOURS) & {visuals.FROZEN, visuals.TRAINABLE}
    with pytest.raises(ValueError, match=rf"points must be \[{2 * k}, 2\]"):
        probe_figures.projection_scatter(np.zeros((3, 2)), labels, names)


def test_grad_cam_overlay_image_under_heat_map(resnet, images):
    model, hier = resnet
    cam = probes.grad_cam(model, images[0], hier=hier)
    picture = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    fig = probe_figures.grad_cam_overlay(picture, cam, alpha=0.4)
    assert [type(t) for t in fig.data] == [go.Image, go.Heatmap]
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), picture)
    heat = fig.data[1]
    np.testing.assert_allclose(np.asarray(heat.z), cam)
    assert heat.opacity == 0.4 and (heat.zmin, heat.zmax) == (0, 1) and heat.dx == 1 and heat.x0 == 0


def test_grad_cam_overlay_side_by_side_and_stretched():
    picture = np.zeros((64, 64), np.uint8)  # grayscale is shown as RGB
    cams = {"pretrained": np.eye(4), "fine-tuned": np.ones((4, 4))}
    fig = probe_figures.grad_cam_overlay(picture, cams, title="Where the model looks")
    assert [type(t).__name__ for t in fig.data] == ["Image", "Heatmap", "Image", "Heatmap"]
    assert np.asarray(fig.data[0].z).shape == (64, 64, 3)
    assert fig.data[1].dx == 16 and fig.data[1].x0 == 7.5  # a 4x4 map stretched over 64 px, cells centred
    assert [t.showscale for t in fig.data[1::2]] == [False, True]  # one colour bar
    assert [a.text for a in fig.layout.annotations] == list(cams)
    assert fig.data[2].xaxis == "x2" and fig.layout.title.text == "Where the model looks"
