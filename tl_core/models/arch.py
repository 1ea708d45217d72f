"""Models of a run: build the architecture a config names, its data config, its block names (saving and
loading a trained model: ``tl_core.training.checkpoint``)."""
from __future__ import annotations

from torch import nn

from tl_core.models import backbones, surgery


def is_timm_arch(name: str) -> bool:
    """Any timm architecture name (random init only): tests build tiny real models this way."""
    import timm

    return isinstance(name, str) and timm.is_model(name)


def build_arch(backbone: str, num_classes: int, weights: str = "random", weights_file=None, allow_download=False,
               probe_depth: int | None = None, image_size: int = 64):
    """(model, WeightsStatus): a catalogue backbone, or any timm architecture with random init. ``probe_depth``
    (TrainConfig's): the network cut after that many block groups, a new linear classifier on their pooled
    output (``surgery.probe_at``, traced at ``image_size``)."""
    if backbone in backbones.catalogue():
        model, status = backbones.create_model(backbone, num_classes, weights=weights, weights_file=weights_file,
                                               allow_download=allow_download)
    else:
        import timm

        model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
        status = backbones.WeightsStatus("random", "", "random initialisation (from scratch)")
    if probe_depth is not None:
        surgery.probe_at(model, probe_depth, num_classes, image_size)
    return model, status


def modality(backbone: str) -> str:
    """"text" for a text backbone of the catalogue (tl_core.models.text), else "image"."""
    cat = backbones.catalogue()
    return cat[backbone].modality if backbone in cat else "image"


BLOCK_GROUPS: dict[tuple, list[list[str]]] = {}  # (backbone, image_size) -> block groups (``forget`` drops some)


def block_groups(backbone: str, image_size: int) -> list[list[str]]:
    """The block names of ``backbone`` grouped the coarse way (stem, each stage, neck, head; see
    ``surgery.Hierarchy.groups``), built once per (backbone, size)."""
    key = (backbone, image_size)
    if key not in BLOCK_GROUPS:
        model, _ = build_arch(backbone, 2, "random")
        BLOCK_GROUPS[key] = surgery.hierarchy(model, image_size).groups()
    return BLOCK_GROUPS[key]


def block_names(backbone: str, image_size: int, probe_depth: int | None = None) -> list[str]:
    """The toggleable blocks of ``backbone`` (stem first, head last); with ``probe_depth``, of the network
    cut after that many block groups (``build_arch``)."""
    groups = block_groups(backbone, image_size)
    kept = groups[:-1] if probe_depth is None else groups[:probe_depth]
    return [n for g in [*kept, groups[-1]] for n in g]


def forget(backbone: str) -> None:
    """Drop what is cached about ``backbone`` (block names, data config): a lab saved a new one under its key."""
    backbones.forget(backbone)
    for key in [k for k in BLOCK_GROUPS if k[0] == backbone]:
        del BLOCK_GROUPS[key]


def data_config_for(backbone: str, model: nn.Module | None = None) -> dict:
    """Input size, interpolation, mean/std and crop of ``backbone`` (from timm for a non-catalogue model);
    for a text backbone its tokenizer and longest input (``text_models.data_config``)."""
    if backbone in backbones.catalogue():
        return backbones.data_config(backbone)
    import timm

    cfg = timm.data.resolve_model_data_config(model)
    return {k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")}


def jsonable_data_config(data_cfg: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg.items()}
