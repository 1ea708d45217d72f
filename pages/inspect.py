"""Inspect page: what a finished run learned, where it fails, and what changed inside it.

For every run: the confusion matrix (a click on a cell shows the validation items it counts), the mistakes,
"What changed?" (linear CKA per block against the network it started from, next to the weight drift) and the feature space (random, pretrained and
trained features in 2-D). Image runs add feature maps, Grad-CAM and first-layer filters; text runs add
attention heatmaps and, for GloVe, nearest words and analogies (``pages/_examples.py``). The heavy work is
cached per run (``pages/_models.py``) and runs on at most 200 validation items.
"""
import html
import json

import streamlit as st

from pages import _choices, _classroom, _display, _examples, _inputs, _models, _store
from tl_core import data
from tl_core.training.checkpoint import load_code
from tl_core.viz import figures as visuals
from tl_core.viz import probes as probe_figures

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
    return run_id, run_dir, model, cfg, class_names


def run_data(run_id: str, run_dir: str):
    """(data dict, predictions {val_idx, label, pred, conf} of every validation item, whether the run stored
    them); stops the page when the data is gone or changed."""
    try:
        d, stored = _models.run_data(run_dir), store.predictions(run_id)
        preds = stored if stored is not None else _models.predictions(run_dir)
    except (data.DataError, FileNotFoundError) as exc:
        st.error(f"The run's data is no longer available ({_display.plain(exc)}). "
                 "What to do: restore the dataset, or pick another run.")
        st.stop()
    labels = d["ds"].labels.numpy()
    if preds["val_idx"].max(initial=-1) >= len(labels) or (labels[preds["val_idx"]] != preds["label"]).any():
        st.error("The run's data changed since it was trained: its validation images are not the ones it "
                 "classified. What to do: restore the dataset, or train the run again.")
        st.stop()
    return d, preds, stored is not None


# ------------------------------------------------------------------ the confusion matrix and its cells
CELL_PAGE = 48  # a cell's images shown at a time


def _cell_clicked() -> None:
    """A click on a cell of the matrix (its invisible marker: customdata [true, predicted, ...]) picks that cell."""
    points = st.session_state["confusion"].selection.get("points", [])
    if points and points[0].get("customdata"):
        st.session_state["inspect_cell"] = tuple(int(v) for v in points[0]["customdata"][:2])


