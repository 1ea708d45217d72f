"""Labs: small reproducible experiments that put a claim of transfer-learning theory to the test.

A lab is a ``LabConfig`` (a small JSON, or a URL query string that a teacher shares) that expands
into ordinary training runs (``TrainConfig``s, all on the same data, split and seed, feature
caching on) plus a PURE analysis: recorded metrics and summaries in → a results table, a plotly
figure and a "what we measured" text that states the measured outcome in numbers, compares it
with the prediction and says so when they disagree.

    labs = race | freeze_depth | yosinski | quadrant | bn | normalization

Execution. ``launch_lab(cfg)`` registers every run of the lab in the ``RunStore`` up front (queued,
FIFO, named "lab race · scratch"...: Compare shows them like any run) and starts ONE background
process, ``python -m tl_core.labs run LAB_ID --runs-dir D``, that trains them one after another
through the worker's own ``worker.run`` (device slot, ``StoreCallback``, final status). Runs that
depend on earlier ones (Yosinski: the transfer runs need the A and B base nets) get their weights
file built right before they start. ``stop_lab`` stops the current run and cancels the rest.
``run_lab(cfg)`` does the same in the calling process (tests, benchmarks).

A lab's folder is ``RUNS_DIR/labs/LAB_ID/``: ``lab.json`` (config, run ids, status), ``lab.log``
(the process's output), ``weights/`` (built weights files), ``STOP`` (a stop request).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import runs as runs_mod

TOL = 0.02  # accuracy differences below 2 points count as "similar" (a few validation images)
LAB_STATE = "lab.json"
LAB_LOG = "lab.log"
STOP_FILE = "STOP"
ACTIVE = ("queued", "running")

# ----------------------------------------------------------------------------- what each lab is


@dataclass(frozen=True)
class LabInfo:
    id: str
    title: str
    question: str
    prediction: str
    fields: tuple[str, ...]  # LabConfig fields this lab uses (the query string carries only these)
    timing: str  # what keeps the default under 5 minutes on a 2-core CPU


_COMMON = ("backbone", "data", "per_class", "image_size", "epochs", "batch_size", "lr", "val_fraction", "seed",
           "device")
LABS: dict[str, LabInfo] = {
    i.id: i
    for i in [
        LabInfo(
            "race", "Strategy race",
            "Six strategies, same data, same seed: which learns best from a small target set?",
            "Transfer beats training from scratch in three ways: a **higher start** (better after the first "
            "epoch), a **higher slope** (fewer epochs to reach a target accuracy) and a **higher asymptote** "
            "(better best accuracy). The effects show with a small target set (20–30 images per class).",
            _COMMON + ("strategies", "target_acc"),
            "25 images per class at 64 px, 6 epochs, validation on 10% of the data",
        ),
        LabInfo(
            "freeze_depth", "Freeze-depth sweep",
            "How many of the pretrained network's block groups can stay frozen before accuracy suffers?",
            "Frozen curve: keeping the first n groups frozen costs little while their features are **general** "
            "(early layers: edges, textures) and falls off once the frozen part reaches the **specific** late "
            "layers. Copy curve: copying more pretrained groups (and fine-tuning them) helps more than "
            "re-initialising them.",
            _COMMON + ("depths",),
            "25 images per class at 64 px, 4 epochs, 6 depths (11 runs)",
        ),
        LabInfo(
            "yosinski", "Your own source task (Yosinski 2014)",
            "Split the classes into halves A and B. Does a network trained on A help on B, layer by layer?",
            "Yosinski et al. (2014), Figure 2: **frozen** transfer (AnB) falls off in the higher layers, which "
            "are specific to task A; frozen self-transfer (BnB) dips in the middle (co-adapted layers split "
            "apart); **fine-tuned** transfer (AnB+) matches or beats the baseline at every depth.",
            _COMMON + ("source_per_class", "source_epochs", "classes_a", "classes_b", "depths"),
            "a test_resnet-sized CNN at 32 px; A: all its images, 4 epochs; B: 30 images per class, 30 epochs "
            "(5 batches each); 22 runs",
        ),
        LabInfo(
            "quadrant", "Data size × similarity",
            "Which strategy wins with little or lots of data, on a near or a far target domain?",
            "The textbook quadrant: little data + similar domain → **feature extraction**; lots of data → "
            "**fine-tune more** (partial or full); little data + different domain → hard: keep only the early, "
            "generic layers (**partial**).",
            _COMMON + ("strategies", "sizes", "domains"),
            "sizes 5, 25, 100 per class at 48 px, 3 epochs, 2 domains × 3 strategies (18 runs)",
        ),
        LabInfo(
            "bn", "BatchNorm pitfall",
            "A block is \"frozen\": do its BatchNorm layers know that?",
            "With BatchNorm statistics **frozen** the frozen blocks stay exactly as pretrained (statistics drift "
            "0). With BatchNorm in **train** mode their running statistics drift towards the new data although "
            "no weight is trained (plain PyTorch's silent default), and the frozen features change under the "
            "head's feet: usually a lower or less stable accuracy.",
            _COMMON + ("freeze_blocks",),
            "25 images per class at 64 px, 4 epochs, 2 runs",
        ),
        LabInfo(
            "normalization", "Normalisation mismatch",
            "What if the images are normalised with the wrong mean and standard deviation?",
            "A pretrained backbone expects its inputs scaled exactly as in pretraining (EfficientNet-Lite0: mean "
            "= std = 0.5). The wrong statistics shift every input, the frozen features degrade and accuracy "
            "**drops**: the classic \"works in the app, fails in my code\" bug.",
            _COMMON,
            "25 images per class at 64 px, 4 epochs, feature extraction (cached), 2 runs",
        ),
    ]
}

# ----------------------------------------------------------------------------- the configuration


@dataclass
class LabConfig:
    """Everything a lab needs. Fields a lab does not use are ignored by it (and left out of its query)."""

    lab: str = "race"
    preset: str = "default"  # default (<= 5 min on a 2-core CPU) | gpu (bigger)
    backbone: str = "mobilenetv2"
    data: str = "animal_shapes"
    per_class: int | None = 25  # training images per class of the target task (None: all)
    image_size: int = 64
    epochs: int = 6
    batch_size: int = 32
    lr: float | None = None  # None: each strategy's default (race, quadrant); labs that compare set one
    val_fraction: float = 0.1
    seed: int = 0
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

    # --- JSON
    def to_dict(self, compact: bool = False) -> dict:
        """All fields; ``compact``: only ``lab``, ``preset`` and the fields this lab uses (the rest come
        back from the preset's defaults in ``from_dict``)."""
        d = dataclasses.asdict(self)
        if compact:
            keep = ("lab", "preset") + LABS[self.lab].fields
            d = {k: d[k] for k in keep}
        return d

    def to_json(self, indent: int | None = 2, compact: bool = True) -> str:
        return json.dumps(self.to_dict(compact=compact), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> "LabConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown lab config field(s): {', '.join(unknown)}")
        lab = d.get("lab", "race")
        if lab not in LABS:
            raise ValueError(f"unknown lab {lab!r}; choose one of: {', '.join(LABS)}")
        base = default_config(lab, d.get("preset", "default")).to_dict()
        base.update(d)
        return cls(**base)

    @classmethod
    def from_json(cls, text: str) -> "LabConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a lab configuration (invalid JSON: {exc})") from None
        if not isinstance(d, dict):
            raise ValueError("not a lab configuration (expected a JSON object)")
        return cls.from_dict(d)

    # --- URL query string
    def to_query(self) -> dict[str, str]:
        """The fields this lab uses as strings (``st.query_params.from_dict`` / ``urlencode``)."""
        out = {"lab": self.lab, "preset": self.preset}
        for name in LABS[self.lab].fields:
            out[name] = _encode(name, getattr(self, name))
        return out

    def to_query_string(self) -> str:
        return urlencode(self.to_query(), safe=",")

    @classmethod
    def from_query(cls, query) -> "LabConfig":
        """From a mapping of strings (``st.query_params``) or a query string; missing fields take the
        lab's preset defaults, unknown keys are ignored (the URL may carry other pages' parameters)."""
        if isinstance(query, str):
            query = dict(parse_qsl(query.lstrip("?"), keep_blank_values=True))
        query = {k: (v[-1] if isinstance(v, list) else v) for k, v in dict(query).items()}
        lab = query.get("lab", "race")
        if lab not in LABS:
            raise ValueError(f"unknown lab {lab!r}; choose one of: {', '.join(LABS)}")
        cfg = default_config(lab, query.get("preset", "default"))
        names = {f.name for f in dataclasses.fields(cls)} - {"lab", "preset"}
        for key, text in query.items():
            if key in names:
                try:
                    setattr(cfg, key, _decode(key, text))
                except ValueError as exc:
                    raise ValueError(f"query parameter {key}={text!r}: {exc}") from None
        return cfg

    # --- checks
    def validate(self) -> "LabConfig":
        from . import data, strategies

        def bad(msg: str):
            raise ValueError(msg)

        if self.lab not in LABS:
            bad(f"unknown lab {self.lab!r}; choose one of: {', '.join(LABS)}")
        if self.preset not in PRESETS:
            bad(f"preset must be one of {', '.join(PRESETS)}, not {self.preset!r}")
        for s in self.strategies:
            if s not in strategies.STRATEGIES:
                bad(f"unknown strategy {s!r}; choose from: {', '.join(strategies.STRATEGIES)}")
        if self.lab == "race" and "scratch" not in self.strategies:
            bad("the race needs the 'scratch' strategy: every benefit is measured relative to it")
        if self.lab in ("race", "quadrant") and len(self.strategies) < 2:
            bad("pick at least two strategies")
        if self.per_class is not None and self.per_class < 1:
            bad(f"per_class must be >= 1 (or all), not {self.per_class}")
        if self.epochs < 1 or self.source_epochs < 1:
            bad("epochs must be >= 1")
        if self.lab == "quadrant":
            for d in self.domains:
                if d not in data.BUILTIN:
                    bad(f"quadrant domains must be built-in data sets ({', '.join(data.BUILTIN)}), not {d!r}")
            if not self.sizes:
                bad("quadrant needs at least one size")
        if self.lab == "yosinski":
            a, b = yosinski_classes(self)
            if set(a) & set(b):
                bad(f"classes A and B must be disjoint; both have {sorted(set(a) & set(b))}")
            if len(a) < 2 or len(b) < 2:
                bad("classes A and B need at least two classes each")
        if self.target_acc is not None and not 0 < self.target_acc <= 1:
            bad(f"target_acc must be in (0, 1], not {self.target_acc}")
        return self


