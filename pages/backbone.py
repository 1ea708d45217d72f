"""Backbone page: pick a pretrained network (images or texts), see its layers, decide which blocks learn."""
import pandas as pd
import streamlit as st

from pages import _backbone_panels, _backbones, _choices, _display, _inputs
from tl_core.models import backbones
from tl_core.models import strategies
from tl_core.models import surgery
from tl_core.viz import text as text_visuals
from tl_core.viz import figures as visuals
from tl_core.models.strategies import STRATEGIES

inp = _inputs.start_page()
st.title("1 · Backbone")
INTRO = {
    "image": "A pretrained network already knows **edges and textures in its early blocks** and **object parts in "
             "its late blocks**.",
    "text": "A pretrained language model already knows **words, word pieces and syntax in its early layers** and "
            "**the meaning of whole sentences in its late layers**.",
}
st.markdown(f"{INTRO[_choices.modality(inp)]} Choose what to keep (**freeze** ❄) and what to adapt to your data "
            "(**train** ⚡).")
_choices.modality_note()

# ------------------------------------------------------------------ choose the backbone
rows = {r["key"]: r for r in _backbones.catalogue_rows()}
if inp["backbone"] not in rows:
    inp["backbone"] = "mobilenetv2"


def _backbone_changed():
    inp["plan"], inp["weights_file"] = None, None
    st.session_state["plan_version"] = st.session_state.get("plan_version", 0) + 1
    _choices.fit_data_to_backbone(st.session_state.get("backbone_modality", "image"))


def _option(k: str) -> str:
    r = rows[k]
    kind = "text · " if r.get("modality") == "text" else ""
    weights = _display.WEIGHT_BADGE[r["weights"]][0]
    return f"{r['label']}  ·  {kind}{visuals.fmt_count(r['params'])} params  ·  {weights}"


left, right = st.columns([3, 2], gap="large")
with left:
    st.session_state["backbone_modality"] = _choices.modality(inp)  # what the data fits, before a change
    key = st.selectbox(
        "Backbone", list(rows), format_func=_option,
        help="Image backbones are timm architectures; text backbones (marked 'text') read tokens. 'bundled · "
             "offline' weights ship with the lab; others need a download (or your own file), or can only start "
             "from random weights. Switching between images and texts switches the data set too.",
        **_inputs.bind("backbone", on_change=_backbone_changed),
    )
    info = rows[key]
    text = info.get("modality") == "text"
    status = backbones.weight_status(key, inp.get("weights_file"))
    _backbone_panels.badges(info, status)

    can_pretrain = status.kind != "random" and (status.kind != "download" or _backbones.online())
    if st.session_state.pop("weights_uploaded", False):
        _inputs.set_input("weights", "pretrained")
    if not can_pretrain and inp["weights"] == "pretrained":
        _inputs.set_input("weights", "random")
    st.radio(
        "Start from", ["pretrained", "random"], horizontal=True,
        format_func={"pretrained": "pretrained weights (transfer)", "random": "random weights (from scratch)"}.get,
        help="Random weights = the 'from scratch' baseline: same architecture, nothing learned yet.",
        **_inputs.bind("weights"),
    )
    # choosing pretrained weights that only a download can give is the consent to download them
    _inputs.set_input("allow_download", can_pretrain and status.kind == "download" and inp["weights"] == "pretrained")
    if inp["allow_download"]:
        st.info(f"The pretrained weights will be downloaded from {status.source} when the run starts.")
    if not can_pretrain:
        st.warning(
            f"No pretrained weights for {info['label']} on this machine (they would come from "
            f"{status.source or 'nowhere'}). Upload a weights file below, pick a backbone marked "
            "'bundled · offline', or train from random weights."
        )

    if not text:
        _backbone_panels.weights_upload(inp, key, info)

# ------------------------------------------------------------------ hierarchy + plan
try:
    with st.spinner("Reading the backbone's layers…"):
        hier = _backbones.hierarchy_for(key, _choices.sample_size(inp), _choices.num_classes(inp))
except Exception as exc:
    st.error(f"Could not build {_display.plain(info['label'])}: {_display.plain(exc)}. Pick another backbone.")
    st.stop()
plan = _choices.current_plan(inp, hier)
counts = visuals.plan_counts(hier, plan)
names = hier.block_names
ROWS = text_visuals.text_block_rows if text else visuals.block_rows  # text: embeddings, Transformer layers, head
labels = {b["name"]: b["label"] for b in ROWS(hier)}


