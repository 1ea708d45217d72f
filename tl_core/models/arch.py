"""Models of a run: build the architecture a config names, its data config, its block names (saving and
loading a trained model: ``tl_core.training.checkpoint``)."""
from __future__ import annotations

from torch import nn

from tl_core.models import backbones, surgery


def is_timm_arch(name: str) -> bool:
    """Any timm architecture name (random init only): tests build tiny real models this way."""
    import timm

    return isinstance(name, str) and timm.is_model(name)


def build_arch(backbone: str, num_classes: int, weights: str = "random", weights_file=None, allow_download=False):
    """(model, WeightsStatus): a catalogue backbone, or any timm architecture with random init."""
    if backbone in backbones.catalogue():
        return backbones.create_model(backbone, num_classes, weights=weights, weights_file=weights_file,
                                      allow_download=allow_download)
    import timm

    model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
    return model, backbones.WeightsStatus("random", "", "random initialisation (from scratch)")


def modality(backbone: str) -> str:
    """"text" for a text backbone of the catalogue (tl_core.models.text), else "image"."""
    cat = backbones.catalogue()
    return cat[backbone].modality if backbone in cat else "image"


BLOCK_NAMES: dict[tuple, list[str]] = {}  # (backbone, image_size) -> block names (``forget`` drops some)


def block_names(backbone: str, image_size: int) -> list[str]:
    """The toggleable blocks of ``backbone`` (stem first, head last), built once per (backbone, size)."""
    key = (backbone, image_size)
    if key not in BLOCK_NAMES:
        model, _ = build_arch(backbone, 2, "random")
        BLOCK_NAMES[key] = surgery.hierarchy(model, image_size).block_names
    return BLOCK_NAMES[key]


def forget(backbone: str) -> None:
    """Drop what is cached about ``backbone`` (block names, data config): a lab saved a new one under its key."""
    backbones.forget(backbone)
    for key in [k for k in BLOCK_NAMES if k[0] == backbone]:
        del BLOCK_NAMES[key]


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
