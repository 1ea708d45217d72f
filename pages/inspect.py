"""Inspect page: what a finished run learned, where it fails, and what changed inside it.

For every run: the confusion matrix, the mistakes, "What changed?" (linear CKA per block against the
network it started from, next to the weight drift) and the feature space (random, pretrained and
trained features in 2-D). Image runs add feature maps, Grad-CAM and first-layer filters; text runs add
attention heatmaps and, for GloVe, nearest words and analogies. The heavy work is cached per run
(``pages/_models.py``) and runs on at most 200 validation items.
"""
import hashlib
import html
import json

import streamlit as st

from pages import _classroom, _models, _ui
from tl_core import data
from tl_core import devices
from tl_core.viz import figures as visuals

_ui.start_page()
store = _ui.store()
st.title("5 · Inspect")
st.markdown("Look inside a finished run: **which classes it confuses**, **what it gets wrong**, **what changed** "
            "inside the network compared with where it started, and **what transfers**.")


def pick_run():
    """(run id, run folder, model, cfg, class names) of the finished run picked; stops the page when none."""
    done = [r for r in _classroom.visible_runs() if r.status in ("completed", "stopped") and store.model_dir(r.id)]
    if not done:
        st.info("No finished run with a saved model yet. Train one on the Train page (about a minute).")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        st.stop()
    by_id = {r.id: r for r in done}
    if st.session_state.get("inspect_pick") not in by_id:
        current = st.session_state.get("run_id")
        st.session_state["inspect_pick"] = current if current in by_id else done[0].id
    run_id = st.selectbox("Run", list(by_id), key="inspect_pick",
                          format_func=lambda i: f"{by_id[i].name} · {by_id[i].status} · {i}")
    run_dir = str(store.model_dir(run_id))
    try:
        model, cfg, class_names = _models.run_model(run_dir)
    except Exception as exc:
        st.error(f"The saved model of this run cannot be loaded ({_ui.plain(exc)}). What to do: train the run again.")
        st.stop()
    s = by_id[run_id].summary or {}
    st.caption(f"{_ui.strategy_label(cfg.strategy)} · {cfg.backbone} · {_ui.plain(_ui.data_label(cfg.to_dict()))} · "
               f"final validation accuracy {(s.get('final_val_acc') or 0):.1%}")
    c1, c2 = st.columns([3, 2], gap="large")
    if s.get("confusion"):
        c1.plotly_chart(visuals.confusion_figure(s["confusion"], s["class_names"]), key="confusion", width="stretch")
        c2.plotly_chart(visuals.per_class_figure(s["per_class_acc"], s["class_names"], height=360), key="per_class",
                        width="stretch")
        c2.caption("Rows of the matrix are the true classes; off-diagonal cells are mistakes. A bright cell away from "
                   "the diagonal means two classes look alike to this model.")
    return run_id, run_dir, model, cfg, class_names


def run_data(run_dir: str):
    """(data dict, validation rows shown, predictions, confidences); stops the page when the data is gone."""
    try:
        idx, preds, conf = _models.predictions(run_dir)
        return _models.run_data(run_dir), idx, preds, conf
    except (data.DataError, FileNotFoundError) as exc:
        st.error(f"The run's data is no longer available ({_ui.plain(exc)}). "
                 "What to do: restore the dataset, or pick another run.")
        st.stop()


