"""Train page: launch a background run and watch it live (curves, weight drift, feature maps, or the
attention maps of a text run)."""
import time

import streamlit as st
import torch

from pages import _classroom, _text, _ui
from tl_core.models import backbones
from tl_core.models import arch as models
from tl_core.models import strategies
from tl_core.viz import text as text_visuals
from tl_core.viz import figures as visuals

inp = _ui.start_page()
store = _ui.store()
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
        st.warning(f"Run {_ui.plain(run_id)} is another student's: this page shows your own runs. "
                   "Launch a new run below, or pick one of yours.")
    except KeyError:
        st.warning(f"Run {_ui.plain(run_id)} is not in this lab's run store ({_ui.plain(store.runs_dir)}). "
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
        hier = _ui.hierarchy_of(inp)
        plan = _ui.current_plan(inp, hier)
        return _ui.strategy_phases(inp, hier), visuals.plan_counts(hier, plan)
    except Exception as exc:
        st.error(f"Your backbone choices cannot be used ({exc}). What to do: open the Backbone page and pick again.")
        return [], None


def _choices_summary(phases, counts) -> None:
    bb = _ui.describe(inp["backbone"])
    text = _ui.modality(inp) == "text"
    st.markdown(
        f"**Backbone** {bb['label']} · {'pretrained' if inp['weights'] == 'pretrained' else 'random'} weights  \n"
        f"**Data** {_ui.plain(_ui.data_label(inp))} · {inp['per_class'] or 'all'} training {_ui.UNIT[_ui.modality(inp)]} "
        f"per class · " + (f"{inp['max_tokens']} tokens" if text else f"{inp['image_size']} px") + "  \n"
        f"**Strategy** {_ui.strategy_label(inp['strategy'])}"
        + (f"  \n**Frozen** {counts['frozen_blocks']} of {counts['blocks']} blocks · "
           f"{visuals.fmt_count(counts['trainable'])} of {visuals.fmt_count(counts['total'])} parameters train"
           if counts else "")
    )
    if counts:
        _ui.meter(counts["trainable"], counts["total"])
    if len(phases) > 1:
        st.caption("Phases: " + " → ".join(f"{n} ({e} ep.)" for n, e, _ in phases))
    st.page_link("pages/backbone.py", label="Change backbone or freezing", icon=":material/account_tree:")
    st.page_link("pages/data.py", label="Change data", icon=":material/image:")


def _hyper_parameters() -> None:
    st.text_input("Run name", placeholder="e.g. frozen MobileNet, 100/class", max_chars=80, **_ui.bind("name"),
                  help="Shown in the Compare page. Empty: backbone · strategy · data.")
    c1, c2, c3 = st.columns(3)
    c1.number_input("Epochs", 1, 100, help=f"Passes over the training {_ui.UNIT[_ui.modality(inp)]} (over all phases).",
                    **_ui.bind("epochs"))
    c2.select_slider("Batch size", [8, 16, 32, 64, 128], help=f"{_ui.UNIT[_ui.modality(inp)].capitalize()} per "
                     "weight update.", **_ui.bind("batch_size"))
    c3.selectbox("Optimizer", ["adamw", "sgd"], help="AdamW adapts the step per weight; SGD with momentum is the "
                 "classic. SGD gets a 10x larger default LR.", **_ui.bind("optimizer"))
    c4, c5, c6 = st.columns(3)
    default_lr = strategies.default_lr(inp["strategy"], inp["optimizer"], _ui.modality(inp))
    st.session_state.setdefault("in_lr", float(inp["lr"] or default_lr))
    c4.number_input("Learning rate", 1e-6, 1.0, format="%.0e", step=1e-4, key="in_lr",
                    on_change=lambda: inp.update(lr=float(st.session_state["in_lr"])),
                    help=f"Default for this strategy: {default_lr:.0e}. Too high and training diverges.")
    devices = _devices()
    if inp["device"] not in devices:
        _ui.set_input("device", "auto")
    c5.selectbox("Device", list(devices), format_func=devices.get, help="Where the worker process trains. "
                 "One run at a time per device; extra runs wait in a queue.", **_ui.bind("device"))
    c6.number_input("Seed", 0, 10_000, help="Same seed, same split and same initial head: runs compare fairly.",
                    **_ui.bind("seed"))
    if inp["strategy"] == "two_phase":
        d1, d2 = st.columns(2)
        d1.number_input("Head-only epochs (phase 1)", 1, 50, **_ui.bind("head_epochs"),
                        help="Train the new head alone first, so its random gradients do not wreck the backbone.")
        d2.number_input("Backbone LR × in phase 2", 0.001, 1.0, format="%.3f", **_ui.bind("backbone_lr_mult"),
                        help="Why a smaller LR for the backbone? Its weights are already good; big steps would "
                             "erase what it learned on ImageNet.")
    st.toggle("Discriminative learning rates (÷2.6 per block group below the head)",
              value=bool(inp.get("lr_decay")), key="lr_decay_toggle",
              on_change=lambda: inp.update(lr_decay=2.6 if st.session_state["lr_decay_toggle"] else None),
              help="fastai/ULMFiT: early blocks (generic features) change slowest, late blocks fastest.")


def _launch() -> None:
    from tl_core.runs import store as runs

    try:
        cfg = _ui.to_config(inp)
        new_id = runs.launch(cfg, store.runs_dir, owner=_classroom.owner())
    except (ValueError, KeyError, backbones.WeightsError) as exc:
        st.session_state["launch_error"] = str(exc)
        return
    st.session_state.pop("launch_error", None)
    st.session_state["run_id"] = new_id
    st.query_params["run"] = new_id


def new_run_form(expanded: bool) -> None:
    with st.expander("New run: your choices and the hyper-parameters", expanded=expanded, icon=":material/tune:"):
        problem = _ui.config_problem(inp)  # e.g. a text backbone with an image data set: refused up front
        phases, counts = _plan_counts() if problem is None else ([], None)
        left, right = st.columns([2, 3], gap="large")
        with left:
            _choices_summary(phases, counts)
        with right:
            _hyper_parameters()
        if problem:
            st.error(f"These choices cannot be launched: {_ui.plain(problem)}. What to do: change them on the "
                     "Backbone or Data page.")
        st.button("Launch training", type="primary", key="launch", on_click=_launch, icon=":material/play_arrow:",
                  disabled=counts is None, help="Starts a background worker process: closing this tab does not stop it.")
        if st.session_state.get("launch_error"):
            st.error(f"Cannot launch: {_ui.plain(st.session_state['launch_error'])}. "
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


def _status_header(info) -> None:
    head, stop_col = st.columns([5, 1], vertical_alignment="center")
    head.markdown(f"### {_ui.plain(info.name)} &nbsp; {_ui.status_badge(info.status)}")
    if info.active and _classroom.may_stop(info):
        stop_col.button("Stop", key=f"stop_{info.id}", icon=":material/stop:", width="stretch",
                        on_click=_classroom.stop, args=(info.id,),
                        help="Stops within one batch; the model trained so far is kept.")
    _classroom.stop_error()
    if info.stop_requested and info.active:
        st.caption("Stop requested: finishing the current batch…")


def _progress(info, epochs, steps, spe, total_epochs) -> None:
    """The running run's progress bar: epoch, step, ETA, speed, device (and GPU memory)."""
    meta = info.info or {}
    last = steps[-1] if steps else None
    done = int(last["step"]) if last else 0
    total = spe * total_epochs
    elapsed = time.time() - (info.started or time.time())
    rate = [m["images_per_s"] for m in epochs[-1:]] or [None]
    eta = (elapsed / done * (total - done)) if done else None
    text = (f"epoch {last['epoch'] if last else 0}/{total_epochs} · step {done}/{total} · "
            f"ETA {_ui.fmt_seconds(eta)} · " + (f"{rate[0]:.0f} {meta.get('unit', 'images')}/s · " if rate[0] else "")
            + f"{meta.get('device', info.device)}")
    if str(meta.get("device", "")).startswith("cuda") and epochs:
        text += f" · GPU memory {epochs[-1].get('peak_mem_mb', 0):.0f} MB"
    st.progress(min(1.0, done / total) if total else 0.0,
                text=text if meta else _ui.plain(info.reason or "loading data and model…"))


def _status_message(info, epochs, steps, spe, total_epochs) -> None:
    if info.status == "queued":
        st.info(f"Queued: position **{info.queue_position}** in the queue for {info.device}. "
                "It starts by itself when the run before it ends (one run at a time per device).")
    elif info.status == "running":
        _progress(info, epochs, steps, spe, total_epochs)
    elif info.status == "completed":
        s = info.summary or {}
        st.success(f"Finished: validation accuracy **{(s.get('final_val_acc') or 0):.1%}** (best "
                   f"{(s.get('best_val_acc') or 0):.1%}) in {_ui.fmt_seconds(s.get('wall_s'))}. "
                   "Compare it with other runs, or inspect its mistakes.")
    elif info.status == "stopped":
        st.warning(f"Stopped: {_ui.plain(info.reason or 'by request')}. "
                   "The curves below show what was trained until then.")
    else:
        st.error(f"This run {info.status}: {_ui.plain(info.reason or 'no reason recorded')}. "
                 "What to do: change the setting named above and launch again.")


def _curves(info, epochs, steps, phases, spe, total_epochs) -> None:
    """Loss/accuracy curves (per step and per epoch, phase boundaries marked) and what was cached."""
    meta = info.info or {}
    bounds = visuals.phase_starts(meta.get("phases") or [])  # where unfreezing happens, known from the start
    step_rows = [{"x": (s["epoch"] - 1) + (s["batch"] or 0) / spe, "loss": s["loss"]} for s in steps
                 if s.get("loss") is not None and s.get("epoch")]
    frame = _ui.figure_once(f"curves_{info.id}", (total_epochs, tuple(bounds)),
                            lambda: visuals.run_curves_figure([], [], bounds, total_epochs))
    fig = visuals.update_run_curves(frame, epochs, step_rows, total_epochs)
    st.plotly_chart(fig, key=f"curves_{info.id}", width="stretch")
    if len(phases) > 1:  # the frozen part changes with each phase, and so does what can be cached
        st.caption("Speed-up, per phase:  \n" + "  \n".join(f"{p['phase']} · {p['name']}: {p['cache']}" for p in phases))
    elif phases or meta.get("cache"):
        st.caption(f"Speed-up: {phases[0]['cache'] if phases else meta['cache']}.")


def _drift(info, epochs, phases) -> None:
    """Weight drift per block after the last epoch; frozen blocks stay at zero."""
    st.markdown("**Weight drift per block** ", help="How far each block's weights moved from where they "
                "started: ‖W − W₀‖ / ‖W₀‖. Frozen blocks stay at exactly zero.")
    if not epochs:
        st.caption("Appears after the first epoch.")
        return
    cfg, meta, last = info.config, info.info or {}, epochs[-1]
    current = phases[-1]["trainable"] if phases else []
    drift = last.get("drift") or {}
    frozen = [b for b in drift if current and b not in current]
    short = {}
    try:
        text = models.modality(cfg["backbone"]) == "text"
        hier = _ui.hierarchy_for(cfg["backbone"], int(cfg.get("max_tokens", 64) if text else cfg["image_size"]),
                                 len(meta.get("classes") or []) or 10)
        rows = (text_visuals.text_block_rows if text else visuals.block_rows)(hier)
        short = {r["name"]: r["short"] for r in rows}
    except Exception:
        pass
    fig = _ui.figure_once(f"drift_{info.id}", (last.get("seq"), tuple(frozen)),
                          lambda: visuals.drift_figure(drift, frozen, labels=short))
    st.plotly_chart(fig, key=f"drift_{info.id}", width="stretch")
    bn = {b: v for b, v in (last.get("bn_stat_drift") or {}).items() if b in frozen and v}
    if bn:
        st.caption(f"BatchNorm statistics of frozen blocks moved by up to {max(bn.values()):.1%} "
                   "(bn_mode 'train'): the weights are frozen, the statistics are not.")


def _snapshots(run_id: str) -> None:
    """Feature maps of one validation image: before training and after the latest epoch."""
    st.markdown("**Feature maps of one validation image**", help="Activations of an early, a middle and a late "
                "block for the same image: before training and now. Early maps look like edges; late ones are "
                "abstract. Frozen blocks' maps do not change.")
    snap_epochs = store.snapshot_epochs(run_id)
    if not snap_epochs:
        st.caption("Appears when the model is loaded.")
        return
    pick = [0, snap_epochs[-1]] if snap_epochs[-1] != 0 and 0 in snap_epochs else snap_epochs[-1:]

    def build():
        snaps = store.snapshots(run_id, pick)
        cols = {("before training" if e == 0 else f"after epoch {e}"): snaps[e] for e in pick}
        return visuals.feature_maps_figure(cols, max_maps=6, height=520)

    fig = _ui.figure_once(f"maps_{run_id}", tuple(pick), build)
    st.plotly_chart(fig, key=f"maps_{run_id}", width="stretch")


def _live_view(run_id: str) -> None:
    """What moves every batch: progress and curves (refreshed every ``REFRESH`` s while the run is active)."""
    info = store.get(run_id)
    if REFRESH and (not info.active or (store.active_count() > CROWDED_RUNS) != CROWDED):
        st.rerun(scope="app")  # finished, or a class came or went: a full rerun sets the timers again
    _status_header(info)
    epochs, steps, phases = (store.metrics(run_id, kind) for kind in ("epoch", "step", "phase"))
    meta = info.info or {}
    spe = int(meta.get("steps_per_epoch") or 1)
    total_epochs = int(meta.get("total_epochs") or info.config.get("epochs") or 1)
    _status_message(info, epochs, steps, spe, total_epochs)
    _curves(info, epochs, steps, phases, spe, total_epochs)


def _epoch_view(run_id: str) -> None:
    """What moves once an epoch: weight drift and feature (or attention) maps. They are redrawn every
    ``EPOCH_REFRESH`` s, not every second."""
    info = store.get(run_id)
    epochs, phases = store.metrics(run_id, "epoch"), store.metrics(run_id, "phase")
    if models.modality(info.config.get("backbone", "")) == "text":  # attention maps need the page's width
        _drift(info, epochs, phases)
        _text.attention_snapshots(store, run_id, info)
    else:
        d_col, f_col = st.columns([1, 1], gap="large")
        with d_col:
            _drift(info, epochs, phases)
        with f_col:
            _snapshots(run_id)
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
