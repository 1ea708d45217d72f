"""The image set every lab trains on: loading one (built-in or user data), seeded splits,
class subsets and sample grids.

Every image set is held as one uint8 tensor ``[N, C, H, W]``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tl_core.data.builtin import BUILTIN, builtin_arrays
from tl_core.data.errors import DataError
from tl_core.data.folders import ValidationReport, read_user_data
from tl_core.data.sources import Caps, data_root_dir, resolve_data_path, upload_name


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, C, H, W], C = 1 or 3, one fixed H = W per set
    labels: torch.Tensor  # int64 [N]
    class_names: list[str]
    name: str
    report: ValidationReport | None = None  # user data only
    split_hint: torch.Tensor | None = None  # bool [N], True = came from a val/ folder

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _load_user(path: Path, caps: Caps, store_size: int, bound: Path) -> ImageSet:
    shown = upload_name(path)  # an upload is named after the user's own file, never the generated one
    report, images, labels, is_val = read_user_data(path, caps, store_size, bound, shown)
    if not report.ok:
        raise DataError(f"{shown or path.name}: " + "; ".join(report.errors))
    return ImageSet(
        torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        torch.tensor(labels, dtype=torch.int64), report.classes, Path(shown or path.name).stem, report,
        torch.tensor(is_val, dtype=torch.bool) if report.has_split else None,
    )


def load_dataset(source: str, data_root: str | Path | None = None, store_size: int = 160,
                 caps: Caps = Caps()) -> ImageSet:
    """A built-in dataset (a key of BUILTIN) or a user folder/zip inside the data root (any path with
    ``data_root=UNRESTRICTED``, which only the command line passes).

    Built-ins come at their native size, 1 channel. User images are converted to RGB and
    centre-cropped to a square of ``store_size`` pixels, or of the largest image's shorter side
    when every image is smaller (small images are not enlarged). Raises DataError for unusable
    data, with the report's errors in the message. Built-in tensors are shared with an
    in-process cache: do not modify them in place."""
    if source in BUILTIN:
        images, labels = builtin_arrays(source)
        return ImageSet(images, labels, list(BUILTIN[source].class_names), BUILTIN[source].name)
    try:
        path = resolve_data_path(source, data_root)
    except DataError as exc:
        if os.sep in str(source) or Path(source).suffix:
            raise
        raise DataError(f"{source!r} is not a built-in dataset ({', '.join(BUILTIN)}) "
                        f"nor a folder or zip in the data root: {exc}") from None
    return _load_user(path, caps, store_size, data_root_dir(data_root))


def split(ds: ImageSet, val_fraction: float = 0.2, seed: int = 0,
          per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, stratified (train, val) index tensors, sorted.

    With ``split_hint`` the val/ folder is the validation set. Otherwise each class gives
    ``round(n * val_fraction)`` images (at least one) to validation. ``per_class`` caps the
    training images per class; the validation set does not depend on it, and the training
    subsets are nested (a smaller cap keeps a subset of a larger one's images)."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, not {val_fraction}")
    if per_class is not None and per_class < 1:
        raise DataError(f"per_class must be at least 1, not {per_class}")
    present = torch.unique(ds.labels).tolist()
    if len(present) < 2:
        raise DataError(f"{ds.name} has {len(present)} class with images; a classifier needs at least two")
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in range(len(ds.class_names)):
        idx = torch.nonzero(ds.labels == c).flatten()
        if ds.split_hint is not None:
            hint = ds.split_hint[idx]
            tr, va = idx[~hint], idx[hint]
            tr = tr[torch.randperm(len(tr), generator=gen)]
        else:
            idx = idx[torch.randperm(len(idx), generator=gen)]
            n_val = max(1, round(len(idx) * val_fraction))
            tr, va = idx[n_val:], idx[:n_val]
        if ds.split_hint is not None and (len(tr) < 1 or len(va) < 1):
            raise DataError(f"class {ds.class_names[c]!r} has {len(tr)} image(s) in train/ and {len(va)} in val/; "
                            "each needs at least one: add images or drop the train/ val/ split")
        if len(tr) < 1 or len(va) < 1:
            raise DataError(f"class {ds.class_names[c]!r} has {len(idx)} image(s): too few to give both training "
                            "and validation at least one; add images or remove the class")
        train.append(tr[:per_class])
        val.append(va)
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def subset_classes(ds: ImageSet, classes: list[str]) -> ImageSet:
    """Only the images of ``classes``, relabelled 0..k-1 in the given order (a task made of some of
    a data set's classes, as in the Yosinski lab). Raises DataError naming an unknown class."""
    unknown = [c for c in classes if c not in ds.class_names]
    if unknown:
        raise DataError(f"{ds.name} has no class {unknown[0]!r}; its classes are: {', '.join(ds.class_names)}")
    if len(set(classes)) != len(classes):
        raise DataError(f"classes must be distinct, got {', '.join(classes)}")
    old = torch.tensor([ds.class_names.index(c) for c in classes])
    keep = torch.isin(ds.labels, old)
    remap = torch.full((len(ds.class_names),), -1, dtype=torch.int64)
    remap[old] = torch.arange(len(classes))
    return ImageSet(ds.images[keep], remap[ds.labels[keep]], list(classes), ds.name, ds.report,
                    None if ds.split_hint is None else ds.split_hint[keep])


def class_counts(ds: ImageSet, indices: torch.Tensor | None = None) -> dict[str, int]:
    labels = ds.labels if indices is None else ds.labels[indices]
    counts = torch.bincount(labels, minlength=len(ds.class_names)).tolist()
    return dict(zip(ds.class_names, counts))


def _display(images: torch.Tensor) -> np.ndarray:
    """uint8 [.., C, H, W] -> numpy [.., H, W, 3] (grayscale repeated)."""
    return images.expand(*images.shape[:-3], 3, *images.shape[-2:]).movedim(-3, -1).numpy()


def sample_grid(ds: ImageSet, per_class: int = 4, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Up to ``per_class`` random images of each class, as HxWx3 uint8 arrays (grayscale repeated)."""
    gen = torch.Generator().manual_seed(seed)
    grid = {}
    for c, name in enumerate(ds.class_names):
        idx = torch.nonzero(ds.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)[:per_class]]
        grid[name] = list(_display(ds.images[idx]))
    return grid
