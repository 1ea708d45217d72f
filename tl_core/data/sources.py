"""Where user data may come from, and how much of it: the data root, caps, regular files, safe zip extraction.

User data is a folder under the data root or a ``.zip``. Reading it never trusts the input:
paths outside the root are refused (every component resolved, links included), only regular
files are opened (a FIFO would block) and never one of the pseudo-filesystems (``/proc``, ``/sys``,
``/dev``), unsafe zip entries are refused and sizes are capped (:class:`Caps`). The data root is the
rule for paths typed into the web page; the command line passes :data:`UNRESTRICTED`, since its user
owns the machine and may read any path they type (but links inside it are followed only inside it:
``folders.scan_layout``).
Stored uploads (``<data root>/uploads``, saved by ``tl_core.data.uploads``) are found here too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tl_core.data.errors import DataError

# ``data_root=UNRESTRICTED`` reads any path (relative ones from the working directory). A string, so
# that it travels inside a JSON config (``TrainConfig.data_root``); only the CLI may set it.
UNRESTRICTED = "<unrestricted>"
_EXTRACT_PREFIX = "tl_zip_"  # temporary extraction folders: tl_zip_<pid>_<random>


@dataclass(frozen=True)
class Caps:
    """Limits on user data. Each message that enforces one names it."""

    max_total_bytes: int = 500_000_000  # uncompressed size of a zip, or of a folder's files
    max_files: int = 20_000  # files in a zip or folder
    max_pixels: int = 40_000_000  # width x height of one image (decompression bombs)
    min_per_class: int = 5  # images per class, so that a split leaves some for validation


def is_unrestricted(data_root) -> bool:
    return (data_root or os.environ.get("TL_DATA_ROOT")) == UNRESTRICTED


def data_root_dir(data_root: str | Path | None = None) -> Path:
    """The folder user datasets must live in: ``data_root``, else env ``TL_DATA_ROOT``, else ``./data``
    (``/`` for UNRESTRICTED: every path is inside it)."""
    if is_unrestricted(data_root):
        return Path("/")
    return Path(data_root or os.environ.get("TL_DATA_ROOT") or "data").expanduser().resolve()


data_root = data_root_dir  # short name for callers; inside functions a ``data_root`` argument shadows it


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, from its ``st_mode``."""
    return ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a symbolic link" if stat.S_ISLNK(mode) else "a special file")


PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")  # kernel interfaces, not data: /proc/kmsg blocks, /proc/self walks /


def pseudo_filesystem(path: str | Path) -> str | None:
    """The pseudo-filesystem (``/proc``, ``/sys``, ``/dev``) that ``path`` lies in, every link resolved; None
    for any other path. Nothing is opened."""
    resolved = Path(path).resolve()
    return next((fs for fs in PSEUDO_FILESYSTEMS if resolved.is_relative_to(fs)), None)


def _not_regular(what: str) -> DataError:
    return DataError(f"not a regular file: {what}; skipped without opening it",
                     advice="give a plain file: pipes, sockets, devices and /proc, /sys or /dev files are never read")


