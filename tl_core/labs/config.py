"""A lab's settings: ``LabSettings`` (the fields, the training seeds, the checks every lab shares), the URL
form of a field's value, ``LabInfo`` and the presets.

What each lab is (``LabInfo``) and its preset defaults live in the lab's own module; ``registry.LabConfig``
(the settings that know their lab: presets, JSON and URL round trips, the lab's own check) reads them there.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tl_core import limits

PRESETS = ("default", "gpu")

# the fields every lab uses (a lab's LabInfo.fields starts with these)
COMMON_FIELDS = ("backbone", "data", "per_class", "image_size", "epochs", "batch_size", "lr", "val_fraction",
                 "seed", "seeds", "only_seed", "device")


@dataclass(frozen=True)
class LabInfo:
    id: str
    title: str
    question: str
    prediction: str
    fields: tuple[str, ...]  # the fields this lab uses (the query string carries only these)
    timing: str  # what keeps the default under 5 minutes on a 2-core CPU
    tag: str | None = None  # the lab's name in its run names ("lab freeze-depth · ..."); None: the id
    paired: bool = True  # its seeds share one split (paired); False: each seed splits the data by its own seed

    @property
    def run_tag(self) -> str:
        return self.tag or self.id


@dataclass
class LabSettings:
    """Everything a lab needs. Fields a lab does not use are ignored by it (and left out of its query)."""

    lab: str = "race"
    preset: str = "default"  # default (<= 5 min on a 2-core CPU) | gpu (bigger)
    backbone: str = "mobilenetv2"
    data: str = "animal_shapes"
    per_class: int | None = 25  # training images per class of the target task (None: all)
    image_size: int = 64
    max_tokens: int = 64  # text labs: each text is cut or padded to this many tokens (TrainConfig.max_tokens)
    epochs: int = 6
    batch_size: int = 32
    lr: float | None = None  # None: each strategy's default (race, quadrant); labs that compare set one
    val_fraction: float = 0.1
    seed: int = 0  # the split's seed (and Yosinski's A/B classes), and the first training seed
    seeds: int = 3  # k: training seeds seed, seed+1, ..., seed+k-1 (paired: same split); bounded by limits
    only_seed: int | None = None  # classroom: run only seed index i (0..seeds-1), i.e. training seed seed+i
    device: str = "auto"
    # race / quadrant
    strategies: list[str] = field(default_factory=lambda: ["scratch", "feature_extraction", "partial", "full",
                                                           "two_phase", "gradual"])
    target_acc: float | None = None  # race: the "slope" target; None: the best accuracy scratch reached
    # freeze_depth / yosinski
    depths: list[int] | None = None  # block groups n to sweep; None: all
    # yosinski
    source_per_class: int | None = None  # images per class of task A (None: all)
    source_epochs: int = 4
    classes_a: list[str] | None = None  # None: a seeded half of the classes
    classes_b: list[str] | None = None  # None: the other half
    # quadrant
    sizes: list[int | None] = field(default_factory=lambda: [5, 25, 100])
    domains: list[str] = field(default_factory=lambda: ["animal_shapes", "mnist"])
    # bn
    freeze_blocks: int | None = None
    # kornblith
    networks: list[str] = field(default_factory=list)  # the pretrained image backbones compared
    # surgical, adabn: the shifts of the target (data.SHIFTS; adabn takes the first, an input shift)
    shifts: list[str] = field(default_factory=lambda: ["noise", "labels"])
    # lp_ft: epochs of the linear probe (the head alone) before LP-FT fine-tunes every block for ``epochs``
    head_epochs: int = 10

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def run_seeds(self) -> list[int]:
        """The training seeds this lab runs: seed, seed+1, ..., seed+seeds-1, or only seed+only_seed."""
        if self.only_seed is not None:
            return [self.seed + self.only_seed]
        return [self.seed + i for i in range(self.seeds)]

    # --- checks
    def validate(self) -> "LabSettings":
        """Raise ValueError with one clear line for the first bad field: the checks every lab shares
        (bounds from ``limits.current()``; ``registry.LabConfig`` adds the lab's own). Returns self."""
        from tl_core.models import strategies

        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, not {self.preset!r}")
        limits.check_types(self)
        for s in self.strategies:
            if s not in strategies.STRATEGIES:
                raise ValueError(f"unknown strategy {s!r}; choose from: {', '.join(strategies.STRATEGIES)}")
        self._check_bounds()
        if self.target_acc is not None:
            limits.check_float("target_acc", self.target_acc, 0, 1, lo_open=True)
        self._check_sources()
        return self

    def _check_sources(self) -> None:
        """Backbone, data, domains and device through TrainConfig's own checks, then the estimate of the
        lab's heaviest run (the backbone trained, the largest size) before any plan or forward pass."""
        from tl_core.models.arch import modality
        from tl_core.training import config
        from tl_core.training.estimate import check as check_estimate

        lim = limits.current()
        config.check_backbone(self.backbone, lim)
        kind = modality(self.backbone)
        for source in dict.fromkeys([self.data, *(self.domains if self.lab == "quadrant" else [])]):
            config.check_data_source(source, None, kind)
        config.check_device(self.device)
        sizes = [s for s in self.sizes if s is not None] if self.lab == "quadrant" else []
        per_class = None if self.lab == "quadrant" and None in self.sizes else max([*sizes, self.per_class or 0]) or None
        heavy = config.TrainConfig(backbone=self.backbone, weights="random", data=self.data, per_class=per_class,
                                   image_size=self.image_size, max_tokens=self.max_tokens,
                                   epochs=max(self.epochs, self.source_epochs),
                                   batch_size=self.batch_size, val_fraction=self.val_fraction, strategy="full",
                                   device=self.device)
        check_estimate(heavy, lim)

    def int_ranges(self) -> dict[str, tuple[str, int, int, str]]:
        """Each whole-number field's allowed range, from ``limits.current()``: name → (its name in messages, lo,
        hi, unit); a list field (sizes, depths) bounds each item. ``validate`` checks them, and the Labs page's
        widgets and a shared link (``registry.LabConfig.from_link``) read the same numbers."""
        lim = limits.current()
        return {"seed": ("seed", 0, lim.max_seed, ""),
                "per_class": ("per_class", 1, lim.max_per_class, ""),
                "source_per_class": ("source_per_class", 1, lim.max_per_class, ""),
                "sizes": ("sizes (images per class)", 1, lim.max_per_class, ""),
                "depths": ("depths", 0, 1000, ""),
                "freeze_blocks": ("freeze_blocks", 0, 1000, ""),
                "epochs": ("epochs", 1, lim.max_epochs, ""),
                "source_epochs": ("source_epochs", 1, lim.max_epochs, ""),
                "head_epochs": ("head_epochs", 1, lim.max_epochs, ""),
                "image_size": ("image_size", lim.min_image_size, lim.max_image_size, " of pixels"),
                "max_tokens": ("max_tokens", lim.min_tokens, lim.max_tokens, " of tokens"),
                "batch_size": ("batch_size", 1, lim.max_batch_size, ""),
                "seeds": ("seeds", 1, lim.max_seeds, ""),
                "only_seed": ("only_seed (a seed index)", 0, self.seeds - 1, "")}

    def _check_bounds(self) -> None:
        if self.lr is not None:
            limits.check_float("lr", self.lr, 0, lo_open=True)
        limits.check_float("val_fraction", self.val_fraction, 0, 1, lo_open=True, hi_open=True)
        for name, (label, lo, hi, unit) in self.int_ranges().items():
            value = getattr(self, name)
            for v in value if isinstance(value, list) else [value]:
                if v is not None:
                    limits.check_int(label, v, lo, hi, unit)


def check_run_count(cfg: LabSettings, per_seed: int, detail: str = "") -> None:
    """Refuse (one line) a lab whose ``per_seed`` runs times its seeds exceed ``limits.max_lab_runs``."""
    k = len(cfg.run_seeds())
    total, limit = per_seed * k, limits.current().max_lab_runs
    if total > limit:
        what = f"{detail} × {k} seed(s)" if detail else f"{per_seed:,} runs per seed × {k} seed(s)"
        raise ValueError(f"this lab would queue {total:,} runs ({what}); the limit is {limit} (max_lab_runs): "
                         "use fewer settings or seeds, or run one seed per student (only_seed)")


def check_two_strategies(cfg: LabSettings) -> None:
    """For the labs that compare strategies (a lab module's ``check``)."""
    if len(cfg.strategies) < 2:
        raise ValueError("pick at least two strategies")


# ----------------------------------------------------------------------------- query values

_NONE_WORD = {"per_class": "all", "source_per_class": "all", "sizes": "all", "only_seed": "all"}


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(LabSettings)}


