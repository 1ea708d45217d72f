"""Take it home as a notebook: a Jupyter notebook that reproduces a run with plain PyTorch and timm.

``notebook(cfg) -> bytes`` (an ``.ipynb``, nbformat v4) holds one markdown cell per concept (what it
does and why, for students) followed by that concept's code, in the order the lab runs them: setup,
data, preprocessing, batches, model, freeze plan, optimiser and parameter groups, learning-rate
schedule, training loop, training, curves (plotly).

It reproduces what ``tl_core.training.trainer.fit(cfg)`` does: the same images and split (read with
``tl_core.data``, the only lab code the notebook imports, as its data cell says), the same seed
before the model is built (so the new head starts from the same weights), the same batch order (a
DataLoader over a generator seeded like the lab's), the same freeze plan per phase, one optimiser
param group per trainable block and the same per-phase learning-rate schedule. The freeze plan and
optimiser cells are ``codegen``'s own sections ("Show the code"); the others differ from
``codegen.generate_code`` where reproducing the run needs more (train transforms with augmentation,
exact normalisation statistics, weights loaded without consuming the random generator twice,
gradual unfreezing's single cosine, a loop that records the curves).

The lab runs a frozen prefix once per image and keeps its output, and uses mixed precision on a GPU;
the notebook keeps the plain forward pass in float32, which gives the same numbers up to float
rounding (on a CPU without a cached prefix, bit for bit: it also runs conv nets channels_last).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

from tl_core.models import backbones
from tl_core.export import codegen
from tl_core import devices
from tl_core.models import arch as models
from tl_core.models import strategies
from tl_core.models import surgery
from tl_core.training.config import TrainConfig

Cell = tuple[str, str]  # (markdown, code): one concept of the notebook
OPTIMIZER_NAMES = {"adamw": "AdamW", "sgd": "SGD"}

# --------------------------------------------------------------------------- inputs


def _config(cfg_or_inputs: TrainConfig | Mapping) -> TrainConfig:
    if isinstance(cfg_or_inputs, TrainConfig):
        return cfg_or_inputs
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in dict(cfg_or_inputs).items() if k in fields})


def as_config(cfg_or_inputs: TrainConfig | Mapping) -> TrainConfig:
    """A validated TrainConfig from a config or the app's inputs dict (keys that are not
    TrainConfig fields are ignored). Raises ValueError with one clear line."""
    cfg = _config(cfg_or_inputs)
    spec = backbones.catalogue().get(cfg.backbone)
    if getattr(spec, "modality", "image") != "image":
        raise ValueError(f"{spec.label} is a text backbone: the notebook download supports image runs only for now")
    if cfg.probe_depth is not None:
        raise ValueError("a linear probe cut after a block group (probe_depth, the layer-probe lab) is not exported "
                         "yet: the notebook would train the whole network")
    return cfg.validate()


def _num_classes(cfg: TrainConfig) -> int:
    from tl_core import data

    if cfg.classes:
        return len(cfg.classes)
    if cfg.data in data.BUILTIN:
        return data.BUILTIN[cfg.data].num_classes
    return data.load_dataset(cfg.data, cfg.data_root).num_classes


def filename(cfg_or_inputs: TrainConfig | Mapping) -> str:
    """A file name for the notebook of a run, e.g. ``mobilenetv2-animal_shapes-feature_extraction.ipynb``."""
    c = _config(cfg_or_inputs)
    stem = "-".join([c.name] if c.name else [c.backbone, Path(str(c.data)).stem, c.strategy])
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) + ".ipynb"


# --------------------------------------------------------------------------- cells


def _intro(cfg: TrainConfig, label: str, num_classes: int) -> str:
    strategy = strategies.STRATEGIES[cfg.strategy]
    data_name = Path(str(cfg.data)).name
    classes = f" (classes: {', '.join(cfg.classes)})" if cfg.classes else ""
    return f"""\
# {cfg.name or 'Transfer learning'}: {label} on {data_name}, {strategy.label.lower()}

This notebook reproduces a run of the Transfer Learning Lab with plain PyTorch and timm. It uses the
same images, train/validation split, seed, freeze plan, optimiser parameter groups and learning-rate
schedule as the lab, so it should reach the same validation accuracy.

