"""Data page: choose a dataset (built-in or your own zip; for a text backbone a text set, a CSV or a
folder of .txt files), look at it, and see what the network sees (pixels, or the backbone's own tokens)."""
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from pages import _backbones, _choices, _classroom, _display, _inputs, _text
from tl_core.models import backbones
from tl_core import data
from tl_core.viz import figures as visuals

inp = _inputs.start_page()
st.title("2 · Data")
KINDS = {"image": ":material/image: Images", "text": ":material/article: Texts"}


def _kind_changed() -> None:
    kind = st.session_state.get("data_kind")
    if kind:
        _choices.switch_modality(kind)


# data of the other kind (an old session): the default of this kind
_choices.fit_data_to_backbone(_choices.modality(inp))
st.session_state["data_kind"] = _choices.modality(inp)  # the kind always follows the backbone
st.segmented_control("Kind of data", list(KINDS), format_func=KINDS.get, key="data_kind", required=True,
                     on_change=_kind_changed, help="Images need an image backbone, texts a text backbone: switching "
                     "picks a matching backbone too (change it on the Backbone page).")
_choices.modality_note()
if _choices.modality(inp) == "text":
    st.markdown("Transfer works best when the new texts resemble what the backbone was pretrained on. Pick a text "
                "set, check it, and look at **the tokens the network receives**, made by the backbone's own tokenizer.")
    _text.data_page(inp)
    st.page_link("pages/train.py", label="Next: train →", icon=":material/model_training:")
    st.stop()
st.markdown(
    "Transfer works best when the new images resemble what the backbone was trained on (ImageNet photos). "
    "Pick a dataset, check it, and look at **the exact tensor the network receives**."
)

UPLOAD = "__upload__"
caps = data.Caps()


def _user_sets() -> dict[str, str]:
    """{stored path: the user's own file name} of the uploads this session may use: its own in classroom mode."""
    owner = None if _classroom.shows_all() else _classroom.owner()
    return {str(u.path): u.name for u in data.list_uploads(owner=owner)}


mine = _user_sets()
choices = list(data.BUILTIN) + list(mine) + [UPLOAD]
if inp["data"] not in choices:
    choices.insert(-1, inp["data"])


def _label(k: str) -> str:
    if k == UPLOAD:
        return "Upload a zip of my own images…"
    if k in data.BUILTIN:
        i = data.BUILTIN[k]
        return f"{i.name} · {i.num_classes} classes · {i.size:,} images · similarity to ImageNet: {i.similarity}"
    return f"My upload · {mine.get(k) or data.upload_name(k) or Path(k).name}"


left, right = st.columns([3, 2], gap="large")
with left:
    if st.session_state.get("data_pick_pending") in choices:
        st.session_state["data_pick"] = st.session_state.pop("data_pick_pending")
    if st.session_state.get("data_pick") not in choices:
        st.session_state["data_pick"] = inp["data"]
    pick = st.selectbox("Dataset", choices, format_func=_label, key="data_pick",
                        help="Built-in sets ship with the lab and work offline. 'near/medium/far' says how much "
                             "they resemble ImageNet photos.")
    if pick != UPLOAD and pick != inp["data"]:
        inp["data"] = pick

if pick == UPLOAD:
    with left:
        st.markdown("One sub-folder of images per class (ImageFolder layout), optionally inside `train/` and `val/`. "
                    f"Up to {caps.max_files:,} files and {caps.max_total_bytes / 1e6:.0f} MB unpacked.")
        up = st.file_uploader("Zip file", type=["zip"], key="data_upload")
    if up is None:
        st.info("Upload a zip to continue, or pick a built-in dataset above.")
        st.stop()
    if st.session_state.get("data_upload_done") != up.file_id:
        st.session_state["data_upload_done"] = up.file_id
        with st.spinner("Checking every image in the zip…"):  # a refused zip leaves nothing on the server
            stored, report = data.save_upload(up, up.name, owner=_classroom.owner())
        st.session_state["upload_report"] = {**report.to_dict(), "ok": stored is not None}
        if stored is not None:
            inp["data"] = str(stored.path)
            st.session_state["data_num_classes"] = stored.num_classes
            st.session_state["data_pick_pending"] = str(stored.path)
            st.rerun()
    rep = st.session_state.get("upload_report")
    if rep and not rep["ok"]:
        st.error("This data cannot be used yet:\n\n" + "\n".join(f"- {_display.plain(e)}" for e in rep["errors"]) +
                 "\n\nWhat to do: fix the folders in the zip and upload it again.")
        if rep["skipped"]:
            st.dataframe([{"file": f, "why skipped": w} for f, w in rep["skipped"]], hide_index=True, width="stretch")
    st.stop()

