"""The Inspect page through AppTest on finished tiny runs: "What changed?" (CKA bars, one per block, frozen
blocks at 1), the feature space (random / pretrained / trained, 3 panels) and Grad-CAM for an image run;
the attention heatmaps and the table of misclassified texts for a text run; word vectors for GloVe.

The runs are real: created in the store and trained in this process by the worker's own ``worker.run``
(MobileNetV2 on 10 faces per class at 64 px; MiniLM and GloVe on 80 real fine-food reviews written as a user CSV
(``test_text_training``'s fixture), 16 tokens)."""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tl_core.models import surgery
from tl_core.runs import worker
from tl_core.training.checkpoint import load_model
from tl_core.runs.store import RunStore
from tl_core.viz import figures as visuals

from test_text_training import reviews  # noqa: F401  (the fixture: a data root holding reviews.csv)

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180  # the first visit computes CKA, three feature spaces and Grad-CAM


pytestmark = pytest.mark.usefixtures("app_env")


def _finished_run(**cfg) -> str:
    store = RunStore()
    run_id = store.create({"epochs": 1, "batch_size": 16, "num_threads": 2, **cfg})
    assert worker.run(store, run_id, say=lambda line: None) == "completed", store.get(run_id).reason
    return run_id


def _inspect(run_id: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    at.session_state["run_id"] = run_id
    at.switch_page("pages/inspect.py").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


@pytest.mark.slow
def test_inspect_an_image_run_shows_what_changed_the_feature_space_and_grad_cam():
    run_id = _finished_run(name="tiny image run", backbone="mobilenetv2", data="faces", per_class=10, image_size=64,
                           strategy="feature_extraction")
    at = _inspect(run_id)
    charts = {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    by_key = {k: next(v for i, v in charts.items() if i.endswith(k)) for k in
              ("inspect_cka", "inspect_drift", "inspect_projection", "inspect_gradcam")}

    # What changed? one bar per block of the network, the frozen blocks exactly as pretrained (CKA 1)
    model, cfg, _ = load_model(RunStore().model_dir(run_id))
    blocks = surgery.hierarchy(model, cfg.image_size).block_names
    bars = [t for t in by_key["inspect_cka"]["data"] if t["type"] == "bar"]
    assert len(bars) == 1 and len(bars[0]["y"]) == len(blocks)
    values = dict(zip(bars[0]["customdata"], bars[0]["y"]))
    assert list(values) == blocks
    assert all(values[b] == pytest.approx(1.0, abs=1e-4) for b in blocks[:-1])  # feature extraction: all but the head
    assert values[blocks[-1]] < 0.999  # the head trained
    assert any("1 = the same representation" in c.value for c in at.caption)

    # the feature space: random init, pretrained and fine-tuned side by side, with nearest-centroid accuracies
    titles = [a["text"] for a in by_key["inspect_projection"]["layout"]["annotations"]]
    assert len(titles) == 3 and titles[0].startswith("random") and titles[1].startswith("pretrained")
    assert any("Nearest-class-mean accuracy" in c.value and c.value.count("%") == 3 for c in at.caption)

    # Grad-CAM: the trained and the pretrained network (named by its ImageNet class) on the same image
    cam = by_key["inspect_gradcam"]
    assert sum(t["type"] == "heatmap" for t in cam["data"]) == 2
    names = [a["text"] for a in cam["layout"]["annotations"]]
    assert names[0].startswith("trained: ") and names[1].startswith("pretrained: ")
    assert at.selectbox(key="inspect_cam_size").value == 160  # the run's 64 px give a 2x2 map: 160 px by default
    at.selectbox(key="inspect_cam_layer").set_value(at.selectbox(key="inspect_cam_layer").options[-3]).run()
    assert not at.exception and not at.error

    # a refused upload says what is wrong and what to do
    at.radio(key="inspect_source").set_value("my own image").run()
    at.file_uploader(key="inspect_upload").upload("photo.png", b"not an image at all", "image/png").run()
    assert not at.exception
    assert any("Cannot read that image" in e.value and "What to do" in e.value for e in at.error)


@pytest.mark.slow
def test_inspect_a_text_run_shows_attention_and_the_misclassified_texts(reviews):
    run_id = _finished_run(name="tiny text run", backbone="minilm_l6", data="reviews.csv", data_root=reviews,
                           per_class=None, val_fraction=0.25, max_tokens=16, strategy="partial", freeze_blocks=5)
    at = _inspect(run_id)
    keys = [c.proto.id for c in at.get("plotly_chart")]
    for key in ("inspect_cka", "inspect_drift", "inspect_projection", "inspect_attention_before",
                "inspect_attention_after"):
        assert any(k.endswith(key) for k in keys), (key, keys)
    assert not any(k.endswith("inspect_gradcam") or k.endswith("filters_after") for k in keys)
    cka = json.loads(next(c.proto.spec for c in at.get("plotly_chart") if c.proto.id.endswith("inspect_cka")))
    assert cka["data"][0]["x"] == ["Emb", *[f"L{i}" for i in range(1, 7)], "Head"]
    assert cka["data"][0]["y"][:5] == pytest.approx([1.0] * 5, abs=1e-4)  # embeddings and layers 1-4 were frozen
    for when in ("before", "after"):  # early vs late layer, before and after training
        att = json.loads(next(c.proto.spec for c in at.get("plotly_chart")
                              if c.proto.id.endswith(f"inspect_attention_{when}")))
        assert [t["type"] for t in att["data"]] == ["heatmap", "heatmap"]
        assert [a["text"] for a in att["layout"]["annotations"]] == ["early: layer 1 of 6", "late: layer 6 of 6"]
        assert att["layout"]["xaxis"]["ticktext"][0] == "[CLS]"
    table = next(df.value for df in at.dataframe if "predicted" in df.value.columns)
    assert list(table.columns) == ["text", "true", "predicted", "confidence"] and len(table) >= 1
    assert set(table["true"]) <= {"great", "other"} and (table["true"] != table["predicted"]).all()
    # another sentence: its own tokens and heatmaps
    at.text_input(key="inspect_sentence").input("Terrible coffee, never again.").run()
    assert not at.exception and not at.error
    assert any("terrible" in c.value for c in at.caption)


@pytest.mark.slow
def test_inspect_a_glove_run_shows_nearest_words_and_the_analogy(reviews):
    run_id = _finished_run(name="tiny glove run", backbone="glove_50d", data="reviews.csv", data_root=reviews,
                           per_class=None, val_fraction=0.25, max_tokens=16, strategy="feature_extraction")
    at = _inspect(run_id)
    assert not any(c.proto.id.endswith("inspect_attention") for c in at.get("plotly_chart"))  # a bag of words
    near, analogy = [df.value for df in at.dataframe if "before training" in df.value.columns]  # in page order
    assert list(analogy.columns) == ["before training", "after training"]
    assert any(w.startswith("queen ") for w in analogy["before training"])  # king - man + woman, from the lecture
    assert list(near["before training"]) == list(near["after training"])  # frozen embeddings: the same neighbours
    at.text_input(key="inspect_word").input("qwxzvbnm").run()
    assert not at.exception
    assert any("not among the" in e.value and "common English word" in e.value for e in at.error)


def test_the_confusion_figure_has_a_clickable_marker_on_every_non_empty_cell():
    fig = visuals.confusion_figure([[5, 1, 0], [0, 4, 2], [0, 0, 3]], ["cat", "dog", "7"], selected=(1, 2))
    heat, marks = fig.data
    assert heat.type == "heatmap" and heat.hoverinfo == "skip" and heat.z[0][0] == pytest.approx(5 / 6)
    assert marks.type == "scatter" and marks.marker.opacity == 0  # invisible: the heatmap's look stays
    assert [c[:3] for c in marks.customdata] == [[0, 0, 5], [0, 1, 1], [1, 1, 4], [1, 2, 2], [2, 2, 3]]
    assert list(zip(marks.y, marks.x)) == [("cat", "cat"), ("cat", "dog"), ("dog", "dog"), ("dog", "7"), ("7", "7")]
    assert fig.layout.xaxis.type == "category" and fig.layout.clickmode == "event+select"
    (box,) = fig.layout.shapes  # the selected cell, outlined
    assert (box.x0, box.x1, box.y0, box.y1) == (1.5, 2.5, 0.5, 1.5)


@pytest.mark.slow
def test_a_confusion_cell_shows_exactly_the_validation_images_it_counts():
    """More than the 600 validation images the page once classified: the run stores a prediction for each of them,
    the matrix on the page is the training's own, and a cell's images are exactly as many as the cell counts."""
    run_id = _finished_run(name="tiny digits run", backbone="mobilenetv2", strategy="feature_extraction",
                           data="digits8", per_class=20, val_fraction=0.4, image_size=64)  # ~65% right: many cells
    store = RunStore()
    summary, preds = store.get(run_id).summary, store.predictions(run_id)
    assert len(preds["val_idx"]) == store.get(run_id).info["num_val"] > 600
    counts = visuals.confusion_counts(preds["label"], preds["pred"], len(summary["class_names"]))
    assert counts.tolist() == summary["confusion"]  # the images the training's own count is made of

    at = _inspect(run_id)
    chart = json.loads(next(c.proto.spec for c in at.get("plotly_chart") if c.proto.id.endswith("confusion")))
    assert chart["data"][0]["text"] == summary["confusion"]
    names = summary["class_names"]
    assert set(at.selectbox(key="inspect_cell").options) == {
        f"true {names[t]} → predicted {names[p]} · {counts[t, p]} images" for t, p in zip(*counts.nonzero())}
    big = max(zip(*counts.nonzero()), key=lambda c: counts[c])  # more images than one page shows
    for t, p in [*[c for c in zip(*counts.nonzero()) if c[0] != c[1] and c != big][:1], big]:  # a mistake, big
        at.selectbox(key="inspect_cell").set_value((int(t), int(p))).run()
        assert not at.exception and not at.error
        captions = at.image[0].captions  # the cell's images come first on the page
        assert len(captions) == min(counts[t, p], 48)
        assert all(c.startswith(f"true {names[t]} → {names[p]} (") for c in captions)
        assert any(f"**{counts[t, p]} validation images**" in m.value for m in at.markdown)
    assert counts[big] > 48  # the rest on the next page
    at.number_input(key=f"inspect_cell_page_{big[0]}_{big[1]}").set_value(2).run()
    assert len(at.image[0].captions) == min(counts[big] - 48, 48)

    # a run from before predictions were stored: the page classifies every validation image with the saved model
    (store.run_dir(run_id) / "predictions.npz").unlink()
    at.run()
    assert not at.exception and not at.error
    assert any(f"recomputed with its saved model on all {len(preds['val_idx'])} validation images" in c.value
               for c in at.caption)
    chart = json.loads(next(c.proto.spec for c in at.get("plotly_chart") if c.proto.id.endswith("confusion")))
    assert sum(map(sum, chart["data"][0]["text"])) == len(preds["val_idx"])
