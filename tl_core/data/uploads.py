"""Dataset uploads from the web page: stored under generated names, with the user's own name beside them.

An upload is a zip of images (or a CSV of texts) in ``<data root>/uploads`` named ``<id>.zip``
(``<id>.csv``; 12 hex digits), with a small JSON sidecar ``<id>.json`` that holds the user's own
file name, the owner (``None`` outside classroom mode), the unpacked size and what the check found.
:func:`save_upload` checks the zip in a temporary folder first (safe extraction, every image
decoded, the usability rules), :func:`save_text_upload` reads the CSV with the text checks
(``texts.load_text_csv``); both store only what passed: a rejected upload (a bomb, an empty or
unusable file, over the quota) leaves nothing behind. The unpacked size of each owner's uploads,
images and texts together, is held to a quota (``limits.Limits.upload_quota_mb``, 2000 MB unless a
teacher raises it). Finding a stored one (``Upload``, ``find_upload``, ``upload_name``) lives in ``sources``.

A process killed while writing leaves ``<id>.<pid>.partial`` (and ``tl_zip_<pid>_*`` extraction
folders in the temp folder); the next call of any process removes them.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import BinaryIO

from tl_core import limits
from tl_core.data.errors import DataError
from tl_core.data.folders import ValidationReport, scan_folder
from tl_core.data.sources import (KINDS, UPLOAD_FORMAT, UPLOAD_ID, Caps, Upload, clean_name, clean_stale_extractions,
                                  extracted, find_upload, pid_alive, read_sidecar, uploads_dir)
from tl_core.data.texts import TextCaps, TextReport, load_text_csv

_ACTIVE: set[str] = set()  # ids this process is writing now (its threads share the pid)
_ACTIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def _locked(folder: Path):
    """The uploads folder to oneself (all processes and threads): quota checks, commits and clean-ups."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean(folder: Path) -> list[Path]:
    """Partial files of dead writers, and sidecars whose zip is gone (call with the folder locked)."""
    gone = []
    for p in folder.glob("*.partial"):
        uid, _, pid = p.stem.partition(".")
        mine = pid == str(os.getpid())
        with _ACTIVE_LOCK:
            busy = uid in _ACTIVE
        if not pid.isdigit() or (mine and not busy) or (not mine and not pid_alive(int(pid))):
            p.unlink(missing_ok=True)
            gone.append(p)
    for sidecar in folder.glob("*.json"):
        if UPLOAD_ID.match(sidecar.stem) and not any(sidecar.with_suffix(s).exists() for s in KINDS):
            sidecar.unlink(missing_ok=True)
            gone.append(sidecar)
    return gone


def clean_stale_uploads(data_root: str | Path | None = None) -> list[Path]:
    """Remove what killed processes left behind: partial uploads, orphan sidecars and temporary
    extraction folders. Safe to call at any time (live writers are left alone); returns what went."""
    gone = clean_stale_extractions()
    folder = uploads_dir(data_root)
    if folder.is_dir():
        with _locked(folder):
            gone += _clean(folder)
    return gone


def list_uploads(owner: str | None = None, data_root: str | Path | None = None,
                 kind: str | None = "zip") -> list[Upload]:
    """The stored uploads of ``kind`` ("zip": image sets, "csv": text sets, None: both), newest first:
    all of them, or only ``owner``'s when an owner is given. Files without a valid sidecar (e.g. zips
    stored before sidecars existed) are not listed."""
    folder = uploads_dir(data_root)
    if not folder.is_dir():
        return []
    clean_stale_uploads(data_root)
    return sorted((u for u in _stored(folder) if (owner is None or u.owner == owner) and kind in (None, u.kind)),
                  key=lambda u: -u.created)


def _stored(folder: Path) -> list[Upload]:
    return [u for u in map(read_sidecar, folder.glob("*.json")) if u and u.path.is_file()]


def uploads_used(owner: str | None, data_root: str | Path | None = None) -> int:
    """Unpacked bytes of ``owner``'s uploads (owner None: the uploads that have no owner)."""
    folder = uploads_dir(data_root)
    return sum(u.size for u in _stored(folder) if u.owner == owner) if folder.is_dir() else 0


def _quota_error(shown: str, size: int, used: int, quota: int) -> str:
    return (f"{shown} unpacks to {size / 1e6:,.1f} MB; with the {used / 1e6:,.1f} MB of your other uploads that is "
            f"over the upload quota of {quota / 1e6:,.0f} MB. What to do: delete an upload you no longer need, "
            "or ask the teacher to raise upload_quota_mb (TL_LIMIT_UPLOAD_QUOTA_MB).")


def _check_zip(raw: bytes, shown: str, caps: Caps) -> tuple[ValidationReport, int]:
    """The validation report of the zip in ``raw`` (checked in a temporary folder) and its unpacked size."""
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise DataError(f"{shown} is not a zip file. What to do: zip the dataset folder (one sub-folder of "
                        "images per class) and upload the .zip.")
    with extracted(io.BytesIO(raw), caps) as tmp:
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        return scan_folder(tmp, caps, 160, shown, tmp)[0], size


def _read(content: bytes | BinaryIO, cap: int) -> bytes:
    """The upload's bytes (a file is read up to one byte over ``cap``: enough to refuse it)."""
    return bytes(content) if isinstance(content, (bytes, bytearray, memoryview)) else content.read(cap + 1)


def _quota(quota_mb: int | None) -> int:
    return (limits.current().upload_quota_mb if quota_mb is None else quota_mb) * 1_000_000


