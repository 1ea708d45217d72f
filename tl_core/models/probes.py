"""Representation probes: what changed inside a network, what its features look like, where it looks.

- :func:`linear_cka` / :func:`block_cka`: linear Centred Kernel Alignment (Kornblith et al. 2019)
  between two networks of the same architecture, block by block. Pretrained vs fine-tuned shows the
  published picture in miniature: lower blocks barely change (CKA near 1), the change grows toward
  the output (Neyshabur et al. 2020, "What is being transferred in transfer learning?").
- :func:`penultimate_features` / :func:`project_2d` / :func:`nearest_centroid_accuracy`: the
  features the classifier sees, drawn in 2-D, and how well they already separate the classes.
- :func:`grad_cam`: where the model looks (Selvaraju et al. 2017), with hooks; no extra dependency.

Every function takes images already preprocessed: a float tensor ``[N, 3, S, S]`` from the
evaluation transform, e.g. ``make_transforms(data_config(key), S)[1](ds.images[val_idx])``. The CKA
and feature functions only call ``model(x)`` / ``forward_features`` / ``forward_head``, so a text
model's packed token batch works there too; Grad-CAM needs images.
Models are put in eval mode for the measurement and handed back in the mode they came in.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tl_core.models.surgery import Hierarchy, Node, hierarchy

MAX_FEATURES = 2048  # block outputs larger than this are average-pooled spatially before CKA
PROJECTIONS = ("pca", "tsne")


@contextlib.contextmanager
def _eval(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(inputs: torch.Tensor, batch_size: int):
    if inputs.dtype == torch.uint8 or len(inputs) == 0:
        raise ValueError(f"expected preprocessed inputs (a float image batch [N, 3, H, W]), got {tuple(inputs.shape)} "
                         f"{inputs.dtype}; apply the evaluation transform (data.make_transforms) first")
    for i in range(0, len(inputs), batch_size):
        yield inputs[i:i + batch_size]


# --------------------------------------------------------------------------- CKA


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature matrices [n, d1] and [n, d2] describing the same n examples:
    ``||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)`` after centring each feature, in float64.

    1 for identical features (and for any orthogonal transform or isotropic scaling of them), near 0
    for unrelated ones (when n >> d). Computed through the n×n Gram matrices when a feature
    dimension exceeds n (the same number: ||YᵀX||²_F = <XXᵀ, YYᵀ>_F), so wide layers stay cheap."""
    x, y = torch.as_tensor(x).double().flatten(1), torch.as_tensor(y).double().flatten(1)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"CKA needs the same n >= 2 examples in both feature matrices, got {len(x)} and {len(y)}")
    x, y = x - x.mean(0), y - y.mean(0)
    if max(x.shape[1], y.shape[1]) > len(x):
        kx, ky = x @ x.T, y @ y.T
        cross, nx, ny = (kx * ky).sum(), kx.norm(), ky.norm()
    else:
        cross, nx, ny = (y.T @ x).square().sum(), (x.T @ x).norm(), (y.T @ y).norm()
    if nx == 0 or ny == 0:
        return 0.0  # a constant representation shares nothing with anything
    return float((cross / (nx * ny)).clamp(0.0, 1.0))


