"""User data sets in the ImageFolder layout: finding the layout, scanning, the validation report.

One sub-folder per class, optionally inside ``train/`` and ``val/``, as a folder under the
data root or as a ``.zip``. Only regular files are read; links are followed only while they
stay inside the data root or, where any path may be read (the command line), inside the folder
given, and never into ``/proc``, ``/sys`` or ``/dev``. Unreadable files, special files and links
that lead outside are skipped and listed in a :class:`ValidationReport`; unusable data shows as the
report's errors.
The scan (:func:`scan_layout`) and the usability rules serve text data too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tl_core.data.errors import DataError
from tl_core.data.images import fit_square, open_image, read_image
from tl_core.data.sources import (Caps, data_root_dir, extracted, file_kind, inside, pseudo_filesystem,
                                  resolve_data_path, upload_name)

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


def _readable_dir(p: Path, bound: Path, follow_links: bool) -> bool:
    """A folder to read: a real one, or (with ``follow_links``) a link to a folder inside ``bound``."""
    if p.is_symlink():
        return follow_links and p.is_dir() and inside(p, bound)
    return p.is_dir()


def _subdirs(folder: Path, bound: Path, follow_links: bool = True) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not _junk(p.name) and _readable_dir(p, bound, follow_links))


def _find_layout(root: Path, bound: Path, follow_links: bool = True) -> tuple[Path, dict[str, Path] | None]:
    """Unwrap single wrapper folders (never one that leads outside ``bound``); return
    (root, {"train": dir, "val": dir} or None)."""
    while True:
        entries = [p for p in root.iterdir() if not _junk(p.name)]
        only = entries[0] if len(entries) == 1 else None
        if (only is None or not _readable_dir(only, bound, follow_links)
                or any(p.is_file() for p in only.iterdir() if not _junk(p.name))):
            break
        root = only
    dirs = {p.name.lower(): p for p in _subdirs(root, bound, follow_links)}
    val = next((dirs[n] for n in VAL_DIR_NAMES if n in dirs), None)
    return root, ({"train": dirs["train"], "val": val} if "train" in dirs and val else None)


_ROOT, _GIVEN = "the data root", "the folder you gave"


def _entry(path: Path, bound: Path, follow_links: bool, chain: tuple[Path, ...],
           where: str = _ROOT) -> tuple[str, object]:
    """What a folder entry is: ("dir", resolved path), ("file", size) or ("skip", why). Uses lstat/stat
    only: nothing is opened. ``where`` names ``bound`` in the reason a link leading outside it is skipped."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        if not follow_links:
            return "skip", "not a regular file: a symbolic link (links are not followed for this data)"
        target = path.resolve()
        if not target.exists():
            return "skip", "broken symbolic link"
        kind = "folder" if target.is_dir() else "file"
        fs = pseudo_filesystem(target)
        if fs:
            return "skip", f"symbolic link into the {fs} pseudo-filesystem; skipped without opening it"
        if not target.is_relative_to(bound):
            return "skip", f"symbolic link to a {kind} outside {where}; copy it into {where} instead"
        if target in chain:
            return "skip", "symbolic link to a folder that contains it (a loop)"
        st = os.stat(target)
    if stat.S_ISDIR(st.st_mode):
        return "dir", path.resolve()
    if stat.S_ISREG(st.st_mode):
        return "file", st.st_size
    return "skip", f"not a regular file: {file_kind(st.st_mode)}; skipped without opening it"


