"""Compare page: overlay runs and read off what transfer bought (start, slope, asymptote)."""
import streamlit as st

from pages import _choices, _classroom, _display, _inputs, _store
from tl_core.viz import figures as visuals

_inputs.start_page()
store = _store.store()
st.title("4 · Compare")
st.markdown(
    "Transfer can help a learning curve in three ways: a **higher start** (useful before any training), a "
    "**higher slope** (learns faster) and a **higher asymptote** (ends better). Select a pretrained run and a "
    "*from scratch* run on the same data to see which ones you got."
)

runs = [r for r in _classroom.visible_runs() if r.status != "queued"]
if not runs:
    st.info("No runs to compare yet. Launch at least one on the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()
if not _classroom.on() or _classroom.is_teacher():
    st.page_link("pages/board.py", label="Many runs of one sweep? Pool them by strategy, frozen depth or seed",
                 icon=":material/groups:")
by_id = {r.id: r for r in runs}
finished = [r.id for r in runs if r.status == "completed"]
st.session_state.setdefault("compare_pick", (finished or [r.id for r in runs])[:3])
st.session_state["compare_pick"] = [i for i in st.session_state["compare_pick"] if i in by_id]
picked = st.multiselect("Runs", list(by_id), key="compare_pick",
                        format_func=lambda i: f"{by_id[i].name} · {by_id[i].status} · {i[-6:]}",
                        help="Runs of the same data set compare fairly: same split, same seed.")
if not picked:
    st.info("Pick one or more runs above.")
    st.stop()

metric = st.radio("Curve", ["val_acc", "val_loss", "train_acc", "train_loss"], horizontal=True, key="compare_metric",
                  format_func={"val_acc": "validation accuracy", "val_loss": "validation loss",
                               "train_acc": "training accuracy", "train_loss": "training loss"}.get)
curves = {}
labels = {}
for i in picked:
    label = by_id[i].name
    if label in curves:
        label = f"{label} ({i[-6:]})"
    labels[i] = label
    curves[label] = store.metrics(i, "epoch")
st.plotly_chart(visuals.compare_curves_figure(curves, metric), key="compare_curves", width="stretch")


def _weights(r) -> str:
    return (r.summary or {}).get("weights") or ("random" if r.config.get("strategy") == "scratch"
                                               else r.config.get("weights", "pretrained"))


rows = []
for i in picked:
    r, s = by_id[i], by_id[i].summary or {}
    first = (s.get("phases") or [{}])[0]
    total_blocks = len((curves[labels[i]][-1].get("drift") or {})) if curves[labels[i]] else None
    rows.append({
        "run": labels[i], "status": r.status, "strategy": _display.strategy_label(r.config.get("strategy")),
        "backbone": r.config.get("backbone"), "weights": _weights(r), "data": _choices.data_label(r.config),
        "per class": r.config.get("per_class"),
        "final acc": s.get("final_val_acc"), "best acc": s.get("best_val_acc"),
        "time (s)": round(s["wall_s"], 1) if s.get("wall_s") else None,
        "trainable (end)": visuals.fmt_count(s["trainable_params"]) if s.get("trainable_params") else "",
        "frozen (start)": (f"{total_blocks - len(first.get('trainable', []))} of {total_blocks}"
                          if total_blocks and first else ""),
    })
st.dataframe(rows, hide_index=True, width="stretch", column_config={
    "final acc": st.column_config.NumberColumn(format="percent", help="Validation accuracy after the last epoch."),
    "best acc": st.column_config.NumberColumn(format="percent", help="Best validation accuracy of any epoch."),
})

# ------------------------------------------------------------------ start / slope / asymptote
pre = [i for i in picked if _weights(by_id[i]) != "random" and curves[labels[i]]]
scratch = [i for i in picked if _weights(by_id[i]) == "random" and curves[labels[i]]]
st.subheader("What did pretraining buy?", help="He, Girshick & Dollár (2019): with a long enough schedule, "
                                               "scratch often catches up; pretraining mainly buys a faster start.")
if not (pre and scratch):
    st.caption("Select one pretrained run and one *from scratch* run (same data) to fill this in.")
else:
    a, b = pre[0], scratch[0]
    if by_id[a].config.get("data") != by_id[b].config.get("data"):
        st.warning("These two runs used different data: the comparison is not fair.")
    g = visuals.transfer_gains(curves[labels[a]], curves[labels[b]], "val_acc")
    st.markdown(f"**{_display.plain(labels[a])}** (pretrained) vs **{_display.plain(labels[b])}** (from scratch), "
                f"validation accuracy over "
                f"the first {g['epochs_compared']} epoch(s):")
    cols = st.columns(3)
    texts = {"start": ("Higher start", "accuracy after epoch 1"),
             "slope": ("Higher slope", "gain per epoch"),
             "asymptote": ("Higher asymptote", "best accuracy reached")}
    for col, key in zip(cols, ("start", "slope", "asymptote")):
        v = g[key]
        mark = {"higher": "✔ yes", "similar": "≈ similar", "lower": "✖ no"}[v["verdict"]]
        col.metric(f"{texts[key][0]}: {mark}", f"{v['pretrained']:.1%}" if key != "slope" else
                   f"{v['pretrained'] * 100:+.1f} pts", delta=f"{v['diff'] * 100:+.1f} pts vs scratch",
                   help=f"{texts[key][1]}: pretrained {v['pretrained']:.3f}, scratch {v['scratch']:.3f}")
