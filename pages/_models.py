"""Finished runs in the pages: their trained and initial models, data, predictions and feature maps,
and the representation probes of the Inspect page (what changed, feature space, Grad-CAM, attention,
word vectors). Everything heavy is cached per run folder and server process; the Inspect page composes it.

The cached models are shared by every session, and the probes hook into them: they run one at a
time (``model_lock``)."""
from __future__ import annotations

import threading

import streamlit as st

PROBE_ITEMS = 200  # validation items the probes look at (a seeded subsample when there are more)
CAM_SIZE = 160  # Grad-CAM runs at least at this size: at 96 px MobileNetV2's last map is only 3x3
ATTENTION_TOKENS = 32  # tokens of an example sentence in the attention pictures (more would blur)


@st.cache_resource(show_spinner="Loading the trained model…", max_entries=3)
def run_model(run_dir: str):
    """(fine-tuned model, TrainConfig, class names) of a finished run, in eval mode."""
    from tl_core.training.checkpoint import load_model

    return load_model(run_dir)


@st.cache_resource(show_spinner="Rebuilding the model as it was before training…", max_entries=3)
def initial_model(run_dir: str):
    """The run's starting point: the pretrained backbone with the same freshly initialised head (same seed),
    or the same random initialisation for a scratch run."""
    from tl_core.models.arch import build_arch
    from tl_core.training.trainer import seed_everything

    _, cfg, class_names = run_model(run_dir)
    seed_everything(cfg.seed)
    model, _ = build_arch(cfg.backbone, len(class_names), cfg.effective_weights, cfg.weights_file,
                          probe_depth=cfg.probe_depth, image_size=cfg.sample_size)
    return model.eval()


@st.cache_resource(show_spinner="Reading the run's data…", max_entries=3)
def run_data(run_dir: str) -> dict:
    from tl_core.models.arch import data_config_for
    from tl_core.training import trainer as training

    model, cfg, _ = run_model(run_dir)
    return training.prepare(cfg, data_config_for(cfg.backbone, model))


@st.cache_data(show_spinner="Classifying the validation images with the saved model…", max_entries=3)
def predictions(run_dir: str) -> dict:
    """{val_idx, label, pred, conf} for every validation item, recomputed with the saved model: for a run
    that stored no predictions of its own (``RunStore.predictions``; runs from an older version)."""
    import torch

    model, cfg, _ = run_model(run_dir)
    d = run_data(run_dir)
    idx = d["val_idx"]
    preds, conf = [], []
    with model_lock(), torch.no_grad():
        for s in range(0, len(idx), 128):
            p = model(d["eval_tf"](d["ds"].images[idx[s:s + 128]])).softmax(1)
            c, k = p.max(1)
            preds.append(k)
            conf.append(c)
    return {"val_idx": idx.numpy(), "label": d["ds"].labels[idx].numpy(), "pred": torch.cat(preds).numpy(),
            "conf": torch.cat(conf).numpy()}


def layer_maps(model, hier, x, layers: list[str], channels: dict | None = None) -> tuple[dict, dict]:
    """Feature maps of image ``x`` [3,H,W] at blocks ``layers``: ({layer: uint8 [k,h,w]}, channels used).
    Pass the returned channels back to show the same channels of another model."""
    import torch

    from tl_core.training import telemetry

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
        m = telemetry.to_map(t.float(), prefix)
        if m is not None:
            maps[name], used[name] = telemetry.snapshot_maps(m, (channels or {}).get(name))
    return maps, used


def first_conv_weight(model):
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] == 3:
            return m.weight.detach().cpu().numpy()
    return None


# ------------------------------------------------------------------ representation probes


@st.cache_resource(show_spinner=False)
def model_lock() -> threading.RLock:
    """One per server process: probes hook into the shared cached models, so they take turns."""
    return threading.RLock()


@st.cache_resource(show_spinner="Reading the network's blocks…", max_entries=6)
def hierarchy(run_dir: str, size: int | None = None):
    """The block hierarchy of the run's network at ``size`` (default: the run's own input size)."""
    from tl_core.models import surgery

    model, cfg, _ = run_model(run_dir)
    with model_lock():
        return surgery.hierarchy(model, size or cfg.sample_size)


