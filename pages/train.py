"""Train page: launch a background run and watch it live (curves, weight drift, feature maps, or the
attention maps of a text run)."""
import streamlit as st
import torch

from pages import _backbones, _choices, _classroom, _display, _inputs, _run_view, _store
from tl_core.models import backbones
from tl_core.models import arch as models
from tl_core.models import strategies
from tl_core.runs.executor import reap
from tl_core.viz import figures as visuals

inp = _inputs.start_page()
store = _store.store()
st.title("3 · Train")
CROWDED_RUNS = 4  # more runs than this queued or training: the page refreshes less often (see below)


# ------------------------------------------------------------------ which run is attached
def _attached_run():
    """(run id, its RunInfo): from the URL, else the session; the URL always names the attached run."""
    if "run" in st.query_params:
        st.session_state["run_id"] = st.query_params["run"]
    elif st.session_state.get("run_id"):
        st.query_params["run"] = st.session_state["run_id"]  # navigation cleared the URL: put it back
    run_id = st.session_state.get("run_id")
    if not run_id:
        return None, None
    try:
        info = store.get(run_id)
        if _classroom.may_see(info):
            return run_id, info
        st.warning(f"Run {_display.plain(run_id)} is another student's: this page shows your own runs. "
                   "Launch a new run below, or pick one of yours.")
    except KeyError:
        st.warning(f"Run {_display.plain(run_id)} is not in this lab's run store ({_display.plain(store.runs_dir)}). "
                   "Launch a new run below.")
    st.session_state.pop("run_id", None)
    st.query_params.pop("run", None)
    return None, None


def _devices() -> dict[str, str]:
    found = {"auto": "auto (best available)", "cpu": f"CPU ({torch.get_num_threads()} threads)"}
    for i in range(torch.cuda.device_count()):
        found[f"cuda:{i}"] = f"GPU {i}: {torch.cuda.get_device_name(i)}"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found["mps"] = "Apple GPU (MPS)"
    return found


# ------------------------------------------------------------------ new run: summary + hyper-parameters
def _plan_counts():
    """(phases, counts) of the current choices; ([], None) with an error box when they cannot be used."""
    try:
        hier = _choices.hierarchy_of(inp)
        plan = _choices.current_plan(inp, hier)
        return _choices.strategy_phases(inp, hier), visuals.plan_counts(hier, plan)
    except Exception as exc:
        st.error(f"Your backbone choices cannot be used ({exc}). What to do: open the Backbone page and pick again.")
        return [], None


def _choices_summary(phases, counts) -> None:
    bb = _backbones.describe(inp["backbone"])
    text = _choices.modality(inp) == "text"
    unit = _choices.UNIT[_choices.modality(inp)]
    st.markdown(
        f"**Backbone** {bb['label']} · {'pretrained' if inp['weights'] == 'pretrained' else 'random'} weights  \n"
        f"**Data** {_display.plain(_choices.data_label(inp))} · {inp['per_class'] or 'all'} training {unit} "
        f"per class · " + (f"{inp['max_tokens']} tokens" if text else f"{inp['image_size']} px") + "  \n"
        f"**Strategy** {_display.strategy_label(inp['strategy'])}"
        + (f"  \n**Frozen** {counts['frozen_blocks']} of {counts['blocks']} blocks · "
           f"{visuals.fmt_count(counts['trainable'])} of {visuals.fmt_count(counts['total'])} parameters train"
           if counts else "")
    )
    if counts:
        _display.meter(counts["trainable"], counts["total"])
    if len(phases) > 1:
        st.caption("Phases: " + " → ".join(f"{n} ({e} ep.)" for n, e, _ in phases))
    st.page_link("pages/backbone.py", label="Change backbone or freezing", icon=":material/account_tree:")
    st.page_link("pages/data.py", label="Change data", icon=":material/image:")


