"""Models of a run: build the architecture a config names, its data config, its block names; save a
trained model (safetensors weights + the JSON config that rebuilds it) and load it back."""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from tl_core.models import backbones
from tl_core.training import config
from tl_core.models import surgery


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


BLOCK_NAMES: dict[tuple, list[str]] = {}  # (backbone, image_size) -> block names; labs drop entries they replace


def block_names(backbone: str, image_size: int) -> list[str]:
    """The toggleable blocks of ``backbone`` (stem first, head last), built once per (backbone, size)."""
    key = (backbone, image_size)
    if key not in BLOCK_NAMES:
        model, _ = build_arch(backbone, 2, "random")
        BLOCK_NAMES[key] = surgery.hierarchy(model, image_size).block_names
    return BLOCK_NAMES[key]


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


def save_model(model: nn.Module, cfg: config.TrainConfig, class_names: list[str], out_dir) -> Path:
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
            "data_config": jsonable_data_config(data_config_for(cfg.backbone, model)),
            "image_size": cfg.image_size, "normalization": cfg.normalization,
            "modality": cfg.modality, "max_tokens": cfg.max_tokens}
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    return out


def load_model(out_dir) -> tuple[nn.Module, config.TrainConfig, list[str]]:
    """Rebuild a saved model (architecture from its config, weights from safetensors), in eval mode."""
    out = Path(out_dir)
    meta = json.loads((out / "model.json").read_text())
    cfg = config.TrainConfig.from_dict(meta["config"])
    class_names = meta["class_names"]
    model, _ = build_arch(cfg.backbone, len(class_names), "random")
    sd = backbones.read_state_dict(out / "model.safetensors")
    model.load_state_dict(sd, strict=True)
    return model.eval(), cfg, class_names