def _list_files(root: Path, caps, report: ValidationReport, bound: Path, follow_links: bool = True,
                where: str = _ROOT) -> list[tuple[Path, str]] | None:
    """Every regular file under ``root`` as (file, relative name), in sorted top-down order. Links are
    followed only inside ``bound`` (and only with ``follow_links``); special files, links that lead
    outside, broken links and loops go to ``report.skipped``. None (with the error in ``report``)
    when the max_files or max_total_bytes cap is exceeded."""
    files: list[tuple[Path, str]] = []
    total, folders = 0, 0
    stack = [(root, "", (root.resolve(),))]
    while stack:
        folder, rel, chain = stack.pop()
        subdirs = []
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            report.skipped.append((rel or ".", f"cannot list this folder ({exc.strerror})"))
            continue
        for name in names:
            if _junk(name):
                continue
            if len(files) > caps.max_files:
                break
            try:
                kind, value = _entry(folder / name, bound, follow_links, chain, where)
            except OSError as exc:  # removed or made unreadable while we look
                kind, value = "skip", f"cannot read it ({exc.strerror})"
            if kind == "dir":
                subdirs.append((folder / name, f"{rel}{name}/", (*chain, value)))
            elif kind == "file":
                files.append((folder / name, f"{rel}{name}"))
                total += value
            else:
                report.skipped.append((f"{rel}{name}{'/' if (folder / name).is_dir() else ''}", value))
        folders += len(subdirs)
        if len(files) > caps.max_files or folders > caps.max_files:
            what = "files" if folders <= caps.max_files else "folders"
            report.errors.append(f"more than {caps.max_files:,} {what}: over the max_files cap of {caps.max_files:,}. "
                                 "What to do: use fewer files, or ask the teacher to raise the cap")
            return None
        stack += reversed(subdirs)
    if total > caps.max_total_bytes:
        report.errors.append(f"{total:,} bytes of files, over the max_total_bytes cap of {caps.max_total_bytes:,}. "
                             "What to do: use fewer or smaller files")
        return None
    return files


def scan_layout(folder: Path, caps, name: str, bound: Path, report_type: type = ValidationReport,
                 follow_links: bool = True):
    """Find the layout, the classes and each file's class. Returns (report, [(file, relative name,
    label, from val/)]), or (report, None) when a cap stops the listing (the error is in the report).
    Files outside a class folder are listed in ``report.skipped``. Links are followed inside ``bound``
    (the data root); when that is the whole filesystem (the command line reads any path), only inside
    ``folder``: the user's path is trusted, not where the links inside it lead."""
    where = _ROOT
    if bound == Path("/"):
        bound, where = folder.resolve(), _GIVEN
    root, split_dirs = _find_layout(folder, bound, follow_links)
    parts = split_dirs or {"train": root}
    classes = sorted({d.name for base in parts.values() for d in _subdirs(base, bound, follow_links)})
    report = report_type(classes, {c: 0 for c in classes}, [], [], split_dirs is not None, source=name)
    if split_dirs:
        report.val_counts = {c: 0 for c in classes}
    files = _list_files(root, caps, report, bound, follow_links, where)
    if files is None:
        return report, None
    index = {c: i for i, c in enumerate(classes)}
    placed = []
    for path, rel in files:
        split_name = next((k for k, base in parts.items() if path.is_relative_to(base)), None)
        sub = path.relative_to(parts[split_name]).parts if split_name else ()
        if split_name is None:
            report.skipped.append((rel, "not under train/ or val/"))
        elif len(sub) < 2 or sub[0] not in index:
            report.skipped.append((rel, "not inside a class folder"))
        else:
            placed.append((path, rel, index[sub[0]], split_name == "val"))
    return report, placed


def scan_folder(folder: Path, caps: Caps, store_size: int, name: str, bound: Path):
    """Validate and decode an ImageFolder tree. Returns (report, images [N,S,S,3], labels, is_val)."""
    report, placed = scan_layout(folder, caps, name, bound)
    if placed is None:
        return report, None, None, None
    found, side = _read_headers(placed, caps, store_size, report)
    images, labels, is_val = _decode(found, side, caps, report)
    report.skipped.sort()
    report.errors += usability_errors(report, caps)
    return report, images, labels, is_val


def _read_headers(placed: list[tuple[Path, str, int, bool]], caps: Caps, store_size: int,
                  report: ValidationReport) -> tuple[list[tuple[Path, str, int, bool]], int]:
    """Pass 1: read each placed file's header (cheap). Returns the usable files and the common side
    to decode them at."""
    found, sides = [], []
    for path, rel, label, val in placed:
        try:
            with open_image(path, caps) as im:
                w, h = im.size
        except DataError as exc:
            report.skipped.append((rel, str(exc)))
            continue
        found.append((path, rel, label, val))
        sides.append(min(w, h))
    return found, min(store_size, max(sides, default=store_size))  # small images are not blown up