# ------------------------------------------------------------------ the chosen dataset
try:
    with st.spinner("Loading the images…"):
        ds = data.load_dataset(inp["data"])
except data.DataError as exc:
    st.error(f"{_display.plain(exc)}\n\nWhat to do: pick another dataset or upload the zip again.")
    st.stop()
st.session_state["data_num_classes"] = ds.num_classes

with right:
    if inp["data"] in data.BUILTIN:
        info = data.BUILTIN[inp["data"]]
        st.markdown(f"**{info.name}** · {info.description}")
        st.caption(f"Similarity to ImageNet: **{info.similarity}**. {info.similarity_note}")
    elif ds.report is not None:
        r = ds.report
        st.markdown(f"**{_display.plain(_choices.data_label(inp))}**: {r.num_images:,} images in "
                    f"{len(r.classes)} classes"
                    + (" (train/ and val/ folders)" if r.has_split else ""))
        if r.skipped:
            with st.expander(f"Validation report: {len(r.skipped)} file(s) skipped"):
                st.dataframe([{"file": f, "why skipped": w} for f, w in r.skipped], hide_index=True, width="stretch")
        else:
            st.success("Validation report: every file was readable.")

with left:
    c1, c2 = st.columns(2)
    max_per = int(max(data.class_counts(ds).values()))
    options = [5, 10, 20, 50, 100, 200, 500, 1000]
    if inp.get("per_class") not in options:
        _inputs.set_input("per_class", 100)
    c1.select_slider("Training images per class", options, help="Transfer learning shines with little data: try "
                     f"20 per class, then 200. This set has at most {max_per} per class (validation images "
                     "are set aside first).", **_inputs.bind("per_class"))
    c2.slider("Validation share", 0.1, 0.5, step=0.05, disabled=ds.split_hint is not None,
              help="Held-out images, never trained on, that measure accuracy.", **_inputs.bind("val_fraction"))

try:
    train_idx, val_idx = data.split(ds, float(inp["val_fraction"]), int(inp.get("seed", 0)), int(inp["per_class"]))
except data.DataError as exc:
    st.error(_display.plain(exc))
    st.stop()

g1, g2 = st.columns([3, 2], gap="large")
with g1:
    st.subheader("Samples per class")
    st.plotly_chart(visuals.sample_grid_figure(data.sample_grid(ds, per_class=8, seed=0), tile=56),
                    key="sample_grid", width="stretch")
with g2:
    st.subheader("Class balance")
    st.plotly_chart(visuals.class_counts_figure(data.class_counts(ds, train_idx), data.class_counts(ds, val_idx)),
                    key="class_counts", width="stretch")
    st.caption(f"{len(train_idx):,} training and {len(val_idx):,} validation images.")

# ------------------------------------------------------------------ augmentation
st.subheader("Augmentation", help="Random changes applied to training images each time they are seen: more "
                                  "variety from the same data. Validation images are never augmented.")
aug = dict(inp.get("augment") or {})
a1, a2, a3 = st.columns(3)
for col, field, label, tip in (
    (a1, "flip", "Horizontal flip", "Mirror left-right at random. Wrong for text or digits!"),
    (a2, "random_resized_crop", "Random resized crop", "Zoom into a random 35-100% of the image."),
    (a3, "color_jitter", "Colour jitter", "Random brightness, contrast and saturation."),
):
    key = f"aug_{field}"
    st.session_state.setdefault(key, bool(aug.get(field, False)))
    aug[field] = col.toggle(label, key=key, help=tip)
inp["augment"] = aug

# ------------------------------------------------------------------ preprocessing
st.subheader("What the network sees", help="Pretrained weights expect images resized and normalised exactly "
                                           "as during pretraining. A mismatch silently costs accuracy.")
