"""tl_core.viz.figures: pure data -> plotly figure functions, and the numbers behind them."""
import subprocess
import sys

import numpy as np
import pytest
import timm

from tl_core.models import surgery
from tl_core.viz import figures as visuals


@pytest.fixture(scope="module")
def resnet():
    model = timm.create_model("test_resnet", num_classes=3)
    return model, surgery.hierarchy(model, 64)


def test_visuals_never_imports_streamlit():
    code = "import sys, tl_core.viz.figures, tl_core.export.codegen; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_one_colour_pair():
    assert visuals.FROZEN != visuals.TRAINABLE
    assert visuals.FROZEN not in visuals.RUN_COLOURS and visuals.TRAINABLE not in visuals.RUN_COLOURS


def test_format_helpers():
    assert visuals.fmt_count(3_504_872) == "3.5M"
    assert visuals.fmt_count(12_810) == "12.8k"
    assert visuals.fmt_count(896) == "896"
    assert visuals.fmt_shape([24, 12, 12]) == "24×12×12"
    assert visuals.fmt_shape([]) == "–"


def test_plan_counts_match_apply_plan(resnet):
    model, hier = resnet
    plan = surgery.FreezePlan.for_hierarchy(hier, 3)
    counts = visuals.plan_counts(hier, plan.to_dict())
    real = surgery.apply_plan(model, hier, plan)
    assert counts["trainable"] == real["trainable"] and counts["total"] == real["total"]
    assert counts["frozen_blocks"] == 3 and counts["blocks"] == len(hier.block_names)
    # works on the JSON form of the hierarchy too
    assert visuals.plan_counts(hier.to_dict(), plan.to_dict()) == counts


def test_block_rows_in_forward_order(resnet):
    _, hier = resnet
    rows = visuals.block_rows(hier)
    assert [r["name"] for r in rows] == hier.block_names
    assert rows[0]["kind"] == "stem" and rows[-1]["kind"] == "head"
    assert all(r["out_shape"] for r in rows)


def test_hierarchy_figure_colours_and_selection(resnet):
    _, hier = resnet
    plan = surgery.FreezePlan.for_hierarchy(hier, 2).to_dict()
    fig = visuals.hierarchy_figure(hier, plan, selected="layer3")
    bars = {t.name: t for t in fig.data}
    assert bars["frozen"].marker.color == visuals.FROZEN
    assert bars["trainable"].marker.color == visuals.TRAINABLE
    assert [c[0] for c in bars["frozen"].customdata] == hier.block_names[:2]
    assert [c[0] for c in bars["trainable"].customdata] == hier.block_names[2:]
    # the selected block gets an outline
    widths = list(bars["trainable"].marker.line.width)
    assert widths[hier.block_names[2:].index("layer3")] > 0 and sum(w > 0 for w in widths) == 1
    assert len(fig.layout.xaxis.ticktext) == len(hier.block_names)


def test_effective_lrs_and_figure(resnet):
    _, hier = resnet
    plan = surgery.FreezePlan.for_hierarchy(hier, 2).to_dict()
    plan["layer4"]["lr_mult"] = 0.1
    lrs = visuals.effective_lrs(plan, 1e-3)
    assert lrs["stem"] == 0 and lrs["layer1"] == 0
    assert lrs["layer4"] == pytest.approx(1e-4) and lrs["fc"] == pytest.approx(1e-3)
    fig = visuals.lr_figure(hier, plan, 1e-3)
    assert list(fig.data[0].y) == [lrs[n] for n in hier.block_names]
    assert len(fig.data[1].x) == 2  # two frozen markers


def test_phase_boundaries():
    rows = [{"epoch": 1, "phase": 1}, {"epoch": 2, "phase": 2}, {"epoch": 3, "phase": 2}, {"epoch": 4, "phase": 3}]
    assert visuals.phase_boundaries(rows, {2: "unfreeze"}) == [(1.0, "unfreeze"), (3.0, "phase 3")]
    phases = [{"name": "head", "epochs": 1}, {"name": "unfreeze", "epochs": 2}]
    assert visuals.phase_starts(phases) == [(1.0, "unfreeze")]
    assert visuals.phase_boundaries([{"epoch": 1, "phase": 1}]) == []


def _rows(vals, key="val_acc"):
    return [{"epoch": i + 1, "phase": 1, key: v, "train_loss": 1 - v, "val_loss": 1 - v, "train_acc": v}
            for i, v in enumerate(vals)]


def test_run_curves_figure_has_phase_markers():
    fig = visuals.run_curves_figure(_rows([0.5, 0.6, 0.7]), [{"x": 0.5, "loss": 1.0}, {"x": 1.0, "loss": 0.8}],
                                    [(1.0, "unfreeze")], total_epochs=4)
    names = [t.name for t in fig.data]
    assert "train loss (per batch)" in names and "validation" in names
    assert len(fig.layout.shapes) == 2  # one dashed line per subplot
    assert any("unfreeze" in a.text for a in fig.layout.annotations)