_NONE_WORD = {"per_class": "all", "source_per_class": "all", "sizes": "all"}


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(LabConfig)}


def _encode(name: str, value) -> str:
    none = _NONE_WORD.get(name, "auto")
    if value is None:
        return none
    if isinstance(value, list):
        return ",".join(none if v is None else str(v) for v in value)
    return str(value)


def _decode(name: str, text: str):
    kind = _field_types()[name]
    none = _NONE_WORD.get(name, "auto")
    text = text.strip()
    optional = "None" in kind
    if kind.startswith("list"):
        if optional and text in (none, "none") and not kind.startswith("list[int | None]"):
            return None
        items = [t.strip() for t in text.split(",") if t.strip()]
        if "int" in kind.split("]")[0]:
            return [None if t in (none, "none") else int(t) for t in items]
        return items
    if optional and text in (none, "none", ""):
        return None
    if kind.startswith("int"):
        return int(text)
    if kind.startswith("float"):
        return float(text)
    return text


PRESETS = ("default", "gpu")


def default_config(lab: str, preset: str = "default") -> LabConfig:
    """The lab's default (<= 5 min on a 2-core CPU) or its bigger GPU configuration."""
    if lab not in LABS:
        raise ValueError(f"unknown lab {lab!r}; choose one of: {', '.join(LABS)}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}")
    gpu = preset == "gpu"
    c = LabConfig(lab=lab, preset=preset)
    if lab == "race":
        c.per_class, c.image_size, c.epochs = (30, 128, 12) if gpu else (25, 64, 6)
    elif lab == "freeze_depth":
        c.per_class, c.image_size, c.epochs, c.lr = (30, 128, 8, 1e-3) if gpu else (25, 64, 4, 1e-3)
        c.depths = None if gpu else [0, 1, 3, 5, 7, 9]
    elif lab == "yosinski":
        c.backbone, c.image_size, c.per_class, c.lr = "test_resnet", 32, 30, 1e-3
        c.epochs, c.source_epochs = (60, 10) if gpu else (30, 4)  # B has 5 batches per epoch: cheap
        c.val_fraction = 0.2
        if gpu:
            c.backbone, c.image_size = "resnet10t", 64
    elif lab == "quadrant":
        c.strategies = ["feature_extraction", "partial", "full"]
        c.image_size, c.epochs = (96, 6) if gpu else (48, 3)
        c.sizes = [5, 20, 100, None] if gpu else [5, 25, 100]
        c.per_class = None
    elif lab == "bn":
        c.per_class, c.image_size, c.epochs, c.lr = (30, 128, 8, 1e-3) if gpu else (25, 64, 4, 1e-3)
        c.strategies = ["partial"]
    elif lab == "normalization":
        c.backbone = "efficientnet_lite0"
        c.per_class, c.image_size, c.epochs = (30, 128, 8) if gpu else (25, 64, 4)
        c.strategies = ["feature_extraction"]
    if gpu:
        c.val_fraction = 0.2
    return c


# ----------------------------------------------------------------------------- runs of a lab


@dataclass
class LabRun:
    key: str  # unique within the lab: "scratch", "frozen:3", "AnB+:2", "q:mnist:5:partial"
    label: str  # for people: "scratch", "AnB+ n=2"
    cfg: object  # TrainConfig
    stage: int = 0  # runs of stage s start after every run of stage s-1 has ended
    build: dict | None = None  # a weights file to build right before the run (see _build_weights)
    after: str | None = None  # what to do after it: "register_backbone"

    def to_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "config": self.cfg.to_dict(), "stage": self.stage,
                "build": self.build, "after": self.after}


def _train_config(**kw):
    from .training import TrainConfig

    return TrainConfig(**kw)


def _base(cfg: LabConfig, lab_label: str, label: str, **kw) -> dict:
    d = dict(name=f"lab {lab_label} · {label}", backbone=cfg.backbone, data=cfg.data, per_class=cfg.per_class,
             image_size=cfg.image_size, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
             val_fraction=cfg.val_fraction, seed=cfg.seed, device=cfg.device, cache_features=True)
    d.update(kw)
    return d


def _hier(backbone: str, image_size: int, num_classes: int = 2):
    from . import surgery, training

    model, _ = training._build_arch(backbone, num_classes, "random")
    return surgery.hierarchy(model, image_size), model


def depth_groups(backbone: str, image_size: int) -> list[list[str]]:
    """The copyable/freezable units of a backbone: its block groups without the head."""
    hier, _ = _hier(backbone, image_size)
    return hier.groups()[:-1]


def _blocks_in(groups: list[list[str]], n: int) -> int:
    return sum(len(g) for g in groups[:n])


