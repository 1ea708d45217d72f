"""The text views of the Backbone, Data and Train pages through streamlit.testing.v1.AppTest (no browser),
with the real MiniLM encoder, its tokenizer and the real fine-food reviews.

Runs, data and uploads go to temporary folders; caches are cleared between tests. One test launches
a real (tiny) text run through the Train page and reads its attention snapshots back.
"""
import csv
import io
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tl_core.data import texts as text_data
from tl_core.runs.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


@pytest.fixture(autouse=True)
def _app_env(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_DATA_ROOT", str(tmp_path / "data"))


def _app(page: str, **inputs) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    at.session_state["inputs"].update(inputs)
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label))


def _reviews_csv(n_per_class: int = 20) -> bytes:
    """The first ``n_per_class`` fine-food reviews of each class as a user CSV (text, label)."""
    ds = text_data.load_text_dataset("fine_food")
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["text", "label"])
    for c, name in enumerate(ds.class_names):
        for i in (ds.labels == c).nonzero().flatten()[:n_per_class].tolist():
            out.writerow([ds.texts[i][:400], name])
    return buf.getvalue().encode()


# ------------------------------------------------------------------ backbone


def test_backbone_minilm_shows_embeddings_six_layers_head_and_toggles():
    at = _app("backbone")
    at.selectbox(key="in_backbone").select("minilm_l6").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    inputs = at.session_state["inputs"]
    # the data followed the backbone: a text backbone never sits on an image set
    assert (inputs["data"], inputs["max_tokens"], inputs["augment"]) == ("fine_food", 64, {})
    assert any("switched to Fine" in i.value for i in at.info)
    assert list(inputs["plan"]) == ["stem", *(f"layers.{i}" for i in range(6)), "head"]
    options = at.selectbox(key="block_pick").options
    assert options[0].startswith("Embeddings") and options[-1].startswith("Head")
    assert sum(o.startswith("Transformer layer") for o in options) == 6
    assert any("64 tokens" in c.value and "tokens × features" in c.value for c in at.caption)
    assert any("blue-badge" in m.value and "text]" in m.value for m in at.markdown)  # the modality badge
    # feature extraction: only the head (384 x 2 + 2) trains; unfreezing the last layer moves the meter
    assert _metric(at, "Trainable parameters").startswith("770 of 22.6M")
    at.selectbox(key="block_pick").select("layers.5").run()
    at.button(key="toggle_block").click().run()
    assert not at.exception
    assert at.session_state["inputs"]["plan"]["layers.5"]["frozen"] is False
    assert _metric(at, "Trainable parameters").startswith("1.8M")
    at.button(key="preset_full").click().run()
    assert not any(s["frozen"] for s in at.session_state["inputs"]["plan"].values())
    code = at.code[0].value
    assert "AutoModel.from_pretrained" in code and "'layers.5': ['encoder.encoder.layer.5']" in code
    compile(code, "<shown code>", "exec")


def test_switching_back_to_an_image_backbone_restores_image_data():
    at = _app("backbone", backbone="minilm_l6", data="fine_food", per_class=500)
    at.selectbox(key="in_backbone").select("mobilenetv2").run()
    assert not at.exception
    assert at.session_state["inputs"]["data"] == "animal_shapes"
    assert any("Download as a Jupyter notebook" in b.proto.label for b in at.get("download_button"))


def test_glove_word_vectors_on_the_backbone_and_data_pages():
    at = _app("backbone")
    at.selectbox(key="in_backbone").select("glove_50d").run()
    assert not at.exception and not at.error
    assert [o.split("  (")[0] for o in at.selectbox(key="block_pick").options] == [
        "Word vectors (embedding table)", "Head (mean pool + linear)"]
    assert _metric(at, "Trainable parameters").startswith("102 of 2.5M")  # frozen word vectors, 50 x 2 + 2 head
    at.button(key="preset_full").click().run()
    assert _metric(at, "Trainable parameters") == "2.5M of 2.5M"  # fine-tuned word vectors
    at.switch_page("pages/data.py").run()
    at.number_input(key="text_view_index").set_value(2).run()
    assert not at.exception and not at.error
    chips = next(m.value for m in at.markdown if "tl-toks" in m.value)
    assert "CLS" not in chips and chips.count("hairball<small>unknown") == 1  # dropped words, each shown once
    assert any("unknown words dropped" in c.value for c in at.caption)


# ------------------------------------------------------------------ data


