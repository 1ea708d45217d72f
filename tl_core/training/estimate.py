"""A memory and time estimate of one training run, made before it exists, and the refusal of what would
not fit (``check``, called by ``TrainConfig.validate``). Deliberately simple, an upper-side guess:

- **activations** ``A``: the elements every layer outputs for one input, summed. Measured once per
  backbone by a forward pass on PyTorch's ``meta`` device (shapes only: no memory, no compute) at
  ``REF_SIZE`` pixels, then scaled by ``(image_size / REF_SIZE)²``; a text backbone uses
  ``max_tokens × params / 400`` (about MiniLM-L6's);
- **memory** = ``BASE_BYTES`` (torch, libraries) + the stored dataset (``images × 3 × 160²`` bytes)
  + parameters × 4 bytes × (4 when trained: weights, gradients, two AdamW moments; else 1)
  + ``batch_size × A × 4 bytes × f``, with ``f = 2`` when the backbone trains (activations kept for
  backward, and their gradients) and ``f = 0.1`` when it is frozen (``feature_extraction``: forward only,
  a few layers alive at once). On a GPU the last two terms must fit in the GPU's memory, the rest in RAM;
- **time** = images × ``A`` × ``CORE_S_PER_ELEMENT`` core-seconds per trained image (a quarter of it for
  a forward-only image), over the epochs (``feature_extraction`` with its cache: one forward pass), plus,
  in a run with an ``ood_shift``, one forward pass of the validation images per epoch (the shifted copy runs
  through the whole model: the prefix cache holds clean images only); divided by the CPU threads, or by
  ``GPU_SPEEDUP`` on a GPU.

``CORE_S_PER_ELEMENT`` was measured on the development machine (2 cores, AdamW, batch 32): MobileNetV2 at
96 px trains at 0.0126 s per image on 2 threads with A = 4.6 M elements (5.5e-9 core-s), ResNet-18 at
96 px at 7e-9; 6e-9 is used. The numbers are estimates to refuse the absurd (a 1024 px fine-tune, a week
of epochs), not predictions: the limits they are held against are ``limits.max_run_minutes``, the RAM
and the GPU's memory.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

from tl_core.devices import device_key  # the device a run will use: cpu, cuda:N or mps

GB = 1024 ** 3
REF_SIZE = 64
BASE_BYTES = int(0.6 * GB)
STORED_IMAGE_BYTES = 3 * 160 * 160  # data.load_dataset keeps images as uint8 at store_size 160
CORE_S_PER_ELEMENT = 6e-9
FORWARD_SHARE = 0.25
GPU_SPEEDUP = 50
FALLBACK_ELEMENTS_PER_PIXEL = 1000  # when a meta forward pass is impossible (about MobileNetV2's 1100)
UNKNOWN_CLASSES = 10  # a user folder's classes are not counted before the run (that reads every file)
USER_DATA_MAX_IMAGES = 20_000  # data.Caps.max_files


@dataclass(frozen=True)
class Estimate:
    memory_bytes: int  # RAM (on a GPU run: what stays on the host)
    gpu_bytes: int  # 0 unless the run uses a GPU
    seconds: float
    device: str  # cpu | cuda:N | mps
    images: int  # training images per epoch (estimated for a user folder)

    def describe(self) -> str:
        gpu = f", {self.gpu_bytes / GB:.1f} GB of GPU memory" if self.gpu_bytes else ""
        return f"about {self.memory_bytes / GB:.1f} GB of RAM{gpu} and {self.seconds / 60:.0f} min on {self.device}"


# --------------------------------------------------------------------------- the machine


def ram_bytes() -> int:
    """The machine's physical memory (psutil if installed, else /proc/meminfo; 8 GB if neither tells)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 * GB


def gpu_bytes(index: int) -> int:
    import torch

    return int(torch.cuda.get_device_properties(index).total_memory)


# --------------------------------------------------------------------------- the model


@functools.lru_cache(maxsize=None)
def _measured(backbone: str) -> tuple[int, int]:
    """(parameters, activation elements at REF_SIZE px) of an image backbone, from a meta forward pass."""
    import timm
    import torch

    from tl_core.models import backbones

    cat = backbones.catalogue()
    name, kwargs = (cat[backbone].timm_name, cat[backbone].create_kwargs) if backbone in cat else (backbone, {})
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=2, **kwargs)
    total = [0]

    def count(module, inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel()

    for m in model.modules():
        if not any(True for _ in m.children()):
            m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.empty(1, 3, REF_SIZE, REF_SIZE, device="meta"))
    return sum(p.numel() for p in model.parameters()), total[0]


