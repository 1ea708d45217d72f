"""What a run measures besides loss and accuracy: weight drift, gradient norms, BatchNorm-statistics
drift, feature-map snapshots and peak memory. Pure functions plus two small holders of reference state.

The trainer puts these into its events exactly as docs/interfaces.md documents: ``after_epoch`` metrics
``drift`` / ``grad_norm`` / ``bn_stat_drift`` ({block: float}) and ``peak_mem_mb``, and the ``snapshot``
event's ``maps`` ({layer: uint8 [k≤8, h≤32, w≤32]}).
"""
from __future__ import annotations

import contextlib
import math
import resource
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tl_core.models import surgery

SNAPSHOT_CHANNELS = 8
SNAPSHOT_SIZE = 32


# --------------------------------------------------------------------------- memory


def reset_peak_mem(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_mem_mb(device: str) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident memory, in MiB."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


# --------------------------------------------------------------------------- drift and gradient norms


@torch.no_grad()
def relative_change(now: dict[str, list[torch.Tensor]], start: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """‖X−X₀‖/‖X₀‖ per key over its list of tensors (‖X−X₀‖ when X₀ is all zeros)."""
    out = {}
    for name, ts in now.items():
        num = sum(((t.float() - t0.float()) ** 2).sum().item() for t, t0 in zip(ts, start[name]))
        den = sum((t0.float() ** 2).sum().item() for t0 in start[name])
        out[name] = math.sqrt(num) / math.sqrt(den) if den > 0 else math.sqrt(num)
    return out


class Drift:
    """Per-block parameters and BatchNorm running statistics, and copies of them as they were when
    this was made: drift is measured against those copies."""

    def __init__(self, model: nn.Module, hier: surgery.Hierarchy):
        self.names = hier.block_names
        self.params = {b.name: [p for n, p in model.named_parameters() if n in set(b.param_names)]
                       for b in hier.blocks}
        self.params0 = {k: [p.detach().clone() for p in ps] for k, ps in self.params.items()}
        self.bn = {b.name: [t for m in surgery.block_modules(model, b) if isinstance(m, _BatchNorm)
                            for t in (m.running_mean, m.running_var) if t is not None]
                   for b in hier.blocks if b.has_bn}
        self.bn0 = {k: [t.detach().clone() for t in ts] for k, ts in self.bn.items()}

    def weights(self) -> dict[str, float]:
        """‖W−W₀‖/‖W₀‖ per block (exactly 0.0 for a block that never changed)."""
        return relative_change(self.params, self.params0)

    def bn_stats(self) -> dict[str, float]:
        """Relative change of BatchNorm running mean/var per block (0.0 when the statistics are fixed)."""
        return relative_change(self.bn, self.bn0)

    def grad_norms(self, device) -> "GradNorms":
        """A fresh accumulator of this model's per-block gradient norms (one per epoch)."""
        return GradNorms(self.names, self.params, device)


class GradNorms:
    """Per-block gradient norms over an epoch, summed on the device (no sync per step): call ``add()``
    after each backward pass, ``rms()`` at the end for the root mean square of each block's norm.
    A step whose gradients are not finite is left out: in fp16 the GradScaler skips it (its scale was too
    high, which happens in the first steps of a run) and the weights do not move."""

    def __init__(self, names: list[str], block_params: dict[str, list[torch.Tensor]], device):
        self.names, self.device = names, device
        self.steps = torch.zeros((), dtype=torch.float64, device=device)
        self.sq = torch.zeros(len(names), dtype=torch.float64, device=device)
        self.params = [(i, p) for i, n in enumerate(names) for p in block_params[n]]

    def add(self) -> None:
        idx = [i for i, p in self.params if p.grad is not None]  # frozen blocks have no grads → 0
        grads = [p.grad for _, p in self.params if p.grad is not None]
        if not grads:
            self.steps += 1
            return
        norms = torch.stack(torch._foreach_norm(grads)).double() ** 2
        finite = norms.isfinite().all()
        self.sq.index_add_(0, torch.tensor(idx, device=self.device), torch.where(finite, norms, 0.0))
        self.steps += finite

    def rms(self) -> dict[str, float]:
        gn = (self.sq / self.steps.clamp_min(1)).sqrt().tolist()
        return {n: float(v) for n, v in zip(self.names, gn)}


# --------------------------------------------------------------------------- feature-map snapshots


def to_map(t: torch.Tensor, prefix_tokens: int) -> torch.Tensor | None:
    """One sample's layer output as [C, H, W]; token maps [T, D] become a grid (prefix tokens dropped)."""
    if t.dim() == 3:
        return t.float()
    if t.dim() == 2:
        T, D = t.shape
        for drop in (prefix_tokens, 0, T - int(math.isqrt(T)) ** 2):
            g = math.isqrt(max(T - drop, 0))
            if 0 <= drop < T and g * g == T - drop:
                return t[drop:].float().T.reshape(D, g, g)
    return None


def snapshot_maps(raw: torch.Tensor, channels: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """[C,H,W] activations → (uint8 [k≤8, h≤32, w≤32] normalised per channel, channel indices used).
    Channels are picked once (the most varied at epoch 0) and reused so epochs compare."""
    if channels is None:
        spread = raw.flatten(1).std(dim=1, unbiased=False) if raw[0].numel() > 1 else raw.flatten(1).abs()[:, 0]
        channels = spread.argsort(descending=True)[:SNAPSHOT_CHANNELS].sort().values
    m = raw[channels]
    if m.shape[-1] > SNAPSHOT_SIZE or m.shape[-2] > SNAPSHOT_SIZE:
        m = F.adaptive_avg_pool2d(m, (min(SNAPSHOT_SIZE, m.shape[-2]), min(SNAPSHOT_SIZE, m.shape[-1])))
    lo = m.amin(dim=(1, 2), keepdim=True)
    hi = m.amax(dim=(1, 2), keepdim=True)
    u8 = ((m - lo) / (hi - lo).clamp_min(1e-12) * 255).round().clamp(0, 255).to(torch.uint8)
    return u8.cpu().numpy(), channels


def default_snapshot_layers(hier: surgery.Hierarchy, text: bool = False) -> list[str]:
    """Early, middle and late blocks with a spatial (or token-grid) output; for a text model
    (``text``), early, middle and late Transformer layers (the blocks that attend)."""
    kinds = ("block",) if text else ("stem", "block")
    cands = [b.name for b in hier.blocks if b.kind in kinds and len(b.out_shape) in (2, 3)]
    if len(cands) <= 3:
        return cands
    return [cands[0], cands[len(cands) // 2], cands[-1]]


@torch.no_grad()
def layer_maps(model: nn.Module, hier: surgery.Hierarchy, x: torch.Tensor, layers: list[str],
               channels: dict | None = None, autocast=contextlib.nullcontext) -> tuple[dict, dict]:
    """Feature maps of the first image of batch ``x`` at blocks ``layers``, the model in eval mode (its
    train/eval mode is restored): ({layer: uint8 [k,h,w]}, {layer: channel indices used}). Pass the
    returned channels back to show the same channels later (another epoch, another model)."""
    raw: dict[str, torch.Tensor] = {}
    handles = []
    for name in layers:
        mods = [m for m in hier.block(name).members if surgery.is_module(model, m)]
        if not mods:
            continue

        def hook(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor):
                raw[name] = out[0].detach()

        handles.append(model.get_submodule(mods[-1]).register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with autocast():
            model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    maps, used = {}, {}
    prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
    for name, t in raw.items():
        m = to_map(t.float(), prefix_tokens)
        if m is not None:
            maps[name], used[name] = snapshot_maps(m, (channels or {}).get(name))
    return maps, used


class Snapshots:
    """Feature maps of one probe image at fixed layers, with the channels chosen at the first call."""

    def __init__(self, model: nn.Module, hier: surgery.Hierarchy, probe: torch.Tensor, layers: list[str],
                 autocast=contextlib.nullcontext):
        self.model, self.hier, self.probe, self.layers, self.autocast = model, hier, probe, layers, autocast
        self.channels: dict[str, torch.Tensor] = {}

    def __call__(self) -> dict[str, np.ndarray]:
        maps, used = layer_maps(self.model, self.hier, self.probe, self.layers, self.channels, self.autocast)
        self.channels.update(used)
        return maps


class AttentionSnapshots:
    """The text form of :class:`Snapshots`: attention maps of one probe text at fixed Transformer
    layers, ``{layer: uint8 [k≤8 heads, T, T]}`` over its ``T`` real tokens (keep ``T`` ≤ 32 so no
    pooling blurs the tokens), each head scaled to 0..255 like a feature map. The heads shown are
    picked at the first call (the most varied) and kept, so epochs compare. A model without
    attention layers (GloVe) gives ``{}``."""

    def __init__(self, model: nn.Module, hier: surgery.Hierarchy, probe: torch.Tensor, layers: list[str],
                 autocast=contextlib.nullcontext):
        self.model, self.probe = model, probe
        index = {name: i for i, name in enumerate(b.name for b in hier.blocks if b.kind == "block")}  # = model.layers
        self.layers = [name for name in layers if name in index]
        self.index = [index[name] for name in self.layers]
        self.heads: dict[str, torch.Tensor] = {}

    def __call__(self) -> dict[str, np.ndarray]:
        if not self.layers:
            return {}
        from tl_core.models.text import attention_maps

        att = attention_maps(self.model, self.probe)  # [layers, heads, T, T], rows sum to 1
        maps = {}
        for name, i in zip(self.layers, self.index):
            maps[name], self.heads[name] = snapshot_maps(att[i], self.heads.get(name))
        return maps
