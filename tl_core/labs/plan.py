"""A lab's runs: ``LabRun``, one seed's copy of a lab's plan (``seeded``), the helpers plans share
(``run_config``, ``depth_groups``, ...), and the weights files some runs start from (built right before
they run).

Seeds: a lab module plans ONE seed; ``registry.plan_runs`` repeats that plan for every training seed of
``cfg.run_seeds()``, seed after seed. Each copy trains with its own seed (initialisation, batch order, the
re-initialised rest of a transfer network) and the split of ``cfg.seed`` (TrainConfig's ``split_seed``), so
the seeds are paired (a run planned with ``paired=False`` splits by its own training seed instead: the seeds
then differ in their data too). With several seeds a run's key and label carry the seed ("scratch@s1", "From
scratch · seed 1"), its built weights go to ``weights/seed<s>/``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from tl_core.labs.config import LabSettings


@dataclass
class LabRun:
    key: str  # unique within the lab: "scratch", "frozen:3", "AnB+:2", "q:mnist:5:partial"
    label: str  # for people: "scratch", "AnB+ n=2"
    cfg: object  # TrainConfig
    stage: int = 0  # runs of stage s start after every run of stage s-1 has ended
    build: dict | None = None  # a weights file to build right before the run (see build_weights)
    after: str | None = None  # what the lab's after_run does after it: "register_backbone" (yosinski)
    seed: int | None = None  # its training seed (set by seeded)
    paired: bool = True  # False: each seed splits the data by its own seed (split seed = seed; kornblith)

    def to_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "config": self.cfg.to_dict(), "stage": self.stage,
                "build": self.build, "after": self.after, "seed": self.seed}


SPLIT_SEED = "split_seed"  # the TrainConfig field that fixes the split apart from the training seed


def pair_split(train_cfg, split_seed: int) -> None:
    """Fix the run's data split to ``split_seed`` whatever its training seed (TrainConfig.split_seed;
    a TrainConfig without that field splits by its seed, and the seeds are then not paired)."""
    if SPLIT_SEED in {f.name for f in dataclasses.fields(train_cfg)}:
        setattr(train_cfg, SPLIT_SEED, split_seed)


def seeded(runs: list[LabRun], cfg: LabSettings, seed: int, index: int, tag: str) -> list[LabRun]:
    """One seed's copy of the plan: training seed ``seed``, the lab's split, run names "lab <tag> · <label>";
    tagged when the lab has several seeds; stages shifted so that seed after seed runs (stages of one seed
    keep their order)."""
    tagged = cfg.seeds > 1
    shift = index * (max((r.stage for r in runs), default=0) + 1)
    for r in runs:
        r.seed, r.cfg.seed, r.stage = seed, seed, r.stage + shift
        r.cfg.name = f"lab {tag} · {r.cfg.name}"
        pair_split(r.cfg, cfg.seed if r.paired else seed)
        if tagged:
            r.key, r.label = f"{r.key}@s{seed}", f"{r.label} · seed {seed}"
            r.cfg.name = f"{r.cfg.name} · seed {seed}"
            if r.build and r.build.get("source"):
                r.build = {**r.build, "source": f"{r.build['source']}@s{seed}"}
    return runs


# ----------------------------------------------------------------------------- helpers of plans


def run_config(cfg: LabSettings, label: str, **kw):
    """The TrainConfig of one run of the lab: the lab's shared settings (same data, split and seed,
    feature caching on), named ``label``, with ``kw`` overriding. ``seeded`` then gives each seed's copy
    its training seed and its name "lab <tag> · <label>"."""
    from tl_core.training.config import TrainConfig

    d = dict(name=label, backbone=cfg.backbone, data=cfg.data, per_class=cfg.per_class, image_size=cfg.image_size,
             epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, val_fraction=cfg.val_fraction, seed=cfg.seed,
             device=cfg.device, cache_features=True)
    return TrainConfig(**{**d, **kw})


SOURCE = "source"  # the source run of the labs on a shifted target (surgical, adabn)


def source_run(cfg: LabSettings, wdir: Path, **kw) -> tuple[LabRun, dict]:
    """Stage 0 of the labs on a shifted target: the backbone's ImageNet weights fine-tuned (all blocks) on the
    CLEAN data, ``source_per_class`` images per class for ``source_epochs``; and the ``build`` that copies the
    whole network it trained (head included) to the weights file the target runs start from."""
    run = LabRun(SOURCE, "source (clean)", run_config(cfg, "source (clean)", strategy="full", weights="pretrained",
                                                      per_class=cfg.source_per_class, epochs=cfg.source_epochs, **kw))
    return run, {"kind": "run_model", "source": SOURCE, "path": str(wdir / "source.safetensors")}


def from_source(cfg: LabSettings, build: dict, label: str, **kw):
    """A target run's config: starts from the source network (its head kept: same classes) on shifted data."""
    return run_config(cfg, label, weights="pretrained", weights_file=build["path"], **kw)