@functools.lru_cache(maxsize=None)
def _text_params(backbone: str) -> int:
    from tl_core.models import backbones

    return backbones.param_count(backbone)


def model_size(cfg) -> tuple[int, int]:
    """(parameters, activation elements for one input) of ``cfg``'s backbone at its input size."""
    if cfg.modality == "text":
        params = _text_params(cfg.backbone)
        return params, max(1, cfg.max_tokens * params // 400)
    try:
        params, ref = _measured(cfg.backbone)
    except Exception:  # noqa: BLE001 - a model the meta device cannot run: fall back to a per-pixel guess
        return 10_000_000, FALLBACK_ELEMENTS_PER_PIXEL * cfg.image_size ** 2
    return params, int(ref * (cfg.image_size / REF_SIZE) ** 2)


# --------------------------------------------------------------------------- the data


def image_counts(cfg) -> tuple[int, int]:
    """(training, validation) images of one epoch: exact for a built-in set, a guess for a user folder."""
    from tl_core import data
    from tl_core.data import texts as text_data

    info = data.BUILTIN.get(cfg.data) or text_data.TEXT_BUILTIN.get(cfg.data)
    if info is not None:
        total = getattr(info, "size", None) or 5000
        classes = len(cfg.classes) if cfg.classes else getattr(info, "num_classes", 2)
        train = int(total * (1 - cfg.val_fraction))
        if cfg.per_class is not None:
            train = min(train, cfg.per_class * classes)
        return max(train, 1), int(total * cfg.val_fraction)
    classes = len(cfg.classes) if cfg.classes else UNKNOWN_CLASSES
    train = USER_DATA_MAX_IMAGES if cfg.per_class is None else min(cfg.per_class * classes, USER_DATA_MAX_IMAGES)
    return train, int(train * cfg.val_fraction / (1 - cfg.val_fraction))


# --------------------------------------------------------------------------- estimate and check


def estimate(cfg) -> Estimate:
    """The memory and time ``cfg`` will take (see the module docstring for the formula)."""
    device = device_key(cfg.device)
    params, act = model_size(cfg)
    train, val = image_counts(cfg)
    trains = cfg.strategy != "feature_extraction"
    model_bytes = params * 4 * (4 if trains else 1) + cfg.batch_size * act * 4 * (2 if trains else 0.1)
    host = BASE_BYTES + (train + val) * STORED_IMAGE_BYTES
    per_image = act * CORE_S_PER_ELEMENT
    if trains or not cfg.cache_features:
        core_s = cfg.epochs * (train * per_image + val * per_image * FORWARD_SHARE)
    else:
        core_s = (train + val) * per_image * FORWARD_SHARE
    if cfg.ood_shift:  # the extra validation pass on shifted images: whole model, every epoch
        core_s += cfg.epochs * val * per_image * FORWARD_SHARE
    if device.startswith("cuda"):
        seconds = core_s / GPU_SPEEDUP
        return Estimate(int(host), int(model_bytes), seconds, device, train)
    threads = cfg.num_threads or os.cpu_count() or 1
    return Estimate(int(host + model_bytes), 0, core_s / threads, device, train)


def check(cfg, lim) -> Estimate:
    """``estimate(cfg)``, or ValueError (one line, with the numbers) when it would not fit the RAM, the GPU's
    memory or ``lim.max_run_minutes``."""
    e = estimate(cfg)
    fix = "use a smaller image size, batch size, fewer images or epochs, or a frozen backbone (feature_extraction)"
    if e.memory_bytes > ram_bytes():
        raise ValueError(f"this run would need about {e.memory_bytes / GB:.1f} GB of memory, more than this "
                         f"machine's {ram_bytes() / GB:.1f} GB: {fix}")
    if e.gpu_bytes and e.gpu_bytes > gpu_bytes(int(e.device.split(":")[1])):
        raise ValueError(f"this run would need about {e.gpu_bytes / GB:.1f} GB of GPU memory, more than "
                         f"{e.device}'s {gpu_bytes(int(e.device.split(':')[1])) / GB:.1f} GB: {fix}")
    minutes = e.seconds / 60
    if not math.isfinite(minutes) or minutes > lim.max_run_minutes:
        raise ValueError(f"this run would take about {minutes:,.0f} minutes on {e.device}, over the "
                         f"{lim.max_run_minutes}-minute limit (max_run_minutes): {fix}")
    return e