def _decode(found: list[tuple[Path, str, int, bool]], side: int, caps: Caps, report: ValidationReport):
    """Pass 2: decode the placed files at ``side`` x ``side``, counting them in ``report``.
    Returns (images [S,S,3] arrays, labels, is_val)."""
    images, labels, is_val = [], [], []
    for path, rel, label, val in found:
        try:
            images.append(fit_square(read_image(path, caps, draft_size=side), side))
        except DataError as exc:
            report.skipped.append((rel, str(exc)))
            continue
        labels.append(label)
        is_val.append(val)
        report.counts[report.classes[label]] += 1
        if val:
            report.val_counts[report.classes[label]] += 1
    return images, labels, is_val


_NO_IMAGES = ("no images found; expected one sub-folder of images per class (ImageFolder layout), "
              "optionally inside train/ and val/")


def _lost(report: ValidationReport, noun: str) -> str:
    """Why the classes left without a usable file have none: every file of theirs was skipped (how many,
    and the reason of the first), or their folder was empty. "" when every class has files."""
    said = []
    for c in (c for c, n in report.counts.items() if not n):
        skipped = [(name, why) for name, why in report.skipped
                   if name.split("/")[1 if report.has_split and name.count("/") > 1 else 0] == c]
        said.append(f"class {c!r} has no usable {noun}s: " + (
            f"all its {len(skipped)} file(s) were skipped, e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped
            else "its folder holds no files"))
    return "".join(f"; {line}" for line in said)


def usability_errors(report: ValidationReport, caps, noun: str = "image", empty: str = _NO_IMAGES) -> list[str]:
    """Why the data cannot train a classifier ([] when it can): nothing usable (``empty``), a single
    class, too many classes (caps with ``max_classes``), a class under ``min_per_class``, an empty
    half of a train/ val/ split. ``noun`` is what is counted ("image", "text")."""
    if not report.num_images:
        return [empty]
    used = [c for c, n in report.counts.items() if n]
    if len(used) < 2:
        return [f"found a single class ({', '.join(used)}){_lost(report, noun)}; a classifier needs at least two: "
                f"add {noun}s of another class (one sub-folder per class for a folder or zip)"]
    max_classes = getattr(caps, "max_classes", None)
    if max_classes is not None and len(report.classes) > max_classes:
        return [f"{len(report.classes):,} distinct labels, over the max_classes cap of {max_classes}; "
                "is the label column really a column of class names?"]
    errors = []
    for c, n in report.counts.items():
        if n < caps.min_per_class:
            errors.append(f"class {c!r} has {n} {noun}(s); each class needs at least {caps.min_per_class} "
                          "(the min_per_class cap) so that training and validation both get some")
        elif report.has_split and not (0 < report.val_counts[c] < n):
            where = "val/" if report.val_counts[c] == 0 else "train/"
            errors.append(f"class {c!r} has no {noun}s in {where}; add some or drop the train/ val/ split")
    return errors


def read_user_data(path: Path, caps: Caps, store_size: int, bound: Path, name: str | None = None):
    """Scan a resolved folder (links followed inside ``bound``) or zip: (report, images, labels, is_val)."""
    name = name or path.name
    if path.is_dir():
        return scan_folder(path, caps, store_size, name, bound)
    with contextlib.ExitStack() as stack:
        try:
            tmp = stack.enter_context(extracted(path, caps))
        except DataError as exc:
            return ValidationReport([], {}, [], [str(exc)], False, source=name), None, None, None
        return scan_folder(tmp, caps, store_size, name, tmp)


def check_data(path: str | Path, data_root: str | Path | None = None, caps: Caps = Caps()) -> ValidationReport:
    """The validation report of a folder or zip: classes, counts, skipped files and why, errors.
    Raises DataError only for a path that cannot be read at all (outside the data root, missing).
    ``data_root=UNRESTRICTED`` (the command line) reads any path."""
    resolved = resolve_data_path(path, data_root)
    return read_user_data(resolved, caps, 160, data_root_dir(data_root), upload_name(resolved))[0]