def test_data_page_shows_tokens_origin_and_licence_of_fine_food():
    at = _app("data", backbone="minilm_l6", data="fine_food", per_class=500)
    assert not at.exception and not at.error, [e.value for e in at.error]
    captions = " ".join(c.value for c in at.caption)
    assert "Origin:" in captions and "McAuley" in captions and "GPL-3" in captions
    chips = next(m.value for m in at.markdown if "tl-toks" in m.value)
    assert "&#91;CLS&#93;" in chips and "&#91;SEP&#93;" in chips and "<small>101</small>" in chips  # [CLS] = 101
    assert "[PAD] × 49" in chips  # 15 real tokens, padded to 64
    # a long review at 16 tokens: the chips and the caption say how many were cut
    at.select_slider(key="in_max_tokens").set_value(16).run()
    at.number_input(key="text_view_index").set_value(1).run()
    assert not at.exception
    assert at.session_state["inputs"]["max_tokens"] == 16
    chips = next(m.value for m in at.markdown if "tl-toks" in m.value)
    assert "✂ 103 cut" in chips
    assert any("103 cut at 16" in c.value for c in at.caption)
    assert any("are cut** at 16 tokens" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 1  # texts per class
    assert at.dataframe  # sample texts per class


def test_data_page_kind_switch_keeps_backbone_and_data_matched():
    at = _app("data")
    at.segmented_control(key="data_kind").set_value("text").run()
    assert not at.exception
    inputs = at.session_state["inputs"]
    assert (inputs["backbone"], inputs["data"]) == ("minilm_l6", "fine_food")
    at.selectbox(key="text_data_pick").select("bbc_news").run()
    assert at.session_state["inputs"]["data"] == "bbc_news"
    assert any("Greene" in c.value for c in at.caption)
    at.segmented_control(key="data_kind").set_value("image").run()
    inputs = at.session_state["inputs"]
    assert (inputs["backbone"], inputs["data"]) == ("mobilenetv2", "animal_shapes")


def test_data_page_csv_upload_bad_then_good():
    at = _app("data", backbone="minilm_l6", data="fine_food")
    at.selectbox(key="text_data_pick").select("__text_upload__").run()
    at.file_uploader(key="text_upload").upload("notes.csv", b"body,stars\nhello there,5\n", "text/csv").run()
    assert not at.exception
    assert any("no label column" in e.value and "What to do" in e.value for e in at.error)
    assert at.session_state["inputs"]["data"] == "fine_food"
    at.file_uploader(key="text_upload").upload("my reviews.csv", _reviews_csv(), "text/csv").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    chosen = at.session_state["inputs"]["data"]
    assert chosen.endswith(".csv") and "my reviews" not in chosen and Path(chosen).is_file()
    assert any("my reviews" in m.value and "40 texts in 2 classes" in m.value for m in at.markdown)


# ------------------------------------------------------------------ train


def test_a_mismatched_combination_cannot_be_launched():
    at = _app("train", backbone="minilm_l6", data="animal_shapes", plan=None)
    assert any("cannot be launched" in e.value and "image data set" in e.value for e in at.error)
    assert at.button(key="launch").disabled


@pytest.mark.slow
def test_train_page_launches_a_tiny_text_run_and_shows_attention(tmp_path):
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "reviews.csv").write_bytes(_reviews_csv())
    at = _app("train", backbone="minilm_l6", data="reviews.csv", per_class=None, val_fraction=0.25, max_tokens=16,
              epochs=1, batch_size=16, augment={}, plan=None, lr=None)
    assert not at.error, [e.value for e in at.error]
    at.button(key="launch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    run_id = at.query_params["run"][0] if isinstance(at.query_params["run"], list) else at.query_params["run"]
    store = RunStore()
    t = time.time()
    while store.get(run_id).active:
        assert time.time() - t < 240, f"run did not finish: {store.get(run_id).reason}"
        time.sleep(0.5)
    assert store.get(run_id).status == "completed", store.get(run_id).reason
    at.run()  # run_every never fires in AppTest
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Finished" in s.value for s in at.success)
    assert any("texts x" in c.value for c in at.caption)  # the frozen encoder ran once per text
    tabs = [t.label for t in at.tabs]
    assert tabs == ["after epoch 1", "before training"]
    assert len(at.get("plotly_chart")) >= 4  # curves, drift, attention after / before
    probe = store.get(run_id).info["snapshot_probe"]
    assert any(probe["text"][:20].split()[0] in c.value for c in at.caption)