- **Backbone:** {label} ({cfg.effective_weights} weights), a new head for {num_classes} classes
- **Data:** {data_name}{classes}, {cfg.per_class or 'all'} training images per class, \
{cfg.val_fraction:.0%} of each class for validation, {cfg.image_size} px
- **Strategy:** {strategy.label}: {strategy.summary}
- **Training:** {cfg.epochs} epoch(s), batch size {cfg.batch_size}, {OPTIMIZER_NAMES[cfg.optimizer]} at base learning rate \
{cfg.effective_lr:g}, {cfg.schedule} schedule, seed {cfg.seed}

Run the cells from top to bottom; the last one draws the curves. You need `torch`, `torchvision`,
`timm` and `plotly`, and the lab's own `tl_core` package for the data cell (run the notebook from the
lab's folder). The lab runs the frozen first blocks only once per image and keeps their output (same
numbers, only faster) and computes in mixed precision on a GPU; this notebook keeps the plain
forward pass in float32."""


def _setup_cell(cfg: TrainConfig, setup_code: str, channels_last: bool) -> Cell:
    md = ("**Setup.** The libraries and the run's numbers. Every random choice below (the split, the new "
          "head's first weights, the order of the batches) follows from `SEED`: run the notebook again and "
          "you get the same numbers.")
    device = (repr(cfg.device) + "  # as in the lab" if cfg.device != "auto" else
              '"cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"')
    threads = f"\ntorch.set_num_threads({cfg.num_threads})" if cfg.num_threads else ""
    memory = ("MEMORY_FORMAT = torch.channels_last  # how images sit in memory: faster for conv nets, as in the lab"
              if channels_last else "MEMORY_FORMAT = torch.contiguous_format")
    return md, setup_code + f'''

import os
import random

import numpy as np
import torch.nn.functional as F
from torch.utils.data import DataLoader

SEED = {cfg.seed}
EPOCHS = {cfg.epochs}  # over all phases together
BATCH_SIZE = {cfg.batch_size}
IMAGE_SIZE = {cfg.image_size}
GRADUAL = {cfg.strategy == "gradual"}  # gradual unfreezing: one cosine over the whole run, not one per phase
DEVICE = {device}{threads}
{memory}'''


def _data_cell(cfg: TrainConfig) -> Cell:
    md = ("**Data.** The images and their train/validation split come from the lab's own loader "
          "(`tl_core.data`), so this notebook sees exactly the images the lab trained and validated on. The "
          "split is stratified (every class gives the same share to validation) and seeded. This is the only "
          "place the notebook uses the lab's code: for your own images, put e.g. torchvision's `ImageFolder` "
          "here. Images are kept as small uint8 tensors `[N, channels, height, width]`.")
    subset = f"\ndataset = tl_data.subset_classes(dataset, {list(cfg.classes)!r})" if cfg.classes else ""
    code = f'''\
from tl_core import data as tl_data  # the lab's loader, for the images and the split only

dataset = tl_data.load_dataset({str(cfg.data)!r}, {cfg.data_root!r}){subset}
train_idx, val_idx = tl_data.split(dataset, val_fraction={cfg.val_fraction!r}, seed={cfg.effective_split_seed}, per_class={cfg.per_class!r})
CLASS_NAMES = list(dataset.class_names)
assert len(CLASS_NAMES) == NUM_CLASSES
print(f"{{len(train_idx)}} training and {{len(val_idx)}} validation images of {{NUM_CLASSES}} classes: "
      + ", ".join(CLASS_NAMES))'''
    return md, code


def _preprocessing_cell(cfg: TrainConfig, data_cfg: Mapping) -> Cell:
    from tl_core import data

    aug = data.Augment(**(cfg.augment or {}))
    mean, std = data.normalization_stats(data_cfg, cfg.normalization)
    interp = data_cfg.get("interpolation", "bilinear")
    resize = (f"v2.Resize({int(cfg.image_size / data_cfg.get('crop_pct', 1.0))}, interpolation=INTERPOLATION, "
              "antialias=True),\n    v2.CenterCrop(IMAGE_SIZE),")
    train = ("v2.RandomResizedCrop(IMAGE_SIZE, scale=(0.35, 1.0), interpolation=INTERPOLATION, antialias=True),"
             if aug.random_resized_crop else resize)
    train += "\n    v2.RGB(),"
    train += "\n    v2.RandomHorizontalFlip()," if aug.flip else ""
    train += ("\n    v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05),"
              if aug.color_jitter else "")
    finish = "v2.ToDtype(torch.float32, scale=True),  # uint8 0..255 -> float 0..1"
    finish += "" if cfg.normalization == "none" else "\n    v2.Normalize(MEAN, STD),"
    why = data.NORMALIZATIONS[cfg.normalization]
    md = ("**Preprocessing.** A pretrained network expects its inputs the way it saw them in pretraining: "
          "resized and centre-cropped to the image size, with the pixels normalised by the mean and standard "
          "deviation of its training images. Grayscale images get their one channel repeated three times, "
          f"because the first layer expects colour. Normalisation here: {why}.")
    if aug.any:
        md += (" Training images are also randomly changed (augmentation) so the network sees a slightly "
               "different version every epoch; validation images never are.")
    code = f'''\
MEAN, STD = {[float(m) for m in mean]!r}, {[float(s) for s in std]!r}
INTERPOLATION = v2.InterpolationMode({interp!r})
train_transform = v2.Compose([
    {train}
    {finish}
])
eval_transform = v2.Compose([
    {resize}
    v2.RGB(),
    {finish}
])'''
    return md, code


SHIFT_MD = ("**Distribution shift.** This run comes from a lab on a shifted target: the lab changed its data on "
            "purpose, once, after the split (the split is the clean one). An input shift changes the pixels and keeps "
            "the classes; the label shift keeps the pixels and renames every class. The code below is the lab's own "
            "shift, written out: the same tensors, bit for bit.")


def _shift_cell(cfg: TrainConfig, code: str) -> Cell:
    """The run's shift (``codegen.shift_code``) applied to the data set; ``ood_images`` for an ``ood_shift``."""
    md = SHIFT_MD
    apply = []
    if cfg.ood_shift:
        md += (f" The lab also measured, after every epoch, the clean validation images with the {cfg.ood_shift!r} "
               "shift (out of distribution); the last cell measures them once, after training.")
        apply.append("ood_images = shift_images(dataset.images, OOD_SHIFT)[val_idx]  # before the run's own shift")
    if cfg.shift:
        apply += ["images, labels = shift_data(dataset.images, dataset.labels)",
                  "dataset = dataclasses.replace(dataset, images=images, labels=labels)  # a shifted copy"]
    return md, ("import dataclasses\n\n" if cfg.shift else "") + code + "\n\n\n" + "\n".join(apply)


