"""Reading weight files safely, and converting other key layouts to timm's.

- ``read_state_dict``: safetensors, or a torch file with ``weights_only=True`` (never a bare pickle); a file with
  NaN or infinite values is refused; a warm worker keeps the last files it read (``keep_weights``).
- ``CONVERTERS``: torchvision's MobileNetV2 and lukemelas' EfficientNet key names onto timm's.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
from torch import nn


class WeightsError(RuntimeError):
    """Weights that cannot be found or do not fit the architecture. The message says what to do."""


_KEEP = {"files": 0, "bytes": 0}  # set by ``keep_weights``
_KEPT: dict = {}  # (path, mtime, size, check_finite) -> state dict, oldest first


def keep_weights(files: int = 4, max_bytes: int = 512 * 2**20) -> None:
    """From now on ``read_state_dict`` keeps the last ``files`` files it read (``max_bytes`` at most, the newest
    always) in memory, by path, modification time and size: for a warm worker. Callers only copy the tensors."""
    _KEEP.update(files=files, bytes=max_bytes)


def _kept(read):
    """``read`` through the memory that ``keep_weights`` turns on."""

    @functools.wraps(read)
    def cached(path: str | Path, check_finite: bool = True) -> dict[str, torch.Tensor]:
        try:
            st = Path(path).stat() if _KEEP["files"] else None
        except OSError:
            st = None
        if st is None:
            return read(path, check_finite)
        key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size, check_finite)
        _KEPT[key] = _KEPT.pop(key) if key in _KEPT else read(path, check_finite)
        while len(_KEPT) > 1 and (len(_KEPT) > _KEEP["files"] or sum(k[2] for k in _KEPT) > _KEEP["bytes"]):
            del _KEPT[next(iter(_KEPT))]
        return dict(_KEPT[key])

    return cached


@_kept
def read_state_dict(path: str | Path, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """Read a weights file safely: safetensors, or a torch file with ``weights_only=True`` (never a bare pickle).
    With ``check_finite`` (the default), a file holding NaN or infinite values is refused, naming the tensors."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}. What to do: check the path, or upload the file again.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path.name} is not a readable safetensors file ({exc}). What to do: save the "
                               "model's state_dict with safetensors.torch.save_file and try again.") from None
    else:
        sd = _read_torch_file(path)
    if check_finite:
        check_finite_weights(sd, path.name)
    return sd


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # torch's "Detected pickle protocol" note: the refusal below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, zip errors...
        raise WeightsError(
            f"{path.name} is not a safe weights file ({type(exc).__name__}: not a plain state_dict of tensors; "
            "pickled objects are never run). What to do: save the model's state_dict with torch.save or "
            "safetensors and try again."
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path.name} does not hold a state_dict of tensors. What to do: save "
                           "model.state_dict() (not the whole model or an optimizer) and try again.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def check_finite_weights(sd: dict[str, torch.Tensor], source: str = "the weights") -> None:
    """WeightsError naming the tensors that hold NaN or infinite values (and how many), if any do."""
    bad = []
    for key, value in sd.items():
        if value.is_floating_point() or value.is_complex():
            n_nan, n_inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
            if n_nan or n_inf:
                bad.append((key, n_nan, n_inf, value.numel()))
    if bad:
        shown = "; ".join(f"{k}: {', '.join(p for p in (f'{a:,} NaN' if a else '', f'{b:,} inf' if b else '') if p)}"
                          f" of {n:,} values" for k, a, b, n in bad[:5])
        more = f" (+{len(bad) - 5} more tensors)" if len(bad) > 5 else ""
        raise WeightsError(
            f"{source} holds non-finite weights in {len(bad)} tensor(s): {shown}{more}. Such a model cannot "
            "train (every output would be NaN). What to do: export the weights again from a model that "
            "trained without diverging, or use the catalogue's pretrained or random weights.")


# --- converters from other key layouts to timm's ------------------------------------------


def _torchvision_in_order(sd: dict, model: nn.Module) -> dict:
    """torchvision and timm MobileNetV2 hold the same tensors in the same order under other names."""
    target = model.state_dict()
    if len(sd) != len(target) or any(a.shape != b.shape for a, b in zip(sd.values(), target.values())):
        return sd  # not that layout: let the strict load report the keys
    return dict(zip(target.keys(), sd.values()))


_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _lukemelas_efficientnet(sd: dict, model: nn.Module) -> dict:
    """lukemelas/EfficientNet-PyTorch key names -> timm ``tf_efficientnet_*`` names."""
    if not any(k.startswith("_blocks.") for k in sd):
        return sd
    order = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expands = {k.split(".")[1] for k in sd if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            table = _LITE_IR if parts[1] in expands else _LITE_DS
            out[".".join([order[int(parts[1])], table.get(parts[2], parts[2]), *parts[3:]])] = value
        else:
            out[".".join([_LITE_TOP.get(parts[0], parts[0]), *parts[1:]])] = value
    return out


CONVERTERS = {"torchvision_in_order": _torchvision_in_order, "lukemelas_efficientnet": _lukemelas_efficientnet}