def probe_rows(val_idx, limit: int = PROBE_ITEMS):
    """The validation rows the probes use: all of them, or a seeded (seed 0) sorted subsample of
    ``limit`` (the same rows as the "What changed?" lab measures on)."""
    import torch

    if len(val_idx) <= limit:
        return val_idx
    pick = torch.randperm(len(val_idx), generator=torch.Generator().manual_seed(0))[:limit]
    return val_idx[pick.sort().values]


@st.cache_resource(show_spinner="Building a randomly initialised copy of the network…", max_entries=2)
def random_model(run_dir: str):
    """The same architecture with random weights (seeded by the run's seed): the "no transfer" picture."""
    import torch

    from tl_core.models import arch as models

    _, cfg, class_names = run_model(run_dir)
    if cfg.effective_weights == "random":
        return initial_model(run_dir)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model, _ = models.build_arch(cfg.backbone, len(class_names), "random", probe_depth=cfg.probe_depth,
                                     image_size=cfg.sample_size)
    return model.eval()


def imagenet_categories(model, cfg) -> list[str] | None:
    """The 1,000 ImageNet class names when ``model``'s head is a catalogue backbone's ImageNet head, else None."""
    from tl_core.models import backbones

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    classes = getattr(head, "out_features", getattr(head, "out_channels", None))  # SqueezeNet: a 1x1 conv
    if cfg.weights_file or classes != backbones.IMAGENET_CLASSES:
        return None
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])  # ImageNet-1k order, shared by timm


@st.cache_resource(show_spinner="Loading the pretrained network with its own head…", max_entries=2)
def pretrained_model(run_dir: str) -> tuple:
    """(the pretrained backbone with its pretrained head, its class names or None) or (None, why not)."""
    from tl_core.models import backbones

    _, cfg, _ = run_model(run_dir)
    try:
        model, _ = backbones.create_model(cfg.backbone, None, "pretrained", cfg.weights_file, cfg.allow_download)
    except Exception as exc:  # no pretrained weights here (offline), or not a catalogue backbone
        return None, str(exc)
    return model.eval(), imagenet_categories(model, cfg)


@st.cache_data(show_spinner="Measuring how much each block changed (linear CKA on up to 200 validation items)…",
               max_entries=8)
def what_changed(run_dir: str) -> dict:
    """Linear CKA per block between the run's start and its trained network (``labs.what_changed``:
    the lab's own measurement, saved as ``cka.json`` in the run folder): {cka, labels, body, frozen, images}."""
    from pathlib import Path

    from tl_core.labs import what_changed as lab

    with model_lock():
        return lab.measure_folder(Path(run_dir))


def _start_for_projection(run_dir: str):
    """(title, model): the network the run started from, or for a scratch run the pretrained one beside it."""
    _, cfg, _ = run_model(run_dir)
    if cfg.effective_weights != "random":
        return "pretrained (before training)", initial_model(run_dir)
    pre, _ = pretrained_model(run_dir)
    return "pretrained (not used by this run)", pre


@st.cache_data(show_spinner="Projecting the features of the random, pretrained and trained networks…",
               max_entries=8)
def feature_space(run_dir: str) -> dict:
    """Penultimate features (image features or sentence embeddings) of up to 200 validation items for
    the random-init, pretrained and trained networks: {"panels": {title: [N, 2] PCA points},
    "accuracy": {title: nearest-centroid accuracy on the full features}, "labels": [N]}."""
    from tl_core.models import probes

    model, cfg, _ = run_model(run_dir)
    d = run_data(run_dir)
    rows = probe_rows(d["val_idx"])
    x, labels = d["eval_tf"](d["ds"].images[rows]), d["ds"].labels[rows].numpy()
    title, start = _start_for_projection(run_dir)
    nets = {"random initialisation": random_model(run_dir), title: start,
            "after training" if cfg.effective_weights == "random" else "fine-tuned (after training)": model}
    panels, accuracy = {}, {}
    with model_lock():
        for name, net in nets.items():
            if net is None:
                continue
            feats = probes.penultimate_features(net, x)
            panels[name], accuracy[name] = probes.project_2d(feats), probes.nearest_centroid_accuracy(feats, labels)
    return {"panels": panels, "accuracy": accuracy, "labels": labels}