def confusion(d: dict, preds: dict, class_names: list[str], stored: bool, text: bool) -> None:
    """The matrix of the validation items' predictions, the accuracy per class, and the items of one cell
    (picked by a click on the matrix or in the list): exactly the items that cell counts."""
    unit = "texts" if text else "images"
    cm = visuals.confusion_counts(preds["label"], preds["pred"], len(class_names))
    cells = [(int(t), int(p)) for t, p in zip(*cm.nonzero())]
    if st.session_state.get("inspect_cell") not in cells:  # the most frequent mistake (a new run, or none yet)
        st.session_state["inspect_cell"] = max([c for c in cells if c[0] != c[1]] or cells, key=lambda c: cm[c])
    c1, c2 = st.columns([3, 2], gap="large")
    c1.plotly_chart(visuals.confusion_figure(cm, class_names, selected=st.session_state["inspect_cell"]),
                    key="confusion", width="stretch", on_select=_cell_clicked, selection_mode="points")
    c2.plotly_chart(visuals.per_class_figure(list(cm.diagonal() / cm.sum(1).clip(min=1)), class_names, height=360),
                    key="per_class", width="stretch")
    c2.caption("Rows of the matrix are the true classes; off-diagonal cells are mistakes. A bright cell away from "
               f"the diagonal means two classes look alike to this model. **Click a cell** to see its {unit}."
               + ("" if stored else f" This run is from an older version that kept no predictions: the matrix is "
                  f"recomputed with its saved model on all {len(preds['label'])} validation {unit}."))
    name = [_display.plain(c) for c in class_names]
    pick, paging = st.columns([3, 1], vertical_alignment="bottom")
    t, p = pick.selectbox(f"Cell of the matrix (true class → predicted class): its {unit}", cells,
                          key="inspect_cell", format_func=lambda c: f"true {class_names[c[0]]} → predicted "
                                                                    f"{class_names[c[1]]} · {cm[c]} {unit}")
    rows = visuals.confusion_cell(preds["label"], preds["pred"], preds["conf"], t, p)
    pages = -(-len(rows) // CELL_PAGE)
    page = paging.number_input(f"Page (of {pages})", 1, pages, key=f"inspect_cell_page_{t}_{p}") if pages > 1 else 1
    shown = rows[(page - 1) * CELL_PAGE:page * CELL_PAGE]
    with st.container(key="inspect_cell_view"):
        st.markdown(f"**{len(rows)} validation {unit}** of class **{name[t]}** "
                    f"{'correctly predicted' if t == p else 'predicted as **' + name[p] + '**'}"
                    + (f", most confident first: {(page - 1) * CELL_PAGE + 1}–{(page - 1) * CELL_PAGE + len(shown)} "
                       "shown" if pages > 1 else ", most confident first") + ".")
        items(d, shown, preds, class_names, text, key="inspect_cell_items")


def items(d: dict, rows, preds: dict, class_names: list[str], text: bool, key: str) -> None:
    """Validation items ``rows`` (positions in ``preds``): the image (or text), its true and predicted class
    and the model's confidence."""
    ds, idx = d["ds"], preds["val_idx"]
    true, pred, conf = preds["label"], preds["pred"], preds["conf"]
    if text:
        st.dataframe([{"text": ds.texts[int(idx[i])], "true": class_names[true[i]],
                       "predicted": class_names[pred[i]], "confidence": float(conf[i])} for i in rows],
                     hide_index=True, width="stretch", key=key,
                     column_config={"text": st.column_config.TextColumn(width="large"),
                                    "confidence": st.column_config.NumberColumn(format="percent")})
    else:
        st.image([ds.images[int(idx[i])].expand(3, -1, -1).permute(1, 2, 0).numpy() for i in rows],
                 caption=[f"true {_display.plain(class_names[true[i]])} → {_display.plain(class_names[pred[i]])} "
                          f"({conf[i]:.0%})" for i in rows], width=110)


def mistakes(d: dict, preds: dict, class_names: list[str], text: bool) -> None:
    unit = "texts" if text else "images"
    st.subheader("Misclassified examples", help=f"Validation {unit} the model got wrong, most confident first.")
    order = (-preds["conf"].astype(float)).argsort(kind="stable")
    wrong = [i for i in order if preds["pred"][i] != preds["label"][i]]
    if not wrong:
        st.success(f"No mistakes among the {len(preds['label'])} validation {unit}.")
        return
    items(d, wrong[:50] if text else wrong[:16], preds, class_names, text, key="inspect_wrong_texts")
    st.caption(f"{len(wrong)} mistakes among the {len(preds['label'])} validation {unit}"
               + (f" (the {50 if text else 16} most confident shown; click a cell of the matrix for the others)."
                  if len(wrong) > (50 if text else 16) else "."))


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
        st.plotly_chart(probe_figures.cka_bars(res["cka"], labels=res["labels"], frozen=frozen, title=None),
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
    names = [html.escape(c) for c in class_names]
    st.plotly_chart(probe_figures.projection_scatter(fs["panels"], fs["labels"], names, height=430),
                    key="inspect_projection", width="stretch")
    acc = " · ".join(f"{name} **{a:.0%}**" for name, a in fs["accuracy"].items())
    st.caption(f"Each dot is one of {len(fs['labels'])} validation items, coloured by its class. Clusters that the "
               f"pretrained {what} already form, before any training, are what transfers. Nearest-class-mean "
               f"accuracy (leave one out, on the full features): {acc}.")


# ------------------------------------------------------------------ download


def download(run_id: str) -> None:
    st.subheader("Download the model")
    folder = store.model_dir(run_id)
    dl1, dl2, _ = st.columns([1, 1, 2])
    dl1.download_button("Weights (model.safetensors)", (folder / "model.safetensors").read_bytes(),
                        file_name=f"{run_id}.safetensors", mime="application/octet-stream", key="dl_weights",
                        icon=":material/download:", width="stretch")
    dl2.download_button("Config (model.json)", (folder / "model.json").read_bytes(), file_name=f"{run_id}.json",
                        mime="application/json", key="dl_config", icon=":material/download:", width="stretch")
    meta = json.loads((folder / "model.json").read_text())
    st.code(load_code(run_id, meta), language="python")


# ------------------------------------------------------------------ the page
run_id, run_dir, model, cfg, class_names = pick_run()
is_text = cfg.modality == "text"
d, preds, stored = run_data(run_id, run_dir)
confusion(d, preds, class_names, stored, is_text)
mistakes(d, preds, class_names, is_text)
what_changed(run_id, run_dir, is_text)
feature_space(run_dir, class_names, is_text)
if is_text:
    _examples.attention(run_dir, d, cfg, model, class_names)
    if cfg.backbone == "glove_50d":
        _examples.words(run_dir)
else:
    _examples.one_image(run_dir, d, model, cfg, class_names)
    _examples.filters(run_dir, model)
download(run_id)
