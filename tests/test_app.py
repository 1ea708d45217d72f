"""Every page of the Streamlit app through streamlit.testing.v1.AppTest (no browser).

Runs, data and uploads go to temporary folders; caches are cleared between tests. One test
launches a real (tiny) background run through the Train page and reads its results back.
"""
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tl_core.runs.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120  # first runs import torch/timm and build models: far above AppTest's 3 s default
TINY = dict(data="faces", per_class=10, epochs=1, image_size=64, batch_size=16)


@pytest.fixture(autouse=True)
def _app_env(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_DATA_ROOT", str(tmp_path / "data"))


def _app(page: str | None = None, **inputs) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    at.session_state["inputs"].update(inputs)
    if page:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, at.exception
    return at


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label))


def _wait(store: RunStore, run_id: str, timeout: float = 240) -> str:
    t = time.time()
    while store.get(run_id).active:
        assert time.time() - t < timeout, f"run did not finish: {store.get(run_id).reason}"
        time.sleep(0.5)
    return store.get(run_id).status


# ------------------------------------------------------------------ home


def test_home_shows_first_experiment_and_machine_state():
    at = _app()
    assert at.title[0].value == "Transfer Learning Lab"
    text = " ".join(m.value for m in at.markdown)
    assert "Feature extraction" in text and "Launch" in text
    assert any("CPU" in i.value or "GPU" in i.value for i in [*at.info, *at.success])
    table = at.dataframe[0].value
    assert "MobileNetV2" in list(table["Backbone"])
    assert any("bundled" in w for w in table["Weights"])


# ------------------------------------------------------------------ backbone


def test_backbone_toggle_block_changes_meter():
    at = _app("backbone")
    assert not at.error
    before = _metric(at, "Trainable parameters")
    assert at.session_state["inputs"]["strategy"] == "feature_extraction"
    at.selectbox(key="block_pick").select("neck").run()
    at.button(key="toggle_block").click().run()
    assert not at.exception
    after = _metric(at, "Trainable parameters")
    assert after != before
    assert at.session_state["inputs"]["plan"]["neck"]["frozen"] is False
    # and back
    at.button(key="toggle_block").click().run()
    assert _metric(at, "Trainable parameters") == before


def test_backbone_presets_freeze_upto_and_code():
    at = _app("backbone")
    plan = lambda: at.session_state["inputs"]["plan"]  # noqa: E731
    at.button(key="preset_full").click().run()
    assert at.session_state["inputs"]["strategy"] == "full" and not any(s["frozen"] for s in plan().values())
    at.button(key="preset_scratch").click().run()
    assert at.session_state["inputs"]["weights"] == "random"
    at.button(key="preset_two_phase").click().run()
    assert at.session_state["inputs"]["weights"] == "pretrained"
    assert any("Phases" in c.value for c in at.caption)
    at.segmented_control(key="phase_view").set_value(1).run()  # preview phase 2: everything unfrozen
    assert any("Phase 2 as the strategy sets it: 0 blocks frozen" in c.value for c in at.caption)
    at.segmented_control(key="phase_view").set_value(0).run()
    names = list(plan())
    at.selectbox(key="block_pick").select(names[5]).run()
    at.button(key="freeze_upto").click().run()
    assert [s["frozen"] for s in plan().values()] == [i <= 5 for i in range(len(names))]
    at.button(key="unfreeze_all").click().run()
    assert not any(s["frozen"] for s in plan().values())
    assert _metric(at, "Trainable parameters").split(" of ")[0] == _metric(at, "Trainable parameters").split(" of ")[1]
    code = at.code[0].value
    assert "def apply_phase" in code and "BLOCKS = " in code
    compile(code, "<shown code>", "exec")


def test_backbone_switch_and_offline_warning():
    at = _app("backbone")
    at.selectbox(key="in_backbone").select("resnet18").run()
    assert not at.exception
    assert at.session_state["inputs"]["weights"] == "random"  # no pretrained weights offline
    assert any("No pretrained weights" in w.value for w in at.warning)
    assert list(at.session_state["inputs"]["plan"])[1] == "layer1.0"


def test_backbone_weights_upload_bad_and_good(tmp_path):
    import timm
    from safetensors.torch import save_file

    at = _app("backbone")
    at.file_uploader(key="weights_upload").upload("evil.pth", b"not a torch file at all", "application/octet-stream")
    at.run()
    assert not at.exception
    assert any("cannot be used" in e.value and "What to do" in e.value for e in at.error)
    assert not at.session_state["inputs"]["weights_file"]

    model = timm.create_model("mobilenetv2_100", num_classes=1000)
    buf = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(buf))
    at.file_uploader(key="weights_upload").upload("mine.safetensors", buf.read_bytes(), "application/octet-stream")
    at.run()
    assert not at.exception
    saved = at.session_state["inputs"]["weights_file"]
    assert saved and Path(saved).is_file() and "mine" not in Path(saved).name  # generated server-side name
    assert any("uploaded weights" in s.value for s in at.success)


# ------------------------------------------------------------------ data


