"""Inspect page: what a finished run learned, where it fails, and how its features changed."""
import json

import streamlit as st

from pages import _classroom, _models, _ui
from tl_core import data, surgery, training, visuals

_ui.start_page()
store = _ui.store()
st.title("5 · Inspect")
st.markdown("Look inside a finished run: **which classes it confuses**, **which images it gets wrong**, and how "
            "fine-tuning changed the **features** compared with the network it started from.")

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
info, s = by_id[run_id], by_id[run_id].summary or {}
run_dir = str(store.model_dir(run_id))
try:
    model, cfg, class_names = _models.run_model(run_dir)
except Exception as exc:
    st.error(f"The saved model of this run cannot be loaded ({_ui.plain(exc)}). What to do: train the run again.")
    st.stop()
st.caption(f"{_ui.strategy_label(cfg.strategy)} · {cfg.backbone} · {_ui.plain(_ui.data_label(cfg.to_dict()))} · "
           f"final validation accuracy {(s.get('final_val_acc') or 0):.1%}")

# ------------------------------------------------------------------ confusion + per class
c1, c2 = st.columns([3, 2], gap="large")
if s.get("confusion"):
    c1.plotly_chart(visuals.confusion_figure(s["confusion"], s["class_names"]), key="confusion", width="stretch")
    c2.plotly_chart(visuals.per_class_figure(s["per_class_acc"], s["class_names"], height=360), key="per_class",
                    width="stretch")
    c2.caption("Rows of the matrix are the true classes; off-diagonal cells are mistakes. A bright cell away from "
               "the diagonal means two classes look alike to this model.")

# ------------------------------------------------------------------ mistakes
st.subheader("Misclassified examples", help="Validation images the model got wrong, most confident first.")
try:
    idx, preds, conf = _models.predictions(run_dir)
    d = _models.run_data(run_dir)
except data.DataError as exc:
    st.error(f"The run's data is no longer available ({_ui.plain(exc)}). "
             "What to do: restore the dataset, or pick another run.")
    st.stop()
ds = d["ds"]
labels = ds.labels[idx].numpy()
wrong = [i for i in (conf * -1).argsort() if preds[i] != labels[i]][:16]
if wrong:
    st.image([ds.images[int(idx[i])].expand(3, -1, -1).permute(1, 2, 0).numpy() for i in wrong],
             caption=[f"true {_ui.plain(class_names[labels[i]])} → {_ui.plain(class_names[preds[i]])} ({conf[i]:.0%})"
                      for i in wrong],
             width=110)
    st.caption(f"{int((preds != labels).sum())} mistakes among the first {len(idx)} validation images.")
else:
    st.success(f"No mistakes among the first {len(idx)} validation images.")

# ------------------------------------------------------------------ feature maps, before vs after
st.subheader("Features before and after fine-tuning", help="The same channels of an early, a middle and a late "
             "block, for the network it started from and the trained one. Frozen blocks give identical maps.")
hier = surgery.hierarchy(model, cfg.image_size)
layers = cfg.snapshot_layers or training.default_snapshot_layers(hier)
f1, f2 = st.columns([1, 3], gap="large")
with f1:
    source = st.radio("Image", ["validation sample", "my own image"], horizontal=True, key="inspect_source")
    x, shown = None, None
    if source == "validation sample":
        if not 0 <= st.session_state.get("inspect_sample", 0) < len(d["val_idx"]):
            st.session_state["inspect_sample"] = 0
        k = st.slider("Sample", 0, len(d["val_idx"]) - 1, key="inspect_sample")
        i = int(d["val_idx"][k])
        x, shown = d["eval_tf"](ds.images[i]), ds.images[i].expand(3, -1, -1).permute(1, 2, 0).numpy()
        st.caption(f"true class: {_ui.plain(class_names[int(ds.labels[i])])}")
    else:
        up = st.file_uploader("A photo or drawing", type=["png", "jpg", "jpeg", "webp", "bmp"], key="inspect_upload")
        if up is not None:
            if up.size > 20_000_000:
                st.error("That image is over 20 MB. What to do: upload a smaller picture.")
            else:
                path = _ui.upload_path("images", ".img")
                path.write_bytes(up.getvalue())
                try:
                    im = data.read_image(path)
                    t = data.image_tensor(im)
                    x, shown = d["eval_tf"](t), t.permute(1, 2, 0).numpy()
                except data.DataError as exc:
                    st.error(f"Cannot read that image: {_ui.plain(exc)}. What to do: upload a PNG or JPEG.")
                finally:
                    path.unlink(missing_ok=True)
    if shown is not None:
        st.image(shown, width=180)
        import torch

        with torch.no_grad():
            p = model(x[None]).softmax(1)[0]
        top = p.argsort(descending=True)[:3]
        st.markdown("**Prediction**  \n" + "  \n".join(f"{_ui.plain(class_names[int(j)])}: {float(p[j]):.0%}"
                                                      for j in top))
with f2:
    if x is not None:
        before = _models.initial_model(run_dir)
        maps0, channels = _models.layer_maps(before, hier, x, layers)
        maps1, _ = _models.layer_maps(model, hier, x, layers, channels)
        start = "pretrained backbone" if cfg.effective_weights == "pretrained" else "random initialisation"
        st.plotly_chart(visuals.feature_maps_figure({f"before ({start})": maps0, "after fine-tuning": maps1},
                                                    max_maps=6, height=600), key="inspect_maps", width="stretch")

# ------------------------------------------------------------------ first-layer filters
st.subheader("First-layer filters", help="The 3-colour filters the network applies to raw pixels. Pretrained "
             "ones look like edge and colour detectors; from scratch they start as noise.")
w0, w1 = _models.first_conv_weight(_models.initial_model(run_dir)), _models.first_conv_weight(model)
if w1 is not None:
    g1, g2 = st.columns(2)
    g1.markdown("**Before**")
    g1.plotly_chart(visuals.filters_figure(w0), key="filters_before", width="stretch")
    g2.markdown("**After**")
    g2.plotly_chart(visuals.filters_figure(w1), key="filters_after", width="stretch")
else:
    st.caption("This backbone has no 3-channel convolution as its first layer (e.g. a ViT patch embedding).")

# ------------------------------------------------------------------ download
st.subheader("Download the model")
folder = store.model_dir(run_id)
dl1, dl2, _ = st.columns([1, 1, 2])
dl1.download_button("Weights (model.safetensors)", (folder / "model.safetensors").read_bytes(),
                    file_name=f"{run_id}.safetensors", mime="application/octet-stream", key="dl_weights",
                    icon=":material/download:", width="stretch")
dl2.download_button("Config (model.json)", (folder / "model.json").read_bytes(), file_name=f"{run_id}.json",
                    mime="application/json", key="dl_config", icon=":material/download:", width="stretch")
meta = json.loads((folder / "model.json").read_text())
st.code(f"""import json, timm
from safetensors.torch import load_file
meta = json.load(open("{run_id}.json"))
model = timm.create_model(meta["timm_name"], num_classes=meta["num_classes"])
model.load_state_dict(load_file("{run_id}.safetensors"))
model.eval()  # preprocess: resize to {meta.get('image_size')} px, mean/std = meta["data_config"]""", language="python")
