"""JSON as the run store writes it: plain values only (numpy/torch scalars become numbers, NaN and
infinities become null, tuples lists), never pickled, and files replaced atomically."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


def jsonable(value):
    """JSON-safe copy: numpy/torch scalars → numbers, NaN/inf → None, tuples → lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def dumps(value) -> str:
    return json.dumps(jsonable(value), allow_nan=False)


def loads(text: str | None):
    return None if text is None else json.loads(text)


def write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file: a reader sees the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