def _zip_bytes(classes=("cats", "dogs"), n=6) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for ci, c in enumerate(classes):
            for i in range(n):
                img = Image.fromarray(np.full((20, 20, 3), 40 * ci + i, np.uint8))
                b = io.BytesIO()
                img.save(b, format="PNG")
                zf.writestr(f"set/{c}/{i}.png", b.getvalue())
        zf.writestr("set/cats/broken.png", b"nope")
    return buf.getvalue()


def test_data_pick_builtin_normalisation_and_augment():
    at = _app("data")
    assert not at.error
    at.selectbox(key="data_pick").select("faces").run()
    assert at.session_state["inputs"]["data"] == "faces"
    assert len(at.get("plotly_chart")) >= 2  # sample grid + class counts
    assert not at.warning
    at.selectbox(key="in_normalization").select("wrong").run()
    assert any("differs" in w.value for w in at.warning)
    at.toggle(key="aug_flip").set_value(True).run()
    assert at.session_state["inputs"]["augment"]["flip"] is True
    at.select_slider(key="in_per_class").set_value(20).run()
    assert at.session_state["inputs"]["per_class"] == 20
    assert not at.exception


def test_data_upload_zip_with_report_and_bad_zip():
    at = _app("data")
    at.selectbox(key="data_pick").select("__upload__").run()
    at.file_uploader(key="data_upload").upload("bad.zip", b"PK-not-really", "application/zip").run()
    assert not at.exception
    assert at.error
    at.file_uploader(key="data_upload").upload("mine.zip", _zip_bytes(), "application/zip").run()
    assert not at.exception, at.exception
    chosen = at.session_state["inputs"]["data"]
    assert chosen.endswith(".zip") and "mine" not in Path(chosen).name
    assert any("1 file(s) skipped" in e.label for e in at.expander)


# ------------------------------------------------------------------ train → compare → inspect


@pytest.mark.slow
def test_train_launch_live_and_results_then_compare_and_inspect(tmp_path):
    at = _app("train", **TINY)
    assert any("No runs yet" in i.value for i in at.info)
    at.text_input(key="in_name").input("tiny test run").run()
    at.button(key="launch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    run_id = at.query_params["run"][0] if isinstance(at.query_params["run"], list) else at.query_params["run"]
    store = RunStore()
    assert store.get(run_id).name == "tiny test run"
    assert _wait(store, run_id) == "completed", store.get(run_id).reason
    at.run()  # run_every never fires in AppTest: rerun by hand once the store has the results
    assert not at.exception
    assert any("Finished" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) >= 3  # curves, drift, feature maps
    assert any(c.value.startswith("Speed-up: cached the output of") for c in at.caption)  # the frozen part ran once

    at.switch_page("pages/compare.py").run()
    assert not at.exception
    assert at.dataframe[0].value["run"].tolist() == ["tiny test run"]

    at.switch_page("pages/inspect.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= 4  # confusion, per class, maps, filters
    assert len(at.get("download_button")) == 2
    # an uploaded picture goes through the same preprocessing; the page shows the prediction
    at.radio(key="inspect_source").set_value("my own image").run()
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(png, format="PNG")
    at.file_uploader(key="inspect_upload").upload("photo.png", png.getvalue(), "image/png").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Prediction" in m.value for m in at.markdown)


def test_train_reattaches_from_url_and_shows_queue_and_failures():
    store = RunStore()
    queued = store.create({**TINY, "name": "waiting"})  # no worker: it stays queued
    failed = store.create({**TINY, "name": "too hot"})
    store.finish(failed, "diverged", "Training diverged: loss became NaN. Try a learning rate about 10x smaller.")

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["run"] = failed
    at.run()
    at.switch_page("pages/train.py")
    at.query_params["run"] = failed
    at.run()
    assert not at.exception
    assert any("10x smaller" in e.value for e in at.error)

    at.query_params["run"] = queued
    at.run()
    assert any("position **1**" in i.value for i in at.info)
    at.button(key=f"stop_{queued}").click().run()
    assert store.get(queued).status == "stopped"


def test_compare_marks_start_slope_asymptote():
    store = RunStore()
    for name, strategy, accs in (("pre", "feature_extraction", [0.7, 0.8, 0.82]), ("scr", "scratch", [0.2, 0.4, 0.6])):
        rid = store.create({**TINY, "name": name, "strategy": strategy,
                            "weights": "random" if strategy == "scratch" else "pretrained"})
        for e, a in enumerate(accs, 1):
            store.append_metric(rid, "epoch", {"epoch": e, "phase": 1, "val_acc": a, "val_loss": 1 - a,
                                               "train_acc": a, "train_loss": 1 - a, "drift": {"stem": 0.0}})
        store.finish(rid, "completed", None, {"final_val_acc": accs[-1], "best_val_acc": max(accs), "wall_s": 3.0,
                                              "trainable_params": 1000,
                                              "weights": "random" if strategy == "scratch" else "pretrained"})
    at = _app("compare")
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert "Higher start: ✔ yes" in labels and "Higher asymptote: ✔ yes" in labels
    assert "Higher slope: ✖ no" in labels


def test_inspect_and_compare_empty_states():
    for page in ("compare", "inspect"):
        at = _app(page)
        assert not at.exception and not at.error
        assert at.info
