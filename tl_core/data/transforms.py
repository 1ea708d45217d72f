"""Preprocessing: torchvision v2 transforms from stored uint8 images to what a backbone expects
(size, interpolation, mean/std from ``tl_core.models.backbones.data_config``), normalisation modes,
augmentation, and the image as the network sees it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from tl_core.data.sets import ImageSet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {
    "backbone": "the mean/std the backbone was pretrained with (correct)",
    "imagenet": "ImageNet mean/std, whatever the backbone expects",
    "none": "no normalisation: pixels scaled to 0..1 only",
    "wrong": "deliberately wrong: ImageNet mean/std when the backbone uses other stats, else mean = std = 0.5",
}


@dataclass
class Augment:
    flip: bool = False  # random horizontal flip
    random_resized_crop: bool = False  # random crop of 35-100% of the area, aspect 3/4-4/3
    color_jitter: bool = False  # brightness, contrast, saturation +-40%, hue +-0.05

    @property
    def any(self) -> bool:
        return self.flip or self.random_resized_crop or self.color_jitter


def normalization_stats(data_config: dict, normalization: str = "backbone") -> tuple[tuple, tuple]:
    """(mean, std) for a normalisation mode; see NORMALIZATIONS."""
    own = (tuple(data_config["mean"]), tuple(data_config["std"]))
    if normalization == "backbone":
        return own
    if normalization == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if normalization == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if normalization == "wrong":
        uses_imagenet = np.allclose(own, (IMAGENET_MEAN, IMAGENET_STD), atol=1e-3)
        return ((0.5,) * 3, (0.5,) * 3) if uses_imagenet else (IMAGENET_MEAN, IMAGENET_STD)
    raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {normalization!r}")


class ToRGB(torch.nn.Module):
    """1-channel images (or batches) to 3 channels; 3-channel input passes through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(3, dim=-3) if x.shape[-3] == 1 else x


def make_transforms(data_config: dict, image_size: int, augment: Augment | None = None,
                    normalization: str = "backbone"):
    """(train_tf, eval_tf): torchvision v2 transforms from a uint8 tensor [C,H,W] (or a batch
    [N,C,H,W]; random choices are then shared by the batch) to a float32 [3, image_size,
    image_size] tensor, normalised per ``normalization``.

    Evaluation follows the backbone's pretrained recipe: resize the shorter side to
    ``image_size / crop_pct`` with its interpolation, then centre crop ``image_size``."""
    from torchvision.transforms import v2

    augment = augment or Augment()
    mean, std = normalization_stats(data_config, normalization)
    interp = v2.InterpolationMode(data_config.get("interpolation", "bilinear"))
    resize = [v2.Resize(int(image_size / data_config.get("crop_pct", 1.0)), interpolation=interp, antialias=True),
              v2.CenterCrop(image_size)]
    finish = [v2.ToDtype(torch.float32, scale=True)] + ([] if normalization == "none" else [v2.Normalize(mean, std)])
    train = ([v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), interpolation=interp, antialias=True)]
             if augment.random_resized_crop else list(resize))
    train.append(ToRGB())
    if augment.flip:
        train.append(v2.RandomHorizontalFlip())
    if augment.color_jitter:
        train.append(v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05))
    return v2.Compose(train + finish), v2.Compose(resize + [ToRGB()] + finish)


class TensorDataset(torch.utils.data.Dataset):
    """uint8 images [N,C,H,W] + labels -> (transformed float tensor, int label); each sample draws
    its own augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i]
        return (self.transform(x) if self.transform else x), int(self.labels[i])


def network_view(ds: ImageSet, index: int, data_config: dict, image_size: int,
                 normalization: str = "backbone") -> tuple[torch.Tensor, np.ndarray]:
    """(x, picture): ``x`` is the exact float tensor [3,S,S] the network gets for sample ``index``
    (evaluation transform); ``picture`` is ``x`` de-normalised with the backbone's own mean/std,
    as HxWx3 uint8: the image as the pretrained network perceives it. With the right
    normalisation that is the resized, cropped sample; a wrong one shows as a colour or
    contrast shift."""
    _, eval_tf = make_transforms(data_config, image_size, normalization=normalization)
    x = eval_tf(ds.images[index])
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in normalization_stats(data_config, "backbone"))
    picture = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    return x, picture.permute(1, 2, 0).numpy()