def check_regular(path: str | Path) -> os.stat_result:
    """``os.stat`` of ``path`` (links followed), or DataError unless it is a regular file outside the
    pseudo-filesystems. Nothing is opened, so a FIFO cannot block."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"cannot read it ({exc.strerror})",
                        advice="check that the file exists and is readable") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(file_kind(st.st_mode))
    fs = pseudo_filesystem(path)
    if fs:
        raise _not_regular(f"a file of the {fs} pseudo-filesystem")
    return st


def read_regular(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``. Opened non-blocking and checked again on
    the open file, so a file swapped for a FIFO after a check cannot block either."""
    check_regular(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(file_kind(st.st_mode))
        if st.st_size > max_bytes:
            raise DataError(f"{st.st_size:,} bytes, over the max_total_bytes cap of {max_bytes:,}",
                            advice="use a smaller file")
        return fh.read(max_bytes + 1)[:max_bytes]


def inside(path: Path, bound: Path) -> bool:
    """Whether ``path``, every component and link resolved, lies inside ``bound`` (a resolved folder)."""
    return path.resolve().is_relative_to(bound)


def resolve_data_path(path: str | Path, data_root: str | Path | None = None, files: tuple[str, ...] = ()) -> Path:
    """``path`` as an absolute path, accepted only inside the data root (see data_root_dir): a folder,
    a ``.zip``, or a regular file ending in one of ``files`` (e.g. ``(".csv",)``).
    A relative path is looked up in the data root first, then in the working directory (only the
    working directory with UNRESTRICTED). Every component and link is resolved before the check."""
    root = data_root_dir(data_root)
    p = Path(path).expanduser()
    if not p.is_absolute():
        in_cwd = Path.cwd() / p
        p = in_cwd if is_unrestricted(data_root) or (in_cwd.exists() and not (root / p).exists()) else root / p
    resolved = p.resolve()
    if not resolved.is_relative_to(root):
        raise DataError(f"{path} is outside the data root {root}; only datasets inside it can be read. "
                        "Copy the dataset there (or set TL_DATA_ROOT) and try again.")
    fs = pseudo_filesystem(resolved)
    if fs:
        raise DataError(f"{path} is in the {fs} pseudo-filesystem, which holds no data sets; "
                        "give a folder, .zip or file of your own")
    if not resolved.exists():
        raise DataError(f"{path} not found (looked in the data root {root} and the working directory); "
                        "check the spelling, or give the path of a folder or .zip inside the data root")
    if resolved.is_dir():
        return resolved
    kinds = ["a folder", "a .zip file", *(f"a {s} file" for s in files)]
    wanted, neither = (", ".join(kinds[:-1]) + f" {w} " + kinds[-1] for w in ("or", "nor"))
    mode = os.stat(resolved).st_mode
    if not stat.S_ISREG(mode):  # never open a pipe or device: opening a FIFO blocks
        raise DataError(f"{path} is {file_kind(mode)}, not {wanted}; give {wanted}")
    if resolved.suffix.lower() in files or zipfile.is_zipfile(resolved):
        return resolved
    raise DataError(f"{path} is neither {neither}; give {wanted} instead")


def _unsafe_zip_name(name: str) -> bool:
    n = name.replace("\\", "/")
    return n.startswith("/") or (len(n) > 1 and n[1] == ":") or ".." in n.split("/")


_REZIP = "What to do: zip the dataset folder again with an ordinary zip tool and upload that."


def safe_extract_zip(zip_path: str | Path | BinaryIO, dest_dir: str | Path, caps: Caps = Caps()) -> Path:
    """Extract a zip (a path or an open binary file) into ``dest_dir`` after checking it: entries with
    absolute paths or ``..`` are refused, and the file count and uncompressed size are capped (checked
    from the header first, then again while writing, so a lying header cannot get past)."""
    dest = Path(dest_dir).resolve()
    label = Path(zip_path).name if isinstance(zip_path, (str, Path)) else "the upload"
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise DataError(f"{label} is not a valid zip file. {_REZIP}") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        for m in zf.infolist():
            if _unsafe_zip_name(m.filename):
                raise DataError(f"zip entry {m.filename!r} has an absolute path or '..'; "
                                f"refusing to extract this archive. {_REZIP}")
        if len(members) > caps.max_files:
            raise DataError(f"the zip holds {len(members):,} files, over the max_files cap of {caps.max_files:,}. "
                            "What to do: use fewer files.")
        declared = sum(m.file_size for m in members)
        if declared > caps.max_total_bytes:
            raise DataError(f"the zip unpacks to {declared:,} bytes, over the max_total_bytes cap "
                            f"of {caps.max_total_bytes:,}. What to do: use fewer or smaller images.")
        budget = caps.max_total_bytes
        for m in members:
            target = (dest / m.filename).resolve()
            if not target.is_relative_to(dest):  # belt and braces after _unsafe_zip_name
                raise DataError(f"zip entry {m.filename!r} points outside the extraction directory. {_REZIP}")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        budget -= len(chunk)
                        if budget < 0:
                            raise DataError("the zip unpacks to more than the max_total_bytes cap of "
                                            f"{caps.max_total_bytes:,} bytes. What to do: use fewer or smaller images.")
                        out.write(chunk)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as exc:
                # bad CRC, encryption, unknown compression, a file and a folder of the same name
                raise DataError(f"cannot read zip entry {m.filename!r}: {exc}. {_REZIP}") from None
    return dest


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's live process (or a bogus number: treat 0 and below as dead)
    return True


def clean_stale_extractions(folder: str | Path | None = None) -> list[Path]:
    """Remove the extraction folders (``tl_zip_<pid>_*``) that a killed process left in ``folder``
    (default: the system temp folder). Folders of live processes are left alone. Returns what went."""
    base = Path(folder or tempfile.gettempdir())
    gone = []
    for p in base.glob(f"{_EXTRACT_PREFIX}*_*"):
        pid = p.name[len(_EXTRACT_PREFIX):].split("_", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


@contextlib.contextmanager
def extracted(zip_path: str | Path | BinaryIO, caps: Caps = Caps()):
    """A zip safely extracted to a temporary folder (the resolved path), removed afterwards. The folder
    is named after this process, so the next call of any process removes it if this one is killed."""
    clean_stale_extractions()
    with tempfile.TemporaryDirectory(prefix=f"{_EXTRACT_PREFIX}{os.getpid()}_") as tmp:
        yield safe_extract_zip(zip_path, tmp, caps)


UPLOAD_FORMAT = "tl_lab.upload/1"
UPLOAD_ID = re.compile(r"^[0-9a-f]{12}$")
KINDS = {".zip": "zip", ".csv": "csv"}  # what an upload can be: a zip of images, a CSV of texts


@dataclass(frozen=True)
class Upload:
    id: str
    name: str  # the user's own file name, shown instead of the generated one
    owner: str | None
    path: Path  # the stored zip (or CSV): what load_dataset (load_text_dataset) and check_data take
    size: int  # bytes once unpacked: what counts against the quota
    created: float  # seconds since the epoch
    num_images: int = 0  # images, or texts of a CSV
    num_classes: int = 0

    @property
    def kind(self) -> str:
        """"zip" (images) or "csv" (texts)."""
        return KINDS[self.path.suffix]

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "path": str(self.path)}


def uploads_dir(data_root: str | Path | None = None) -> Path:
    """Where dataset uploads live: ``<data root>/uploads``."""
    return data_root_dir(data_root) / "uploads"


def clean_name(name: str) -> str:
    """The last part of the user's file name, without control or format characters, at most 120 long."""
    base = str(name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if not unicodedata.category(ch).startswith("C")).strip()
    return base[:120] or "upload.zip"


def read_sidecar(sidecar: Path) -> Upload | None:
    """The Upload an upload's JSON sidecar describes; None when it is not one of ours, or damaged."""
    try:
        meta = json.loads(read_regular(sidecar, 65_536))
        if meta.get("format") != UPLOAD_FORMAT or meta.get("id") != sidecar.stem:
            return None
        owner, kind = meta.get("owner"), meta.get("kind", "zip")
        if kind not in KINDS.values():
            return None
        return Upload(sidecar.stem, clean_name(meta["name"]), owner if isinstance(owner, str) else None,
                      sidecar.with_suffix(f".{kind}"), int(meta["size"]), float(meta["created"]),
                      int(meta.get("num_images", 0)), int(meta.get("num_classes", 0)))
    except (DataError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # never shown


def find_upload(path: str | Path) -> Upload | None:
    """The upload stored at ``path`` (its zip or CSV), or None when ``path`` is not an upload."""
    p = Path(path)
    if p.suffix not in KINDS or not UPLOAD_ID.match(p.stem) or p.parent.name != "uploads" or not p.is_file():
        return None
    found = read_sidecar(p.with_suffix(".json"))
    return found if found is not None and found.path.name == p.name else None


def upload_name(path: str | Path) -> str | None:
    """The user's own file name of the upload at ``path``; None when ``path`` is not an upload."""
    found = find_upload(path)
    return found.name if found else None