def mistakes(d: dict, idx, preds, conf, class_names: list[str], text: bool) -> None:
    unit = "texts" if text else "images"
    st.subheader("Misclassified examples", help=f"Validation {unit} the model got wrong, most confident first.")
    ds = d["ds"]
    labels = ds.labels[idx].numpy()
    wrong = [i for i in (conf * -1).argsort() if preds[i] != labels[i]]
    if not wrong:
        st.success(f"No mistakes among the first {len(idx)} validation {unit}.")
        return
    if text:
        st.dataframe([{"text": ds.texts[int(idx[i])], "true": class_names[labels[i]],
                       "predicted": class_names[preds[i]], "confidence": float(conf[i])} for i in wrong[:50]],
                     hide_index=True, width="stretch", key="inspect_wrong_texts",
                     column_config={"text": st.column_config.TextColumn(width="large"),
                                    "confidence": st.column_config.NumberColumn(format="percent")})
    else:
        st.image([ds.images[int(idx[i])].expand(3, -1, -1).permute(1, 2, 0).numpy() for i in wrong[:16]],
                 caption=[f"true {_ui.plain(class_names[labels[i]])} → {_ui.plain(class_names[preds[i]])} "
                          f"({conf[i]:.0%})" for i in wrong[:16]], width=110)
    st.caption(f"{len(wrong)} mistakes among the first {len(idx)} validation {unit}.")


# ------------------------------------------------------------------ what changed, what transfers


def what_changed(run_id: str, run_dir: str, text: bool) -> None:
    st.subheader("What changed?", help="Linear CKA (Kornblith et al. 2019) between the network the run started "
                 "from and the trained one, block by block, on the same validation items.")
    res = _models.what_changed(run_dir)
    frozen, unit = _frozen_throughout(run_id, res), "texts" if text else "images"
    if text:  # Emb, L1..L6, Head
        from tl_core.viz import text as text_visuals

        rows = text_visuals.text_block_rows(_models.hierarchy(run_dir))
        res = {**res, "labels": {r["name"]: r["short"] for r in rows}}
    left, right = st.columns(2, gap="large")
    with left:
        st.plotly_chart(visuals.cka_bars(res["cka"], labels=res["labels"], frozen=frozen, title=None),
                        key="inspect_cka", width="stretch")
        st.caption(f"CKA compares what a block computes for the same {res['images']} validation {unit} in both "
                   "networks: **1 = the same representation**, lower = fine-tuning changed what the block computes. "
                   "Blue blocks stayed frozen for the whole run." + _changed_most(res, frozen))
    with right:
        epochs = store.metrics(run_id, "epoch")
        drift = (epochs[-1].get("drift") or {}) if epochs else {}
        if drift:
            st.plotly_chart(visuals.drift_figure(drift, [b for b in drift if b in frozen], labels=res["labels"]),
                            key="inspect_drift", width="stretch")
            st.caption("Weight drift ‖W − W₀‖ / ‖W₀‖ per block: how far the weights moved. Frozen blocks stay at "
                       "zero; a block can move its weights a lot and still compute nearly the same thing.")
        else:
            st.caption("No weight drift recorded: the run ended before its first epoch.")


def _frozen_throughout(run_id: str, res: dict) -> set[str]:
    """The blocks no phase of the run trained (a two-phase run unfreezes its body later); the first
    phase's frozen blocks when the run recorded no phase."""
    phases = (store.get(run_id).summary or {}).get("phases") or []
    if not phases:
        return set(res["frozen"])
    trained = {b for p in phases for b in p.get("trainable") or []}
    return {b for b in res["cka"] if b not in trained}


def _changed_most(res: dict, frozen: set[str]) -> str:
    trained = {b: v for b, v in res["cka"].items() if b in res["body"] and b not in frozen}
    if not trained:
        return ""
    b = min(trained, key=trained.get)
    return f" Changed most: **{_ui.plain(res['labels'].get(b, b))}** (CKA {trained[b]:.2f})."


def feature_space(run_dir: str, class_names: list[str], text: bool) -> None:
    what = "sentence embeddings" if text else "image features"
    st.subheader("What transfers: the feature space", help=f"The {what} the classifier reads (its input), "
                 "projected to 2-D with PCA, for the same validation items.")
    fs = _models.feature_space(run_dir)
    st.plotly_chart(visuals.projection_scatter(fs["panels"], fs["labels"], [html.escape(c) for c in class_names],
                                               height=430), key="inspect_projection", width="stretch")
    acc = " · ".join(f"{name} **{a:.0%}**" for name, a in fs["accuracy"].items())
    st.caption(f"Each dot is one of {len(fs['labels'])} validation items, coloured by its class. Clusters that the "
               f"pretrained {what} already form, before any training, are what transfers. Nearest-class-mean "
               f"accuracy (leave one out, on the full features): {acc}.")