def _set_plan(new_plan: dict) -> None:
    inp["plan"] = new_plan
    st.session_state["plan_version"] = st.session_state.get("plan_version", 0) + 1


def _preset(strategy: str) -> None:
    inp["strategy"] = strategy
    inp["lr"] = None
    if strategy == "scratch":
        _inputs.set_input("weights", "random")
    elif inp["weights"] == "random" and can_pretrain:
        _inputs.set_input("weights", "pretrained")
    _set_plan(_choices.strategy_phases(inp, hier, with_plan=False)[0][2])


def _toggle(block: str) -> None:
    new = {b: dict(s) for b, s in inp["plan"].items()}
    new[block]["frozen"] = not new[block]["frozen"]
    _set_plan(new)


def _freeze_upto(block: str) -> None:
    k = names.index(block)
    _set_plan({b: {**s, "frozen": i <= k} for i, (b, s) in enumerate(inp["plan"].items())})


def _unfreeze_all() -> None:
    _set_plan({b: {**s, "frozen": False} for b, s in inp["plan"].items()})


with right:
    st.metric("Trainable parameters", f"{visuals.fmt_count(counts['trainable'])} of {visuals.fmt_count(counts['total'])}",
              help="Parameters that receive gradients and change during training. Frozen ones keep their "
                   "pretrained values.")
    _display.meter(counts["trainable"], counts["total"],
                   f"{counts['frozen_blocks']} of {counts['blocks']} blocks frozen")
    _display.legend()
    st.caption(f"Strategy: **{_display.strategy_label(inp['strategy'])}** · "
               f"{STRATEGIES[inp['strategy']].summary}")

st.subheader("Layer hierarchy", help="Bar height = parameters (log scale): late blocks hold most of the "
                                     "weights, so freezing them saves the most compute. Blue = frozen, orange = trains.")
st.caption(f"Input text ({inp['max_tokens']} tokens) → forward order → prediction. Under each block: its output, "
           "tokens × features. Click a bar to select that block." if text else
           f"Input image ({inp['image_size']} px) → forward order → prediction. Under each block: its output "
           "channels × height × width. Click a bar to select that block.")
if st.session_state.get("block_pick") not in names:
    st.session_state["block_pick"] = names[-2] if len(names) > 1 else names[0]


def _chart_clicked() -> None:
    points = st.session_state["hier_chart"].selection.get("points", [])
    if points and points[0].get("customdata"):
        st.session_state["block_pick"] = points[0]["customdata"][0]


phases = _choices.strategy_phases(inp, hier)
shown = plan
if len(phases) > 1:
    view = st.segmented_control(
        "Show phase", list(range(len(phases))), default=0, key="phase_view",
        format_func=lambda i: f"{i + 1} · {phases[i][0]} ({phases[i][1]} ep.)",
        help="Two-phase and gradual strategies unfreeze more blocks as training goes. Phase 1 is yours to edit; "
             "later phases follow from the strategy.")
    if view:
        shown = phases[view][2]
        st.caption(f"Phase {view + 1} as the strategy sets it: {visuals.plan_counts(hier, shown)['frozen_blocks']} "
                   "blocks frozen. Edit phase 1 below; later phases follow from it.")
hier_figure = text_visuals.text_hierarchy_figure if text else visuals.hierarchy_figure
st.plotly_chart(hier_figure(hier, shown, selected=st.session_state["block_pick"]), key="hier_chart",
                width="stretch", on_select=_chart_clicked, selection_mode="points")

st.subheader("Strategy presets", help="Each preset sets the freeze plan of its first phase; two-phase and "
                                      "gradual unfreeze more blocks later during training (see the Train page).")
cols = st.columns(len(STRATEGIES))
for col, s in zip(cols, STRATEGIES):
    col.button(STRATEGIES[s].short, key=f"preset_{s}", help=STRATEGIES[s].summary, on_click=_preset, args=(s,),
               width="stretch", type="primary" if inp["strategy"] == s else "secondary")
if len(phases) > 1:
    st.caption("Phases: " + " → ".join(
        f"**{n}** ({e} epoch{'s' if e != 1 else ''}, {sum(not v['frozen'] for v in p.values())} blocks train)"
        for n, e, p in phases))

