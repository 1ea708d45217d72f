"""Training: a config, a small event-driven trainer, feature caching, saving and loading models.

The loop is plain PyTorch (minGPT / Lightning Fabric style): ``fit(cfg, callbacks)`` sets up data,
model and phases, then runs ``train_one_epoch`` / ``validate`` (each returning a dict) for every
epoch of every phase. Callbacks see a fixed vocabulary of events (fastai style):

    before_fit(info) → [before_phase(phase, name, trainable, lrs, cache)
                        → [before_epoch(epoch, phase) → after_batch(...)* → after_epoch(metrics)
                           → snapshot(epoch, maps)]*]* → after_fit(summary)

``after_fit`` always runs. A callback stops a run by setting ``trainer.should_stop = "why"``
(checked after every batch) or by raising ``CancelFit``. A NaN/inf loss raises ``Diverged``.

Speed: frozen blocks cost nothing they need not cost. Their parameters have
``requires_grad=False`` (no autograd graph), and when they form a prefix of the network whose
output does not depend on the batch (no augmentation, BatchNorm statistics frozen, no dropout),
the prefix runs once over the data set and only the rest of the network trains on the cache.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import backbones, strategies, surgery

EVENTS = ("before_fit", "before_phase", "before_epoch", "after_batch", "after_epoch", "snapshot", "after_fit")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
CACHE_LIMIT_BYTES = int(1.5e9)  # cached prefix outputs (train + val) must fit in this
SNAPSHOT_CHANNELS = 8
SNAPSHOT_SIZE = 32


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


class CancelFit(Exception):
    """Raised by a callback (or by the trainer when ``should_stop`` is set) to end a run early."""


# --------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    name: str = ""
    backbone: str = "mobilenetv2"
    weights: str = "pretrained"  # pretrained | random (strategy "scratch" forces random)
    weights_file: str | None = None
    data: str = "animal_shapes"
    data_root: str | None = None
    classes: list[str] | None = None  # train on these classes only (in this order); None: all
    per_class: int | None = 100  # training images per class (validation does not depend on it)
    val_fraction: float = 0.2
    image_size: int = 96
    augment: dict = field(default_factory=dict)  # fields of data.Augment
    normalization: str = "backbone"
    strategy: str = "feature_extraction"
    freeze_blocks: int | None = None  # None: the strategy's default
    head_epochs: int = 1  # two_phase: epochs of phase 1 (head only)
    epochs: int = 3  # total over all phases
    batch_size: int = 32
    lr: float | None = None  # None: the strategy's default (strategies.default_lr)
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    backbone_lr_mult: float = 0.1  # two_phase: LR multiplier of the unfrozen backbone in phase 2
    lr_decay: float | None = None  # discriminative LRs: divide by this per block group below the head (e.g. 2.6)
    bn_mode: str = "frozen"  # BatchNorm in frozen blocks: frozen (statistics fixed) | train (statistics update)
    plan: dict | None = None  # a FreezePlan dict overriding the strategy's first-phase plan
    seed: int = 0
    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps
    cache_features: bool = True
    snapshot_layers: list[str] | None = None  # block names; None: early/middle/late from the hierarchy
    num_threads: int | None = None  # CPU threads; None: all available cores
    # additions to the interface contract
    schedule: str = "cosine"  # per-phase LR schedule: cosine | constant
    channels_last: bool | None = None  # None: on for conv nets on CUDA and CPU
    allow_download: bool = False  # fetch pretrained weights when online

    # --- JSON
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "TrainConfig":
        return cls.from_dict(json.loads(s))

    # --- checks
    @property
    def effective_weights(self) -> str:
        return "random" if self.strategy == "scratch" else self.weights

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else strategies.default_lr(self.strategy, self.optimizer)

    def validate(self) -> "TrainConfig":
        """Raise ValueError with one clear line for the first bad field. Returns self."""
        from . import data

        def bad(msg: str):
            raise ValueError(msg)

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if self.backbone not in backbones.catalogue() and not _is_timm_arch(self.backbone):
            bad(f"unknown backbone {self.backbone!r}; choose one of: {', '.join(backbones.catalogue())}")
        if self.backbone not in backbones.catalogue() and self.effective_weights != "random":
            bad(f"{self.backbone!r} is not in the catalogue: only weights='random' can build it")
        if self.weights not in ("pretrained", "random"):
            bad(f"weights must be 'pretrained' or 'random', not {self.weights!r}")
        if self.strategy not in strategies.STRATEGIES:
            bad(f"unknown strategy {self.strategy!r}; choose one of: {', '.join(strategies.STRATEGIES)}")
        if not isinstance(self.data, str) or not self.data:
            bad("data must name a built-in dataset or a folder/zip in the data root")
        if self.classes is not None and (not isinstance(self.classes, list) or len(set(self.classes)) < 2
                                         or not all(isinstance(c, str) for c in self.classes)):
            bad(f"classes must list at least two distinct class names (or be None for all), not {self.classes!r}")
        if self.per_class is not None and (not is_int(self.per_class) or self.per_class < 1):
            bad(f"per_class must be a whole number >= 1 (or None for all), not {self.per_class!r}")
        if not 0 < self.val_fraction < 1:
            bad(f"val_fraction must be between 0 and 1, not {self.val_fraction}")
        if not is_int(self.image_size) or not 16 <= self.image_size <= 1024:
            bad(f"image_size must be a whole number of pixels from 16 to 1024, not {self.image_size!r}")
        unknown = set(self.augment or {}) - {f.name for f in dataclasses.fields(data.Augment)}
        if unknown:
            bad(f"unknown augmentation {sorted(unknown)[0]!r}; use flip, random_resized_crop, color_jitter")
        if self.normalization not in data.NORMALIZATIONS:
            bad(f"normalization must be one of {', '.join(data.NORMALIZATIONS)}, not {self.normalization!r}")
        if not is_int(self.epochs) or self.epochs < 1:
            bad(f"epochs must be a whole number >= 1, not {self.epochs!r}")
        if not is_int(self.head_epochs) or self.head_epochs < 1:
            bad(f"head_epochs must be a whole number >= 1, not {self.head_epochs!r}")
        if self.strategy == "two_phase" and self.head_epochs >= self.epochs:
            bad(f"two_phase needs epochs > head_epochs (phase 2 would get {self.epochs - self.head_epochs} epochs); "
                f"raise epochs or lower head_epochs")
        if not is_int(self.batch_size) or self.batch_size < 1:
            bad(f"batch_size must be a whole number >= 1, not {self.batch_size!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            bad(f"lr must be > 0, not {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            bad(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            bad(f"momentum must be in [0, 1), not {self.momentum}")
        if not self.weight_decay >= 0:
            bad(f"weight_decay must be >= 0, not {self.weight_decay}")
        if not self.backbone_lr_mult > 0:
            bad(f"backbone_lr_mult must be > 0, not {self.backbone_lr_mult}")
        if self.lr_decay is not None and not self.lr_decay >= 1:
            bad(f"lr_decay must be >= 1 (e.g. 2.6), or None for one LR, not {self.lr_decay}")
        if self.bn_mode not in surgery.BN_MODES:
            bad(f"bn_mode must be one of {', '.join(surgery.BN_MODES)}, not {self.bn_mode!r}")
        if self.schedule not in SCHEDULES:
            bad(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.num_threads is not None and (not is_int(self.num_threads) or self.num_threads < 1):
            bad(f"num_threads must be a whole number >= 1, not {self.num_threads!r}")
        if not is_int(self.seed):
            bad(f"seed must be a whole number, not {self.seed!r}")
        dev = str(self.device)
        if dev not in ("auto", "cpu", "mps", "cuda") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
            bad(f"device must be auto, cpu, cuda, cuda:N or mps, not {dev!r}")
        if self.freeze_blocks is not None and (not is_int(self.freeze_blocks) or self.freeze_blocks < 0):
            bad(f"freeze_blocks must be a whole number >= 0, not {self.freeze_blocks!r}")
        if self.freeze_blocks is not None or self.plan or self.snapshot_layers:
            names = _block_names(self.backbone, self.image_size)
            if self.freeze_blocks is not None and self.freeze_blocks >= len(names):
                bad(f"freeze_blocks={self.freeze_blocks} is beyond this backbone: {self.backbone} has {len(names)} "
                    f"blocks, so freeze 0..{len(names) - 1} (the head always trains)")
            if self.plan:
                try:
                    plan = surgery.FreezePlan.from_dict(self.plan)
                except (TypeError, ValueError, AttributeError) as exc:
                    bad(f"plan is not a valid freeze plan: {exc}")
                if list(plan.blocks) != names:
                    bad(f"plan does not match {self.backbone}: expected blocks {', '.join(names)}")
            for layer in self.snapshot_layers or []:
                if layer not in names:
                    bad(f"snapshot layer {layer!r} is not a block of {self.backbone}; blocks are: {', '.join(names)}")
        return self


def _is_timm_arch(name: str) -> bool:
    """Any timm architecture name (random init only): tests build tiny real models this way."""
    import timm

    return isinstance(name, str) and timm.is_model(name)


def _build_arch(backbone: str, num_classes: int, weights: str = "random", weights_file=None, allow_download=False):
    """(model, WeightsStatus): a catalogue backbone, or any timm architecture with random init."""
    if backbone in backbones.catalogue():
        return backbones.create_model(backbone, num_classes, weights=weights, weights_file=weights_file,
                                      allow_download=allow_download)
    import timm

    model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
    return model, backbones.WeightsStatus("random", "", "random initialisation (from scratch)")


_BLOCK_NAMES: dict[tuple, list[str]] = {}


def _block_names(backbone: str, image_size: int) -> list[str]:
    key = (backbone, image_size)
    if key not in _BLOCK_NAMES:
        model, _ = _build_arch(backbone, 2, "random")
        _BLOCK_NAMES[key] = surgery.hierarchy(model, image_size).block_names
    return _BLOCK_NAMES[key]


def data_config_for(backbone: str, model: nn.Module | None = None) -> dict:
    if backbone in backbones.catalogue():
        return backbones.data_config(backbone)
    import timm

    cfg = timm.data.resolve_model_data_config(model)
    return {k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")}


# --------------------------------------------------------------------------- device


@dataclass(frozen=True)
class DevicePlan:
    """How to run on a device: every device-specific decision in one place."""

    device: str
    amp_dtype: torch.dtype | None  # autocast dtype, None: full fp32
    grad_scaler: bool  # fp16 needs loss scaling
    channels_last: bool
    pin_memory: bool  # pinned host memory + non_blocking copies

    def to_dict(self) -> dict:
        return {"device": self.device, "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
                "grad_scaler": self.grad_scaler, "channels_last": self.channels_last, "pin_memory": self.pin_memory}


def resolve_device(name: str = "auto") -> str:
    """auto → cuda if available, then mps, then cpu; an explicit device that is missing is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but no CUDA GPU is available; use device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device mps was asked for but Apple MPS is not available; use device auto or cpu")
    return name