# ------------------------------------------------------------------ one image: prediction, maps, Grad-CAM


def choose_image(d: dict, class_names: list[str]):
    """(uint8 image [C, H, W], a name for the caches) of a validation sample or an upload, or (None, None)."""
    ds = d["ds"]
    source = st.radio("Image", ["validation sample", "my own image"], horizontal=True, key="inspect_source")
    if source == "validation sample":
        if not 0 <= st.session_state.get("inspect_sample", 0) < len(d["val_idx"]):
            st.session_state["inspect_sample"] = 0
        k = st.slider("Sample", 0, len(d["val_idx"]) - 1, key="inspect_sample")
        i = int(d["val_idx"][k])
        st.caption(f"true class: {_ui.plain(class_names[int(ds.labels[i])])}")
        return ds.images[i], f"val:{i}"
    up = st.file_uploader("A photo or drawing", type=["png", "jpg", "jpeg", "webp", "bmp"], key="inspect_upload")
    if up is None:
        return None, None
    if up.size > 20_000_000:
        st.error("That image is over 20 MB. What to do: upload a smaller picture.")
        return None, None
    path = _ui.upload_path("images", ".img")
    path.write_bytes(up.getvalue())
    try:
        return data.image_tensor(data.read_image(path)), "upload:" + hashlib.sha256(up.getvalue()).hexdigest()[:16]
    except data.DataError as exc:
        st.error(f"Cannot read that image: {_ui.plain(exc)}. What to do: "
                 f"{_ui.plain(exc.advice) if getattr(exc, 'advice', '') else 'upload a PNG or JPEG'}.")
        return None, None
    finally:
        path.unlink(missing_ok=True)


def one_image(run_dir: str, d: dict, model, cfg, class_names: list[str]) -> None:
    import torch

    st.subheader("Features before and after fine-tuning", help="The same channels of an early, a middle and a late "
                 "block, for the network it started from and the trained one. Frozen blocks give identical maps.")
    f1, f2 = st.columns([1, 3], gap="large")
    with f1:
        image, key = choose_image(d, class_names)
        if image is None:
            return
        x = d["eval_tf"](image)
        st.image(image.expand(3, -1, -1).permute(1, 2, 0).numpy(), width=180)
        with _models.model_lock(), torch.no_grad():
            p = model(x[None]).softmax(1)[0]
        top = p.argsort(descending=True)[:3]
        st.markdown("**Prediction**  \n" + "  \n".join(f"{_ui.plain(class_names[int(j)])}: {float(p[j]):.0%}"
                                                      for j in top))
    with f2:
        hier = _models.hierarchy(run_dir)
        layers = cfg.snapshot_layers or _default_layers(hier)
        with _models.model_lock():
            maps0, channels = _models.layer_maps(_models.initial_model(run_dir), hier, x, layers)
            maps1, _ = _models.layer_maps(model, hier, x, layers, channels)
        start = "pretrained backbone" if cfg.effective_weights == "pretrained" else "random initialisation"
        st.plotly_chart(visuals.feature_maps_figure({f"before ({start})": maps0, "after fine-tuning": maps1},
                                                    max_maps=6, height=600), key="inspect_maps", width="stretch")
    grad_cam(run_dir, model, cfg, image, key)


def _default_layers(hier):
    from tl_core.training import trainer as training

    return training.default_snapshot_layers(hier)


