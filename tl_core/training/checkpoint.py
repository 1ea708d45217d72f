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
    spec = backbones.catalogue().get(cfg.backbone)
    save_file(sd, str(out / "model.safetensors"))
    meta = {"format": "tl_lab.model/1", "config": cfg.to_dict(), "class_names": list(class_names),
            "num_classes": len(class_names),
            "timm_name": spec.timm_name if spec else cfg.backbone,
            "create_kwargs": dict(spec.create_kwargs) if spec else {},  # e.g. a ViT's dynamic_img_size
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


def load_code(name: str, meta: dict) -> str:
    """Python that rebuilds a saved model from its two files, downloaded as ``<name>.safetensors`` and
    ``<name>.json`` (``meta``: that ``model.json``). Plain timm where it can; ``load_model`` for a text model
    and for a linear probe cut after a block group (``probe_depth``), which only tl_core builds."""
    cfg = meta["config"]
    by_tl_core = (f"from tl_core.training.checkpoint import load_model\n"
                  f"# put the two files in a folder \"{name}\", named model.safetensors and model.json\n"
                  f"model, cfg, class_names = load_model(\"{name}\")  # {meta['timm_name']}")
    if meta.get("modality") == "text":
        return (f"{by_tl_core}, {meta.get('max_tokens')} tokens\nfrom tl_core.models.backbones import text_tokenizer\n"
                "x = text_tokenizer(cfg.backbone).encode([\"a great product\"], cfg.max_tokens)\n"
                "print(class_names[model(x).argmax(1).item()])")
    if cfg.get("probe_depth") is not None:
        return (f"{by_tl_core} cut after {cfg['probe_depth']} block groups, a new linear head\n"
                f"# preprocess: resize to {meta.get('image_size')} px, mean/std = cfg's data config")
    own = (f"\nimport tl_core.models  # registers {meta['timm_name']} (not in timm) with timm"
           if backbones.arch_definition(meta["timm_name"]) else "")
    create = meta.get("create_kwargs")
    if create is None:  # saved before model.json kept them
        spec = backbones.catalogue().get(cfg.get("backbone"))
        create = spec.create_kwargs if spec else {}
    kwargs = "".join(f", {k}={v!r}" for k, v in create.items())
    return (f"import json, timm{own}\nfrom safetensors.torch import load_file\n"
            f"meta = json.load(open(\"{name}.json\"))\n"
            f"model = timm.create_model(meta[\"timm_name\"], num_classes=meta[\"num_classes\"]{kwargs})\n"
            f"model.load_state_dict(load_file(\"{name}.safetensors\"))\n"
            f"model.eval()  # preprocess: resize to {meta.get('image_size')} px, mean/std = meta[\"data_config\"]")