def yosinski_classes(cfg: LabConfig) -> tuple[list[str], list[str]]:
    """Tasks A and B: disjoint halves of the data set's classes (a seeded split unless given)."""
    from . import data

    if cfg.classes_a and cfg.classes_b:
        return list(cfg.classes_a), list(cfg.classes_b)
    names = list(data.BUILTIN[cfg.data].class_names) if cfg.data in data.BUILTIN else \
        list(data.load_dataset(cfg.data).class_names)
    import random

    order = names[:]
    random.Random(cfg.seed).shuffle(order)
    if cfg.classes_a:
        a = [c for c in names if c in set(cfg.classes_a)]
        return a, [c for c in names if c not in set(a)]
    if cfg.classes_b:
        b = [c for c in names if c in set(cfg.classes_b)]
        return [c for c in names if c not in set(b)], b
    half = set(order[: len(order) // 2])
    return [c for c in names if c in half], [c for c in names if c not in half]


def _depths(cfg: LabConfig, n_groups: int, lo: int) -> list[int]:
    ds = list(range(lo, n_groups + 1)) if cfg.depths is None else sorted({int(d) for d in cfg.depths})
    bad = [d for d in ds if not lo <= d <= n_groups]
    if bad:
        raise ValueError(f"depths must be {lo}..{n_groups} for {cfg.backbone} ({n_groups} block groups), not {bad}")
    return ds


def yosinski_backbone_keys(cfg: LabConfig) -> tuple[str, str]:
    return "lab_yosinski_A", "lab_yosinski_B"


def plan_runs(cfg: LabConfig, lab_dir: str | os.PathLike | None = None) -> list[LabRun]:
    """The lab's runs, in execution order. ``lab_dir`` is where built weights files will go."""
    cfg.validate()
    lab_dir = Path(lab_dir or ".")
    wdir = lab_dir / "weights"
    lab, tag = cfg.lab, {"freeze_depth": "freeze-depth", "normalization": "normalisation"}.get(cfg.lab, cfg.lab)
    out: list[LabRun] = []
    if lab == "race":
        from .strategies import STRATEGIES

        for s in cfg.strategies:
            kw = dict(strategy=s)
            if s == "two_phase" and cfg.epochs < 2:
                raise ValueError("two_phase needs at least 2 epochs (1 for the head, then fine-tuning)")
            out.append(LabRun(s, STRATEGIES[s].label, _train_config(**_base(cfg, tag, STRATEGIES[s].label, **kw))))
    elif lab == "freeze_depth":
        groups = depth_groups(cfg.backbone, cfg.image_size)
        N = len(groups)
        for n in _depths(cfg, N, 0):
            k = _blocks_in(groups, n)
            out.append(LabRun(f"frozen:{n}", f"frozen n={n}", _train_config(**_base(
                cfg, tag, f"first {n} groups frozen", strategy="partial", freeze_blocks=k))))
        for n in _depths(cfg, N, 0):
            if n == N:
                continue  # copying every group and fine-tuning all = "frozen:0" (full fine-tuning)
            if n == 0:
                c = _base(cfg, tag, "copy 0 groups (scratch)", strategy="scratch")
                out.append(LabRun("copy:0", "copy n=0", _train_config(**c)))
                continue
            path = wdir / f"pretrained_first{n}.safetensors"
            c = _base(cfg, tag, f"copy first {n} groups, rest re-initialised", strategy="full", weights="pretrained",
                      weights_file=str(path))
            out.append(LabRun(f"copy:{n}", f"copy n={n}", _train_config(**c),
                              build={"kind": "pretrained_prefix", "n": n, "path": str(path)}))
    elif lab == "yosinski":
        a, b = yosinski_classes(cfg)
        key_a, key_b = yosinski_backbone_keys(cfg)
        groups = depth_groups(cfg.backbone, cfg.image_size)
        base = dict(strategy="scratch", weights="random")
        out.append(LabRun("baseA", "base A (source)", _train_config(**_base(
            cfg, tag, "base A (source)", classes=a, per_class=cfg.source_per_class, epochs=cfg.source_epochs,
            **base)), stage=0, after="register_backbone"))
        out.append(LabRun("baseB", "base B (baseline)", _train_config(**_base(
            cfg, tag, "base B (baseline)", classes=b, **base)), stage=0, after="register_backbone"))
        for n in _depths(cfg, len(groups), 1):
            k = _blocks_in(groups, n)
            for src, key in (("B", key_b), ("A", key_a)):
                path = wdir / f"{src}_first{n}.safetensors"
                build = {"kind": "run_prefix", "source": f"base{src}", "n": n, "path": str(path)}
                for plus in ("", "+"):
                    name = f"{src}nB{plus}"
                    strat = dict(strategy="full") if plus else dict(strategy="partial", freeze_blocks=k)
                    out.append(LabRun(f"{name}:{n}", f"{name} n={n}", _train_config(**_base(
                        cfg, tag, f"{name} n={n}", backbone=key, weights="pretrained", weights_file=str(path),
                        classes=b, **strat)), stage=1, build=build))
    elif lab == "quadrant":
        from .strategies import STRATEGIES

        for dom in cfg.domains:
            for size in cfg.sizes:
                for s in cfg.strategies:
                    sz = "all" if size is None else size
                    out.append(LabRun(f"q:{dom}:{sz}:{s}", f"{dom} {sz}/class {s}", _train_config(**_base(
                        cfg, tag, f"{dom} · {sz}/class · {STRATEGIES[s].label}", data=dom, per_class=size,
                        strategy=s))))
    elif lab == "bn":
        for mode in ("frozen", "train"):
            out.append(LabRun(f"bn:{mode}", f"BN {mode}", _train_config(**_base(
                cfg, tag, f"BatchNorm {mode}", strategy="partial", freeze_blocks=cfg.freeze_blocks, bn_mode=mode))))
    elif lab == "normalization":
        for norm in ("backbone", "wrong"):
            label = "own mean/std" if norm == "backbone" else "wrong mean/std"
            out.append(LabRun(f"norm:{norm}", label, _train_config(**_base(
                cfg, tag, label, strategy="feature_extraction", normalization=norm))))
    for r in out:
        if r.stage == 0 and not r.build:
            r.cfg.validate()
    return out


# ----------------------------------------------------------------------------- building weights


def _prefix_keys(hier, groups: list[list[str]], n: int, keys) -> set[str]:
    members = [m for g in groups[:n] for name in g for m in hier.block(name).members]
    return {k for k in keys if any(k == m or k.startswith(m + ".") for m in members)}


def mix_state_dicts(model_random, source_sd: dict, backbone: str, image_size: int, n: int) -> tuple[dict, int]:
    """Weights of ``model_random`` with the first ``n`` block groups (parameters AND BatchNorm buffers)
    taken from ``source_sd``. Returns (state dict, number of tensors copied)."""
    from . import surgery

    hier = surgery.hierarchy(model_random, image_size)
    groups = hier.groups()[:-1]
    sd = {k: v.detach().clone() for k, v in model_random.state_dict().items()}
    copy = _prefix_keys(hier, groups, n, sd)
    missing = sorted(k for k in copy if k not in source_sd)
    if missing:
        raise ValueError(f"source weights lack {len(missing)} tensors of the first {n} groups, e.g. {missing[0]}")
    for k in copy:
        if source_sd[k].shape != sd[k].shape:
            raise ValueError(f"shape mismatch for {k}: {tuple(source_sd[k].shape)} vs {tuple(sd[k].shape)}")
        sd[k] = source_sd[k].detach().clone()
    return sd, len(copy)


def _save_sd(sd: dict, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
    os.replace(tmp, path)


def _num_classes(cfg_dict: dict) -> int:
    from . import data

    if cfg_dict.get("classes"):
        return len(cfg_dict["classes"])
    if cfg_dict["data"] in data.BUILTIN:
        return data.BUILTIN[cfg_dict["data"]].num_classes
    return len(data.load_dataset(cfg_dict["data"], cfg_dict.get("data_root")).class_names)


def _build_weights(run: dict, state: dict, store) -> None:
    """Create the weights file a run needs (idempotent: an existing file is kept)."""
    import torch

    from . import backbones, training

    build, cfgd = run["build"], run["config"]
    path = Path(build["path"])
    if path.exists():
        return
    seed = int(cfgd.get("seed", 0))
    num_classes = _num_classes(cfgd)
    if build["kind"] == "pretrained_prefix":
        source, _ = backbones.create_model(cfgd["backbone"], num_classes, "pretrained")
        arch = cfgd["backbone"]
        torch.manual_seed(seed + 7919)
        rand, _ = backbones.create_model(arch, num_classes, "random")
    elif build["kind"] == "run_prefix":
        src = next(r for r in state["runs"] if r["key"] == build["source"])
        info = store.get(src["run_id"])
        model_dir = store.model_dir(src["run_id"])
        if info.status != "completed" or model_dir is None:
            raise RuntimeError(f"needs the {src['label']} network, which did not complete ({info.status}"
                               f"{': ' + info.reason if info.reason else ''})")
        source, _, _ = training.load_model(model_dir)
        arch = src["config"]["backbone"]
        torch.manual_seed(seed + 7919)  # the same re-initialised rest for every transfer file of this lab
        rand, _ = training._build_arch(arch, num_classes, "random")
    else:
        raise ValueError(f"unknown build kind {build['kind']!r}")
    sd, _ = mix_state_dicts(rand, source.state_dict(), arch, int(cfgd["image_size"]), int(build["n"]))
    _save_sd(sd, path)


def _register_backbone(run: dict, state: dict, store) -> str | None:
    """Save a lab-trained base net as a catalogue backbone (``backbones.save_local_backbone``)."""
    from . import backbones, training

    info = store.get(run["run_id"])
    model_dir = store.model_dir(run["run_id"])
    if info.status != "completed" or model_dir is None:
        return None
    model, cfg, class_names = training.load_model(model_dir)
    key_a, key_b = yosinski_backbone_keys(LabConfig.from_dict(state["config"]))
    task = "A" if run["key"] == "baseA" else "B"
    key = key_a if task == "A" else key_b
    dc = training.data_config_for(cfg.backbone, model)
    dc = {k: list(v) if isinstance(v, tuple) else v for k, v in dc.items()}
    acc = (info.summary or {}).get("best_val_acc")
    cat = backbones.catalogue()
    timm_name = cat[cfg.backbone].timm_name if cfg.backbone in cat else cfg.backbone
    spec = backbones.BackboneSpec(
        key=key, label=f"Lab source net {task} ({cfg.backbone})", family="Lab", timm_name=timm_name,
        num_classes=len(class_names), data_config=dc,
        description=(f"Trained by the Yosinski lab {state['id']} from scratch on task {task}: "
                     f"{', '.join(class_names)} ({cfg.data}, {cfg.image_size} px"
                     + (f", {acc:.1%} validation accuracy" if acc is not None else "") + ")."))
    backbones.save_local_backbone(model, spec)
    backbones._data_config.cache_clear()
    for k in [k for k in training._BLOCK_NAMES if k[0] == key]:
        del training._BLOCK_NAMES[k]
    return key


# ----------------------------------------------------------------------------- lab state on disk


def labs_dir(runs_dir=None) -> Path:
    return Path(runs_dir or runs_mod.default_runs_dir()).resolve() / "labs"


def lab_dir(lab_id: str, runs_dir=None) -> Path:
    if not lab_id or "/" in lab_id or "\\" in lab_id or lab_id.startswith("."):
        raise KeyError(f"invalid lab id {lab_id!r}")
    return labs_dir(runs_dir) / lab_id


def _write_state(folder: Path, state: dict) -> None:
    tmp = folder / (LAB_STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, folder / LAB_STATE)


def read_state(lab_id: str, runs_dir=None) -> dict:
    folder = lab_dir(lab_id, runs_dir)
    state = json.loads((folder / LAB_STATE).read_text())
    pid = state.get("pid")
    if pid is None and (folder / "lab.pid").exists():
        try:
            pid = int((folder / "lab.pid").read_text())
        except ValueError:
            pid = None
    if state.get("status") in ACTIVE and pid:
        alive, _ = runs_mod._pid_alive(pid)
        if not alive and state.get("status") in ACTIVE:  # re-read: it may have just finished
            state = json.loads((folder / LAB_STATE).read_text())
            if state.get("status") in ACTIVE:
                state.update(status="failed", reason=runs_mod.DIED, finished=time.time())
                _write_state(folder, state)
    return state


def list_labs(runs_dir=None, lab: str | None = None) -> list[dict]:
    """Lab states, newest first (optionally only one lab kind)."""
    folder = labs_dir(runs_dir)
    out = []
    if folder.is_dir():
        for d in folder.iterdir():
            if (d / LAB_STATE).exists():
                try:
                    s = read_state(d.name, runs_dir)
                except (OSError, ValueError):
                    continue
                if lab is None or s.get("lab") == lab:
                    out.append(s)
    return sorted(out, key=lambda s: s.get("created", 0), reverse=True)


def create_lab(cfg: LabConfig, runs_dir=None, store=None) -> dict:
    """Register the lab and all its runs (queued) in the store; returns the lab state."""
    cfg.validate()
    lab_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    folder = lab_dir(lab_id, runs_dir)
    planned = plan_runs(cfg, folder)
    folder.mkdir(parents=True)
    own = store is None
    store = store or runs_mod.RunStore(runs_dir)
    try:
        runs = []
        for r in planned:
            run_id = store.create(r.cfg)
            runs.append({**r.to_dict(), "run_id": run_id})
    finally:
        if own:
            store.close()
    meta = {"n_groups": len(depth_groups(cfg.backbone, cfg.image_size))} if cfg.lab == "freeze_depth" else {}
    state = {"id": lab_id, "lab": cfg.lab, "config": cfg.to_dict(), "runs": runs, "status": "queued", "meta": meta,
             "reason": "waiting for the lab process to start", "created": time.time(), "started": None,
             "finished": None, "pid": None, "runs_dir": str(Path(runs_dir or runs_mod.default_runs_dir()).resolve())}
    _write_state(folder, state)
    return state


def launch_lab(cfg: LabConfig, runs_dir=None) -> str:
    """Create the lab's runs and start ``python -m tl_core.labs run LAB_ID`` in its own session.
    Returns the lab id at once."""
    state = create_lab(cfg, runs_dir)
    folder = lab_dir(state["id"], runs_dir)
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    with open(folder / LAB_LOG, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tl_core.labs", "run", state["id"], "--runs-dir", state["runs_dir"]],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    (folder / "lab.pid").write_text(str(proc.pid))  # read_state notices a process that died early
    store = runs_mod.RunStore(runs_dir)
    try:  # the runs belong to this process from now on: the store's reaper watches it
        for r in state["runs"]:
            store.attach_worker(r["run_id"], proc.pid)
    finally:
        store.close()
    return state["id"]


def stop_lab(lab_id: str, runs_dir=None) -> None:
    """Stop the current run of the lab and cancel the rest."""
    folder = lab_dir(lab_id, runs_dir)
    (folder / STOP_FILE).touch()
    state = read_state(lab_id, runs_dir)
    store = runs_mod.RunStore(runs_dir or state.get("runs_dir"))
    try:
        # queued ones first, so the lab process never starts another one
        for r in sorted(state["runs"], key=lambda r: store.get(r["run_id"]).status != "queued"):
            try:
                if store.get(r["run_id"]).status in ACTIVE:
                    store.request_stop(r["run_id"])
            except KeyError:
                pass
    finally:
        store.close()
    if state.get("status") == "queued" and not state.get("pid"):
        state.update(status="stopped", reason="stopped before it started", finished=time.time())
        _write_state(folder, state)


class _Flag:
    terminated: str | None = None


def _on_signal(signum, frame):
    from .worker import Terminated

    _Flag.terminated = signal.Signals(signum).name
    raise Terminated(_Flag.terminated)


def execute(lab_id: str, runs_dir=None, store=None) -> dict:
    """Run every run of the lab, one after another, in this process (``worker.run`` for each: device
    slot, StoreCallback, final status). Returns the final lab state."""
    from . import worker

    folder = lab_dir(lab_id, runs_dir)
    state = read_state(lab_id, runs_dir)
    own = store is None
    store = store or runs_mod.RunStore(runs_dir or state.get("runs_dir"))
    pid = os.getpid()
    state.update(status="running", pid=pid, started=time.time(), reason=None)
    _write_state(folder, state)
    for r in state["runs"]:
        store.attach_worker(r["run_id"], pid)
    done = threading.Event()

    def beat():  # keep the lab's waiting runs alive for the store's reaper
        while not done.wait(runs_mod.HEARTBEAT_S):
            for r in state["runs"]:
                try:
                    store.heartbeat(r["run_id"])
                except Exception:
                    traceback.print_exc()

    thread = threading.Thread(target=beat, name="lab-heartbeat", daemon=True)
    thread.start()
    status, reason = "completed", None
    try:
        for r in sorted(state["runs"], key=lambda r: r["stage"]):
            if (folder / STOP_FILE).exists() or _Flag.terminated:
                break
            if store.get(r["run_id"]).status != "queued":
                continue  # cancelled
            print(f"[lab] {r['label']} ({r['run_id']})", flush=True)
            if r.get("build"):
                try:
                    _build_weights(r, state, store)
                except Exception as exc:
                    traceback.print_exc()
                    store.finish(r["run_id"], "failed", f"could not build its starting weights: {exc}")
                    continue
            worker.run(store, r["run_id"])
            if _Flag.terminated:
                break
            if r.get("after") == "register_backbone":
                try:
                    key = _register_backbone(r, state, store)
                    if key:
                        print(f"[lab] saved backbone {key}", flush=True)
                        state.setdefault("backbones", []).append(key)
                except Exception:
                    traceback.print_exc()
    except worker.Terminated:
        pass
    except BaseException as exc:
        traceback.print_exc()
        status, reason = "failed", f"{type(exc).__name__}: {exc}"
    finally:
        stopped = (folder / STOP_FILE).exists()
        if _Flag.terminated:
            status, reason = "failed", f"lab process was terminated ({_Flag.terminated})"
        elif stopped and status == "completed":
            status, reason = "stopped", "stopped by request"
        for r in state["runs"]:  # nothing of this lab stays queued
            try:
                if store.get(r["run_id"]).status == "queued":
                    store.request_stop(r["run_id"])
            except Exception:
                traceback.print_exc()
        done.set()
        state.update(status=status, reason=reason, finished=time.time())
        _write_state(folder, state)
        if own:
            store.close()
        print(f"[lab] {status}{': ' + reason if reason else ''}", flush=True)
    return state


def run_lab(cfg: LabConfig, runs_dir=None) -> "LabResult":
    """Create and execute a lab in this process; returns its analysis."""
    store = runs_mod.RunStore(runs_dir)
    try:
        state = create_lab(cfg, runs_dir, store)
        state = execute(state["id"], runs_dir, store)
        return analyse(cfg, records(state, store), state)
    finally:
        store.close()


# ----------------------------------------------------------------------------- reading results


def records(state: dict, store) -> list[dict]:
    """The lab's runs as plain records: key, label, run_id, status, reason, config, epochs, summary."""
    out = []
    for r in state["runs"]:
        try:
            info = store.get(r["run_id"])
        except KeyError:
            continue
        out.append({"key": r["key"], "label": r["label"], "run_id": r["run_id"], "status": info.status,
                    "reason": info.reason, "config": info.config, "summary": info.summary or {},
                    "epochs": [{k: v for k, v in m.items() if k != "seq"} for m in store.metrics(r["run_id"], "epoch")],
                    "started": info.started, "finished": info.finished})
    return out


def progress(state: dict, store) -> dict:
    """{done, total, fraction (epochs included), current (label), statuses {key: status}, elapsed}."""
    total = len(state["runs"])
    frac, done, current, statuses = 0.0, 0, None, {}
    for r in state["runs"]:
        info = store.get(r["run_id"])
        statuses[r["key"]] = info.status
        if info.status not in ACTIVE:
            done += 1
            frac += 1
        elif info.status == "running":
            current = r["label"]
            epochs = max(1, int(r["config"].get("epochs", 1)))
            frac += min(len(store.metrics(r["run_id"], "epoch")), epochs) / epochs * 0.999
    started = state.get("started")
    elapsed = ((state.get("finished") or time.time()) - started) if started else None
    return {"done": done, "total": total, "fraction": frac / total if total else 1.0, "current": current,
            "statuses": statuses, "elapsed": elapsed}


def result(lab_id: str, runs_dir=None, store=None) -> "LabResult":
    state = read_state(lab_id, runs_dir)
    own = store is None
    store = store or runs_mod.RunStore(runs_dir or state.get("runs_dir"))
    try:
        return analyse(LabConfig.from_dict(state["config"]), records(state, store), state)
    finally:
        if own:
            store.close()


# ----------------------------------------------------------------------------- analysis (pure)


_ACC_COLUMNS = ("BnB", "BnB+", "AnB", "AnB+", "baseline B", "start (epoch 1)")


@dataclass
class LabResult:
    table: pd.DataFrame
    figure: go.Figure
    text: str  # "what we measured", markdown
    agrees: bool | None  # None: not enough finished runs to say
    checks: list[dict] = field(default_factory=list)  # {claim, measured, agrees}
    extra: dict = field(default_factory=dict)

    def verdict(self) -> str:
        return "agrees" if self.agrees else "unknown" if self.agrees is None else "disagrees"

    def percent_columns(self) -> list[str]:
        """The table's accuracy columns (fractions 0..1), for display as percentages."""
        from .strategies import STRATEGIES

        return [c for c in self.table.columns if "acc" in str(c) or c in _ACC_COLUMNS or c in STRATEGIES]


def _legend_below(fig: go.Figure) -> go.Figure:
    """Many traces: the legend goes under the plot, where it cannot cover the title."""
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0),
                      margin=dict(l=10, r=10, t=60, b=10))
    return fig


def _usable(rec: dict) -> bool:
    return bool(rec.get("epochs")) and rec.get("status") in ("completed", "stopped")


def _accs(rec: dict) -> list[float]:
    return [float(m["val_acc"]) for m in rec.get("epochs", []) if m.get("val_acc") is not None]


def _best(rec: dict | None) -> float | None:
    a = _accs(rec) if rec else []
    return max(a) if a else None


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def _pts(v: float) -> str:
    return f"{v * 100:+.1f} pts"


def _finish_text(headline: str, checks: list[dict], missing: list[str]) -> tuple[str, bool | None]:
    lines = [headline, ""] if headline else []
    for c in checks:
        mark = ("✔ agrees" if c["agrees"] else "– inconclusive (the difference is within the noise)"
                if c["agrees"] is None else "✖ **disagrees**")
        lines.append(f"- {c['claim']}: {c['measured']} → {mark}")
    known = [c["agrees"] for c in checks if c["agrees"] is not None]
    agrees = None if not known else all(known)
    if agrees is False:
        bad = [c["claim"] for c in checks if c["agrees"] is False]
        lines += ["", f"**The measurement disagrees with the prediction** on: {'; '.join(bad)}. This is a small, "
                      "single-seed experiment: try more images per class, more epochs or another seed before "
                      "concluding; but report what was measured, not what was expected."]
    elif agrees:
        lines += ["", "The measurement agrees with the prediction."]
    if missing:
        lines += ["", f"Not included (no finished epochs): {', '.join(missing)}."]
    return "\n".join(lines), agrees


def _empty(msg: str) -> "LabResult":
    fig = go.Figure()
    fig.add_annotation(text=msg, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return LabResult(pd.DataFrame(), fig, msg, None)


def epochs_to_reach(accs: list[float], target: float) -> int | None:
    """First epoch (1-based) whose validation accuracy reaches ``target``; None if never."""
    for i, a in enumerate(accs, 1):
        if a >= target - 1e-9:
            return i
    return None


def race_benefits(curves: dict[str, list[float]], baseline: str = "scratch", target: float | None = None,
                  tol: float = TOL) -> dict:
    """The three benefits of each curve relative to ``baseline`` (validation accuracy per epoch):
    start (accuracy after epoch 1), slope (epochs to reach ``target``; default: the best accuracy the
    baseline reached) and asymptote (best accuracy). Each: value, baseline value, diff, verdict
    (higher | similar | lower)."""
    if baseline not in curves or not curves[baseline]:
        raise ValueError(f"the {baseline!r} curve is needed")
    base = curves[baseline]
    target = max(base) if target is None else target
    b_ep = epochs_to_reach(base, target)
    out = {"target": target, "baseline_epochs": b_ep, "strategies": {}}
    for key, acc in curves.items():
        if not acc:
            continue
        ep = epochs_to_reach(acc, target)
        start, best = acc[0] - base[0], max(acc) - max(base)
        # fewer epochs to the target = higher slope; "never" counts as one more than the run had
        e_a = ep if ep is not None else len(acc) + 1
        e_b = b_ep if b_ep is not None else len(base) + 1
        out["strategies"][key] = {
            "start": acc[0], "start_diff": start,
            "start_verdict": "higher" if start > tol else "lower" if start < -tol else "similar",
            "epochs_to_target": ep, "slope_verdict": "higher" if e_a < e_b else "lower" if e_a > e_b else "similar",
            "best": max(acc), "best_diff": best,
            "best_verdict": "higher" if best > tol else "lower" if best < -tol else "similar",
        }
    return out


def analyse_race(cfg: LabConfig, recs: list[dict]) -> LabResult:
    from . import visuals
    from .strategies import STRATEGIES

    use = [r for r in recs if _usable(r)]
    missing = [r["label"] for r in recs if not _usable(r)]
    curves = {r["key"]: _accs(r) for r in use}
    if "scratch" not in curves:
        return _empty("The race needs a finished 'scratch' run: every benefit is relative to it.")
    b = race_benefits(curves, "scratch", cfg.target_acc)
    rows = []
    for r in use:
        s, m = b["strategies"][r["key"]], r["summary"]
        rows.append({
            "strategy": STRATEGIES[r["key"]].label if r["key"] in STRATEGIES else r["label"], "key": r["key"],
            "start (epoch 1)": s["start"], "start vs scratch (pts)": round(s["start_diff"] * 100, 1),
            "epochs to target": s["epochs_to_target"], "best acc": s["best"],
            "best vs scratch (pts)": round(s["best_diff"] * 100, 1),
            "final acc": _accs(r)[-1], "time (s)": round(m.get("wall_s") or 0, 1),
            "trainable params": m.get("trainable_params"), "total params": m.get("total_params"),
            "run": r["run_id"],
        })
    table = pd.DataFrame(rows)
    fig = go.Figure()
    for i, r in enumerate(use):
        acc = curves[r["key"]]
        scratch = r["key"] == "scratch"
        colour = visuals.NEUTRAL if scratch else visuals.RUN_COLOURS[i % len(visuals.RUN_COLOURS)]
        fig.add_scatter(x=list(range(1, len(acc) + 1)), y=acc, mode="lines+markers", name=r["label"],
                        line=dict(color=colour, width=4 if scratch else 3, dash="dash" if scratch else "solid"),
                        marker=dict(size=9))
    fig.add_hline(y=b["target"], line=dict(color=visuals.NEUTRAL, dash="dot", width=1.5),
                  annotation_text=f"target {b['target']:.0%} (scratch's best)" if cfg.target_acc is None
                  else f"target {b['target']:.0%}", annotation_position="bottom right")
    fig.update_xaxes(title="epoch", dtick=1)
    fig.update_yaxes(title="validation accuracy", range=[0, 1.02], tickformat=".0%")
    visuals._layout(fig, f"Strategy race: {cfg.backbone} on {cfg.data}, {cfg.per_class or 'all'} images/class, "
                         f"{cfg.image_size} px", height=520)
    _legend_below(fig)
    transfer = {k: v for k, v in b["strategies"].items() if k != "scratch"}
    checks = []
    if transfer:
        for key, name, what in (("start", "higher start", "accuracy after epoch 1"),
                                ("slope", "higher slope", f"epochs to reach {b['target']:.0%}"),
                                ("best", "higher asymptote", "best accuracy")):
            higher = [k for k, v in transfer.items() if v[f"{key}_verdict"] == "higher"]
            if key == "start":
                detail = ", ".join(f"{k} {_pts(v['start_diff'])}" for k, v in transfer.items())
            elif key == "slope":
                detail = ", ".join(f"{k} {v['epochs_to_target'] or 'never'}" for k, v in transfer.items()) + \
                    f" vs scratch {b['baseline_epochs'] or 'never'}"
            else:
                detail = ", ".join(f"{k} {_pts(v['best_diff'])}" for k, v in transfer.items())
            checks.append({"claim": f"transfer gives a {name} ({what})",
                           "measured": f"{len(higher)} of {len(transfer)} transfer strategies higher ({detail})",
                           "agrees": len(higher) * 2 > len(transfer)})
    best_key = max(curves, key=lambda k: max(curves[k]))
    sc = curves["scratch"]
    headline = (f"Scratch reached {_pct(sc[0])} after epoch 1 and {_pct(max(sc))} at best; the best strategy was "
                f"**{best_key}** with {_pct(max(curves[best_key]))} ({_pts(max(curves[best_key]) - max(sc))} vs "
                f"scratch).")
    text, agrees = _finish_text(headline, checks, missing)
    return LabResult(table, fig, text, agrees, checks, {"benefits": b})


def _n_of(key: str) -> int:
    return int(key.rsplit(":", 1)[1])


def analyse_freeze_depth(cfg: LabConfig, recs: list[dict], n_groups: int | None = None) -> LabResult:
    from . import visuals

    use = [r for r in recs if _usable(r)]
    missing = [r["label"] for r in recs if not _usable(r)]
    frozen = {_n_of(r["key"]): _best(r) for r in use if r["key"].startswith("frozen:")}
    copy = {_n_of(r["key"]): _best(r) for r in use if r["key"].startswith("copy:")}
    if n_groups is None:
        n_groups = len(depth_groups(cfg.backbone, cfg.image_size))
    if 0 in frozen:  # copying every group and fine-tuning all of them is full fine-tuning
        copy.setdefault(n_groups, frozen[0])
    if not frozen and not copy:
        return _empty("No finished runs yet.")
    ns = sorted(set(frozen) | set(copy))
    table = pd.DataFrame([{"n (groups)": n, "frozen first n (best acc)": frozen.get(n),
                           "copied first n, rest re-init (best acc)": copy.get(n)} for n in ns])
    fig = go.Figure()
    if frozen:
        xs = sorted(frozen)
        fig.add_scatter(x=xs, y=[frozen[n] for n in xs], mode="lines+markers", name="first n frozen, rest fine-tuned",
                        line=dict(color=visuals.FROZEN, width=3), marker=dict(size=10))
    if copy:
        xs = sorted(copy)
        fig.add_scatter(x=xs, y=[copy[n] for n in xs], mode="lines+markers",
                        name="first n copied + fine-tuned, rest re-initialised",
                        line=dict(color=visuals.TRAINABLE, width=3), marker=dict(size=10, symbol="diamond"))
    fig.update_xaxes(title=f"n = pretrained block groups (of {n_groups})", dtick=1)
    fig.update_yaxes(title="best validation accuracy", range=[0, 1.02], tickformat=".0%")
    visuals._layout(fig, f"Freeze depth: {cfg.backbone} on {cfg.data}", height=480)
    _legend_below(fig)
    checks = []
    general_upto = None
    if len(frozen) >= 2:
        top = max(frozen.values())
        ok = [n for n in sorted(frozen) if frozen[n] >= top - TOL]
        general_upto = max(ok)  # the deepest freeze that stays within TOL of the best frozen depth
        nmax = max(frozen)
        fall = top - frozen[nmax]
        checks.append({"claim": "freezing the deepest groups costs accuracy (late features are task-specific)",
                       "measured": f"n={nmax} frozen: {_pct(frozen[nmax])}, {fall * 100:.1f} pts below the best "
                                   f"frozen depth ({_pct(top)} at n={max(ok, key=lambda n: frozen[n])})",
                       "agrees": fall > TOL})
    if len(copy) >= 2:
        lo, hi = min(copy), max(copy)
        checks.append({"claim": "copying more pretrained groups helps (vs re-initialising them)",
                       "measured": f"copy n={lo}: {_pct(copy[lo])} → n={hi}: {_pct(copy[hi])} "
                                   f"({_pts(copy[hi] - copy[lo])})",
                       "agrees": copy[hi] - copy[lo] > TOL})
    headline = ""
    if general_upto is not None:
        headline = (f"The deepest freeze within {TOL * 100:.0f} pts of the best is **n = {general_upto}** block "
                    f"groups: up to there the pretrained features are general enough for {cfg.data}.")
    text, agrees = _finish_text(headline, checks, missing)
    return LabResult(table, fig, text, agrees, checks, {"general_upto": general_upto})


YOSINSKI_PAPER = {
    "AnB": "frozen transfer degrades in the higher layers (n = 6, 7 of 8 in the paper)",
    "BnB": "frozen self-transfer dips in the middle layers (n = 3–5): fragile co-adaptation",
    "AnB+": "fine-tuned transfer matches or beats the baseline at every depth (and generalises better)",
    "BnB+": "fine-tuned self-transfer matches the baseline",
}


def analyse_yosinski(cfg: LabConfig, recs: list[dict]) -> LabResult:
    from . import visuals

    use = [r for r in recs if _usable(r)]
    missing = [r["label"] for r in recs if not _usable(r)]
    by = {r["key"]: r for r in use}
    base = _best(by.get("baseB"))
    source = _best(by.get("baseA"))
    curves: dict[str, dict[int, float]] = {v: {} for v in ("BnB", "BnB+", "AnB", "AnB+")}
    for r in use:
        name = r["key"].split(":")[0]
        if name in curves:
            curves[name][_n_of(r["key"])] = _best(r)
    if base is None and not any(curves.values()):
        return _empty("No finished runs yet.")
    ns = sorted({n for c in curves.values() for n in c})
    rows = [{"n (layers copied)": n, **{v: curves[v].get(n) for v in curves}, "baseline B": base} for n in ns]
    table = pd.DataFrame(rows)
    style = {"BnB": (visuals.FROZEN, "circle-open", "dash"), "BnB+": (visuals.TRAINABLE, "circle-open", "dash"),
             "AnB": (visuals.FROZEN, "diamond", "solid"), "AnB+": (visuals.TRAINABLE, "diamond", "solid")}
    fig = go.Figure()
    for v, pts in curves.items():
        if pts:
            xs = sorted(pts)
            colour, symbol, dash = style[v]
            fig.add_scatter(x=xs, y=[pts[n] for n in xs], mode="lines+markers", name=v,
                            line=dict(color=colour, width=3, dash=dash), marker=dict(size=11, symbol=symbol))
    if base is not None:
        fig.add_scatter(x=[0], y=[base], mode="markers", name="baseline B (n=0)",
                        marker=dict(size=14, color="white", line=dict(color="black", width=2)))
        fig.add_hline(y=base, line=dict(color=visuals.NEUTRAL, dash="dot", width=1.5))
    fig.update_xaxes(title="n = layers copied from the base network (the rest re-initialised)", dtick=1)
    lo = min([v for c in curves.values() for v in c.values()] + ([base] if base is not None else []))
    fig.update_yaxes(title="best validation accuracy on task B", tickformat=".0%",
                     range=[max(0.0, lo - 0.1), 1.01])
    visuals._layout(fig, "Yosinski et al. 2014 in miniature: BnB, BnB+, AnB, AnB+", height=520)
    _legend_below(fig)
    checks = []
    if base is not None and curves["AnB"]:
        a = curves["AnB"]
        first, last = min(a), max(a)
        fall = a[first] - a[last]
        checks.append({"claim": "frozen transfer (AnB) falls off in the higher layers",
                       "measured": f"AnB n={first}: {_pct(a[first])} → n={last}: {_pct(a[last])} "
                                   f"({_pts(-fall)}); baseline {_pct(base)}",
                       "agrees": fall > TOL or a[last] < base - TOL})
    if base is not None and curves["AnB+"]:
        ap = curves["AnB+"]
        worst = min(ap, key=lambda n: ap[n])
        checks.append({"claim": "fine-tuned transfer (AnB+) matches or beats the baseline at every depth",
                       "measured": ", ".join(f"n={n} {_pts(ap[n] - base)}" for n in sorted(ap))
                                   + f" vs baseline {_pct(base)} (worst n={worst})",
                       "agrees": all(v >= base - TOL for v in ap.values())})
    if base is not None and len(curves["BnB"]) >= 3:
        bb = curves["BnB"]
        inner = [n for n in sorted(bb)[1:-1]]
        dip = min(inner, key=lambda n: bb[n]) if inner else None
        if dip is not None:
            ends = min(bb[min(bb)], bb[max(bb)])
            checks.append({"claim": "frozen self-transfer (BnB) dips in the middle (co-adaptation) — a weaker "
                                    "effect, often invisible in small nets",
                           "measured": f"lowest middle point n={dip}: {_pct(bb[dip])} vs ends {_pct(ends)}",
                           "agrees": None if bb[dip] >= ends - TOL else True})
    a, b = yosinski_classes(cfg)
    headline = (f"Task A ({', '.join(a)}) source net: {_pct(source)}; baseline B ({', '.join(b)}, "
                f"{cfg.per_class or 'all'} images/class, from scratch): **{_pct(base)}**.")
    if curves["AnB+"]:
        n_best = max(curves["AnB+"], key=lambda n: curves["AnB+"][n])
        headline += f" Best AnB+: {_pct(curves['AnB+'][n_best])} at n={n_best}."
    text, agrees = _finish_text(headline, checks, missing)
    text += "\n\n**The paper:** " + "; ".join(f"{k}: {v}" for k, v in YOSINSKI_PAPER.items()) + "."
    return LabResult(table, fig, text, agrees, checks, {"baseline": base, "source": source, "curves": curves})


def textbook_choice(size: int | None, similarity: str, small: int = 20) -> set[str]:
    """The textbook quadrant's recommended strategies for a cell."""
    little = size is not None and size <= small
    near = similarity in ("near", "medium")
    if little and near:
        return {"feature_extraction"}
    if little:
        return {"partial"}
    return {"partial", "full"} if near else {"full"}


def analyse_quadrant(cfg: LabConfig, recs: list[dict], similarity: dict[str, str] | None = None) -> LabResult:
    from . import data, visuals

    similarity = similarity or {d: data.BUILTIN[d].similarity if d in data.BUILTIN else "far" for d in cfg.domains}
    use = [r for r in recs if _usable(r)]
    missing = [r["label"] for r in recs if not _usable(r)]
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for r in use:
        _, dom, size, strat = r["key"].split(":")
        cells.setdefault((dom, size), {})[strat] = _best(r)
    if not cells:
        return _empty("No finished runs yet.")
    sizes = ["all" if s is None else str(s) for s in cfg.sizes]
    rows, checks = [], []
    z_best, txt_best, txt_book = [], [], []
    for dom in cfg.domains:
        zr, tr, br = [], [], []
        for size in sizes:
            acc = cells.get((dom, size), {})
            rec = textbook_choice(None if size == "all" else int(size), similarity[dom])
            if acc:
                best = max(acc, key=acc.get)
                ok = any(acc.get(s, -1) >= acc[best] - TOL for s in rec)
                rows.append({"domain": dom, "similarity": similarity[dom], "images/class": size,
                             **{s: acc.get(s) for s in cfg.strategies}, "measured best": best,
                             "textbook": " or ".join(sorted(rec)), "agrees": ok})
                checks.append({"claim": f"{dom} ({similarity[dom]}), {size}/class → {' or '.join(sorted(rec))}",
                               "measured": f"best {best} {_pct(acc[best])}"
                                           + "".join(f", {s} {_pct(acc[s])}" for s in acc if s != best),
                               "agrees": ok})
                zr.append(acc[best])
                tr.append(f"{best.replace('_', '<br>')}<br>{acc[best]:.0%} {'✔' if ok else '✖'}")
            else:
                zr.append(None)
                tr.append("")
            br.append("<br>or ".join(s.replace("_", "<br>") for s in sorted(rec)))
        z_best.append(zr)
        txt_best.append(tr)
        txt_book.append(br)
    ylabels = [f"{d} ({similarity[d]})" for d in cfg.domains]
    xlabels = [f"{s}/class" for s in sizes]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("measured: best strategy (best val acc)",
                                                        "textbook recommendation"), horizontal_spacing=0.12)
    fig.add_heatmap(z=z_best, x=xlabels, y=ylabels, text=txt_best, texttemplate="%{text}", colorscale="Greens",
                    zmin=0, zmax=1, showscale=False, textfont=dict(size=17), row=1, col=1)
    fig.add_heatmap(z=[[1 for _ in sizes] for _ in cfg.domains], x=xlabels, y=ylabels, text=txt_book,
                    texttemplate="%{text}", colorscale=[[0, visuals.FROZEN_LIGHT], [1, visuals.FROZEN_LIGHT]],
                    showscale=False, textfont=dict(size=17), row=1, col=2)
    fig.update_yaxes(showticklabels=False, row=1, col=2)
    visuals._layout(fig, "Data size × domain similarity (✔ = the textbook's choice is within 2 pts of the best)",
                    height=440)
    table = pd.DataFrame(rows)
    agree_n = sum(bool(c["agrees"]) for c in checks)
    headline = f"The measured best strategy matches the textbook in {agree_n} of {len(checks)} cells."
    text, agrees = _finish_text(headline, checks, missing)
    return LabResult(table, fig, text, agrees, checks, {"cells": cells})


def _frozen_blocks(rec: dict) -> list[str]:
    phases = rec["summary"].get("phases") or []
    last = rec["epochs"][-1] if rec.get("epochs") else {}
    blocks = list((last.get("drift") or {}).keys()) or list((last.get("bn_stat_drift") or {}).keys())
    trainable = set(phases[0]["trainable"]) if phases else set()
    return [b for b in blocks if b not in trainable] if phases else []


def frozen_bn_drift(rec: dict) -> list[float]:
    """Per epoch: the largest BatchNorm statistics drift among the run's frozen blocks."""
    frozen = set(_frozen_blocks(rec))
    out = []
    for m in rec.get("epochs", []):
        d = m.get("bn_stat_drift") or {}
        vals = [float(v) for k, v in d.items() if k in frozen and v is not None]
        out.append(max(vals) if vals else 0.0)
    return out


def analyse_bn(cfg: LabConfig, recs: list[dict]) -> LabResult:
    from . import visuals

    use = {r["key"]: r for r in recs if _usable(r)}
    missing = [r["label"] for r in recs if not _usable(r)]
    if not use:
        return _empty("No finished runs yet.")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("validation accuracy", "BN statistics drift in frozen blocks"))
    rows = []
    colours = {"bn:frozen": visuals.FROZEN, "bn:train": visuals.TRAINABLE}
    for key, r in use.items():
        acc, drift = _accs(r), frozen_bn_drift(r)
        xs = list(range(1, len(acc) + 1))
        fig.add_scatter(x=xs, y=acc, mode="lines+markers", name=r["label"], legendgroup=key,
                        line=dict(color=colours.get(key), width=3), row=1, col=1)
        fig.add_scatter(x=xs, y=drift, mode="lines+markers", name=r["label"] + " drift", legendgroup=key,
                        showlegend=False, line=dict(color=colours.get(key), width=3, dash="dot"), row=1, col=2)
        rows.append({"BatchNorm in frozen blocks": key.split(":")[1], "best acc": _best(r), "final acc": acc[-1],
                     "max frozen-block BN drift": max(drift) if drift else 0.0,
                     "frozen blocks": len(_frozen_blocks(r)), "time (s)": round(r["summary"].get("wall_s") or 0, 1),
                     "run": r["run_id"]})
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=1)
    fig.update_yaxes(title="‖μ,σ² − start‖ / ‖start‖", row=1, col=2)
    fig.update_xaxes(title="epoch", dtick=1)
    visuals._layout(fig, f"BatchNorm in frozen blocks: {cfg.backbone}, partial fine-tuning", height=460)
    _legend_below(fig)
    checks = []
    f, t = use.get("bn:frozen"), use.get("bn:train")
    if f:
        d = max(frozen_bn_drift(f) or [0.0])
        checks.append({"claim": "BN frozen: the frozen blocks' statistics do not move",
                       "measured": f"max drift {d:.4f}", "agrees": d < 1e-6})
    if t:
        d = max(frozen_bn_drift(t) or [0.0])
        checks.append({"claim": "BN train: the \"frozen\" blocks' statistics drift anyway",
                       "measured": f"max drift {d:.4f}", "agrees": d > 1e-4})
    if f and t:
        diff = _best(t) - _best(f)
        checks.append({"claim": "BN train costs accuracy (the frozen features shift under the head)",
                       "measured": f"best acc train {_pct(_best(t))} vs frozen {_pct(_best(f))} ({_pts(diff)})",
                       "agrees": diff < -TOL if abs(diff) > TOL else None})
    headline = ""
    if f and t:
        headline = (f"Same partial fine-tune, {len(_frozen_blocks(f))} frozen blocks: BN frozen reached "
                    f"{_pct(_best(f))}, BN train {_pct(_best(t))}.")
    text, agrees = _finish_text(headline, checks, missing)
    if f and t and checks[-1]["agrees"] is None:
        text += (f"\n\nThe accuracy difference is within {TOL * 100:.0f} pts: on this data the drift did not "
                 "change the result measurably, but the frozen blocks did change.")
    return LabResult(pd.DataFrame(rows), fig, text, agrees, checks)