def encode_value(name: str, value) -> str:
    """A lab field's value as it stands in the URL ("all"/"auto" for None, lists comma-separated)."""
    none = _NONE_WORD.get(name, "auto")
    if value is None:
        return none
    if isinstance(value, list):
        return ",".join(none if v is None else str(v) for v in value)
    return str(value)


def decode_value(name: str, text: str):
    """The inverse of ``encode_value``: a URL string back to the field's type (ValueError if it is not one)."""
    kind = _field_types()[name]
    none = _NONE_WORD.get(name, "auto")
    text = text.strip()
    optional = "None" in kind
    if kind.startswith("list"):
        if optional and text in (none, "none") and not kind.startswith("list[int | None]"):
            return None
        items = [t.strip() for t in text.split(",") if t.strip()]
        if "int" in kind.split("]")[0]:
            return [None if t in (none, "none") else _number(int, t) for t in items]
        return items
    if optional and text in (none, "none", ""):
        return None
    if kind.startswith("int"):
        return _number(int, text)
    if kind.startswith("float"):
        return _number(float, text)
    return text


def _number(kind: type, text: str):
    """``kind(text)``, or a ValueError that says what was expected without quoting the text (the caller
    quotes it, cut to a readable length: a link may hold thousands of characters)."""
    try:
        return kind(text)
    except ValueError:
        raise ValueError("not a whole number" if kind is int else "not a number") from None
