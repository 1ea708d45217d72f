"""``TrainConfig``: everything one training run needs, as a typed dataclass with a JSON round trip and
``validate()`` (one clear line for the first bad field). Numeric bounds come from ``limits.current()``."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from tl_core.models import backbones
from tl_core.training import estimate
from tl_core import limits
from tl_core.models import arch as models
from tl_core.models import strategies
from tl_core.models import surgery
from tl_core.data import texts as text_data
from tl_core.models import text as text_models

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
# Set to "1" by the command line (its user owns the machine) and inherited by the workers it starts: only then
# may a config read any path (``data_root=data.UNRESTRICTED``). A config from a page or a link never may.
TRUSTED_ENV = "TL_CLI_TRUSTED"


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
    max_tokens: int = 64  # text backbones: texts are cut or padded to this many tokens
    augment: dict = field(default_factory=dict)  # fields of data.Augment
    normalization: str = "backbone"
    shift: str = ""  # data.SHIFTS: applied to this run's data, training and validation ("": none)
    ood_shift: str = ""  # an input shift: an extra validation pass on shifted clean images, metric val_acc_ood
    strategy: str = "feature_extraction"
    freeze_blocks: int | None = None  # None: the strategy's default
    probe_depth: int | None = None  # a linear probe: cut after this many block groups, new head (surgery.probe_at)
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
    split_seed: int | None = None  # the data split's seed; None: seed (labs fix it so their seeds are paired)
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
        limits.check_fields(cls, d)
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "TrainConfig":
        return cls.from_dict(json.loads(s))

    # --- derived
    @property
    def effective_weights(self) -> str:
        return "random" if self.strategy == "scratch" else self.weights

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else strategies.default_lr(self.strategy, self.optimizer, self.modality)

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def modality(self) -> str:
        """"text" for a text backbone (minilm_l6, glove_50d), else "image"."""
        return models.modality(self.backbone)

    @property
    def sample_size(self) -> int:
        """The size of one input: ``max_tokens`` for a text run, ``image_size`` for an image run."""
        return self.max_tokens if self.modality == "text" else self.image_size

    # --- checks
    def validate(self, trusted: bool | None = None) -> "TrainConfig":
        """Raise ValueError with one clear line for the first bad field, then for a run that would not fit
        this machine (``tl_core.training.estimate``). ``trusted``: the config comes from the command line, so it may
        read any path (``data_root=data.UNRESTRICTED``); None: only in a process the CLI marked
        (``TRUSTED_ENV``). Returns self."""
        lim = limits.current()
        trusted = os.environ.get(TRUSTED_ENV) == "1" if trusted is None else trusted
        limits.check_types(self)
        for check in (_check_model, _check_length, _check_optimizer, _check_runtime):
            check(self, lim)
        _check_data(self, lim, trusted)
        _check_blocks(self, lim)
        estimate.check(self, lim)
        return self


# --------------------------------------------------------------------------- the checks, in order


def _bad(msg: str):
    raise ValueError(msg)


def _one_of(name: str, value, choices) -> None:
    if value not in choices:
        _bad(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def check_backbone(name, lim: limits.Limits) -> None:
    """The backbone policy of ``TrainConfig`` and ``LabConfig``: a catalogue key (labs' saved backbones
    included), one of ``limits.SMALL_TIMM``, or any timm architecture when ``lim.allow_any_timm``."""
    if not isinstance(name, str) or not name:
        _bad(f"backbone must name a backbone of the catalogue, not {name!r}")
    if name in backbones.catalogue() or name in limits.SMALL_TIMM:
        return
    if models.is_timm_arch(name):
        if lim.allow_any_timm:
            return
        _bad(f"backbone {name!r} is not in the catalogue; choose one of: {', '.join(backbones.catalogue())} "
             "(a teacher allows any timm architecture with TL_LIMIT_ALLOW_ANY_TIMM=1)")
    _bad(f"unknown backbone {name!r}; choose one of: {', '.join(backbones.catalogue())}")


def _check_model(c: TrainConfig, lim: limits.Limits) -> None:
    check_backbone(c.backbone, lim)
    known = c.backbone in backbones.catalogue()
    if not known and c.effective_weights != "random":
        _bad(f"{c.backbone!r} is not in the catalogue: only weights='random' can build it")
    if c.weights not in ("pretrained", "random"):
        _bad(f"weights must be 'pretrained' or 'random', not {c.weights!r}")
    if c.strategy not in strategies.STRATEGIES:
        _bad(f"unknown strategy {c.strategy!r}; choose one of: {', '.join(strategies.STRATEGIES)}")
    if c.weights_file and c.modality == "text":
        _bad(f"{c.backbone} is a text backbone: it reads its bundled weights, not a weights file (weights_file=None)")
    if c.weights_file:
        from tl_core import data

        try:
            data.check_regular(c.weights_file)  # found before a run exists (never opened: a FIFO cannot block)
        except data.DataError as exc:
            _bad(f"weights_file {c.weights_file}: {exc}; give the path of a .safetensors or .pth file")


def _check_data(c: TrainConfig, lim: limits.Limits, trusted: bool = False) -> None:
    from tl_core import data

    if not isinstance(c.data, str) or not c.data:
        _bad("data must name a built-in dataset or a folder/zip in the data root")
    if c.data_root is not None and not isinstance(c.data_root, str):
        _bad(f"data_root must be a folder path or None, not {c.data_root!r}")
    if c.data_root == data.UNRESTRICTED and not trusted:
        _bad("data_root: reading any path is for the command line only; choose a dataset inside the data root")
    kind = text_data.data_modality(c.data)
    if kind is not None and kind != c.modality:
        _bad(_modality_mismatch(c, kind))
    if c.classes is not None and (not isinstance(c.classes, list) or len(set(c.classes)) < 2
                                  or not all(isinstance(x, str) for x in c.classes)):
        _bad(f"classes must list at least two distinct class names (or be None for all), not {c.classes!r}")
    if c.per_class is not None:
        limits.check_int("per_class (or None for all)", c.per_class, 1, lim.max_per_class)
    limits.check_float("val_fraction", c.val_fraction, 0, 1, lo_open=True, hi_open=True)
    check_data_source(c.data, c.data_root, c.modality)
    limits.check_int("image_size", c.image_size, lim.min_image_size, lim.max_image_size, unit=" of pixels")
    limits.check_int("max_tokens", c.max_tokens, lim.min_tokens, lim.max_tokens, unit=" of tokens")
    unknown = set(c.augment or {}) - {f.name for f in dataclasses.fields(data.Augment)}
    if unknown:
        _bad(f"unknown augmentation {sorted(unknown)[0]!r}; use flip, random_resized_crop, color_jitter")
    if c.modality == "text" and data.Augment(**(c.augment or {})).any:
        _bad("augmentation is for images: a text run takes none (augment={})")
    _one_of("normalization", c.normalization, data.NORMALIZATIONS)
    data.check_shift(c.shift)
    data.check_shift(c.ood_shift, "ood_shift", inputs_only=True)
    if c.modality == "text" and (c.shift or c.ood_shift):
        _bad("shifts are for images: a text run takes none (shift='' and ood_shift='')")


def check_data_source(source: str, data_root=None, modality: str = "image") -> None:
    """A built-in data set, or a folder / zip (/ ``.csv`` for text) inside the data root (anywhere with
    ``data.UNRESTRICTED``): refused here, before a run exists, not 8 s into it."""
    from tl_core import data

    if source in data.BUILTIN or source in text_data.TEXT_BUILTIN:
        return
    try:
        data.resolve_data_path(source, data_root, files=(".csv",) if modality == "text" else ())
    except data.DataError as exc:
        names = ", ".join([*data.BUILTIN, *text_data.TEXT_BUILTIN])
        _bad(f"data {source!r}: {str(exc).splitlines()[0]} (built-in data sets: {names})")


def _modality_mismatch(c: TrainConfig, kind: str) -> str:
    from tl_core import data

    if kind == "image":
        return (f"data {c.data!r} is an image data set but {c.backbone} is a text backbone: choose a text data set "
                f"({', '.join(text_data.TEXT_BUILTIN)}, a .csv file or a folder of .txt files)")
    return (f"data {c.data!r} is a text data set but {c.backbone} is an image backbone: choose a text backbone "
            f"({', '.join(text_models.TEXT_MODELS)}) or an image data set ({', '.join(data.BUILTIN)} or a folder)")


def _check_length(c: TrainConfig, lim: limits.Limits) -> None:
    limits.check_int("epochs", c.epochs, 1, lim.max_epochs)
    limits.check_int("head_epochs", c.head_epochs, 1, lim.max_epochs)
    if c.strategy == "two_phase" and c.head_epochs >= c.epochs:
        _bad(f"two_phase needs epochs > head_epochs (phase 2 would get {c.epochs - c.head_epochs} epochs); "
             f"raise epochs or lower head_epochs")
    limits.check_int("batch_size", c.batch_size, 1, lim.max_batch_size)


def _check_optimizer(c: TrainConfig, lim: limits.Limits) -> None:
    if c.lr is not None:
        limits.check_float("lr", c.lr, 0, lo_open=True)
    _one_of("optimizer", c.optimizer, OPTIMIZERS)
    limits.check_float("momentum", c.momentum, 0, 1, hi_open=True)
    limits.check_float("weight_decay", c.weight_decay, 0)
    limits.check_float("backbone_lr_mult", c.backbone_lr_mult, 0, lo_open=True)
    if c.lr_decay is not None:
        limits.check_float("lr_decay", c.lr_decay, 1, hint=" (e.g. 2.6), or None for one LR")
    _one_of("bn_mode", c.bn_mode, surgery.BN_MODES)
    _one_of("schedule", c.schedule, SCHEDULES)


def _check_runtime(c: TrainConfig, lim: limits.Limits) -> None:
    if c.num_threads is not None:
        limits.check_int("num_threads", c.num_threads, 1)
    for name in ("seed", "split_seed"):
        value = getattr(c, name)
        if value is not None or name == "seed":
            limits.check_int(name, value, 0, lim.max_seed)
    check_device(c.device)


def check_device(device) -> None:
    """auto, cpu, cuda, cuda:N or mps, and present on this machine (``cuda:99`` is refused here)."""
    import torch

    dev = str(device)
    if dev not in ("auto", "cpu", "mps", "cuda") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        _bad(f"device must be auto, cpu, cuda, cuda:N or mps, not {dev!r}")
    if dev.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(dev[5:]) if ":" in dev else 0
        if index >= count:
            have = f"GPUs cuda:0..cuda:{count - 1}" if count else "no CUDA GPU"
            _bad(f"device {dev}: this machine has {have}; use device auto (or cpu)")
    if dev == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            _bad("device mps: Apple's MPS is not available on this machine; use device auto (or cpu)")


def _check_blocks(c: TrainConfig, lim: limits.Limits) -> None:
    """freeze_blocks, plan and snapshot_layers against the backbone's blocks (built only when needed)."""
    if c.freeze_blocks is not None:
        limits.check_int("freeze_blocks", c.freeze_blocks, 0)
    if c.probe_depth is not None:
        limits.check_int("probe_depth", c.probe_depth, 1)
        if c.modality == "text":
            _bad("probe_depth is for image backbones: a text run takes none (probe_depth=None)")
        groups = len(models.block_groups(c.backbone, c.sample_size)) - 1
        if c.probe_depth > groups:
            _bad(f"probe_depth={c.probe_depth} is beyond this backbone: {c.backbone} has {groups} block groups "
                 f"below its head, so probe after 1..{groups}")
    if c.freeze_blocks is None and not c.plan and not c.snapshot_layers:
        return
    names = models.block_names(c.backbone, c.sample_size, c.probe_depth)
    if c.freeze_blocks is not None and c.freeze_blocks >= len(names):
        _bad(f"freeze_blocks={c.freeze_blocks} is beyond this backbone: {c.backbone} has {len(names)} "
             f"blocks, so freeze 0..{len(names) - 1} (the head always trains)")
    if c.plan:
        try:
            plan = surgery.FreezePlan.from_dict(c.plan)
        except (TypeError, ValueError, AttributeError) as exc:
            _bad(f"plan is not a valid freeze plan: {exc}")
        if list(plan.blocks) != names:
            _bad(f"plan does not match {c.backbone}: expected blocks {', '.join(names)}")
    for layer in c.snapshot_layers or []:
        if layer not in names:
            _bad(f"snapshot layer {layer!r} is not a block of {c.backbone}; blocks are: {', '.join(names)}")


TEXT_DEFAULTS = dict(backbone="minilm_l6", data="fine_food", strategy="feature_extraction", max_tokens=64,
                     per_class=500, epochs=3)


def default_text_config(**changes) -> TrainConfig:
    """The default text run: MiniLM-L6, fine-food reviews, feature extraction, 64 tokens, 3 epochs, on
    1,000 training reviews. ``per_class`` caps each class's training texts: the set's training part
    holds 2,600 great and 1,400 other reviews, so 500 per class gives 1,000, balanced; validation is
    the set's own 1,000 test reviews (658 great, 342 other) whatever ``per_class`` and ``val_fraction``."""
    return TrainConfig(**{**TEXT_DEFAULTS, **changes})