OOD_BATCHES_CODE = '''
ood_loader = DataLoader(Images(ood_images, dataset.labels[val_idx], eval_transform), batch_size=2 * BATCH_SIZE)'''
OOD_RUN_CODE = '''
ood_loss, ood_acc = evaluate(ood_loader)
print(f"validation accuracy on the {OOD_SHIFT} images (out of distribution): {ood_acc:.2%}")'''

BATCHES_MD = ("**Batches.** A `DataLoader` cuts the training images into shuffled batches. It shuffles with "
              "its own random generator, seeded like the lab's, so the batches come in the same order as in "
              "the lab. Validation images are not shuffled: their order does not change the score.")

BATCHES_CODE = '''\
class Images(torch.utils.data.Dataset):
    """uint8 images [N, C, H, W] and their labels -> (preprocessed float image, label)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


train_set = Images(dataset.images[train_idx], dataset.labels[train_idx], train_transform)
val_set = Images(dataset.images[val_idx], dataset.labels[val_idx], eval_transform)
batch_order = torch.Generator().manual_seed(SEED)
train_loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True, generator=batch_order)
val_loader = DataLoader(val_set, batch_size=2 * BATCH_SIZE)'''

_SEED_CODE = '''\
# Seed right before building the model, as the lab does: the new head starts from the same weights.
random.seed(SEED)
np.random.seed(SEED)
torch.manual_seed(SEED)
'''


