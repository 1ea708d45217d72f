"""The Train page's views of one run: its status and progress, the loss/accuracy curves, the weight drift
per block, and the feature maps of one validation image (image runs) or the attention maps of one
validation sentence (text runs), before training and after the latest epoch."""
from __future__ import annotations

import time

import streamlit as st

from tl_core.models import arch as models
from tl_core.viz import figures as visuals
from tl_core.viz import text as text_visuals

from pages import _backbones, _classroom, _display


def status_header(info) -> None:
    head, stop_col = st.columns([5, 1], vertical_alignment="center")
    head.markdown(f"### {_display.plain(info.name)} &nbsp; {_display.status_badge(info.status)}")
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
            f"ETA {_display.fmt_seconds(eta)} · "
            + (f"{rate[0]:.0f} {meta.get('unit', 'images')}/s · " if rate[0] else "")
            + f"{meta.get('device', info.device)}")
    if str(meta.get("device", "")).startswith("cuda") and epochs:
        text += f" · GPU memory {epochs[-1].get('peak_mem_mb', 0):.0f} MB"
    st.progress(min(1.0, done / total) if total else 0.0,
                text=text if meta else _display.plain(info.reason or "loading data and model…"))


def status_message(info, epochs, steps, spe, total_epochs) -> None:
    if info.status == "queued":
        st.info(f"Queued: position **{info.queue_position}** in the queue for {info.device}. "
                "It starts by itself when the run before it ends (one run at a time per device).")
    elif info.status == "running":
        _progress(info, epochs, steps, spe, total_epochs)
    elif info.status == "completed":
        s = info.summary or {}
        st.success(f"Finished: validation accuracy **{(s.get('final_val_acc') or 0):.1%}** (best "
                   f"{(s.get('best_val_acc') or 0):.1%}) in {_display.fmt_seconds(s.get('wall_s'))}. "
                   "Compare it with other runs, or inspect its mistakes.")
    elif info.status == "stopped":
        st.warning(f"Stopped: {_display.plain(info.reason or 'by request')}. "
                   "The curves below show what was trained until then.")
    else:
        st.error(f"This run {info.status}: {_display.plain(info.reason or 'no reason recorded')}. "
                 "What to do: change the setting named above and launch again.")


def curves(info, epochs, steps, phases, spe, total_epochs) -> None:
    """Loss/accuracy curves (per step and per epoch, phase boundaries marked) and what was cached."""
    meta = info.info or {}
    bounds = visuals.phase_starts(meta.get("phases") or [])  # where unfreezing happens, known from the start
    step_rows = [{"x": (s["epoch"] - 1) + (s["batch"] or 0) / spe, "loss": s["loss"]} for s in steps
                 if s.get("loss") is not None and s.get("epoch")]
    frame = _display.figure_once(f"curves_{info.id}", (total_epochs, tuple(bounds)),
                            lambda: visuals.run_curves_figure([], [], bounds, total_epochs))
    fig = visuals.update_run_curves(frame, epochs, step_rows, total_epochs)
    st.plotly_chart(fig, key=f"curves_{info.id}", width="stretch")
    if len(phases) > 1:  # the frozen part changes with each phase, and so does what can be cached
        st.caption("Speed-up, per phase:  \n" + "  \n".join(f"{p['phase']} · {p['name']}: {p['cache']}" for p in phases))
    elif phases or meta.get("cache"):
        st.caption(f"Speed-up: {phases[0]['cache'] if phases else meta['cache']}.")


def drift(info, epochs, phases) -> None:
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
        hier = _backbones.hierarchy_for(cfg["backbone"], int(cfg.get("max_tokens", 64) if text else cfg["image_size"]),
                                 len(meta.get("classes") or []) or 10)
        rows = (text_visuals.text_block_rows if text else visuals.block_rows)(hier)
        short = {r["name"]: r["short"] for r in rows}
    except Exception:
        pass
    fig = _display.figure_once(f"drift_{info.id}", (last.get("seq"), tuple(frozen)),
                          lambda: visuals.drift_figure(drift, frozen, labels=short))
    st.plotly_chart(fig, key=f"drift_{info.id}", width="stretch")
    bn = {b: v for b, v in (last.get("bn_stat_drift") or {}).items() if b in frozen and v}
    if bn:
        st.caption(f"BatchNorm statistics of frozen blocks moved by up to {max(bn.values()):.1%} "
                   "(bn_mode 'train'): the weights are frozen, the statistics are not.")


def feature_maps(store, run_id: str) -> None:
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

    fig = _display.figure_once(f"maps_{run_id}", tuple(pick), build)
    st.plotly_chart(fig, key=f"maps_{run_id}", width="stretch")


def _layer_label(name: str) -> str:
    return f"Transformer layer {int(name.split('.')[-1]) + 1}" if name.startswith("layers.") else name


def attention_snapshots(store, run_id: str, info) -> None:
    """Attention maps of the run's probe sentence, early against late layer: after the latest epoch and
    before training (text runs' snapshots)."""
    st.markdown("**Attention of one validation sentence**", help="Each row is a token; its colours show which "
                "tokens it attends to. Early layers attend to neighbours and punctuation (word-level patterns); "
                "late ones gather the sentence's meaning. Frozen layers' maps do not change.")
    probe = (info.info or {}).get("snapshot_probe") or {}
    epochs = store.snapshot_epochs(run_id)
    if not epochs:
        st.caption("Appears when the model is loaded.")
        return
    pick = [epochs[-1], 0] if epochs[-1] != 0 and 0 in epochs else epochs[-1:]
    snaps = store.snapshots(run_id, pick)
    if not any(snaps.values()):
        st.caption("This backbone has no attention layers (a bag of word vectors): nothing to show here.")
        return
    text, tokens = str(probe.get("text", "")), probe.get("tokens") or []
    st.caption(f"“{_display.plain(text[:300])}{'…' if len(text) > 300 else ''}”: its first {len(tokens)} tokens, "
               "as the backbone's tokenizer cut them; each map is the mean over the most varied attention heads.")
    tabs = st.tabs([f"after epoch {e}" if e else "before training" for e in pick])
    for tab, epoch in zip(tabs, pick):
        layers = list(snaps[epoch])
        shown = {k: snaps[epoch][k] for k in dict.fromkeys([layers[0], layers[-1]])}
        with tab:
            st.plotly_chart(text_visuals.attention_figure(shown, tokens,
                                                          {k: _layer_label(k) for k in shown}),
                            key=f"att_{run_id}_{epoch}", width="stretch")