def _flat(out: torch.Tensor, max_features: int) -> torch.Tensor:
    """One row per example; conv maps [B,C,H,W] larger than ``max_features`` are average-pooled to
    the largest s×s grid with C·s² <= max_features (s >= 1); token maps [B,N,D] likewise over tokens."""
    if out[0].numel() > max_features and out.ndim == 4:
        s = max(1, math.isqrt(max_features // out.shape[1]))
        out = F.adaptive_avg_pool2d(out, (min(s, out.shape[2]), min(s, out.shape[3])))
    elif out[0].numel() > max_features and out.ndim == 3:
        out = F.adaptive_avg_pool1d(out.transpose(1, 2), max(1, max_features // out.shape[2])).transpose(1, 2)
    return out.flatten(1).float().cpu()


def _nchw(mod: nn.Module, out):
    """timm's patch embedding of a dynamic-size ViT outputs NHWC maps: make them NCHW like a conv's."""
    if isinstance(out, torch.Tensor) and out.ndim == 4 and getattr(mod, "output_fmt", "NCHW") == "NHWC":
        return out.permute(0, 3, 1, 2)
    return out


def _member_modules(model: nn.Module, node: Node) -> list[nn.Module]:
    mods = []
    for m in node.members:
        with contextlib.suppress(AttributeError):  # bare parameters (ViT's cls_token) are not modules
            mods.append(model.get_submodule(m))
    return mods


@torch.no_grad()
def block_outputs(model: nn.Module, hier: Hierarchy, images: torch.Tensor, batch_size: int = 64,
                  max_features: int = MAX_FEATURES) -> dict[str, torch.Tensor]:
    """{block name: float32 [N, d]}: each block's output for every image (the output of the block's
    last module to run; spatially pooled when larger than ``max_features``, see :func:`_flat`)."""
    feats: dict[str, list[torch.Tensor]] = {n.name: [] for n in hier.blocks}
    latest: dict[str, torch.Tensor] = {}
    handles = []
    for node in hier.blocks:
        for mod in _member_modules(model, node):
            def hook(m, _inp, out, name=node.name):
                if isinstance(out, torch.Tensor):
                    latest[name] = _nchw(m, out)  # the block's last module to run wins
            handles.append(mod.register_forward_hook(hook))
    try:
        with _eval(model):
            for xb in _batches(images, batch_size):
                latest.clear()
                model(xb.to(_device(model)))
                for name, out in latest.items():
                    feats[name].append(_flat(out, max_features))
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in feats.items() if v}


def block_cka(model_a: nn.Module, model_b: nn.Module, hier: Hierarchy, images: torch.Tensor,
              batch_size: int = 64, max_features: int = MAX_FEATURES) -> dict[str, float]:
    """Linear CKA between two models of the same architecture (e.g. pretrained and fine-tuned), per
    block of ``hier`` in forward order, on the same preprocessed ``images`` (the validation set).

    Eval mode, no gradients, batched. Large conv outputs are average-pooled spatially to at most
    ``max_features`` numbers per image (see :func:`_flat`): memory is at most 2 × blocks × N ×
    max_features × 4 bytes (about 160 MB for 500 images through MobileNetV2's 20 blocks). Use a few
    hundred images: CKA from few examples is biased upward, toward 1."""
    a = block_outputs(model_a, hier, images, batch_size, max_features)
    b = block_outputs(model_b, hier, images, batch_size, max_features)
    return {n: linear_cka(a[n], b[n]) for n in a if n in b}


# --------------------------------------------------------------------------- feature space


@torch.no_grad()
def penultimate_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """float32 [N, d]: what the classifier sees (timm ``forward_head(..., pre_logits=True)``: pooled,
    after any neck), for preprocessed ``images``; eval mode, batched."""
    out = []
    with _eval(model):
        for xb in _batches(images, batch_size):
            f = model.forward_features(xb.to(_device(model)))
            out.append(model.forward_head(f, pre_logits=True).flatten(1).float().cpu())
    return torch.cat(out).numpy()


def project_2d(features, method: str = "pca", seed: int = 0) -> np.ndarray:
    """[N, d] features -> [N, 2] points: ``"pca"`` (the two directions of largest variance; the
    same features always give the same picture) or ``"tsne"`` (neighbourhoods; slower, seeded).
    UMAP is not offered: it does not install offline with this project's pins."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if method not in PROJECTIONS:
        raise ValueError(f"projection method must be one of {', '.join(PROJECTIONS)}, not {method!r}")
    if len(x) < 3:
        raise ValueError(f"a 2-D projection needs at least 3 images, got {len(x)}")
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)
    from sklearn.decomposition import PCA

    pts = PCA(n_components=min(2, x.shape[1]), svd_solver="full").fit_transform(x)
    return np.pad(pts, ((0, 0), (0, 2 - pts.shape[1])))  # a 1-feature input still gives [N, 2]


def nearest_centroid_accuracy(features, labels) -> float:
    """Leave-one-out accuracy of the nearest class mean (Euclidean) in ``features``: how well the
    classes are already separated, without training anything. Works on [N, d] or on 2-D points."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = np.asarray(labels)
    classes, own = np.unique(y, return_inverse=True)
    sums = np.stack([x[own == k].sum(0) for k in range(len(classes))])
    counts = np.bincount(own).astype(np.float64)
    from scipy.spatial.distance import cdist

    dist = cdist(x, sums / counts[:, None])  # [N, K]
    rest = counts[own] - 1  # each example's own class mean leaves the example out
    with np.errstate(invalid="ignore", divide="ignore"):
        own_dist = np.linalg.norm((sums[own] - x) / rest[:, None] - x, axis=1)
    dist[np.arange(len(x)), own] = np.where(rest > 0, own_dist, np.inf)  # a lone example's class can't be predicted
    return float((classes[dist.argmin(1)] == y).mean())


# --------------------------------------------------------------------------- Grad-CAM


def cam_layer(model: nn.Module, hier: Hierarchy) -> str:
    """The default Grad-CAM layer: the last block (neck included) whose output is a feature map
    [C, H, W]; for a transformer, the input of its last block, as a grid of patch tokens."""
    maps = [n for n in hier.blocks if n.kind != "head" and len(n.out_shape) == 3]
    if maps:
        return maps[-1].name
    tokens = [n for n in hier.blocks if n.kind == "block" and len(n.out_shape) == 2]
    if len(tokens) >= 2 and getattr(model, "num_prefix_tokens", None) is not None:
        # the classifier reads the class token only: at the last block's output the patch tokens get no
        # gradient, so explain the last block's input (the patch tokens its attention mixes in)
        return tokens[-2].name
    raise ValueError("Grad-CAM needs a conv backbone (or a ViT): this model has no block that outputs a feature map")


def _as_map(out: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """[B, C, H, W] as is; ViT tokens [B, N, D] -> [B, D, g, g] (prefix tokens dropped)."""
    if out.ndim == 4:
        return out
    if out.ndim == 3:
        t = out[:, getattr(model, "num_prefix_tokens", 0):]
        g = math.isqrt(t.shape[1])
        if g * g == t.shape[1]:
            return t.transpose(1, 2).reshape(len(t), -1, g, g)
    raise ValueError(f"Grad-CAM needs a conv backbone: the chosen layer outputs {tuple(out.shape[1:])}, not a feature map")


def grad_cam(model: nn.Module, image_tensor: torch.Tensor, target_class: int | None = None,
             layer: str | None = None, hier: Hierarchy | None = None) -> np.ndarray:
    """Grad-CAM heat map [H, W] in [0, 1] (input resolution) for one preprocessed image [3, H, W]:
    ReLU(Σ_c ᾱ_c A_c) with A the ``layer`` output and ᾱ_c the spatial mean of d score / d A_c.

    ``target_class`` None explains the predicted class. ``layer`` is a block name of the hierarchy
    or any module name; the default is :func:`cam_layer` (the last conv block). Works on frozen
    models (the input carries the gradient); eval mode; the weights' gradients are not touched."""
    if image_tensor.ndim not in (3, 4) or image_tensor.shape[-3] != 3 or not image_tensor.is_floating_point():
        raise ValueError(f"Grad-CAM takes one preprocessed float image [3, H, W], got {tuple(image_tensor.shape)} "
                         f"{image_tensor.dtype}; apply the evaluation transform (data.make_transforms) first")
    x = image_tensor.detach().reshape(-1, *image_tensor.shape[-3:])[:1].to(_device(model), torch.float32).requires_grad_(True)
    hier = hier or hierarchy(model, x.shape[-1])
    layer = layer or cam_layer(model, hier)
    mods: list[nn.Module] = _member_modules(model, hier.block(layer)) if layer in hier.block_names else []
    with contextlib.suppress(AttributeError):
        mods = mods or [model.get_submodule(layer)]
    if not mods:
        raise ValueError(f"Grad-CAM layer {layer!r} is not a module of this model; pick one of: "
                         + ", ".join(hier.block_names[:-1]))
    seen: list[torch.Tensor] = []
    handle = mods[-1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with _eval(model), torch.enable_grad():
            logits = model(x)
            cls = int(logits[0].argmax()) if target_class is None else int(target_class)
            if not 0 <= cls < logits.shape[1]:
                raise ValueError(f"target_class must be in 0..{logits.shape[1] - 1}, not {cls}")
            act = seen[-1]
            grad, = torch.autograd.grad(logits[0, cls], act)
    finally:
        handle.remove()
    act, grad = (_as_map(_nchw(mods[-1], t), model) for t in (act.detach(), grad))
    cam = F.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    top = cam.max()
    return (cam / top if top > 0 else cam).clamp(0, 1).cpu().numpy().astype(np.float32)