def _remote_code(spec: backbones.BackboneSpec) -> str | None:
    """An expression that downloads (once, then caches) the pretrained state dict of ``spec``."""
    url = backbones.torchvision_url(spec)
    if url:
        return f"torch.hub.load_state_dict_from_url({url!r}, map_location='cpu', weights_only=True)"
    if spec.pretrained_tag:
        return (f"safetensors.torch.load_file(huggingface_hub.hf_hub_download('timm/{spec.pretrained_tag}', "
                "'model.safetensors'))")
    return None


def _pretrained_code(spec: backbones.BackboneSpec, cfg: TrainConfig, create) -> tuple[str, str]:
    """(code, where the weights come from) for pretrained weights. Like the lab, the model is built
    with its pretrained head, loaded, then given a fresh head: the random generator is used the same
    way, so the new head starts from the same weights."""
    status = backbones.weight_status(cfg.backbone, cfg.weights_file)
    url = backbones.torchvision_url(spec)
    torchvision_layout = bool(url) and (status.kind == "bundled" or status.source.endswith(url.rsplit("/", 1)[-1]))
    other_layout = status.kind == "bundled" and spec.bundled.convert not in (None, "torchvision_in_order")
    local = status.kind in ("user", "bundled", "cached") and not other_layout
    remote = _remote_code(spec) if status.kind in ("bundled", "cached", "download") else None
    if not local and not remote:
        raise ValueError(f"the notebook cannot load the weights of {spec.label} ({status.label}); "
                         "choose random weights")
    source = str(backbones.readable_weights(cfg.backbone, status)) if local else status.source  # a pickle: its copy
    read = ("safetensors.torch.load_file(WEIGHTS)" if source.endswith(".safetensors") else
            "torch.load(WEIGHTS, map_location='cpu', weights_only=True)  # tensors only: no pickled code runs")
    lines = ["import huggingface_hub"] if remote and "huggingface_hub" in remote else []
    lines += ["import safetensors.torch"] if "safetensors" in (remote or "") + (read if local else "") else []
    lines.append(f"model = {create(spec.num_classes)}  # with its pretrained head")
    if local and remote:
        lines += [f"WEIGHTS = {source!r}  # {status.label}", "if os.path.exists(WEIGHTS):",
                  f"    state_dict = {read}", "else:  # on another machine: the same weights from the internet",
                  f"    state_dict = {remote}"]
    elif local:
        lines += [f"WEIGHTS = {source!r}  # {status.label}", f"state_dict = {read}"]
    else:
        lines.append(f"state_dict = {remote}  # downloaded once, then cached")
    if torchvision_layout:
        lines.append("# torchvision names the tensors differently, but holds the same ones in the same order\n"
                     "state_dict = dict(zip(model.state_dict(), state_dict.values()))")
    lines += ["model.load_state_dict(state_dict)",
              "model.reset_classifier(NUM_CLASSES)  # a fresh, randomly initialised head for our classes"]
    where = ("timm's port of the same checkpoint, from the Hugging Face hub: the lab read a bundled copy stored "
             "in another layout, so the numbers may differ slightly" if other_layout else status.label)
    return "\n".join(lines), where


def _model_cell(cfg: TrainConfig, label: str, timm_name: str, num_classes: int) -> Cell:
    spec = backbones.catalogue().get(cfg.backbone)
    kwargs = [f"{k}={v!r}" for k, v in (spec.create_kwargs if spec else {}).items()]

    def create(num_classes) -> str:
        return backbones.create_code(timm_name, ", ".join([*kwargs, f"num_classes={num_classes}"]))

    if cfg.effective_weights == "random":
        code = f"model = {create('NUM_CLASSES')}  # random initial weights"
        md = (f"**Model.** {label} with random initial weights: every weight has to be learned from our "
              "images. This is the baseline that shows what pretraining buys.")
    else:
        code, where = _pretrained_code(spec, cfg, create)
        md = (f"**Model.** {label} with its pretrained weights ({where}). Its classification head (the last "
              f"layer, for the {spec.num_classes:,} classes it was pretrained on) is replaced by a fresh one for our "
              f"{num_classes} classes: the only part that starts from random weights.")
    imports = [ln for ln in code.splitlines() if ln.startswith("import ")]
    body = [ln for ln in code.splitlines() if not ln.startswith("import ")]
    definition = backbones.arch_definition(timm_name)  # an architecture tl_core adds to timm (SqueezeNet)
    head = "".join(ln + "\n" for ln in imports) + ("\n" if imports else "")
    return md, head + (definition + "\n\n\n" if definition else "") + _SEED_CODE + "\n".join(body) + MODEL_END