@st.cache_data(show_spinner="Computing Grad-CAM…", max_entries=32)
def grad_cams(run_dir: str, key: str, size: int, layer: str, _image) -> dict:
    """Grad-CAM of image ``_image`` (uint8 [C, H, W]; ``key`` names it for the cache) at ``size`` px and
    block ``layer``: the trained network for the class it predicts at the run's own size, and the
    pretrained network (with its pretrained head) for its own top class.
    {"picture": HxWx3 uint8 at ``size``, "cams": {(model, class name): [size, size]}}."""
    import torch

    from tl_core import data
    from tl_core.models import arch as models
    from tl_core.models import probes

    model, cfg, class_names = run_model(run_dir)
    data_cfg = models.data_config_for(cfg.backbone, model)

    def at(side: int, norm: str = cfg.normalization):
        return data.make_transforms(data_cfg, side, normalization=norm)[1](_image)

    picture = (at(size, "none") * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    x, hier = at(size), hierarchy(run_dir, size)
    cams = {}
    with model_lock():
        with torch.no_grad():
            k = int(model(at(cfg.image_size)[None]).argmax())
        cams[("trained", class_names[k])] = probes.grad_cam(model, x, k, layer, hier)
        pre, categories = pretrained_model(run_dir)
        if pre is not None:
            with torch.no_grad():
                k = int(pre(x[None]).argmax())
            name = categories[k] if categories else f"its class #{k}"
            cams[("pretrained", name)] = probes.grad_cam(pre, x, k, layer, hier)
    return {"picture": picture, "cams": cams}


@st.cache_data(show_spinner="Reading the attention of the first and the last layer…", max_entries=16)
def attention(run_dir: str, text: str) -> dict:
    """The Train page's attention snapshots (``telemetry.AttentionSnapshots``: the same heads, each
    scaled to 0..255) of ``text`` (at most 32 tokens) in the first and the last Transformer layer, before
    and after training: {"tokens", "maps": {model: {layer: uint8 [heads, T, T]}}, "labels", "probs"}."""
    import torch

    from tl_core.training import telemetry
    from tl_core.data import texts as text_data
    from tl_core.models.backbones import text_tokenizer

    model, cfg, _ = run_model(run_dir)
    tok = text_tokenizer(cfg.backbone)
    x = text_data.tokenize([text], tok, min(cfg.max_tokens, ATTENTION_TOKENS))[0]
    tokens = tok.decode_tokens(x[0][x[1].bool()].tolist())
    if not tokens:
        raise ValueError("none of its words is in the model's vocabulary")
    hier = hierarchy(run_dir)
    layers = telemetry.default_snapshot_layers(hier, text=True)
    layers = [layers[0], layers[-1]]  # early vs late
    with model_lock():
        snap = telemetry.AttentionSnapshots(initial_model(run_dir), hier, x, layers)
        before = snap()
        snap.model = model  # the heads picked before training, after training
        maps = {"before training": before, "after training": snap()}
        with torch.no_grad():
            probs = model(x[None]).softmax(1)[0].numpy()
    names = [b.name for b in hier.blocks if b.kind == "block"]
    return {"tokens": tokens, "maps": maps, "probs": probs,
            "labels": {n: f"layer {names.index(n) + 1} of {len(names)}" for n in layers}}


@st.cache_resource(show_spinner="Reading the word vectors…", max_entries=2)
def word_vectors(run_dir: str) -> dict:
    """{"before training": WordVectors, "after training": WordVectors} of a GloVe run (50,000 words)."""
    from tl_core.models.backbones import text_tokenizer
    from tl_core.models.glove import WordVectors

    model, cfg, _ = run_model(run_dir)
    tok = text_tokenizer(cfg.backbone)
    return {"before training": WordVectors.from_model(initial_model(run_dir), tok),
            "after training": WordVectors.from_model(model, tok)}