dcfg = backbones.data_config(inp["backbone"])
bb = _backbones.describe(inp["backbone"])
p1, p2, p3 = st.columns([2, 2, 3], gap="large")
with p1:
    st.markdown(f"**{bb['label']}** was pretrained at **{dcfg['input_size'][1]} px**, "
                f"{dcfg['interpolation']} resize, crop {dcfg['crop_pct']:.3g}")
    st.markdown(f"mean `{[round(m, 3) for m in dcfg['mean']]}`  \nstd `{[round(s, 3) for s in dcfg['std']]}`")
    st.select_slider("Image size fed to the network", [64, 80, 96, 112, 128, 160, 192, 224],
                     help="Smaller = much faster on a CPU; larger = closer to how the backbone was trained.",
                     **_inputs.bind("image_size"))
    st.selectbox("Normalisation", list(data.NORMALIZATIONS), format_func=lambda k: f"{k}: {data.NORMALIZATIONS[k]}",
                 help="Try 'wrong' to see what a preprocessing mismatch does to the input and to accuracy.",
                 **_inputs.bind("normalization"))
    mean, std = data.normalization_stats(dcfg, inp["normalization"])
    if not np.allclose((mean, std), (dcfg["mean"], dcfg["std"]), atol=1e-3):
        st.warning(f"This normalisation (mean {[round(m, 3) for m in mean]}, std {[round(s, 3) for s in std]}) "
                   f"differs from the one {bb['label']} was trained with: its first layer sees shifted colours. "
                   "Expect lower accuracy, especially with a frozen backbone.")
with p2:
    if not 0 <= st.session_state.get("view_index", 0) < len(ds):
        st.session_state["view_index"] = 0
    idx = st.number_input("Sample", 0, len(ds) - 1, key="view_index", help="Index of the image to inspect.")
    x, picture = data.network_view(ds, int(idx), dcfg, int(inp["image_size"]), inp["normalization"])
    original = ds.images[int(idx)].expand(3, -1, -1).permute(1, 2, 0).numpy()
    st.image([original, picture], caption=[f"stored ({original.shape[0]} px): "
                                           f"{_display.plain(ds.class_names[int(ds.labels[int(idx)])])}",
                                           f"network input ({picture.shape[0]} px), de-normalised"], width=150)
with p3:
    st.markdown("**The tensor itself** (per channel, after normalisation)")
    st.dataframe([{"channel": c, "min": round(float(x[i].min()), 3), "mean": round(float(x[i].mean()), 3),
                   "max": round(float(x[i].max()), 3)} for i, c in enumerate("RGB")], hide_index=True, width="stretch")
    st.caption(f"shape {list(x.shape)}, dtype {x.dtype}. With the backbone's own statistics, values centre "
               "near 0 with spread about 1, as in pretraining.")
    if aug and any(aug.values()):
        train_tf, _ = data.make_transforms(dcfg, int(inp["image_size"]), data.Augment(**aug), inp["normalization"])
        torch.manual_seed(0)
        m = torch.tensor(dcfg["mean"]).view(3, 1, 1)
        s = torch.tensor(dcfg["std"]).view(3, 1, 1)
        views = [((train_tf(ds.images[int(idx)]) * s + m).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
                 for _ in range(5)]
        st.image(views, caption=["augmented"] * 5, width=90)

# ------------------------------------------------------------------ shifts (the labs on a shifted target)
st.subheader("A shifted target", help="The labs on a shifted target (surgical fine-tuning, AdaBN) train or test on "
                                      "these copies of the data: the same classes with other pixels, or the same "
                                      "images with other labels. Here you only look: your own runs stay unshifted.")
s1, s2 = st.columns([2, 3], gap="large")
shift = s1.selectbox("Preview a shift", ["", *data.SHIFTS], key="shift_preview",
                     format_func=lambda k: f"{k}: {data.SHIFTS[k]}" if k else "none")
if shift:
    with st.spinner("Shifting the data set…"):
        view = data.shift_view(ds, int(idx), shift, dcfg, int(inp["image_size"]), inp["normalization"],
                               seed=int(inp.get("seed", 0)))
    s2.image([view["clean"], view["shifted"]], width=150,
             caption=[f"network input: {_display.plain(view['label'])}",
                      f"shifted ({shift}): trained as {_display.plain(view['shown_as'])}"])

st.page_link("pages/train.py", label="Next: train →", icon=":material/model_training:")