MODEL_END = '''
model.to(DEVICE, memory_format=MEMORY_FORMAT)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")'''


FREEZE_MD = ("**Freeze plan.** A network is a stack of blocks: the first ones detect edges and textures, which "
             "are useful for almost any images; the last ones combine them into the classes they were trained "
             "on. A frozen block (`requires_grad = False`) keeps its pretrained weights. Watch BatchNorm: "
             "`requires_grad = False` does not stop its running mean and variance from following the new "
             "images in training mode, so frozen blocks switch their BatchNorm layers to eval mode.")

OPTIMISER_MD = ("**Optimiser and parameter groups.** Only the trainable blocks go to the optimiser, one parameter "
                "group per block, each with its own learning rate (base rate x the block's multiplier). A smaller "
                "rate for pretrained blocks keeps their useful weights from being wrecked while the fresh head "
                "still gives large, noisy gradients.")

SCHEDULE_MD = ("**Learning-rate schedule.** A cosine schedule lowers the learning rate smoothly from its starting "
               "value to zero: big steps first, fine adjustments at the end. It restarts with every phase (except "
               "in gradual unfreezing, where one cosine spans the whole run).")

SCHEDULE_CODE = '''\
def make_scheduler(optimizer, steps, offset=0):
    """Multiplies every group's learning rate by a factor at each step: 1 (constant) or a cosine
    from 1 down to 0 over `steps`, starting `offset` steps in."""
    if SCHEDULE == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(offset + s, steps) / max(steps, 1))))'''

LOOP_MD = ("**Training loop.** Phase by phase: each phase applies its freeze plan and builds a fresh optimiser, "
           "then trains for its epochs. An epoch shows every training image once; after each epoch the model is "
           "measured on the validation images, which it never learns from.")

LOOP_CODE = '''\
def evaluate(loader):
    """Mean loss and accuracy in eval mode (no dropout, BatchNorm uses its running statistics)."""
    model.eval()
    loss_sum = correct = seen = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(DEVICE, memory_format=MEMORY_FORMAT), y.to(DEVICE)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
    return loss_sum / seen, correct / seen


def train_epoch(optimizer, scheduler):
    """One pass over the training images; returns their mean loss and accuracy."""
    model.train()
    loss_sum = correct = seen = 0
    for x, y in train_loader:
        x, y = x.to(DEVICE, memory_format=MEMORY_FORMAT), y.to(DEVICE)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return loss_sum / seen, correct / seen


def train():
    """Every phase, every epoch; returns one dict of metrics per epoch."""
    history, step = [], 0
    for phase in PHASES:
        optimizer = apply_phase(phase)
        steps = len(train_loader) * (EPOCHS if GRADUAL else phase["epochs"])
        scheduler = make_scheduler(optimizer, steps, offset=step if GRADUAL else 0)
        for _ in range(phase["epochs"]):
            train_loss, train_acc = train_epoch(optimizer, scheduler)
            step += len(train_loader)
            val_loss, val_acc = evaluate(val_loader)
            history.append({"epoch": len(history) + 1, "phase": phase["name"], "train_loss": train_loss,
                            "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc})
            print(f"epoch {len(history)} ({phase['name']}): train loss {train_loss:.3f}, acc {train_acc:.1%} | "
                  f"val loss {val_loss:.3f}, acc {val_acc:.1%}")
    return history'''

RUN_MD = ("**Train.** This is where the time goes. On a CPU, the lab's small defaults take about a minute.")
RUN_CODE = '''\
history = train()
print(f"final validation accuracy: {history[-1]['val_acc']:.2%}")'''

CURVES_MD = ("**Curves.** Loss and accuracy per epoch, on the training and the validation images. When the "
             "training accuracy keeps rising while the validation accuracy stalls or falls, the model has started "
             "to memorise its training images (overfitting).")

