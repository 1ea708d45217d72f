"""Save a trained model (safetensors weights + the JSON config that rebuilds it) and load it back."""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from tl_core.models import arch, backbones
from tl_core.training.config import TrainConfig


def save_model(model: nn.Module, cfg: TrainConfig, class_names: list[str], out_dir) -> Path:
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
            "data_config": arch.jsonable_data_config(arch.data_config_for(cfg.backbone, model)),
            "image_size": cfg.image_size, "normalization": cfg.normalization,
            "modality": cfg.modality, "max_tokens": cfg.max_tokens}
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    return out


def load_model(out_dir) -> tuple[nn.Module, TrainConfig, list[str]]:
    """Rebuild a saved model (architecture from its config, weights from safetensors), in eval mode."""
    out = Path(out_dir)
    meta = json.loads((out / "model.json").read_text())
    cfg, class_names = TrainConfig.from_dict(meta["config"]), meta["class_names"]
    model, _ = arch.build_arch(cfg.backbone, len(class_names), "random", probe_depth=cfg.probe_depth,
                               image_size=cfg.sample_size)
    sd = backbones.read_state_dict(out / "model.safetensors")
    model.load_state_dict(sd, strict=True)
    return model.eval(), cfg, class_names