def analyse_normalization(cfg: LabConfig, recs: list[dict]) -> LabResult:
    from . import visuals

    use = {r["key"]: r for r in recs if _usable(r)}
    missing = [r["label"] for r in recs if not _usable(r)]
    if not use:
        return _empty("No finished runs yet.")
    fig = go.Figure()
    rows = []
    colours = {"norm:backbone": visuals.VAL, "norm:wrong": "#D62728"}
    for key, r in use.items():
        acc = _accs(r)
        fig.add_scatter(x=list(range(1, len(acc) + 1)), y=acc, mode="lines+markers", name=r["label"],
                        line=dict(color=colours.get(key), width=3), marker=dict(size=9))
        rows.append({"normalisation": r["label"], "best acc": _best(r), "final acc": acc[-1],
                     "time (s)": round(r["summary"].get("wall_s") or 0, 1), "run": r["run_id"]})
    fig.update_xaxes(title="epoch", dtick=1)
    fig.update_yaxes(title="validation accuracy", range=[0, 1.02], tickformat=".0%")
    visuals._layout(fig, f"Normalisation: {cfg.backbone}'s own mean/std vs a wrong one", height=420)
    checks, headline = [], ""
    own, wrong = use.get("norm:backbone"), use.get("norm:wrong")
    if own and wrong:
        gap = _best(own) - _best(wrong)
        checks.append({"claim": "the wrong mean/std lowers accuracy",
                       "measured": f"own {_pct(_best(own))} vs wrong {_pct(_best(wrong))} (gap {gap * 100:.1f} pts)",
                       "agrees": gap > TOL})
        headline = f"Accuracy gap from normalisation alone: **{gap * 100:.1f} points**."
    text, agrees = _finish_text(headline, checks, missing)
    return LabResult(pd.DataFrame(rows), fig, text, agrees, checks)