def _refuser(shown: str, report_type=ValidationReport):
    """``refuse(message, report=None) -> (None, report)`` with ``message`` (if any) added to its errors."""
    def refuse(message: str, report: ValidationReport | None = None) -> tuple[None, ValidationReport]:
        report = report or report_type([], {}, [], [], False, source=shown)
        if message:
            report.errors.append(message)
        return None, report

    return refuse


def save_upload(content: bytes | BinaryIO, name: str, owner: str | None = None, *,
                data_root: str | Path | None = None, caps: Caps = Caps(),
                quota_mb: int | None = None) -> tuple[Upload | None, ValidationReport]:
    """Check an uploaded dataset zip and store it when usable.

    ``content`` is the zip (bytes or a binary file such as Streamlit's UploadedFile), ``name`` the
    user's own file name, ``owner`` who uploaded it (None outside classroom mode). Returns
    ``(upload, report)``: the stored Upload and the validation report, or ``(None, report)`` with
    the reasons in ``report.errors`` (each says what to do) when the zip is refused; then nothing
    is left in the uploads folder. ``quota_mb`` defaults to ``limits.current().upload_quota_mb``."""
    shown = clean_name(name)
    folder = uploads_dir(data_root)
    raw, quota, refuse = _read(content, caps.max_total_bytes), _quota(quota_mb), _refuser(shown, ValidationReport)
    if len(raw) > caps.max_total_bytes:
        return refuse(f"{shown} is over the max_total_bytes cap of {caps.max_total_bytes:,} bytes. "
                      "What to do: use fewer or smaller images (a few hundred pixels a side is plenty).")
    try:
        report, size = _check_zip(raw, shown, caps)
    except DataError as exc:
        return refuse(str(exc))
    if not report.ok:
        return refuse("", report)
    return _commit(raw, shown, owner, folder, size, report, quota, refuse)


def _commit(raw: bytes, shown: str, owner: str | None, folder: Path, size: int, report, quota: int, refuse,
            kind: str = "zip", count: int | None = None, classes: int | None = None):
    """Store a checked upload under a fresh id, unless it would take ``owner`` over ``quota`` bytes:
    (Upload, report), or ``refuse(why, report)``."""
    uid = uuid.uuid4().hex[:12]
    partial = folder / f"{uid}.{os.getpid()}.partial"
    with _ACTIVE_LOCK:
        _ACTIVE.add(uid)
    try:
        with _locked(folder):
            _clean(folder)
            used = uploads_used(owner, folder.parent)
            if used + size > quota:
                return refuse(_quota_error(shown, size, used, quota), report)
            partial.write_bytes(raw)
            upload = Upload(uid, shown, owner, folder / f"{uid}.{kind}", size, time.time(),
                            report.num_images if count is None else count,
                            len(report.classes) if classes is None else classes)
            meta = {"format": UPLOAD_FORMAT, **upload.to_dict(), "kind": kind, "zip_bytes": len(raw)}
            meta.pop("path")
            (folder / f"{uid}.json").write_text(json.dumps(meta, indent=1))
            os.replace(partial, upload.path)
        return upload, report
    finally:
        partial.unlink(missing_ok=True)
        with _ACTIVE_LOCK:
            _ACTIVE.discard(uid)


def save_text_upload(content: bytes | BinaryIO, name: str, owner: str | None = None, *,
                     data_root: str | Path | None = None, caps=None,
                     quota_mb: int | None = None) -> tuple[Upload | None, ValidationReport]:
    """Check an uploaded CSV of texts (``texts.load_text_csv``: columns, encoding, classes, caps)
    and store it when usable, like :func:`save_upload`: under a generated name, with the owner and the
    user's own file name in its sidecar, held to the same upload quota. Returns ``(upload, report)``:
    the report is the text set's ``TextReport`` (skipped rows, texts cut), or, when refused, a report
    whose ``errors`` say why and what to do; then nothing is stored. ``caps``: ``texts.TextCaps``."""
    caps = caps or TextCaps()
    shown = clean_name(name if str(name or "").lower().endswith(".csv") else f"{name or 'upload'}.csv")
    raw, quota, refuse = _read(content, caps.max_total_bytes), _quota(quota_mb), _refuser(shown, TextReport)
    if len(raw) > caps.max_total_bytes:
        return refuse(f"{shown} is over the max_total_bytes cap of {caps.max_total_bytes:,} bytes. "
                      "What to do: keep fewer or shorter rows.")
    try:
        ds = load_text_csv(raw, name=shown, caps=caps)
    except DataError as exc:
        return refuse(f"{exc}")
    return _commit(raw, shown, owner, uploads_dir(data_root), len(raw), ds.report, quota, refuse, "csv",
                   len(ds), ds.num_classes)


def delete_upload(upload: Upload | str | Path, owner: str | None = None,
                  data_root: str | Path | None = None) -> bool:
    """Remove an upload (an Upload, its id or its path) and its sidecar. With ``owner``, only that
    owner's upload can be removed (DataError otherwise). Returns whether anything was removed."""
    if not isinstance(upload, Upload):
        text = str(upload)
        sidecar = uploads_dir(data_root) / f"{text}.json"
        upload = (read_sidecar(sidecar) if UPLOAD_ID.match(text) and sidecar.is_file() else None) or find_upload(text)
        if upload is None:
            return False
    if owner is not None and upload.owner != owner:
        raise DataError(f"{upload.name} is someone else's upload; you can only delete your own.")
    with _locked(upload.path.parent):
        existed = upload.path.exists()
        upload.path.unlink(missing_ok=True)
        upload.path.with_suffix(".json").unlink(missing_ok=True)
    return existed