def _hier(backbone: str, image_size: int, num_classes: int = 2):
    from tl_core.models import surgery
    from tl_core.models.arch import build_arch

    model, _ = build_arch(backbone, num_classes, "random")
    return surgery.hierarchy(model, image_size), model


def depth_groups(backbone: str, image_size: int) -> list[list[str]]:
    """The copyable/freezable units of a backbone: its block groups without the head."""
    hier, _ = _hier(backbone, image_size)
    return hier.groups()[:-1]


def blocks_in(groups: list[list[str]], n: int) -> int:
    return sum(len(g) for g in groups[:n])


def depths(cfg: LabSettings, n_groups: int, lo: int) -> list[int]:
    ds = list(range(lo, n_groups + 1)) if cfg.depths is None else sorted({int(d) for d in cfg.depths})
    bad = [d for d in ds if not lo <= d <= n_groups]
    if bad:
        raise ValueError(f"depths must be {lo}..{n_groups} for {cfg.backbone} ({n_groups} block groups), not {bad}")
    return ds


# ----------------------------------------------------------------------------- building weights


def _prefix_keys(hier, groups: list[list[str]], n: int, keys) -> set[str]:
    members = [m for g in groups[:n] for name in g for m in hier.block(name).members]
    return {k for k in keys if any(k == m or k.startswith(m + ".") for m in members)}


def mix_state_dicts(model_random, source_sd: dict, backbone: str, image_size: int, n: int) -> tuple[dict, int]:
    """Weights of ``model_random`` with the first ``n`` block groups (parameters AND BatchNorm buffers)
    taken from ``source_sd``. Returns (state dict, number of tensors copied)."""
    from tl_core.models import surgery

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
    from tl_core import data

    if cfg_dict.get("classes"):
        return len(cfg_dict["classes"])
    if cfg_dict["data"] in data.BUILTIN:
        return data.BUILTIN[cfg_dict["data"]].num_classes
    return len(data.load_dataset(cfg_dict["data"], cfg_dict.get("data_root")).class_names)


def completed_model_dir(run: dict, store):
    """(RunInfo, model folder) of a lab run; the folder is None unless the run completed with a model."""
    info = store.get(run["run_id"])
    model_dir = store.model_dir(run["run_id"])
    return info, (model_dir if info.status == "completed" else None)


def _pretrained_source(cfgd: dict, num_classes: int, seed: int):
    """"pretrained_prefix": the catalogue's pretrained backbone, and a seeded random one of the same kind."""
    import torch

    from tl_core.models import backbones

    source, _ = backbones.create_model(cfgd["backbone"], num_classes, "pretrained")
    arch = cfgd["backbone"]
    torch.manual_seed(seed + 7919)
    rand, _ = backbones.create_model(arch, num_classes, "random")
    return source, rand, arch


def _run_source(build: dict, state: dict, store, num_classes: int, seed: int):
    """"run_prefix": the network an earlier run of the lab trained, and a seeded random one."""
    import torch

    from tl_core.models.arch import build_arch

    source, arch = _run_model(build, state, store)
    torch.manual_seed(seed + 7919)  # the same re-initialised rest for every transfer file of this lab
    rand, _ = build_arch(arch, num_classes, "random")
    return source, rand, arch


def _run_model(build: dict, state: dict, store):
    """(model, backbone) of the earlier run ``build["source"]`` of the lab; RuntimeError if it did not complete."""
    from tl_core.training.checkpoint import load_model

    src = next(r for r in state["runs"] if r["key"] == build["source"])
    info, model_dir = completed_model_dir(src, store)
    if model_dir is None:
        raise RuntimeError(f"needs the {src['label']} network, which did not complete ({info.status}"
                           f"{': ' + info.reason if info.reason else ''})")
    return load_model(model_dir)[0], src["config"]["backbone"]


def build_weights(run: dict, state: dict, store) -> None:
    """Create the weights file a run needs (idempotent: an existing file is kept)."""
    build, cfgd = run["build"], run["config"]
    path = Path(build["path"])
    if path.exists():
        return
    if build["kind"] == "run_model":  # the whole network an earlier run trained, head included (surgical, adabn)
        _save_sd(_run_model(build, state, store)[0].state_dict(), path)
        return
    seed = int(cfgd.get("seed", 0))
    num_classes = _num_classes(cfgd)
    if build["kind"] == "pretrained_prefix":
        source, rand, arch = _pretrained_source(cfgd, num_classes, seed)
    elif build["kind"] == "run_prefix":
        source, rand, arch = _run_source(build, state, store, num_classes, seed)
    else:
        raise ValueError(f"unknown build kind {build['kind']!r}")
    sd, _ = mix_state_dicts(rand, source.state_dict(), arch, int(cfgd["image_size"]), int(build["n"]))
    _save_sd(sd, path)