c1, c2, c3, c4 = st.columns([3, 2, 2, 2], vertical_alignment="bottom")
pick = c1.selectbox("Block", names, key="block_pick", format_func=lambda b: f"{labels[b]}  ({b})")
frozen_now = plan[pick]["frozen"]
c2.button("Unfreeze this block ⚡" if frozen_now else "Freeze this block ❄", key="toggle_block", on_click=_toggle,
          args=(pick,), width="stretch")
c3.button("Freeze everything up to here", key="freeze_upto", on_click=_freeze_upto, args=(pick,), width="stretch",
          help="Freezes this block and every block before it; the rest train. fastai calls this freeze_to.")
c4.button("Unfreeze everything", key="unfreeze_all", on_click=_unfreeze_all, width="stretch")

# ------------------------------------------------------------------ per-block settings + LR bars
st.subheader("Per-block settings")
version = st.session_state.get("plan_version", 0)
editor_key = f"plan_editor_{key}_{version}"
base = ROWS(hier, plan)
if st.session_state.get("plan_editor_base_key") != editor_key:
    st.session_state["plan_editor_base_key"] = editor_key
    st.session_state["plan_editor_base"] = {b: dict(s) for b, s in plan.items()}
COLS = {"frozen": "Frozen", "lr_mult": "LR ×", "bn_mode": "BatchNorm"}


def _editor_changed() -> None:
    base_plan = st.session_state["plan_editor_base"]
    new = {b: dict(s) for b, s in base_plan.items()}
    for row, edits in st.session_state[editor_key].get("edited_rows", {}).items():
        name = list(base_plan)[int(row)]
        for col, value in edits.items():
            field = {v: k for k, v in COLS.items()}.get(col)
            if field == "lr_mult":
                value = max(0.0, float(value or 0.0))
            if field:
                new[name][field] = value
    inp["plan"] = new


lr = inp["lr"] if inp.get("lr") else strategies.default_lr(inp["strategy"], inp.get("optimizer", "adamw"),
                                                           _choices.modality(inp))
lr_key = f"base_lr_{_choices.modality(inp)}_{inp['strategy']}"
ed_col, lr_col = st.columns([5, 4], gap="large")
with ed_col:
    df = pd.DataFrame({
        "Block": [r["label"] for r in base], "Params": [visuals.fmt_count(r["params"]) for r in base],
        "Output": [visuals.fmt_shape(r["out_shape"]) for r in base], "Frozen": [r["frozen"] for r in base],
        "LR ×": [r["lr_mult"] for r in base], "BatchNorm": [r["bn_mode"] if r["has_bn"] else "—" for r in base],
    })
    st.data_editor(
        df, key=editor_key, on_change=_editor_changed, hide_index=True, width="stretch", height=min(740, 42 + 35 * len(df)),
        disabled=["Block", "Params", "Output"],
        column_config={
            "Frozen": st.column_config.CheckboxColumn(help="Frozen blocks keep their pretrained weights."),
            "LR ×": st.column_config.NumberColumn(
                min_value=0.0, max_value=10.0, step=0.05, format="%.2f",
                help="Why a smaller LR for the backbone? Its weights are already good: big steps would destroy "
                     "them before the new head has learned anything useful."),
            "BatchNorm": st.column_config.SelectboxColumn(
                options=list(surgery.BN_MODES), help="Why freeze BatchNorm? In plain PyTorch, requires_grad=False "
                "does NOT stop BatchNorm's running mean/variance from changing in train mode: a 'frozen' block "
                "drifts anyway. 'frozen' keeps the statistics fixed; 'train' lets them adapt to the new data."),
        },
    )
with lr_col:
    st.number_input("Base learning rate", min_value=1e-6, max_value=1.0, value=float(lr), format="%.0e",
                    step=1e-4, key=lr_key, on_change=lambda: inp.update(lr=float(st.session_state[lr_key])),
                    help="Each block learns at base LR × its multiplier; frozen blocks do not learn at all.")
    lr_chart = text_visuals.text_lr_figure if text else visuals.lr_figure
    st.plotly_chart(lr_chart(hier, plan, lr), key="lr_chart", width="stretch")

# ------------------------------------------------------------------ show the code
_backbone_panels.show_code(inp, key, info, hier, phases, lr)

st.page_link("pages/data.py", label="Next: choose the data →", icon=":material/image:")