def _hyper_parameters() -> None:
    st.text_input("Run name", placeholder="e.g. frozen MobileNet, 100/class", max_chars=80, **_inputs.bind("name"),
                  help="Shown in the Compare page. Empty: backbone · strategy · data.")
    unit = _choices.UNIT[_choices.modality(inp)]
    c1, c2, c3 = st.columns(3)
    c1.number_input("Epochs", 1, 100, help=f"Passes over the training {unit} (over all phases).",
                    **_inputs.bind("epochs"))
    c2.select_slider("Batch size", [8, 16, 32, 64, 128], help=f"{unit.capitalize()} per weight update.",
                     **_inputs.bind("batch_size"))
    c3.selectbox("Optimizer", ["adamw", "sgd"], help="AdamW adapts the step per weight; SGD with momentum is the "
                 "classic. SGD gets a 10x larger default LR.", **_inputs.bind("optimizer"))
    c4, c5, c6 = st.columns(3)
    default_lr = strategies.default_lr(inp["strategy"], inp["optimizer"], _choices.modality(inp))
    st.session_state.setdefault("in_lr", float(inp["lr"] or default_lr))
    c4.number_input("Learning rate", 1e-6, 1.0, format="%.0e", step=1e-4, key="in_lr",
                    on_change=lambda: inp.update(lr=float(st.session_state["in_lr"])),
                    help=f"Default for this strategy: {default_lr:.0e}. Too high and training diverges.")
    devices = _devices()
    if inp["device"] not in devices:
        _inputs.set_input("device", "auto")
    c5.selectbox("Device", list(devices), format_func=devices.get, help="Where the worker process trains. "
                 "One run at a time per device; extra runs wait in a queue.", **_inputs.bind("device"))
    c6.number_input("Seed", 0, 10_000, help="Same seed, same split and same initial head: runs compare fairly.",
                    **_inputs.bind("seed"))
    if inp["strategy"] == "two_phase":
        d1, d2 = st.columns(2)
        d1.number_input("Head-only epochs (phase 1)", 1, 50, **_inputs.bind("head_epochs"),
                        help="Train the new head alone first, so its random gradients do not wreck the backbone.")
        d2.number_input("Backbone LR × in phase 2", 0.001, 1.0, format="%.3f", **_inputs.bind("backbone_lr_mult"),
                        help="Why a smaller LR for the backbone? Its weights are already good; big steps would "
                             "erase what it learned on ImageNet.")
    st.toggle("Discriminative learning rates (÷2.6 per block group below the head)",
              value=bool(inp.get("lr_decay")), key="lr_decay_toggle",
              on_change=lambda: inp.update(lr_decay=2.6 if st.session_state["lr_decay_toggle"] else None),
              help="fastai/ULMFiT: early blocks (generic features) change slowest, late blocks fastest.")


def _launch() -> None:
    from tl_core.runs.launcher import launch

    try:
        cfg = _inputs.to_config(inp)
        new_id = launch(cfg, store.runs_dir, owner=_classroom.owner())
    except (ValueError, KeyError, backbones.WeightsError) as exc:
        st.session_state["launch_error"] = str(exc)
        return
    st.session_state.pop("launch_error", None)
    st.session_state["run_id"] = new_id
    st.query_params["run"] = new_id


def new_run_form(expanded: bool) -> None:
    with st.expander("New run: your choices and the hyper-parameters", expanded=expanded, icon=":material/tune:"):
        problem = _inputs.config_problem(inp)  # e.g. a text backbone with an image data set: refused up front
        phases, counts = _plan_counts() if problem is None else ([], None)
        left, right = st.columns([2, 3], gap="large")
        with left:
            _choices_summary(phases, counts)
        with right:
            _hyper_parameters()
        if problem:
            st.error(f"These choices cannot be launched: {_display.plain(problem)}. What to do: change them on the "
                     "Backbone or Data page.")
        st.button("Launch training", type="primary", key="launch", on_click=_launch, icon=":material/play_arrow:",
                  disabled=counts is None, help="Starts a background worker process: closing this tab does not stop it.")
        if st.session_state.get("launch_error"):
            st.error(f"Cannot launch: {_display.plain(st.session_state['launch_error'])}. "
                     "What to do: fix that setting and launch again.")


# ------------------------------------------------------------------ the attached run, live
def _pick_run(ids: list[str]) -> None:
    """Attach the picked run. Streamlit sends a selectbox's value as its label: after the labels changed
    (a run's status moved on) the browser can send a stale label, which is not a run id and is ignored."""
    picked = st.session_state["run_pick"]
    if picked in ids:
        st.session_state["run_id"] = picked
        st.query_params["run"] = picked