def device_plan(device: str, conv: bool = True, channels_last: bool | None = None,
                bf16_supported: bool | None = None) -> DevicePlan:
    """The decisions for ``device``: CUDA gets AMP (bf16 where supported, else fp16 with a GradScaler),
    channels_last for conv nets and pinned memory; MPS and CPU run fp32 (CPU uses channels_last for conv
    nets too: it is faster there). ``bf16_supported`` overrides the CUDA query (for tests)."""
    kind = device.split(":")[0]
    cl = conv if channels_last is None else channels_last
    if kind == "cuda":
        bf16 = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        return DevicePlan(device, torch.bfloat16 if bf16 else torch.float16, not bf16, cl, True)
    if kind == "mps":
        return DevicePlan(device, None, False, False if channels_last is None else channels_last, False)
    return DevicePlan(device, None, False, cl, False)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _peak_mem_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- data


class _Batches(torch.utils.data.Dataset):
    """Tensors in memory, fetched a batch at a time (``__getitems__``): the transform runs on the
    whole uint8 batch at once, or per sample when it draws random augmentations."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform=None, per_sample: bool = False):
        self.x, self.y, self.transform, self.per_sample = x, y, transform, per_sample

    def __len__(self) -> int:
        return len(self.y)

    def __getitems__(self, idx: list[int]):
        i = torch.as_tensor(idx)
        x = self.x[i.to(self.x.device)]
        if self.transform is not None:
            x = torch.stack([self.transform(s) for s in x]) if self.per_sample else self.transform(x)
        return x, self.y[i.to(self.y.device)]

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]


class _PrefixCache:
    """The outputs of a frozen prefix for a fixed set of images, computed once per image the first
    time a batch asks for it (so the first epoch trains from its first batch on) and kept for every
    later epoch. Indexed like a tensor: ``cache[idx]`` gives the prefix outputs of images ``idx``."""

    device = torch.device("cpu")  # where _Batches puts the indices
    CHUNK = 128

    def __init__(self, prefix, model: nn.Module, images: torch.Tensor, transform, to_device):
        self.prefix, self.model, self.images, self.transform, self.to_device = prefix, model, images, transform, to_device
        first = self._run(torch.zeros(1, dtype=torch.long))  # one image: the output shape, for the memory check
        self.shape = first.shape[1:]
        self.nbytes = first[0].numel() * first.element_size() * len(images)
        self.out: torch.Tensor | None = None  # allocated on first use (after the memory check)
        self.done = torch.zeros(len(images), dtype=torch.bool)

    @torch.no_grad()
    def _run(self, idx: torch.Tensor) -> torch.Tensor:
        was = self.model.training
        self.model.eval()  # the frozen part runs as at inference (no dropout, BatchNorm statistics fixed)
        try:
            return self.prefix(self.to_device(self.transform(self.images[idx]))).float()
        finally:
            self.model.train(was)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        todo = idx[~self.done[idx]]
        for part in todo.split(self.CHUNK) if len(todo) else ():  # a large validation batch is filled a chunk at a time
            out = self._run(part)
            if self.out is None:
                self.out = torch.empty((len(self.images), *self.shape), dtype=out.dtype, device=out.device)
            self.out[part.to(out.device)] = out
            self.done[part] = True
        return self.out[idx.to(self.out.device)]


def _identity(batch):
    return batch


def prepare(cfg: TrainConfig, data_cfg: dict | None = None) -> dict:
    """Load and split the data set (seeded: same seed → same split). Returns a dict with the ImageSet
    ``ds`` (uint8 images in memory), ``train_idx``, ``val_idx``, ``augment`` and, given the backbone's
    ``data_cfg`` (or for a catalogue backbone), the ``train_tf`` / ``eval_tf`` transforms."""
    from . import data

    ds = data.load_dataset(cfg.data, cfg.data_root)
    if cfg.classes:
        ds = data.subset_classes(ds, cfg.classes)
    train_idx, val_idx = data.split(ds, cfg.val_fraction, cfg.seed, cfg.per_class)
    out = {"ds": ds, "train_idx": train_idx, "val_idx": val_idx, "augment": data.Augment(**(cfg.augment or {}))}
    if data_cfg is None and cfg.backbone in backbones.catalogue():
        data_cfg = backbones.data_config(cfg.backbone)
    if data_cfg is not None:
        out["train_tf"], out["eval_tf"] = _transforms(cfg, data_cfg, out["augment"])
    return out


def _transforms(cfg: TrainConfig, data_cfg: dict, augment):
    from . import data

    return data.make_transforms(data_cfg, cfg.image_size, augment, cfg.normalization)


# --------------------------------------------------------------------------- feature snapshots


def _to_map(t: torch.Tensor, prefix_tokens: int) -> torch.Tensor | None:
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


def default_snapshot_layers(hier: surgery.Hierarchy) -> list[str]:
    """Early, middle and late blocks with a spatial (or token-grid) output."""
    cands = [b.name for b in hier.blocks if b.kind in ("stem", "block") and len(b.out_shape) in (2, 3)]
    if len(cands) <= 3:
        return cands
    return [cands[0], cands[len(cands) // 2], cands[-1]]


@torch.no_grad()
def _relative_change(now: dict[str, list[torch.Tensor]], start: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """‖X−X₀‖/‖X₀‖ per key over its list of tensors (‖X−X₀‖ when X₀ is all zeros)."""
    out = {}
    for name, ts in now.items():
        num = sum(((t.float() - t0.float()) ** 2).sum().item() for t, t0 in zip(ts, start[name]))
        den = sum((t0.float() ** 2).sum().item() for t0 in start[name])
        out[name] = math.sqrt(num) / math.sqrt(den) if den > 0 else math.sqrt(num)
    return out


# --------------------------------------------------------------------------- trainer


class Trainer:
    """One training run. ``fit()`` returns the summary dict; see the module docstring for events."""

    def __init__(self, cfg: TrainConfig, callbacks=()):
        self.cfg = cfg.validate()
        self.callbacks = list(callbacks)
        self.should_stop: str | None = None
        self.model: nn.Module | None = None
        self.hier: surgery.Hierarchy | None = None
        self.class_names: list[str] = []
        self.phases: list[strategies.Phase] = []
        self.history: list[dict] = []  # after_epoch metrics
        self.phase_log: list[dict] = []
        self.info: dict = {}
        self.epoch = 0
        self.step = 0
        self._last_val: dict | None = None
        self.optimizer: torch.optim.Optimizer | None = None  # of the current phase: one param group per block
        self.scheduler = None

    # --- events
    def emit(self, event: str, **data) -> None:
        assert event in EVENTS, event
        for cb in self.callbacks:
            cb.on(event, self, **data)

    # --- setup
    def setup(self) -> None:
        cfg = self.cfg
        self.device = resolve_device(cfg.device)
        if self.device == "cpu":
            torch.set_num_threads(cfg.num_threads or _cores())
        self.data = prepare(cfg)
        ds = self.data["ds"]
        _seed_everything(cfg.seed)  # right before the model: same seed → same head init
        model, self.weights_status = _build_arch(cfg.backbone, len(ds.class_names), cfg.effective_weights,
                                                 cfg.weights_file, cfg.allow_download)
        self.data_cfg = data_config_for(cfg.backbone, model)
        self.data.update(zip(("train_tf", "eval_tf"), _transforms(cfg, self.data_cfg, self.data["augment"])))
        self.class_names = list(ds.class_names)
        self.hier = surgery.hierarchy(model, cfg.image_size)
        self.phases = strategies.schedule(cfg, self.hier)
        self.chain = surgery.sequential_chain(model, min(cfg.image_size, 64))
        conv = sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1
        self.dev = device_plan(self.device, conv=conv, channels_last=cfg.channels_last)
        model.to(self.device)
        if self.dev.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.gen = torch.Generator().manual_seed(cfg.seed)  # batch order
        self.scaler = torch.amp.GradScaler("cuda") if self.dev.grad_scaler else None
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
        # Initial weights and BN statistics: drift is measured against these.
        self.block_params = {b.name: [p for n, p in model.named_parameters() if n in set(b.param_names)]
                             for b in self.hier.blocks}
        self.w0 = {k: [p.detach().clone() for p in ps] for k, ps in self.block_params.items()}
        self.bn_bufs = {b.name: [t for m in surgery.block_modules(model, b) if isinstance(m, _BatchNorm)
                                 for t in (m.running_mean, m.running_var) if t is not None]
                        for b in self.hier.blocks if b.has_bn}
        self.bn0 = {k: [t.detach().clone() for t in ts] for k, ts in self.bn_bufs.items()}
        self.probe = self.data["eval_tf"](ds.images[self.data["val_idx"][:1]]).to(self.device)
        self.snapshot_layers = cfg.snapshot_layers or default_snapshot_layers(self.hier)
        self._snap_channels: dict[str, torch.Tensor] = {}
        n_train = len(self.data["train_idx"])
        self.steps_per_epoch = math.ceil(n_train / cfg.batch_size)
        first_cache = self._cache_plan(self.phases[0].plan)
        self.info = {
            "device": self.device, **self.dev.to_dict(),
            "threads": torch.get_num_threads() if self.device == "cpu" else None,
            "backbone": cfg.backbone, "weights": self.weights_status.kind, "weights_label": self.weights_status.label,
            "trainable_params": None,
            "total_params": self.hier.total_params, "classes": self.class_names, "num_classes": len(self.class_names),
            "num_train": n_train, "num_val": len(self.data["val_idx"]), "steps_per_epoch": self.steps_per_epoch,
            "total_epochs": cfg.epochs, "lr": cfg.effective_lr, "strategy": cfg.strategy,
            "phases": [{"name": p.name, "epochs": p.epochs, "trainable": p.plan.trainable, "note": p.note}
                       for p in self.phases],
            "cache": first_cache["why"], "snapshot_layers": self.snapshot_layers,
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_cfg.items()},
        }
        surgery.apply_plan(model, self.hier, self.phases[0].plan)
        self.info["trainable_params"] = surgery.count_params(model)["trainable"]

    # --- caching a frozen prefix
    def _cache_plan(self, plan: surgery.FreezePlan) -> dict:
        """What can be cached under ``plan``: {"ok", "why", "prefix", "suffix", "what"}."""
        cfg, names = self.cfg, self.hier.block_names
        k = 0
        while k < len(names) and plan.blocks[names[k]].frozen:
            k += 1
        no = {"ok": False}
        if not cfg.cache_features:
            return {**no, "why": "not cached: cache_features is off"}
        if k == 0:
            return {**no, "why": "not cached: the first block trains, so there is no frozen prefix"}
        if self.data["augment"].any:
            return {**no, "why": "not cached: random augmentation changes the inputs every epoch"}
        bn_train = [n for n in names[:k] if self.hier.block(n).has_bn and plan.blocks[n].bn_mode != "frozen"]
        if bn_train:
            return {**no, "why": f"not cached: BatchNorm statistics of frozen block {bn_train[0]} follow each batch "
                                 "(bn_mode train), so its outputs depend on the batch"}
        if self.chain is not None:
            owners = [self._owners(n) for n, _ in self.chain]
            j = next((i for i, o in enumerate(owners) if o and max(o) >= k), len(self.chain))
            if j == 0:
                return {**no, "why": "not cached: the frozen blocks do not start the network's chain"}
            if j == len(self.chain):
                return {**no, "why": "not cached: nothing trains after the frozen blocks"}
            prefix = nn.Sequential(*[m for _, m in self.chain[:j]])
            suffix = nn.Sequential(*[m for _, m in self.chain[j:]])
            what = f"{self.chain[0][0]}..{self.chain[j - 1][0]}"
            trains = self.chain[j][0] + (f"..{self.chain[-1][0]}" if j < len(self.chain) - 1 else "")
        elif k == len(names) - 1 and hasattr(self.model, "forward_head"):
            model = self.model

            def prefix(x):
                return model.forward_head(model.forward_features(x), pre_logits=True)

            suffix = model.get_classifier()
            what, trains = "forward_features + pre-logits", "the classifier"
            j = None
        else:
            return {**no, "why": "not cached: this architecture only caches when everything but the head is frozen"}
        mods = [m for _, m in self.chain[:j]] if j is not None else [
            m for m in self.model.modules() if m is not self.model.get_classifier()]
        for m in (x for mod in mods for x in mod.modules()):
            p = getattr(m, "p", None) if isinstance(m, nn.modules.dropout._DropoutNd) else getattr(m, "drop_prob", None)
            if p:
                return {**no, "why": f"not cached: dropout in the frozen part ({type(m).__name__}) is random in training"}
        return {"ok": True, "prefix": prefix, "suffix": suffix, "what": what, "trains": trains, "frozen_blocks": k,
                "why": f"cached the output of {what} (frozen blocks {names[0]}..{names[k - 1]}); training {trains}"}

    def _owners(self, element: str) -> set[int]:
        out = set()
        for i, b in enumerate(self.hier.blocks):
            for m in b.members:
                if element == m or element.startswith(m + ".") or m.startswith(element + "."):
                    out.add(i)
        return out

    def _phase_data(self, phase: strategies.Phase) -> dict:
        """Loaders (and the forward function) for a phase: cached prefix outputs when possible."""
        cfg, d = self.cfg, self.data
        ds, labels = d["ds"], d["ds"].labels
        ytr, yva = labels[d["train_idx"]], labels[d["val_idx"]]
        cache = self._cache_plan(phase.plan)
        if cache["ok"]:
            caches = [_PrefixCache(cache["prefix"], self.model, ds.images[i], d["eval_tf"], self._to_device)
                      for i in (d["train_idx"], d["val_idx"])]
            total = sum(c.nbytes for c in caches)
            if total > CACHE_LIMIT_BYTES:
                cache = {"ok": False, "why": f"not cached: the frozen part's outputs would take "
                         f"{total / 2**20:,.0f} MB, over the {CACHE_LIMIT_BYTES / 2**20:,.0f} MB limit"}
            else:
                cache["why"] += (f" ({len(ytr) + len(yva)} images x {tuple(caches[0].shape)} = {total / 2**20:.1f} MB, "
                                 "filled during the first epoch)")
        if cache["ok"]:
            train = _Batches(caches[0], ytr.to(self.device))
            val = _Batches(caches[1], yva.to(self.device))
            forward, pin = cache["suffix"], False
            val_bs = 1024
        else:
            train = _Batches(ds.images[d["train_idx"]], ytr, d["train_tf"], per_sample=d["augment"].any)
            val = _Batches(ds.images[d["val_idx"]], yva, d["eval_tf"])
            forward, pin = self.model, self.dev.pin_memory
            val_bs = cfg.batch_size * 2
        mk = dict(num_workers=0, collate_fn=_identity, pin_memory=pin)
        return {
            "train": torch.utils.data.DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=self.gen, **mk),
            "val": torch.utils.data.DataLoader(val, batch_size=val_bs, shuffle=False, **mk),
            "forward": forward, "cached": cache["ok"], "why": cache["why"],
        }

    # --- one phase
    def _optimizer(self, plan: surgery.FreezePlan, phase_steps: int, offset: int, span: int):
        cfg = self.cfg
        groups = surgery.param_groups(self.model, self.hier, plan, cfg.effective_lr, cfg.weight_decay)
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=cfg.effective_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(groups, lr=cfg.effective_lr, weight_decay=cfg.weight_decay)
        if cfg.schedule == "constant":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        else:  # cosine over the phase (gradual: over the whole run, so each new group does not restart it)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(offset + s, span) / max(span, 1))))
        return opt, sched

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=self.dev.pin_memory)
        if self.dev.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self):
        return torch.autocast(self.device.split(":")[0], dtype=self.dev.amp_dtype, enabled=self.dev.amp_dtype is not None)

    def train_one_epoch(self, loaders: dict, opt, sched) -> dict:
        model, forward = self.model, loaders["forward"]
        model.train()
        names = self.hier.block_names
        grad_acc = torch.zeros(len(names), dtype=torch.float64, device=self.device)
        all_params = [(i, p) for i, n in enumerate(names) for p in self.block_params[n]]
        loss_sum, correct, seen, steps = torch.zeros((), device=self.device), torch.zeros((), device=self.device), 0, 0
        t0 = time.perf_counter()
        for b, (x, y) in enumerate(loaders["train"]):
            x, y = self._to_device(x), y.to(self.device, non_blocking=self.dev.pin_memory)
            with self._autocast():
                logits = forward(x)
                loss = F.cross_entropy(logits.float(), y)
            self.step += 1
            loss_val = loss.item()
            if not math.isfinite(loss_val):
                raise Diverged(f"loss became {'NaN' if math.isnan(loss_val) else 'inf'} at epoch {self.epoch} "
                               f"step {self.step} — lower the learning rate (try 10× smaller)")
            opt.zero_grad(set_to_none=True)
            if self.scaler:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(opt)
            else:
                loss.backward()
            # per-block gradient norms, accumulated on the device (no sync); frozen blocks have no grads → 0
            idx = [i for i, p in all_params if p.grad is not None]
            grads = [p.grad for _, p in all_params if p.grad is not None]
            if grads:
                norms = torch.stack(torch._foreach_norm(grads)).double() ** 2
                grad_acc.index_add_(0, torch.tensor(idx, device=self.device), norms)
            if self.scaler:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
            sched.step()
            n = len(y)
            loss_sum += loss.detach() * n
            correct += (logits.argmax(1) == y).sum()
            seen += n
            steps += 1
            lr = opt.param_groups[-1]["lr"]
            self.emit("after_batch", step=self.step, epoch=self.epoch, batch=b + 1, loss=loss_val, lr=lr, images=n)
            if self.should_stop:
                raise CancelFit(self.should_stop)
        dt = time.perf_counter() - t0
        # grad_acc sums squared block norms over steps: report their root mean square over the epoch
        gn = (grad_acc / max(steps, 1)).sqrt().tolist()
        return {"train_loss": (loss_sum / max(seen, 1)).item(), "train_acc": (correct / max(seen, 1)).item(),
                "train_time": dt, "images_per_s": seen / dt if dt > 0 else 0.0, "lr": opt.param_groups[-1]["lr"],
                "grad_norm": {n: float(v) for n, v in zip(names, gn)}}

    @torch.no_grad()
    def validate(self, loaders: dict) -> dict:
        model, forward = self.model, loaders["forward"]
        was = model.training
        model.eval()
        preds, ys, loss_sum = [], [], 0.0
        try:
            for x, y in loaders["val"]:
                x, y = self._to_device(x), y.to(self.device, non_blocking=self.dev.pin_memory)
                with self._autocast():
                    logits = forward(x).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                preds.append(logits.argmax(1).cpu())
                ys.append(y.cpu())
        finally:
            model.train(was)
        p, y = torch.cat(preds), torch.cat(ys)
        C = len(self.class_names)
        confusion = torch.bincount(y * C + p, minlength=C * C).reshape(C, C)
        self._last_val = {"confusion": confusion}
        return {"val_loss": loss_sum / len(y), "val_acc": (p == y).float().mean().item()}

    # --- telemetry
    def weight_drift(self) -> dict[str, float]:
        """‖W−W₀‖/‖W₀‖ per block (exactly 0.0 for a block that never changed)."""
        return _relative_change(self.block_params, self.w0)

    def bn_stat_drift(self) -> dict[str, float]:
        """Relative change of BatchNorm running mean/var per block (0.0 when the statistics are fixed)."""
        return _relative_change(self.bn_bufs, self.bn0)

    @torch.no_grad()
    def snapshot(self) -> dict[str, np.ndarray]:
        """Feature maps of the probe image at the snapshot layers: uint8 [k≤8, h≤32, w≤32] each."""
        raw: dict[str, torch.Tensor] = {}
        handles = []
        for name in self.snapshot_layers:
            node = self.hier.block(name)
            mods = [m for m in node.members if surgery._is_module(self.model, m)]
            if not mods:
                continue

            def hook(_m, _i, out, name=name):
                if isinstance(out, torch.Tensor):
                    raw[name] = out[0].detach()

            handles.append(self.model.get_submodule(mods[-1]).register_forward_hook(hook))
        was = self.model.training
        self.model.eval()
        try:
            with self._autocast():
                self.model(self.probe)
        finally:
            self.model.train(was)
            for h in handles:
                h.remove()
        maps = {}
        prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        for name, t in raw.items():
            m = _to_map(t.float(), prefix_tokens)
            if m is None:
                continue
            maps[name], self._snap_channels[name] = snapshot_maps(m, self._snap_channels.get(name))
        return maps

    # --- the run
    def fit(self) -> dict:
        t_start = time.time()
        status, reason, error = "completed", "", None
        try:
            self.setup()
            self.emit("before_fit", info=self.info)
            self.emit("snapshot", epoch=0, maps=self.snapshot())
            total_steps = self.steps_per_epoch * self.cfg.epochs
            for pi, phase in enumerate(self.phases):
                if pi:
                    surgery.apply_plan(self.model, self.hier, phase.plan)
                loaders = self._phase_data(phase)
                phase_steps = self.steps_per_epoch * phase.epochs
                gradual = self.cfg.strategy == "gradual"
                opt, sched = self._optimizer(phase.plan, phase_steps, self.step if gradual else 0,
                                             total_steps if gradual else phase_steps)
                self.optimizer, self.scheduler = opt, sched
                lrs = {g["name"]: g["lr"] for g in opt.param_groups}
                record = {"phase": pi + 1, "name": phase.name, "epochs": phase.epochs, "trainable": phase.plan.trainable,
                          "lrs": lrs, "cache": loaders["why"], "cached": loaders["cached"],
                          "trainable_params": surgery.count_params(self.model)["trainable"]}
                self.phase_log.append(record)
                self.emit("before_phase", **record)
                for _ in range(phase.epochs):
                    if self.should_stop:
                        raise CancelFit(self.should_stop)
                    self.epoch += 1
                    self.emit("before_epoch", epoch=self.epoch, phase=pi + 1)
                    t0 = time.perf_counter()
                    tr = self.train_one_epoch(loaders, opt, sched)
                    va = self.validate(loaders)
                    metrics = {"epoch": self.epoch, "phase": pi + 1, **va, **tr,
                               "epoch_time": time.perf_counter() - t0,
                               "drift": self.weight_drift(), "bn_stat_drift": self.bn_stat_drift(),
                               "peak_mem_mb": _peak_mem_mb(self.device), "cached": loaders["cached"]}
                    metrics = {k: metrics[k] for k in (
                        "epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time", "train_time",
                        "images_per_s", "lr", "drift", "grad_norm", "bn_stat_drift", "peak_mem_mb", "cached")}
                    self.history.append(metrics)
                    self.emit("after_epoch", metrics=metrics)
                    self.emit("snapshot", epoch=self.epoch, maps=self.snapshot())
                    if self.should_stop:
                        raise CancelFit(self.should_stop)
        except CancelFit as exc:
            status, reason = "stopped", str(exc) or "stopped"
        except Diverged as exc:
            status, reason = "diverged", str(exc)
        except torch.OutOfMemoryError as exc:
            status = "failed"
            reason = (f"out of GPU memory ({str(exc).splitlines()[0] if str(exc) else ''}) — try a smaller batch "
                      f"size (now {self.cfg.batch_size}) or a smaller image size (now {self.cfg.image_size})")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except BaseException as exc:  # a bug or bad data: report it as failed, then let it propagate
            status, reason, error = "failed", f"{type(exc).__name__}: {exc}", exc
        finally:
            self.summary = self._summary(status, reason, time.time() - t_start)
            self.emit("after_fit", summary=self.summary)
        if error is not None:
            raise error
        return self.summary

    def _summary(self, status: str, reason: str, wall: float) -> dict:
        h = self.history
        conf = self._last_val["confusion"] if self._last_val else None
        per_class = ((conf.diag().float() / conf.sum(1).clamp_min(1)).tolist() if conf is not None else [])
        counts = surgery.count_params(self.model) if self.model is not None else {"trainable": 0, "total": 0}
        train_time = sum(m["train_time"] for m in h)
        return {
            "status": status, "reason": reason, "epochs_done": len(h),
            "best_val_acc": max((m["val_acc"] for m in h), default=None),
            "final_val_acc": h[-1]["val_acc"] if h else None,
            "final_val_loss": h[-1]["val_loss"] if h else None,
            "wall_s": wall,
            "images_per_s": (sum(m["images_per_s"] * m["train_time"] for m in h) / train_time) if train_time else None,
            "trainable_params": counts["trainable"], "total_params": counts["total"],
            "device": getattr(self, "device", None), "weights": getattr(getattr(self, "weights_status", None), "kind", None),
            "confusion": conf.tolist() if conf is not None else [],
            "per_class_acc": per_class, "class_names": self.class_names,
            "cache": [p["cache"] for p in self.phase_log] or ([self.info["cache"]] if self.info else []),
            "phases": [{k: p[k] for k in ("phase", "name", "epochs", "trainable", "lrs", "cached")} for p in self.phase_log],
            "peak_mem_mb": _peak_mem_mb(self.device) if hasattr(self, "device") else None,
        }


def fit(cfg: TrainConfig, callbacks=()) -> dict:
    """Train per ``cfg``; returns the summary (status completed | stopped | diverged | failed).
    Raises ValueError for a bad config (before any event); any unexpected error is re-raised
    after ``after_fit`` has run with status failed."""
    return Trainer(cfg, callbacks).fit()


# --------------------------------------------------------------------------- save / load


def save_model(model: nn.Module, cfg: TrainConfig, class_names: list[str], out_dir) -> Path:
    """Write ``model.safetensors`` (weights) and ``model.json`` (the config that rebuilds it)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"))
    meta = {"format": "tl_lab.model/1", "config": cfg.to_dict(), "class_names": list(class_names),
            "num_classes": len(class_names),
            "timm_name": backbones.get_spec(cfg.backbone).timm_name if cfg.backbone in backbones.catalogue()
            else cfg.backbone,
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config_for(cfg.backbone, model).items()},
            "image_size": cfg.image_size, "normalization": cfg.normalization}
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    return out


