"""Distribution shifts: the same data set, changed on purpose, for the labs on a shifted target.

Input shifts keep the classes and change the pixels: ``noise`` (Gaussian noise), ``blur`` (Gaussian blur),
``invert`` (inverted contrast). The label shift keeps the pixels and changes the labels: ``labels`` maps every
class to another one, a permutation without fixed points drawn from the seed (the split seed in a run).

A shift is applied once to a whole ``ImageSet`` (:func:`shifted`) and kept in memory (an LRU of
``CACHE_ENTRIES`` sets), like the decoded built-in sets: the same set, shift and seed give the same tensors,
bit for bit, and a second call costs a digest of the images. The source set is never modified; the empty
shift ``""`` returns it as is. :func:`shift_view` is the picture the Data page shows.
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from threading import Lock

import numpy as np
import torch

from tl_core.data.sets import ImageSet
from tl_core.data.transforms import network_view

SHIFTS = {
    "noise": "Gaussian noise: every pixel plus a random value (std 40% of the range), clipped",
    "blur": "Gaussian blur: sigma = 8% of the image side",
    "invert": "inverted contrast: 255 - pixel (dark shapes on a light background)",
    "labels": "the same images with their labels permuted: every class is renamed to another one",
}
INPUT_SHIFTS = ("noise", "blur", "invert")
NOISE_STD = 0.4  # of the 0..255 range
BLUR_SIGMA = 0.08  # of the image side
CACHE_ENTRIES = 8

_CACHE: OrderedDict[tuple, ImageSet] = OrderedDict()
_LOCK = Lock()


def check_shift(name, field: str = "shift", inputs_only: bool = False) -> None:
    """Raise ValueError with one line unless ``name`` is "" (no shift) or a known shift (an input shift
    when ``inputs_only``)."""
    choices = INPUT_SHIFTS if inputs_only else tuple(SHIFTS)
    if name == "" or name in choices:
        return
    kind = "an input shift, " if inputs_only else ""
    hint = " (the label shift changes no image)" if name == "labels" else ""
    raise ValueError(f"{field} must be {kind}one of {', '.join(choices)}, or '' for none; not {name!r}{hint}")


def label_permutation(num_classes: int, seed: int) -> torch.Tensor:
    """int64 [num_classes]: class c becomes ``perm[c]``, never itself (a random cycle order: seeded)."""
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))
    perm = torch.empty(num_classes, dtype=torch.int64)
    perm[order] = order.roll(-1)
    return perm


def shift_images(images: torch.Tensor, shift: str, seed: int = 0) -> torch.Tensor:
    """uint8 [N, C, H, W] → a shifted uint8 copy (an input shift; "" or "labels": the images themselves)."""
    check_shift(shift)
    if shift in ("", "labels"):
        return images
    if shift == "invert":
        return 255 - images
    x = images.float()
    if shift == "noise":
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * (NOISE_STD * 255)
        x = x + noise
    else:  # blur
        from torchvision.transforms.v2 import functional as TF

        sigma = BLUR_SIGMA * images.shape[-1]
        x = TF.gaussian_blur(x, [2 * math.ceil(3 * sigma) + 1] * 2, [sigma, sigma])
    return x.round().clamp(0, 255).to(torch.uint8)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(t.numpy()).data).hexdigest()


def shifted(ds: ImageSet, shift: str, seed: int = 0) -> ImageSet:
    """``ds`` with ``shift`` applied to all of it (same order, class names and split hint); "" returns ``ds``.
    Cached: the same images, labels, shift and seed give the cached set (do not modify it in place)."""
    check_shift(shift)
    if not shift:
        return ds
    key = (_digest(ds.images), _digest(ds.labels), len(ds.class_names), shift, seed)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    labels = label_permutation(len(ds.class_names), seed)[ds.labels] if shift == "labels" else ds.labels
    out = ImageSet(shift_images(ds.images, shift, seed), labels, list(ds.class_names), f"{ds.name} ({shift})",
                   ds.report, ds.split_hint)
    with _LOCK:
        _CACHE[key] = out
        while len(_CACHE) > CACHE_ENTRIES:
            _CACHE.popitem(last=False)
    return out


def shift_view(ds: ImageSet, index: int, shift: str, data_config: dict, image_size: int,
               normalization: str = "backbone", seed: int = 0) -> dict:
    """What the network sees of sample ``index`` without and with ``shift``: {"clean", "shifted"} (HxWx3 uint8
    pictures of the network's input, de-normalised as ``network_view`` does), "label" (its class) and
    "shown_as" (the class it is trained as under the shift)."""
    after = shifted(ds, shift, seed)
    return {"clean": network_view(ds, index, data_config, image_size, normalization)[1],
            "shifted": network_view(after, index, data_config, image_size, normalization)[1],
            "label": ds.class_names[int(ds.labels[index])], "shown_as": after.class_names[int(after.labels[index])]}