def run_picker(runs_list, run_id) -> str:
    """The run selectbox (the attached run, else the newest); returns the picked id."""
    ids = [r.id for r in runs_list]
    if run_id not in ids:
        run_id = ids[0]
    labels = {r.id: f"{r.name} · {r.status} · {r.id}" for r in runs_list}
    st.session_state["run_pick"] = run_id
    st.selectbox("Run", ids, format_func=labels.get, key="run_pick", on_change=_pick_run, args=(ids,),
                 help="The run id is in the page address: reload or open it in another tab to re-attach.")
    return run_id


def _live_view(run_id: str) -> None:
    """What moves every batch: progress and curves (refreshed every ``REFRESH`` s while the run is active)."""
    reap(store)  # a run whose worker died ends as failed
    info = store.get(run_id)
    if REFRESH and (not info.active or (store.active_count() > CROWDED_RUNS) != CROWDED):
        st.rerun(scope="app")  # finished, or a class came or went: a full rerun sets the timers again
    _run_view.status_header(info)
    epochs, steps, phases = (store.metrics(run_id, kind) for kind in ("epoch", "step", "phase"))
    meta = info.info or {}
    spe = int(meta.get("steps_per_epoch") or 1)
    total_epochs = int(meta.get("total_epochs") or info.config.get("epochs") or 1)
    _run_view.status_message(info, epochs, steps, spe, total_epochs)
    _run_view.curves(info, epochs, steps, phases, spe, total_epochs)


def _epoch_view(run_id: str) -> None:
    """What moves once an epoch: weight drift and feature (or attention) maps. They are redrawn every
    ``EPOCH_REFRESH`` s, not every second."""
    info = store.get(run_id)
    epochs, phases = store.metrics(run_id, "epoch"), store.metrics(run_id, "phase")
    if models.modality(info.config.get("backbone", "")) == "text":  # attention maps need the page's width
        _run_view.drift(info, epochs, phases)
        _run_view.attention_snapshots(store, run_id, info)
    else:
        d_col, f_col = st.columns([1, 1], gap="large")
        with d_col:
            _run_view.drift(info, epochs, phases)
        with f_col:
            _run_view.feature_maps(store, run_id)
    if info.status == "completed":
        l1, l2 = st.columns(2)
        l1.page_link("pages/compare.py", label="Compare runs →", icon=":material/stacked_line_chart:")
        l2.page_link("pages/inspect.py", label="Inspect this run →", icon=":material/search:")


def all_runs_table(runs_list) -> None:
    title = "All runs" if not _classroom.on() or _classroom.shows_all() else "Your runs"
    with st.expander(f"{title} ({len(runs_list)})"):
        st.dataframe([{
            **({"student": getattr(r, "owner", None) or ""} if _classroom.on() else {}), "name": r.name,
            "status": r.status + (f" (#{r.queue_position} in queue)" if r.queue_position else ""),
            "val acc": f"{r.summary['final_val_acc']:.1%}" if r.summary and r.summary.get("final_val_acc") is not None
            else "", "device": r.device, "id": r.id, "reason": r.reason or "",
        } for r in runs_list], hide_index=True, width="stretch")


# ------------------------------------------------------------------ the page
run_id, attached = _attached_run()
new_run_form(expanded=attached is None)
runs_list = _classroom.visible_runs()
if not runs_list:
    st.info("No runs yet. Press **Launch training** above: a first run takes under a minute on a laptop CPU.")
    st.stop()
run_id = run_picker(runs_list, run_id)
ATTACHED = store.get(run_id)  # run_every is fixed when a fragment is defined
# In a class (more than CROWDED_RUNS runs queued or training) each run gets a small share of a device and its
# curves move slowly; refreshing less often keeps the server's CPU for 30 sessions under half a core.
CROWDED = ATTACHED.active and store.active_count() > CROWDED_RUNS
REFRESH, EPOCH_REFRESH = ((2.0, 10.0) if CROWDED else (1.0, 3.0)) if ATTACHED.active else (None, None)
st.fragment(run_every=REFRESH)(_live_view)(run_id)
st.fragment(run_every=EPOCH_REFRESH)(_epoch_view)(run_id)
all_runs_table(runs_list)
