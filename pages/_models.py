"""Finished runs in the pages: their trained and initial models, data, predictions and feature maps
(cached per server process; the Inspect page composes them)."""
from __future__ import annotations

import streamlit as st


@st.cache_resource(show_spinner="Loading the trained model…", max_entries=3)
def run_model(run_dir: str):
    """(fine-tuned model, TrainConfig, class names) of a finished run, in eval mode."""
    from tl_core import training

    return training.load_model(run_dir)


@st.cache_resource(show_spinner="Rebuilding the model as it was before training…", max_entries=3)
def initial_model(run_dir: str):
    """The run's starting point: the pretrained backbone with the same freshly initialised head (same seed),
    or the same random initialisation for a scratch run."""
    from tl_core import training

    _, cfg, class_names = run_model(run_dir)
    training._seed_everything(cfg.seed)
    model, _ = training._build_arch(cfg.backbone, len(class_names), cfg.effective_weights, cfg.weights_file)
    return model.eval()


@st.cache_resource(show_spinner="Reading the run's data…", max_entries=3)
def run_data(run_dir: str) -> dict:
    from tl_core import training

    model, cfg, _ = run_model(run_dir)
    return training.prepare(cfg, training.data_config_for(cfg.backbone, model))


@st.cache_data(show_spinner="Classifying validation images…", max_entries=3)
def predictions(run_dir: str, limit: int = 600):
    """(val indices, predicted labels, confidence) for up to ``limit`` validation images."""
    import torch

    model, cfg, _ = run_model(run_dir)
    d = run_data(run_dir)
    idx = d["val_idx"][:limit]
    preds, conf = [], []
    with torch.no_grad():
        for s in range(0, len(idx), 128):
            p = model(d["eval_tf"](d["ds"].images[idx[s:s + 128]])).softmax(1)
            c, k = p.max(1)
            preds.append(k)
            conf.append(c)
    return idx.numpy(), torch.cat(preds).numpy(), torch.cat(conf).numpy()


def layer_maps(model, hier, x, layers: list[str], channels: dict | None = None) -> tuple[dict, dict]:
    """Feature maps of image ``x`` [3,H,W] at blocks ``layers``: ({layer: uint8 [k,h,w]}, channels used).
    Pass the returned channels back to show the same channels of another model."""
    import torch

    from tl_core import training

    raw, handles = {}, []
    for name in layers:
        mods = []
        for m in hier.block(name).members:
            try:
                mods.append(model.get_submodule(m))
            except AttributeError:
                continue
        if mods:
            handles.append(mods[-1].register_forward_hook(
                lambda _m, _i, out, name=name: raw.__setitem__(name, out[0].detach()) if isinstance(out, torch.Tensor)
                else None))
    try:
        with torch.no_grad():
            model.eval()(x[None])
    finally:
        for h in handles:
            h.remove()
    maps, used = {}, {}
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    for name, t in raw.items():
        m = training._to_map(t.float(), prefix)
        if m is not None:
            maps[name], used[name] = training.snapshot_maps(m, (channels or {}).get(name))
    return maps, used


def first_conv_weight(model):
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] == 3:
            return m.weight.detach().cpu().numpy()
    return None