def analyse(cfg: LabConfig, recs: list[dict], state: dict | None = None) -> LabResult:
    """Pure: the lab's records → LabResult (no store, no training)."""
    fn = {"race": analyse_race, "freeze_depth": analyse_freeze_depth, "yosinski": analyse_yosinski,
          "quadrant": analyse_quadrant, "bn": analyse_bn, "normalization": analyse_normalization}[cfg.lab]
    if cfg.lab == "freeze_depth" and (state or {}).get("meta", {}).get("n_groups"):
        res = fn(cfg, recs, n_groups=state["meta"]["n_groups"])
    else:
        res = fn(cfg, recs)
    if state is not None:
        res.extra["lab_id"] = state.get("id")
        res.extra["status"] = state.get("status")
    return res


def normalization_views(cfg: LabConfig, index: int = 0) -> dict:
    """The same sample as the network gets it with its own and with the wrong normalisation:
    {mode: {"tensor": [3,S,S], "picture": HxWx3 uint8, "mean", "std", "stats": (mean, std) used}}."""
    from . import backbones, data

    ds = data.load_dataset(cfg.data)
    dc = backbones.data_config(cfg.backbone)
    out = {}
    for mode in ("backbone", "wrong"):
        x, pic = data.network_view(ds, index, dc, cfg.image_size, mode)
        out[mode] = {"tensor": x, "picture": pic, "mean": float(x.mean()), "std": float(x.std()),
                     "stats": data.normalization_stats(dc, mode)}
    return out


def result_csv(res: LabResult) -> bytes:
    return res.table.to_csv(index=False).encode()


def load_config_file(path) -> LabConfig:
    return LabConfig.from_json(Path(path).read_text())


def ready_made_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "labs"


def ready_made() -> dict[str, LabConfig]:
    """The lab configs shipped in ``labs/*.json`` (name → config); unreadable files are skipped."""
    out = {}
    folder = ready_made_dir()
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out[p.stem] = load_config_file(p)
        except (ValueError, OSError):
            continue
    return out


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tl_core.labs")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute a created lab (what launch_lab starts)")
    r.add_argument("lab_id")
    r.add_argument("--runs-dir", default=None)
    loc = sub.add_parser("local", help="create and run a lab from a JSON config in this process, print results")
    loc.add_argument("config")
    loc.add_argument("--runs-dir", default=None)
    args = p.parse_args(argv)
    if args.cmd == "run":
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _on_signal)
        state = execute(args.lab_id, args.runs_dir)
        return 0 if state["status"] in ("completed", "stopped") else 1
    res = run_lab(load_config_file(args.config), args.runs_dir)
    print(res.table.to_string(index=False))
    print(res.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