CURVES_CODE = '''\
import plotly.graph_objects as go
from plotly.subplots import make_subplots

epochs = [h["epoch"] for h in history]
fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
for split, dash in (("train", "dot"), ("val", "solid")):
    for col, metric in ((1, "loss"), (2, "acc")):
        fig.add_trace(go.Scatter(x=epochs, y=[h[f"{split}_{metric}"] for h in history], mode="lines+markers",
                                 name=f"{split} {metric}", line={"dash": dash}), row=1, col=col)
fig.update_xaxes(title_text="epoch", dtick=1)
fig.update_yaxes(tickformat=".0%", row=1, col=2)
fig.update_layout(height=380, title="Training curves")
fig.show()'''


# --------------------------------------------------------------------------- composition


def _backbone_info(cfg: TrainConfig) -> dict:
    """What the cells need to know about the backbone: codegen's ``backbones.describe`` keys (timm_name,
    label, mean, std), its data config and whether it runs channels_last (as the lab decides it)."""
    import timm
    import torch

    spec = backbones.catalogue().get(cfg.backbone)
    timm_name = spec.timm_name if spec else cfg.backbone
    with torch.device("meta"):  # the architecture only: no memory, no time
        arch = timm.create_model(timm_name, pretrained=False, **(spec.create_kwargs if spec else {}))
    data_cfg = models.data_config_for(cfg.backbone, arch)
    conv = devices.is_conv_net(arch) if cfg.channels_last is None else cfg.channels_last
    return {"timm_name": timm_name, "label": spec.label if spec else cfg.backbone, "mean": list(data_cfg["mean"]),
            "std": list(data_cfg["std"]), "data_config": data_cfg, "channels_last": conv}


def cells(cfg_or_inputs: TrainConfig | Mapping, hier: surgery.Hierarchy | None = None) -> list[Cell]:
    """The notebook as (markdown, code) pairs, one per concept; the first pair's code is empty (the
    title). ``hier``: the backbone's ``surgery.Hierarchy`` when the caller has it (else built here)."""
    cfg = as_config(cfg_or_inputs)
    num_classes = _num_classes(cfg)
    if hier is None:
        model, _ = models.build_arch(cfg.backbone, num_classes, "random")
        hier = surgery.hierarchy(model, cfg.image_size)
    bb = _backbone_info(cfg)
    phases = [(p.name, p.epochs, p.plan.to_dict()) for p in strategies.schedule(cfg, hier)]
    sections = dict(codegen.code_sections(cfg.to_dict(), hier, bb, num_classes, phases, cfg.effective_lr))
    shifted = [_shift_cell(cfg, sections["Distribution shift"])] if "Distribution shift" in sections else []
    ood = bool(cfg.ood_shift)
    return [
        (_intro(cfg, bb["label"], num_classes), ""),
        _setup_cell(cfg, sections["Setup"], bb["channels_last"]),
        _data_cell(cfg),
        *shifted,
        _preprocessing_cell(cfg, bb["data_config"]),
        (BATCHES_MD, BATCHES_CODE + (OOD_BATCHES_CODE if ood else "")),
        _model_cell(cfg, bb["label"], bb["timm_name"], num_classes),
        (FREEZE_MD, sections["Freeze plan"]),
        (OPTIMISER_MD, sections["Optimiser and parameter groups"]),
        (SCHEDULE_MD, SCHEDULE_CODE),
        (LOOP_MD, LOOP_CODE),
        (RUN_MD, RUN_CODE + (OOD_RUN_CODE if ood else "")),
        (CURVES_MD, CURVES_CODE),
    ]


def notebook(cfg_or_inputs: TrainConfig | Mapping, hier: surgery.Hierarchy | None = None) -> bytes:
    """The run as a Jupyter notebook (nbformat v4, UTF-8 JSON), ready for ``st.download_button``.

    ``cfg_or_inputs``: a TrainConfig or the app's inputs dict. Raises ValueError with one clear
    line for a bad config or a text backbone (not supported yet)."""
    import nbformat
    from nbformat import v4

    nb = v4.new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    })
    for i, (md, code) in enumerate(cells(cfg_or_inputs, hier)):  # ids from the position: same run, same bytes
        nb.cells.append(v4.new_markdown_cell(md, id=f"about-{i}"))
        if code:
            nb.cells.append(v4.new_code_cell(code, id=f"code-{i}"))
    nbformat.validate(nb)
    return nbformat.writes(nb).encode("utf-8")