def load_model(out_dir) -> tuple[nn.Module, TrainConfig, list[str]]:
    """Rebuild a saved model (architecture from its config, weights from safetensors), in eval mode."""
    out = Path(out_dir)
    meta = json.loads((out / "model.json").read_text())
    cfg = TrainConfig.from_dict(meta["config"])
    class_names = meta["class_names"]
    model, _ = _build_arch(cfg.backbone, len(class_names), "random")
    sd = backbones.read_state_dict(out / "model.safetensors")
    model.load_state_dict(sd, strict=True)
    return model.eval(), cfg, class_names


# --------------------------------------------------------------------------- console progress


class ConsoleProgress:
    """A tqdm progress bar for the terminal (``python -m tl_core train``): one bar over all steps,
    one line per phase and per epoch."""

    def __init__(self, file=None, disable: bool | None = None):
        self.file, self.disable, self.bar = file or sys.stderr, disable, None

    def _write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=self.file)

    def on(self, event: str, trainer, **data) -> None:
        from tqdm import tqdm

        if event == "before_fit":
            i = data["info"]
            self._write(f"{i['backbone']} ({i['weights_label']}) on {i['device']}: {i['num_train']} train / "
                        f"{i['num_val']} val images, {i['num_classes']} classes, {i['total_epochs']} epochs")
            self.bar = tqdm(total=i["steps_per_epoch"] * i["total_epochs"], unit="step", file=self.file,
                            disable=self.disable, dynamic_ncols=True, leave=False)
        elif event == "before_phase":
            self._write(f"phase {data['phase']} ({data['name']}): {len(data['trainable'])} blocks trainable "
                        f"({data['trainable'] and data['trainable'][0]}..{data['trainable'] and data['trainable'][-1]}); "
                        f"{data['cache']}")
        elif event == "after_batch" and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=data["epoch"], loss=f"{data['loss']:.3f}", lr=f"{data['lr']:.2e}", refresh=False)
        elif event == "after_epoch":
            m = data["metrics"]
            self._write(f"epoch {m['epoch']:>3}  train loss {m['train_loss']:.3f} acc {m['train_acc']:.3f}  "
                        f"val loss {m['val_loss']:.3f} acc {m['val_acc']:.3f}  {m['epoch_time']:.1f}s "
                        f"{m['images_per_s']:.0f} img/s")
        elif event == "after_fit":
            if self.bar is not None:
                self.bar.close()
            s = data["summary"]
            acc = f"{s['final_val_acc']:.3f}" if s.get("final_val_acc") is not None else "-"
            self._write(f"{s['status']}: final val acc {acc} in {s['wall_s']:.1f}s"
                        + (f" ({s['reason']})" if s.get("reason") else ""))