def grad_cam(run_dir: str, model, cfg, image, key: str) -> None:
    st.subheader("Where does it look? (Grad-CAM)", help="Grad-CAM (Selvaraju et al. 2017) weighs a block's feature "
                 "maps by how much they raise the score of one class: warm colours mark the regions that made "
                 "the network choose that class.")
    if not devices.is_conv_net(model):
        st.info("Grad-CAM is not available for this backbone: it is a vision transformer, and Grad-CAM needs the "
                "feature maps of a convolutional network. Pick a run with a CNN backbone (e.g. MobileNetV2).")
        return
    from tl_core.models import probes

    sizes = sorted({cfg.image_size, _models.CAM_SIZE, 224})
    if st.session_state.get("inspect_cam_size") not in sizes:
        st.session_state["inspect_cam_size"] = max(cfg.image_size, _models.CAM_SIZE)
    c1, c2 = st.columns(2)
    size = c1.selectbox("Image size for Grad-CAM (px)", sizes, key="inspect_cam_size",
                        help=f"The run trained at {cfg.image_size} px, where the last feature map is coarse; a "
                             "larger input gives a finer map (the trained class is still the one predicted at the "
                             "run's own size).")
    hier = _models.hierarchy(run_dir, size)
    maps = {n.name: n for n in hier.blocks if n.kind != "head" and len(n.out_shape) == 3}
    if st.session_state.get("inspect_cam_layer") not in maps:
        st.session_state["inspect_cam_layer"] = probes.cam_layer(model, hier)
    layer = c2.selectbox("Block", list(maps), key="inspect_cam_layer",
                         format_func=lambda b: f"{maps[b].label} · map {visuals.fmt_shape(maps[b].out_shape[1:])}",
                         help="The default is the last block with a feature map; earlier blocks give finer, "
                              "less class-specific maps.")
    res = _models.grad_cams(run_dir, key, size, layer, image)
    panels = {f"{who}: {html.escape(name)}": cam for (who, name), cam in res["cams"].items()}
    st.plotly_chart(visuals.grad_cam_overlay(res["picture"], panels, height=380), key="inspect_gradcam",
                    width="stretch")
    note = "" if len(panels) > 1 else " The pretrained network's weights are not available here, so it is left out."
    st.caption("Left: the trained network, for the class it predicts; right: the pretrained network with its own "
               "(ImageNet) head, for its own top class. Where the two look differs is what fine-tuning changed." + note)


# ------------------------------------------------------------------ text: attention, words


def attention(run_dir: str, d: dict, cfg, model, class_names: list[str]) -> None:
    if not len(getattr(model, "layers", [])):
        return  # GloVe: a bag of words, no attention
    from tl_core.data import texts as text_data
    from tl_core.models import text as text_models
    from tl_core.viz import text as text_visuals

    st.subheader("Attention, early and late", help="How much each token (row) attends to every other token "
                 "(column), averaged over the heads. Early layers tend to look at neighbours and the word itself "
                 "(word-level, syntax); late layers mix the whole sentence (meaning).")
    if "inspect_sentence" not in st.session_state:
        _, probe = text_data.probe_text(d["ds"], d["val_idx"], text_models.text_tokenizer(cfg.backbone),
                                        _models.ATTENTION_TOKENS)
        st.session_state["inspect_sentence"] = probe["text"][:300]
    text = st.text_input("Example sentence", key="inspect_sentence", max_chars=300,
                         help=f"Its first {_models.ATTENTION_TOKENS} tokens are shown.")
    if not text.strip():
        st.error("The example sentence is empty. What to do: type a sentence.")
        return
    res = _models.attention(run_dir, text)
    probs = res["probs"]
    k = int(probs.argmax())
    st.caption(f"Tokens: {_ui.plain(' '.join(res['tokens']))} · prediction: **{_ui.plain(class_names[k])}** "
               f"({probs[k]:.0%})")
    tokens = [html.escape(t) for t in res["tokens"]]
    for name, maps in res["maps"].items():
        st.markdown(f"**{name.capitalize()}**")
        st.plotly_chart(text_visuals.attention_figure(maps, tokens, res["labels"], height=480),
                        key=f"inspect_attention_{name.split()[0]}", width="stretch")


