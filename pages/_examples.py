"""The Inspect page's closer looks: one image (prediction, feature maps before and after, Grad-CAM) and
the first-layer filters of an image run; one sentence's attention early and late and, for GloVe, nearest
words and analogies of a text run. The heavy work is cached per run in ``pages/_models.py``."""
from __future__ import annotations

import hashlib
import html

import streamlit as st

from tl_core import data
from tl_core import devices
from tl_core.viz import figures as visuals
from tl_core.viz import probes as probe_figures

from pages import _display, _models, _store


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
        st.caption(f"true class: {_display.plain(class_names[int(ds.labels[i])])}")
        return ds.images[i], f"val:{i}"
    up = st.file_uploader("A photo or drawing", type=["png", "jpg", "jpeg", "webp", "bmp"], key="inspect_upload")
    if up is None:
        return None, None
    if up.size > 20_000_000:
        st.error("That image is over 20 MB. What to do: upload a smaller picture.")
        return None, None
    path = _store.upload_path("images", ".img")
    path.write_bytes(up.getvalue())
    try:
        return data.image_tensor(data.read_image(path)), "upload:" + hashlib.sha256(up.getvalue()).hexdigest()[:16]
    except data.DataError as exc:
        st.error(f"Cannot read that image: {_display.plain(exc)}. What to do: "
                 f"{_display.plain(exc.advice) if getattr(exc, 'advice', '') else 'upload a PNG or JPEG'}.")
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
        st.markdown("**Prediction**  \n" + "  \n".join(
            f"{_display.plain(class_names[int(j)])}: {float(p[j]):.0%}" for j in top))
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
    from tl_core.training import telemetry

    return telemetry.default_snapshot_layers(hier)


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
    st.plotly_chart(probe_figures.grad_cam_overlay(res["picture"], panels, height=380), key="inspect_gradcam",
                    width="stretch")
    note = "" if len(panels) > 1 else " The pretrained network's weights are not available here, so it is left out."
    st.caption("Left: the trained network, for the class it predicts; right: the pretrained network with its own "
               "(ImageNet) head, for its own top class. Where the two look differs is what fine-tuning changed." + note)


# ------------------------------------------------------------------ text: attention, words


def attention(run_dir: str, d: dict, cfg, model, class_names: list[str]) -> None:
    if not len(getattr(model, "layers", [])):
        return  # GloVe: a bag of words, no attention
    from tl_core.data import texts as text_data
    from tl_core.models.backbones import text_tokenizer
    from tl_core.viz import text as text_visuals

    st.subheader("Attention, early and late", help="How much each token (row) attends to every other token "
                 "(column), averaged over the heads. Early layers tend to look at neighbours and the word itself "
                 "(word-level, syntax); late layers mix the whole sentence (meaning).")
    if "inspect_sentence" not in st.session_state:
        _, probe = text_data.probe_text(d["ds"], d["val_idx"], text_tokenizer(cfg.backbone),
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
    st.caption(f"Tokens: {_display.plain(' '.join(res['tokens']))} · "
               f"prediction: **{_display.plain(class_names[k])}** ({probs[k]:.0%})")
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
        st.error(_display.plain(exc))
        return
    c1.dataframe(near, hide_index=True, width="stretch", key="inspect_nearest")
    c2.dataframe(ana, hide_index=True, width="stretch", key="inspect_analogy")
    st.caption("Before training: the pretrained GloVe vectors (50,000 most frequent words); after: the same vectors "
               "after this run (identical when the embeddings were frozen).")


# ------------------------------------------------------------------ image extras


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
