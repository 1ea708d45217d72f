"""Inspect page: what a finished run learned, where it fails, and what changed inside it.

For every run: the confusion matrix, the mistakes, "What changed?" (linear CKA per block against the
network it started from, next to the weight drift) and the feature space (random, pretrained and
trained features in 2-D). Image runs add feature maps, Grad-CAM and first-layer filters; text runs add
attention heatmaps and, for GloVe, nearest words and analogies (``pages/_examples.py``). The heavy work is
cached per run (``pages/_models.py``) and runs on at most 200 validation items.
"""
import html
import json

import streamlit as st

from pages import _choices, _classroom, _display, _examples, _inputs, _models, _store
from tl_core import data
from tl_core.viz import figures as visuals

_inputs.start_page()
store = _store.store()
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
        st.error(f"The saved model of this run cannot be loaded ({_display.plain(exc)}). "
                 "What to do: train the run again.")
        st.stop()
    s = by_id[run_id].summary or {}
    st.caption(f"{_display.strategy_label(cfg.strategy)} · {cfg.backbone} · "
               f"{_display.plain(_choices.data_label(cfg.to_dict()))} · "
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
        st.error(f"The run's data is no longer available ({_display.plain(exc)}). "
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
                 caption=[f"true {_display.plain(class_names[labels[i]])} → {_display.plain(class_names[preds[i]])} "
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
    return f" Changed most: **{_display.plain(res['labels'].get(b, b))}** (CKA {trained[b]:.2f})."


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


# ------------------------------------------------------------------ download


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
        st.code(f"""from tl_core.training.checkpoint import load_model
# put the two files in a folder "{run_id}", named model.safetensors and model.json
model, cfg, class_names = load_model("{run_id}")  # {meta['timm_name']}, {meta.get('max_tokens')} tokens
from tl_core.models.backbones import text_tokenizer
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
    _examples.attention(run_dir, d, cfg, model, class_names)
    if cfg.backbone == "glove_50d":
        _examples.words(run_dir)
else:
    _examples.one_image(run_dir, d, model, cfg, class_names)
    _examples.filters(run_dir, model)
download(run_id, is_text)