def words(run_dir: str) -> None:
    st.subheader("Word vectors: nearest words and analogies", help="GloVe places words with similar contexts close "
                 "together; differences between vectors carry relations (king − man + woman ≈ queen).")
    vectors = _models.word_vectors(run_dir)
    c1, c2 = st.columns(2, gap="large")
    word = c1.text_input("A word", value="good", key="inspect_word", max_chars=40)
    a, b, c = (col.text_input(label, value=value, key=f"inspect_analogy_{i}", max_chars=40)
               for i, (col, label, value) in enumerate(zip(c2.columns(3), ("word", "minus", "plus"),
                                                           ("king", "man", "woman"))))
    try:
        near = {name: [f"{w} ({s:.2f})" for w, s in v.nearest(word, 8)] for name, v in vectors.items()}
        ana = {name: [f"{w} ({s:.2f})" for w, s in v.analogy(a, b, c, 5)] for name, v in vectors.items()}
    except ValueError as exc:
        st.error(_ui.plain(exc))
        return
    c1.dataframe(near, hide_index=True, width="stretch", key="inspect_nearest")
    c2.dataframe(ana, hide_index=True, width="stretch", key="inspect_analogy")
    st.caption("Before training: the pretrained GloVe vectors (50,000 most frequent words); after: the same vectors "
               "after this run (identical when the embeddings were frozen).")


# ------------------------------------------------------------------ image extras, download


def filters(run_dir: str, model) -> None:
    st.subheader("First-layer filters", help="The 3-colour filters the network applies to raw pixels. Pretrained "
                 "ones look like edge and colour detectors; from scratch they start as noise.")
    w0, w1 = _models.first_conv_weight(_models.initial_model(run_dir)), _models.first_conv_weight(model)
    if w1 is None:
        st.caption("This backbone has no 3-channel convolution as its first layer (e.g. a ViT patch embedding).")
        return
    g1, g2 = st.columns(2)
    g1.markdown("**Before**")
    g1.plotly_chart(visuals.filters_figure(w0), key="filters_before", width="stretch")
    g2.markdown("**After**")
    g2.plotly_chart(visuals.filters_figure(w1), key="filters_after", width="stretch")


def download(run_id: str, text: bool) -> None:
    st.subheader("Download the model")
    folder = store.model_dir(run_id)
    dl1, dl2, _ = st.columns([1, 1, 2])
    dl1.download_button("Weights (model.safetensors)", (folder / "model.safetensors").read_bytes(),
                        file_name=f"{run_id}.safetensors", mime="application/octet-stream", key="dl_weights",
                        icon=":material/download:", width="stretch")
    dl2.download_button("Config (model.json)", (folder / "model.json").read_bytes(), file_name=f"{run_id}.json",
                        mime="application/json", key="dl_config", icon=":material/download:", width="stretch")
    meta = json.loads((folder / "model.json").read_text())
    if text:
        st.code(f"""from tl_core.models.arch import load_model
# put the two files in a folder "{run_id}", named model.safetensors and model.json
model, cfg, class_names = load_model("{run_id}")  # {meta['timm_name']}, {meta.get('max_tokens')} tokens
from tl_core.models.text import text_tokenizer
x = text_tokenizer(cfg.backbone).encode(["a great product"], cfg.max_tokens)
print(class_names[model(x).argmax(1).item()])""", language="python")
        return
    st.code(f"""import json, timm
from safetensors.torch import load_file
meta = json.load(open("{run_id}.json"))
model = timm.create_model(meta["timm_name"], num_classes=meta["num_classes"])
model.load_state_dict(load_file("{run_id}.safetensors"))
model.eval()  # preprocess: resize to {meta.get('image_size')} px, mean/std = meta["data_config"]""", language="python")


# ------------------------------------------------------------------ the page
run_id, run_dir, model, cfg, class_names = pick_run()
is_text = cfg.modality == "text"
d, idx, preds, conf = run_data(run_dir)
mistakes(d, idx, preds, conf, class_names, is_text)
what_changed(run_id, run_dir, is_text)
feature_space(run_dir, class_names, is_text)
if is_text:
    attention(run_dir, d, cfg, model, class_names)
    if cfg.backbone == "glove_50d":
        words(run_dir)
else:
    one_image(run_dir, d, model, cfg, class_names)
    filters(run_dir, model)
download(run_id, is_text)