def test_updating_the_curves_in_place_gives_the_figure_built_from_scratch():
    steps = [{"x": 0.5, "loss": 1.0}, {"x": 1.0, "loss": 0.8}]
    frame = visuals.run_curves_figure([], [], [(1.0, "unfreeze")], total_epochs=2)
    assert all(len(t.x or ()) == 0 for t in frame.data)
    for epochs in (_rows([0.5]), _rows([0.5, 0.6, 0.7])):  # the third epoch is past total_epochs: the axis grows
        updated = visuals.update_run_curves(frame, epochs, steps, total_epochs=2)
        assert updated is frame
        assert frame.to_dict() == visuals.run_curves_figure(epochs, steps, [(1.0, "unfreeze")], 2).to_dict()
    assert list(frame.data[-1].y) == [0.5, 0.6, 0.7] and frame.layout.xaxis.range[1] == 3.2


def test_run_curves_downsamples_long_step_series():
    steps = [{"x": i / 100, "loss": 1.0} for i in range(10_000)]
    fig = visuals.run_curves_figure([], steps)
    assert len(fig.data[2].x) <= 2000  # after the two empty placeholder traces


def test_compare_curves_one_trace_per_run():
    fig = visuals.compare_curves_figure({"a": _rows([0.5, 0.6]), "b": _rows([0.2, 0.4])}, "val_acc")
    assert [t.name for t in fig.data] == ["a", "b"]
    assert fig.data[0].line.color != fig.data[1].line.color


def test_transfer_gains_start_slope_asymptote():
    pre = _rows([0.70, 0.75, 0.78, 0.80])
    scratch = _rows([0.20, 0.35, 0.50, 0.65])
    g = visuals.transfer_gains(pre, scratch)
    assert g["start"]["verdict"] == "higher" and g["start"]["diff"] == pytest.approx(0.5)
    assert g["slope"]["verdict"] == "lower"  # scratch climbs faster: it has more room
    assert g["asymptote"]["verdict"] == "higher"
    assert g["epochs_compared"] == 4


def test_transfer_gains_similar_and_unequal_lengths():
    g = visuals.transfer_gains(_rows([0.5, 0.9]), _rows([0.5, 0.6, 0.9, 0.905]))
    assert g["start"]["verdict"] == "similar"
    assert g["slope"]["verdict"] == "higher"  # over the 2 common epochs
    assert g["asymptote"]["verdict"] == "similar"  # 0.9 vs 0.905, within tolerance
    with pytest.raises(ValueError):
        visuals.transfer_gains([], _rows([0.5]))


def test_drift_figure_frozen_blocks_blue():
    fig = visuals.drift_figure({"stem": 0.0, "layer1": 0.0, "fc": 0.2}, frozen=["stem", "layer1"],
                               labels={"fc": "Head"})
    assert list(fig.data[0].marker.color) == [visuals.FROZEN, visuals.FROZEN, visuals.TRAINABLE]
    assert list(fig.data[0].x) == ["stem", "layer1", "Head"]


def test_montage_shapes():
    maps = np.arange(6 * 4 * 5).reshape(6, 4, 5)
    m = visuals.montage(maps, cols=3, pad=1)
    assert m.shape == (2 * 4 + 1, 3 * 5 + 2)
    assert np.isnan(m[4, 0])  # the gap row
    rgb = visuals.montage(np.zeros((2, 3, 3, 3), np.uint8), cols=2)
    assert rgb.shape == (3, 7, 3) and rgb.dtype == np.uint8


def test_feature_maps_figure_columns_and_rows():
    maps = {"stem": np.zeros((8, 16, 16), np.uint8), "layer4": np.zeros((8, 2, 2), np.uint8)}
    fig = visuals.feature_maps_figure({"before": maps, "after": maps}, max_maps=6)
    assert len(fig.data) == 4
    assert fig.data[0].z.shape == (2 * 16 + 1, 3 * 16 + 2)
    empty = visuals.feature_maps_figure({"before": {}})
    assert len(empty.data) == 0


def test_filters_figure():
    fig = visuals.filters_figure(np.random.default_rng(0).normal(size=(16, 3, 3, 3)))
    assert fig.data[0].type == "image"
    with pytest.raises(ValueError):
        visuals.filters_figure(np.zeros((3, 3)))


def test_data_figures():
    fig = visuals.class_counts_figure({"a": 5, "b": 7}, {"a": 1, "b": 2})
    assert [t.name for t in fig.data] == ["training", "validation"]
    grid = {"a": [np.zeros((8, 8, 3), np.uint8)] * 3, "b": [np.full((8, 8, 3), 255, np.uint8)] * 2}
    fig = visuals.sample_grid_figure(grid, tile=16)
    assert fig.data[0].z.shape[:2] == (2 * 16 + 4, 3 * 16 + 8)
    assert list(fig.layout.yaxis.ticktext) == ["a", "b"]


def test_result_figures():
    fig = visuals.confusion_figure([[5, 1], [0, 4]], ["cat", "dog"])
    assert fig.data[0].z[0][0] == pytest.approx(5 / 6)
    assert fig.data[0].text[0][1] == 1
    fig = visuals.per_class_figure([0.5, 1.0], ["cat", "dog"])
    assert list(fig.data[0].y) == [0.5, 1.0]
    fig = visuals.per_class_figure({"cat": 0.25})
    assert list(fig.data[0].x) == ["cat"]
