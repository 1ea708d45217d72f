"""Where user data may come from, and how much of it: the data root, caps, safe zip extraction.

User data is a folder under the data root or a ``.zip``. Reading it never trusts the input:
paths outside the root are refused, unsafe zip entries are refused and sizes are capped
(:class:`Caps`).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError


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
