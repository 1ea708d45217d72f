"""Validation limits: the one place that bounds what a run or a lab may ask for.

``TrainConfig.validate`` and ``LabConfig.validate`` both read ``current()``. A teacher raises a limit with an
environment variable (``TL_LIMIT_<NAME>``, e.g. ``TL_LIMIT_MAX_IMAGE_SIZE=512``) or a JSON file named by
``TL_LIMITS_FILE`` holding ``{"max_image_size": 512, ...}``. Booleans read ``1/true/yes/on`` as true.

The defaults keep one classroom server safe from a shared link: a run may ask for at most 1024 px, 100
epochs, 5,000 images per class, batches of 512, a lab for 100 runs; the backbone must be in the catalogue
(or one of ``SMALL_TIMM`` below) unless ``allow_any_timm``; and ``tl_core.training.estimate`` refuses a run whose
estimated memory exceeds the machine's RAM (or its GPU's memory) or whose estimated time exceeds
``max_run_minutes``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    min_image_size: int = 16
    max_image_size: int = 1024
    min_tokens: int = 8  # token length of a text run (TrainConfig.max_tokens)
    max_tokens: int = 512  # MiniLM's position embeddings end at 512
    max_epochs: int = 100  # the Labs page's Epochs widget stops at 100 too
    max_batch_size: int = 512
    max_per_class: int = 5000  # training images per class (per_class, a lab's sizes)
    max_seed: int = 1_000_000  # seeds are >= 0 and below this
    max_run_minutes: int = 180  # tl_core.training.estimate: the longest estimated run accepted (one class period and more)
    allow_any_timm: bool = False  # True: any timm architecture (random init) as a backbone, not just the catalogue
    upload_quota_mb: int = 2000  # unpacked size of one owner's uploaded datasets (tl_core.data.uploads)
    feature_cache_mb: int = 2048  # frozen-prefix features shared between runs (runs/feature_cache); 0: off
    max_seeds: int = 100  # seeds of one lab (LabConfig.seeds)
    max_lab_runs: int = 100  # training runs one lab may queue (all its seeds together)

    @classmethod
    def from_env(cls, environ=None) -> "Limits":
        env = os.environ if environ is None else environ
        values: dict = {}
        path = env.get("TL_LIMITS_FILE")
        if path:
            try:
                with open(path, encoding="utf-8") as fh:
                    loaded = json.load(fh)
                if not isinstance(loaded, dict):
                    raise ValueError(f"it holds a JSON {type(loaded).__name__}")
            except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                raise ValueError(f"TL_LIMITS_FILE={path}: {str(exc).splitlines()[0]}; it must be a JSON object "
                                 'such as {"max_image_size": 512}') from None
            values.update(loaded)
        for f in dataclasses.fields(cls):
            text = env.get(f"TL_LIMIT_{f.name.upper()}")
            if text is not None:
                values[f.name] = text
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown limit(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**{k: _parse(type(getattr(cls, k)), k, v) for k, v in values.items()})


def _parse(kind: type, name: str, value):
    if kind is bool and isinstance(value, str):
        if value.strip().lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
            raise ValueError(f"limit {name} must be true or false, not {value!r}")
        return value.strip().lower() in ("1", "true", "yes", "on")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"limit {name} must be a whole number, not {value!r}") from None


# Small timm architectures accepted as backbones (random init) although outside the catalogue: the test
# models of the tests and labs, and resnet10t (the Yosinski lab's GPU preset).
SMALL_TIMM = ("test_resnet", "test_efficientnet", "test_vit", "resnet10t")


def current() -> Limits:
    """The limits in force now (read from the environment each call, so tests and teachers can change them)."""
    return Limits.from_env()


def shown(value, most: int = 60) -> str:
    """``repr(value)`` for a message, cut after ``most`` characters with an ellipsis and the full length:
    a value pasted into a link or a file is never quoted whole."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than str() converts
        return f"a number of {value.bit_length():,} bits"
    return text if len(text) <= most else f"{text[:most]}… ({len(text):,} characters)"


def check_int(name: str, value, lo: int, hi: int | None = None, unit: str = "") -> None:
    """Raise ValueError with one line unless ``value`` is a whole number in [lo, hi]."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    if not ok:
        above = isinstance(value, int) and not isinstance(value, bool) and value >= lo
        span = f"from {lo} to {hi}" if above else f">= {lo}" + (f" (at most {hi})" if hi is not None else "")
        raise ValueError(f"{name} must be a whole number{unit} {span}, not {shown(value)}")


def check_float(name: str, value, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False, hint: str = "") -> None:
    """Raise ValueError with one line unless ``value`` is a finite real number in the given range
    (``lo_open``/``hi_open``: the bound itself is excluded). NaN and infinities are always refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        span = " ".join(x for x in (
            "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}",
            "" if hi is None else f"{'and ' if lo is not None else ''}{'<' if hi_open else '<='} {hi:g}") if x)
        what = f"{span} (a finite number)" if span else "a finite number"
        raise ValueError(f"{name} must be {what}{hint}, not {shown(value)}")


_SIMPLE = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict}


def check_types(obj) -> None:
    """Raise ValueError (one line) for the first field of dataclass ``obj`` whose value is not of its
    declared type (``int | None``, ``list[str]``, ``list[int | None]`` ...): JSON and query strings can carry
    anything, and the range checks assume the types (they refuse booleans for numbers themselves)."""
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), str(f.type)
        if not _fits(value, kind):
            raise ValueError(f"{f.name} must be of type {kind}, not {shown(value)}")


def _fits(value, kind: str) -> bool:
    options = [k.strip() for k in kind.split("|")] if not kind.startswith("list[") else [kind]
    if kind.startswith("list[") and "] | None" in kind:
        options = [kind[: kind.index("]") + 1], "None"]
    for k in options:
        if k == "None" and value is None:
            return True
        if k.startswith("list["):
            inner = k[5:-1]
            if isinstance(value, list) and all(_fits(v, inner) for v in value):
                return True
        elif k in _SIMPLE:
            if isinstance(value, _SIMPLE[k]):
                return True
    return False


def check_fields(cls, d: dict, what: str = "config") -> None:
    """Refuse, in one line, the keys of ``d`` that are not fields of the dataclass ``cls``."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} field(s): {', '.join(unknown)}")
