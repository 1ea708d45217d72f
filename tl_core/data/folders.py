"""User data sets in the ImageFolder layout: finding the layout, scanning, the validation report.

One sub-folder per class, optionally inside ``train/`` and ``val/``, as a folder under the
data root or as a ``.zip``. Unreadable files are skipped and listed in a
:class:`ValidationReport`; unusable data shows as the report's errors.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .images import _fit_square, open_image, read_image
from .sources import Caps, resolve_data_path, safe_extract_zip

VAL_DIR_NAMES = ("val", "valid", "validation")
_JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}


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
    report = ValidationReport(classes, {c: 0 for c in classes}, [], [], split_dirs is not None, source=name)
    if split_dirs:
        report.val_counts = {c: 0 for c in classes}
    files = _list_files(root, caps, report)
    if files is None:
        return report, None, None, None
    found, side = _place_files(files, parts, folder, caps, store_size, report)
    images, labels, is_val = _decode(found, side, caps, report)
    report.skipped.sort()
    report.errors += _usability_errors(report, caps)
    return report, images, labels, is_val


def _list_files(root: Path, caps: Caps, report: ValidationReport) -> list[tuple[Path, str]] | None:
    """Every file under ``root`` as (file, relative name); None (with the error in ``report``)
    when the max_files or max_total_bytes cap is exceeded."""
    files: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _junk(d))
        files += [(Path(dirpath) / f, str((Path(dirpath) / f).relative_to(root)))
                  for f in sorted(filenames) if not _junk(f)]
    if len(files) > caps.max_files:
        report.errors.append(f"{len(files):,} files, over the max_files cap of {caps.max_files:,}")
        return None
    total = sum(f.stat().st_size for f, _ in files if f.exists())  # a broken link is skipped below
    if total > caps.max_total_bytes:
        report.errors.append(f"{total:,} bytes of files, over the max_total_bytes cap of {caps.max_total_bytes:,}")
        return None
    return files


def _place_files(files: list[tuple[Path, str]], parts: dict[str, Path], folder: Path, caps: Caps,
                 store_size: int, report: ValidationReport) -> tuple[list[tuple[Path, str, int, bool]], int]:
    """Pass 1: place each file in its class and read its header (cheap). Returns the usable files
    as (file, relative name, label, from val/) and the common side to decode them at."""
    index = {c: i for i, c in enumerate(report.classes)}
    found: list[tuple[Path, str, int, bool]] = []
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
    return found, min(store_size, max(sides, default=store_size))  # small images are not blown up


def _decode(found: list[tuple[Path, str, int, bool]], side: int, caps: Caps, report: ValidationReport):
    """Pass 2: decode the placed files at ``side`` x ``side``, counting them in ``report``.
    Returns (images [S,S,3] arrays, labels, is_val)."""
    images, labels, is_val = [], [], []
    for path, rel, label, val in found:
        try:
            images.append(_fit_square(read_image(path, caps, draft_size=side), side))
        except DataError as exc:
            report.skipped.append((rel, str(exc)))
            continue
        labels.append(label)
        is_val.append(val)
        report.counts[report.classes[label]] += 1
        if val:
            report.val_counts[report.classes[label]] += 1
    return images, labels, is_val


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
