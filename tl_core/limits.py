"""Validation limits: the one place that bounds what a run or a lab may ask for.

``TrainConfig.validate`` and ``LabConfig.validate`` both read ``current()``. A teacher raises a limit with an
environment variable (``TL_LIMIT_<NAME>``, e.g. ``TL_LIMIT_MAX_IMAGE_SIZE=512``) or a JSON file named by
``TL_LIMITS_FILE`` holding ``{"max_image_size": 512, ...}``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    min_image_size: int = 16
    max_image_size: int = 1024
    min_tokens: int = 8  # token length of a text run (TrainConfig.max_tokens)
    max_tokens: int = 512  # MiniLM's position embeddings end at 512
    max_epochs: int = 1000
    max_batch_size: int = 4096
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
            with open(path, encoding="utf-8") as fh:
                values.update(json.load(fh))
        for f in dataclasses.fields(cls):
            text = env.get(f"TL_LIMIT_{f.name.upper()}")
            if text is not None:
                values[f.name] = text
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown limit(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**{k: type(getattr(cls, k))(v) for k, v in values.items()})


def current() -> Limits:
    """The limits in force now (read from the environment each call, so tests and teachers can change them)."""
    return Limits.from_env()


def check_int(name: str, value, lo: int, hi: int | None = None, unit: str = "") -> None:
    """Raise ValueError with one line unless ``value`` is a whole number in [lo, hi]."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    if not ok:
        span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be a whole number{unit} {span}, not {value!r}")
